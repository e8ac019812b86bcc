"""Exports of a time range (``/api/connect/export.csv``, ``.ndjson``) and the newest records per
device (``/api/connect/latest``, ``/api/connect/devices/{device}/latest``): what the systems this
project absorbs offered beside Nightscout's reads.

An export streams: the store is read a page at a time while the answer is being sent, so a
year of readings never sits in memory. Its range is inclusive at both ends (a day as ``to``
includes all of that day, UTC). The latest reads serve documents as the v1 reads do.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from api.access import RequestAccess
from api.cache import Rendered, matches, not_modified, request_key
from api.context import Context
from api.openapi import ERROR_RESPONSES, NOT_MODIFIED, SECURITY, UNROUTABLE, export_parameters
from api.query import QueryError, ReadQuery, parse_count
from api.reads import read_body, read_texts
from api.responses import JSON
from connect.records import COLLECTIONS, Collection
from store.export import (
    BOUND_PATTERN,
    DAY_MS,
    EARLIEST,
    LATEST,
    MEDIA_TYPES,
    Format,
    devices,
    export_chunks,
    time_bound,
)
from store.values import SQLITE_INT_MAX, Filter

#: the API takes exactly what its OpenAPI document says an export bound may be
BOUND = re.compile(BOUND_PATTERN)

router = APIRouter()

TRUE: Final = frozenset({"true", "1", "yes", "on"})
FALSE: Final = frozenset({"false", "0", "no", "off"})
MINUTE_MS: Final = 60_000

_LATEST_DOCS: Final[dict[str, Any]] = {
    "type": "array",
    "items": {"type": "object", "required": ["_id", "device", "date"]},
}
_COLLECTION_PARAM: Final = export_parameters(COLLECTIONS)[0]


def _collection(params: Mapping[str, str]) -> Collection:
    name = params.get("collection", "entries")
    for collection in COLLECTIONS:
        if collection == name:
            return collection
    raise QueryError(f"collection must be one of {', '.join(COLLECTIONS)}")


def _bound(params: Mapping[str, str], name: str, *, end: bool) -> int:
    given = params.get(name)
    if given is None or given == "":
        return LATEST if end else EARLIEST
    if not BOUND.match(given):
        raise QueryError(f"{name}: expected a day (2024-01-31), an ISO-8601 time or epoch milliseconds")
    try:
        return time_bound(given, end=end)
    except ValueError as exc:
        raise QueryError(f"{name}: {exc}") from None


def _flag(params: Mapping[str, str], name: str) -> bool:
    given = params.get(name)
    if given is None:
        return False
    if given.strip().lower() in TRUE:
        return True
    if given.strip().lower() in FALSE:
        return False
    raise QueryError(f"{name} must be true or false")


def _export(request: Request, access: RequestAccess, context: Context, fmt: Format) -> Response:
    access.require_read()
    params = request.query_params
    collection = _collection(params)
    since, until = _bound(params, "from", end=False), _bound(params, "to", end=True)
    # the body follows from the query and the store: its ETag is the store's revision
    etag = context.cache.etag(context.reader.revision())
    if matches(request.headers.get("if-none-match"), etag):
        return not_modified(etag)
    filename = f"{collection}.{fmt}"
    return StreamingResponse(
        export_chunks(context.reader, collection, fmt, since, until),
        media_type=MEDIA_TYPES[fmt],
        headers={"ETag": etag, "Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _export_responses(media_type: str, what: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {"description": what, "content": {media_type: {"schema": {"type": "string"}}}},
        **NOT_MODIFIED,
        **ERROR_RESPONSES,
    }


@router.get(
    "/api/connect/export.csv",
    summary="Records of a time range (both ends included), oldest first, as CSV, streamed",
    responses=_export_responses("text/csv", "a header line, then a line per record"),
    openapi_extra={"parameters": export_parameters(COLLECTIONS), "security": SECURITY},
)
def export_csv(request: Request, access: RequestAccess, context: Context) -> Response:
    return _export(request, access, context, "csv")


@router.get(
    "/api/connect/export.ndjson",
    summary="Records of a time range (both ends included), oldest first, a JSON document per line, streamed",
    responses=_export_responses("application/x-ndjson", "a stored document per line"),
    openapi_extra={"parameters": export_parameters(COLLECTIONS), "security": SECURITY},
)
def export_ndjson(request: Request, access: RequestAccess, context: Context) -> Response:
    return _export(request, access, context, "ndjson")


@router.get(
    "/api/connect/latest",
    summary="The newest record of each device, newest first (silent devices left out unless all=true)",
    responses={
        200: {"description": "one document per device", "content": {JSON: {"schema": _LATEST_DOCS}}},
        **NOT_MODIFIED,
        **ERROR_RESPONSES,
    },
    openapi_extra={
        "parameters": [
            _COLLECTION_PARAM,
            {
                "name": "all",
                "in": "query",
                "required": False,
                "description": "true: devices silent for longer than CONNECT_HIDE_INACTIVE_AFTER_DAYS too",
                "schema": {"type": "boolean"},
            },
        ],
        "security": SECURITY,
    },
)
def latest(request: Request, access: RequestAccess, context: Context) -> Response:
    access.require_read()
    collection = _collection(request.query_params)
    days = context.settings.hide_inactive_after_days
    hiding = days > 0 and not _flag(request.query_params, "all")
    now = context.clock()
    # which devices count as silent moves with the clock: such an answer is kept a minute at most
    minute = now // MINUTE_MS if hiding else None

    def render() -> Rendered:
        silent_before = now - int(days * DAY_MS)
        texts: list[str] = []
        for device, newest in devices(context.reader, collection):
            if hiding and newest < silent_before:
                continue
            query = ReadQuery(collection=collection, filters=(Filter("device", "=", device),), limit=1)
            texts.extend(read_texts(context.reader, query))
        return Rendered(("[" + ",".join(texts) + "]").encode("utf-8"))

    extra = "" if minute is None else f"-{minute}"
    return context.respond(request, render, key=request_key(request, minute), etag_extra=extra)


@router.get(
    "/api/connect/devices/{device:path}/latest",
    summary="A device's newest records, newest first",
    responses={
        200: {"description": "the device's newest documents", "content": {JSON: {"schema": _LATEST_DOCS}}},
        **NOT_MODIFIED,
        **ERROR_RESPONSES,
        **UNROUTABLE,
    },
    openapi_extra={
        "parameters": [
            _COLLECTION_PARAM,
            {
                "name": "count",
                "in": "query",
                "required": False,
                "description": "how many (default 1; 0 or more than 10000 means 10000)",
                "schema": {"type": "integer", "minimum": 0, "maximum": SQLITE_INT_MAX},
            },
        ],
        "security": SECURITY,
    },
)
def device_latest(request: Request, device: str, access: RequestAccess, context: Context) -> Response:
    access.require_read()
    collection = _collection(request.query_params)
    count = parse_count(request.query_params.get("count"), 1)
    query = ReadQuery(collection=collection, filters=(Filter("device", "=", device),), limit=count)
    return context.respond(request, lambda: Rendered(read_body(context.reader, query)))
