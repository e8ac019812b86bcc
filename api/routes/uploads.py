"""Nightscout's v1 writes: uploaders (xDrip+, Juggluco, AndroidAPS, Loop) push here.

``POST /api/v1/{entries,treatments,devicestatus}`` take an object or an array and answer one
document per document sent, with its ``_id``, as Nightscout does (Loop waits for exactly that).
``PUT /api/v1/treatments[/{_id}]`` replaces a treatment, ``DELETE /api/v1/treatments/{_id}``
removes one. Every write needs the API secret (no anonymous writes, whatever
``CONNECT_HTTP_READABLE`` says); a document that cannot be read is a 400 naming its index and
field, and then nothing of the request is written; a body over :data:`MAX_BODY_BYTES` is a 413.

Records are written by the daemon's own store writer in one transaction (see
:meth:`store.database.Store.persist_push`), so the outputs, checkpoints and alerts see them as
they see polled frames. Under ``serve`` (which only reads the store) writes answer 405.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import structlog
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from api.access import RequestAccess
from api.context import ApiContext, Context, Writer
from api.errors import ApiError, StoreUnavailable
from api.openapi import ERROR_RESPONSES, ERROR_SCHEMA, SECURITY
from api.responses import json_response
from connect.errors import StoreError
from connect.pushed import DocumentError, Pushed, documents, parse_json, push_origin, read_documents
from connect.records import Collection, to_nightscout
from store.database import object_id
from store.values import PushKey

log = structlog.get_logger("api")

#: the largest body a write takes (a day of five-minute readings is about 70 kB)
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
OBJECT_ID_PATTERN: Final = r"^[0-9a-fA-F]{24}$"

#: what a write may answer besides 200
WRITE_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    **ERROR_RESPONSES,
    400: {
        "description": "a document cannot be read (the description names its index and field); nothing written",
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    },
    404: {
        "description": "no treatment has this _id",
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    },
    405: {
        "description": "this API only reads the store (serve): writes go to the daemon's API",
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    },
    413: {"description": "the body is too large", "content": {"application/json": {"schema": ERROR_SCHEMA}}},
}

router = APIRouter()


def _writer(access: RequestAccess, context: ApiContext) -> Writer:
    """The daemon's writer, for a request that proved the secret; otherwise 401 (or 405 when
    this API only reads)."""
    if access.credentials_valid() is not True:
        raise ApiError(401, "Unauthorized", "Invalid/Missing")
    if context.writer is None:
        raise ApiError(
            405,
            "Method Not Allowed",
            "this API only reads the store (serve); writes are taken by the daemon's API (run)",
        )
    if context.store_failing():
        raise StoreUnavailable()
    return context.writer


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it grows past :data:`MAX_BODY_BYTES`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "Payload Too Large", f"the body is over {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "Payload Too Large", f"the body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def origin_of(request: Request) -> str:
    """The address the uploader sent this to (a proxy's forwarded one when it names it)."""
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip() or request.url.scheme
    host = request.headers.get("x-forwarded-host", "").split(",")[0].strip() or request.headers.get(
        "host", ""
    )
    return push_origin(f"{proto}://{host}")


async def _read(request: Request, collection: Collection, context: ApiContext) -> list[Pushed]:
    body = await read_body(request)
    try:
        return read_documents(collection, documents(parse_json(body)), now=context.clock())
    except DocumentError as exc:
        where = "the body" if exc.index < 0 else f"document {exc.index}"
        field = "" if exc.field.startswith("(") else f" field {exc.field}"
        raise ApiError(400, "Bad Request", f"{where}{field}: {exc.problem}") from None


async def _store(writer: Writer, request: Request, keys: list[PushKey]) -> list[dict[str, Any]]:
    """Write ``keys`` in one transaction; the stored documents, in the order sent."""
    try:
        result = await writer.astore.persist_push(origin_of(request), keys)
    except StoreError as exc:
        log.warning("push not stored", error=str(exc))
        raise StoreUnavailable() from None
    if sum(result.written.values()):
        writer.written()
    return [
        {"_id": object_id(ident), **to_nightscout(key.record), "identifier": ident}
        for key, ident in zip(keys, result.identifiers, strict=True)
    ]


def _post_endpoint(collection: Collection) -> Any:
    async def handler(request: Request, access: RequestAccess, context: Context) -> Response:
        writer = _writer(access, context)
        pushed = await _read(request, collection, context)
        keys = [
            PushKey(
                p.record,
                # entries dedupe on date and type, devicestatus is kept by device and time: only a
                # treatment's _id or identifier names the record it replaces
                object_id=p.object_id if collection == "treatments" else None,
                identifier=p.identifier if collection == "treatments" else None,
            )
            for p in pushed
        ]
        return json_response(await _store(writer, request, keys))

    return handler


for _collection in ("entries", "treatments", "devicestatus"):
    _handler = _post_endpoint(_collection)  # type: ignore[arg-type]
    for _i, _path in enumerate((f"/api/v1/{_collection}", f"/api/v1/{_collection}.json")):
        router.add_api_route(
            _path,
            _handler,
            methods=["POST"],
            summary=f"Upload {_collection} (an object or an array)",
            operation_id=f"api_v1_{_collection}_post{'_json' if _i else ''}",
            include_in_schema=_i == 0,
            responses={
                200: {"description": "the stored documents, one per document sent"},
                **ERROR_RESPONSES,
            },
            openapi_extra={"security": SECURITY},
        )


async def _put(request: Request, context: ApiContext, writer: Writer, oid: str | None) -> Response:
    pushed = await _read(request, "treatments", context)
    if len(pushed) != 1:
        raise ApiError(400, "Bad Request", "the body: expected one treatment")
    target = oid or pushed[0].object_id
    if target is None:
        raise ApiError(400, "Bad Request", "document 0 field _id: missing")
    key = PushKey(pushed[0].record, object_id=target.lower(), must_exist=True)
    try:
        (doc,) = await _store(writer, request, [key])
    except KeyError:
        raise ApiError(404, "Not Found", "no treatment has this _id") from None
    return json_response(doc)


@router.put(
    "/api/v1/treatments",
    summary="Replace the treatment named by the body's _id",
    operation_id="api_v1_treatments_put",
    responses={200: {"description": "the stored document"}, **WRITE_RESPONSES},
    openapi_extra={"security": SECURITY},
)
async def put_treatment(request: Request, access: RequestAccess, context: Context) -> Response:
    writer = _writer(access, context)
    return await _put(request, context, writer, None)


@router.put(
    "/api/v1/treatments/{oid}",
    summary="Replace the treatment with this _id",
    operation_id="api_v1_treatments_put_id",
    responses={200: {"description": "the stored document"}, **WRITE_RESPONSES},
    openapi_extra={"security": SECURITY},
)
async def put_treatment_by_id(
    request: Request,
    oid: Annotated[str, Path(pattern=OBJECT_ID_PATTERN)],
    access: RequestAccess,
    context: Context,
) -> Response:
    writer = _writer(access, context)
    return await _put(request, context, writer, oid)


@router.delete(
    "/api/v1/treatments/{oid}",
    summary="Remove the treatment with this _id",
    operation_id="api_v1_treatments_delete",
    responses={200: {"description": "how many were removed"}, **WRITE_RESPONSES},
    openapi_extra={"security": SECURITY},
)
async def delete_treatment(
    oid: Annotated[str, Path(pattern=OBJECT_ID_PATTERN)], access: RequestAccess, context: Context
) -> Response:
    writer = _writer(access, context)
    try:
        removed = await writer.astore.delete_pushed("treatments", oid.lower())
    except StoreError:
        raise StoreUnavailable() from None
    return json_response({"n": int(removed), "ok": 1})
