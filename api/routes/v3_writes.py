"""Nightscout's API v3 writes: CREATE, UPDATE, PATCH and DELETE of one document by identifier.

As cgm-remote-monitor 15 answers them (``lib/api3/generic``):

* ``POST /api/v3/{collection}`` takes one document. It needs ``date`` (epoch ms or s, or
  ISO-8601; ``created_at`` stands in) and ``app``; ``utcOffset`` and ``identifier`` are checked
  when given. A document that matches a stored one — by ``identifier``, else by v3's dedupe
  fallback fields (entries: date and type; treatments: created_at and eventType; device
  status: created_at and device; profiles: created_at) — replaces it and keeps its
  identifier: 200 with ``isDeduplication: true``. Otherwise 201 with the new identifier, and
  ``Location`` and ``Last-Modified`` headers.
* ``PUT /api/v3/{collection}/{identifier}`` replaces the document (200), or creates it under
  that identifier (201). ``PATCH`` merges the fields sent into the stored document (200; 404
  when there is none). Neither may change ``date``, ``utcOffset``, ``eventType``, ``device``,
  ``app``, ``subject``, ``modifiedBy`` or ``isValid``: 400 "Field … cannot be modified by the
  client". A deleted document answers 410.
* ``DELETE /api/v3/{collection}/{identifier}`` deletes softly (v3 reads then show the document
  with ``isValid: false`` in histories, and 410 to a READ); ``?permanent=true`` forgets it.
  200 (the protocol reference's status), 404 when there is no such document.

Every write needs a valid token (``Authorization: Bearer`` or ``?token=``, as v3 reads), and
never passes anonymously, whatever ``CONNECT_HTTP_READABLE`` says. A body over the write API's
size cap is 413; a field our records cannot hold is a 400 naming it. Each write is one
transaction of the daemon's store writer, so the outputs, alerts and v3 histories see it as they
see any push; ``srvModified`` moves only when the stored document changed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response

from api import v3
from api.access import RequestAccess
from api.context import ApiContext, Context, Writer
from api.errors import StoreUnavailable, V3Error
from api.openapi import V3_ERROR_SCHEMA, V3_SECURITY, v3_collection_parameter
from api.responses import JSON, json_response
from api.routes.uploads import origin_of, read_body
from connect.errors import StoreError
from connect.pushed import DocumentError, parse_json, read_document
from connect.records import Collection, Record, iso_from_ms
from store.values import Stored, V3Result
from store.writes import Gone

log = structlog.get_logger("api")

BAD_BODY: Final = "Bad or missing request body"
#: fields a client may not change on UPDATE or PATCH (v3's list; identifier, srvCreated and
#: srvModified are the server's and simply dropped)
IMMUTABLE: Final = ("date", "utcOffset", "eventType", "device", "app", "subject", "modifiedBy", "isValid")
#: fields only the server writes: a client's values are dropped
SERVER_FIELDS: Final = ("identifier", "srvCreated", "srvModified", "subject", "modifiedBy", "isValid", "_id")
MIN_UTC_OFFSET: Final = -1440
MAX_UTC_OFFSET: Final = 1440

router = APIRouter()
_COLLECTION = v3_collection_parameter(v3.V3_COLLECTIONS)
_IDENTIFIER = {"name": "identifier", "in": "path", "required": True, "schema": {"type": "string"}}
_BODY = {
    "required": True,
    "content": {JSON: {"schema": {"type": "object", "description": "one Nightscout document"}}},
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": V3_ERROR_SCHEMA}}}


_WRITE_RESULT: Final = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "integer"},
        "identifier": {"type": "string"},
        "lastModified": {"type": "integer"},
        "isDeduplication": {"type": "boolean"},
    },
}
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    400: _error("a document v3 refuses (the message names the field)"),
    401: _error("no token, or a wrong one (Bearer JWT or ?token=): writes are never anonymous"),
    404: _error("a collection v3 does not know or this store does not keep, or no such document"),
    405: _error("this API only reads the store (serve): writes go to the daemon's API"),
    413: _error("the body is too large"),
    503: _error("the store cannot be written right now"),
}
_GONE: Final[dict[int | str, dict[str, Any]]] = {410: _error("the document was deleted")}


def _writer(request: Request, access: RequestAccess, context: ApiContext) -> tuple[Collection, Writer]:
    """The collection written and the daemon's writer, for a request with a valid token."""
    name = v3.collection_of(request.path_params["collection"])
    access.require_write_v3()
    collection = v3.stored(name)
    if collection is None:
        raise V3Error(404, v3.BAD_COLLECTION, f"{name} is not kept by this store")
    if context.writer is None:
        raise V3Error(
            405,
            "Method Not Allowed",
            "this API only reads the store (serve); writes are taken by the daemon's API",
        )
    if context.store_failing():
        raise StoreUnavailable()
    return collection, context.writer


async def _document(request: Request) -> dict[str, Any]:
    """The body: one non-empty JSON object."""
    try:
        value = parse_json(await read_body(request))
    except DocumentError:
        raise V3Error(400, BAD_BODY) from None
    if not isinstance(value, dict) or not value:
        raise V3Error(400, BAD_BODY)
    return value


def _date(doc: Mapping[str, Any], *, required: bool) -> int | None:
    """v3's ``date``: epoch ms (or s), or ISO-8601; ``created_at`` stands in when it is absent."""
    raw = doc.get("date")
    if raw is None and required:
        raw = doc.get("created_at")
    if raw is None and not required:
        return None
    ms = v3.time_ms(raw) if isinstance(raw, (int, float, str)) else None
    if ms is None or (isinstance(raw, float) and not math.isfinite(raw)):
        raise V3Error(400, "Bad or missing date field")
    return ms


def _check_common(doc: Mapping[str, Any], *, patching: bool) -> None:
    """v3's checks of ``utcOffset`` and ``app`` (``app`` is required unless patching)."""
    offset = doc.get("utcOffset")
    if offset is not None and (
        isinstance(offset, bool)
        or not isinstance(offset, (int, float))
        or not MIN_UTC_OFFSET <= offset <= MAX_UTC_OFFSET
    ):
        raise V3Error(400, "Bad or missing utcOffset field")
    app = doc.get("app")
    if (app is not None or not patching) and (not isinstance(app, str) or not app.strip()):
        raise V3Error(400, "Bad or missing app field")


def _record(collection: Collection, doc: Mapping[str, Any], at: int, now: int) -> Record:
    """A v3 document (its time already read as ``at``) as one of our records; a field our
    records cannot hold is a 400 naming it."""
    fixed = {k: v for k, v in doc.items() if k not in SERVER_FIELDS}
    fixed["date"] = at
    # the date read decides (a dateString beside it would be read first)
    fixed.pop("dateString", None)
    if collection != "entries":
        # v3 keys a document on its date; our treatments and statuses keep it as created_at
        fixed["created_at"] = iso_from_ms(at)
    try:
        return read_document(collection, fixed, 0, now=now).record
    except DocumentError as exc:
        field = "document" if exc.field.startswith("(") else exc.field
        raise V3Error(400, f"Bad {field} field", exc.problem) from None


def _identifier(doc: Mapping[str, Any]) -> str | None:
    value = doc.get("identifier")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise V3Error(400, "Bad or missing identifier field")
    return value


def _unchanged(doc: Mapping[str, Any], stored: Mapping[str, Any]) -> None:
    """400 when ``doc`` changes a field v3 keeps immutable (compared where the stored document
    has the field: one our records do not keep cannot be told apart)."""
    for field in IMMUTABLE:
        if field not in doc or field not in stored:
            continue
        given, kept = doc[field], stored[field]
        if field == "date":
            given = v3.time_ms(given) if isinstance(given, (int, float, str)) else given
        if given != kept:
            raise V3Error(400, f"Field {field} cannot be modified by the client")


async def _run(coro: Any) -> V3Result:
    try:
        result: V3Result = await coro
    except StoreError as exc:
        log.warning("v3 write not stored", error=str(exc))
        raise StoreUnavailable() from None
    except Gone:
        raise V3Error(410, "") from None
    except KeyError:
        raise V3Error(404, "") from None
    return result


def _answer(name: str, result: V3Result, *, dedupe: bool = False) -> Response:
    headers = {"Last-Modified": v3.http_date(result.srv_modified)}
    if result.created:
        # an identifier is any text a client chose: the header carries it percent-encoded
        headers["Location"] = f"/api/v3/{name}/{quote(result.identifier, safe='')}"
        body = {"status": 201, "identifier": result.identifier, "lastModified": result.srv_modified}
        return json_response(body, 201, headers)
    body = {"status": 200, "lastModified": result.srv_modified}
    if dedupe:
        body.update(identifier=result.identifier, isDeduplication=True)
    return json_response(body, headers=headers)


@router.post(
    "/api/v3/{collection}",
    summary="v3 CREATE: one document (a stored one it duplicates is replaced: 200, isDeduplication)",
    status_code=201,
    responses={
        201: {"description": "created", "content": {JSON: {"schema": _WRITE_RESULT}}},
        200: {
            "description": "deduplicated onto a stored document",
            "content": {JSON: {"schema": _WRITE_RESULT}},
        },
        **_ERRORS,
    },
    openapi_extra={"parameters": [_COLLECTION], "requestBody": _BODY, "security": V3_SECURITY},
)
async def create(request: Request, access: RequestAccess, context: Context) -> Response:
    collection, writer = _writer(request, access, context)
    doc = await _document(request)
    identifier = _identifier(doc)
    at = _date(doc, required=True)
    assert at is not None
    _check_common(doc, patching=False)
    record = _record(collection, doc, at, context.clock())
    result = await _run(writer.astore.create_v3(origin_of(request), record, identifier))
    writer.written()
    return _answer(collection, result, dedupe=not result.created)


@router.put(
    "/api/v3/{collection}/{identifier}",
    summary="v3 UPDATE: replace the document, or create it under this identifier",
    responses={
        200: {"description": "replaced", "content": {JSON: {"schema": _WRITE_RESULT}}},
        201: {"description": "created", "content": {JSON: {"schema": _WRITE_RESULT}}},
        **_ERRORS,
        **_GONE,
    },
    openapi_extra={"parameters": [_COLLECTION, _IDENTIFIER], "requestBody": _BODY, "security": V3_SECURITY},
)
async def update(request: Request, access: RequestAccess, context: Context) -> Response:
    collection, writer = _writer(request, access, context)
    identifier = request.path_params["identifier"]
    doc = await _document(request)
    at = _date(doc, required=True)
    assert at is not None
    _check_common(doc, patching=False)
    now = context.clock()

    def build(stored: Stored) -> Record:
        if stored is not None:
            _unchanged(doc, stored[1])
        return _record(collection, doc, at, now)

    result = await _run(
        writer.astore.rewrite_v3(origin_of(request), collection, identifier, build, must_exist=False)
    )
    writer.written()
    return _answer(collection, result)


@router.patch(
    "/api/v3/{collection}/{identifier}",
    summary="v3 PATCH: merge the fields sent into the stored document",
    responses={
        200: {"description": "patched", "content": {JSON: {"schema": _WRITE_RESULT}}},
        **_ERRORS,
        **_GONE,
    },
    openapi_extra={"parameters": [_COLLECTION, _IDENTIFIER], "requestBody": _BODY, "security": V3_SECURITY},
)
async def patch(request: Request, access: RequestAccess, context: Context) -> Response:
    collection, writer = _writer(request, access, context)
    identifier = request.path_params["identifier"]
    given = await _document(request)
    changes = {k: v for k, v in given.items() if k not in ("identifier", "srvCreated", "srvModified")}
    if "date" in changes:
        _date(changes, required=False)
    _check_common(changes, patching=True)
    now = context.clock()

    def build(stored: Stored) -> Record:
        assert stored is not None  # must_exist
        _unchanged(changes, stored[1])
        merged = {**stored[1], **changes}
        at = _date(merged, required=True)
        assert at is not None
        return _record(collection, merged, at, now)

    result = await _run(
        writer.astore.rewrite_v3(origin_of(request), collection, identifier, build, must_exist=True)
    )
    writer.written()
    return _answer(collection, result)


@router.delete(
    "/api/v3/{collection}/{identifier}",
    summary="v3 DELETE: mark the document deleted (isValid false), or forget it with ?permanent=true",
    responses={200: {"description": "deleted", "content": {JSON: {"schema": _WRITE_RESULT}}}, **_ERRORS},
    openapi_extra={
        "parameters": [
            _COLLECTION,
            _IDENTIFIER,
            {"name": "permanent", "in": "query", "required": False, "schema": {"type": "boolean"}},
        ],
        "security": V3_SECURITY,
    },
)
async def delete(request: Request, access: RequestAccess, context: Context) -> Response:
    collection, writer = _writer(request, access, context)
    identifier = request.path_params["identifier"]
    permanent = request.query_params.get("permanent") == "true"
    try:
        done = await writer.astore.delete_v3(collection, identifier, permanent=permanent)
    except StoreError as exc:
        log.warning("v3 delete not stored", error=str(exc))
        raise StoreUnavailable() from None
    if not done:
        raise V3Error(404, "")
    writer.written()
    return json_response({"status": 200})
