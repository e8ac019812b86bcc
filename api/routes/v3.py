"""Nightscout's API v3 reads (what today's AndroidAPS, xDrip+ and Nightscout clients use), and
the v2 token exchange that gives them a JWT.

``/api/v3/version`` is public; every other v3 route takes a token (``Authorization: Bearer`` with
a JWT or the secret, or ``?token=``) unless reading is open. Answers have v3's shape,
``{"status": 200, "result": …}``; documents carry ``identifier``, ``srvCreated``,
``srvModified``, ``utcOffset`` and ``isValid`` and no ``_id``. ``food`` and ``settings`` are
collections v3 knows and the store does not keep: they answer as empty ones.

Searches, single documents and histories are rendered once per store revision; a history's
``ETag`` is v3's ``W/"<newest srvModified>"`` (clients read their next starting point from it).
"""

from __future__ import annotations

import sqlite3
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api import v3
from api.access import RequestAccess
from api.cache import Rendered
from api.context import Context
from api.errors import ApiError, V3Error
from api.openapi import (
    AUTHORIZATION_SCHEMA,
    ERROR_RESPONSES,
    NOT_MODIFIED,
    UNROUTABLE,
    V3_DOCUMENTS,
    V3_ERRORS,
    V3_LAST_MODIFIED_RESULT,
    V3_ONE,
    V3_SECURITY,
    V3_STATUS_RESULT,
    V3_VERSION_RESULT,
    v3_collection_parameter,
    v3_common_parameters,
    v3_result,
    v3_search_parameters,
)
from api.responses import JSON, json_response
from api.routes.nightscout import NIGHTSCOUT_VERSION

router = APIRouter()

#: what a valid token may do with each collection (v3's "crud" letters): everything on the
#: daemon's API, read only under ``serve``; food and settings are not kept, so only read
PERMISSIONS: Final = "crud"
READ_ONLY: Final = "r"
_COLLECTION = v3_collection_parameter(v3.V3_COLLECTIONS)


def _version_info(now: int) -> dict[str, object]:
    return {
        "version": NIGHTSCOUT_VERSION,
        "apiVersion": v3.API_VERSION,
        "srvDate": now,
        "storage": {"storage": "sqlite", "version": sqlite3.sqlite_version},
    }


@router.get(
    "/api/v2/authorization/request/{token:path}",
    summary="A JWT for API v3, in exchange for the secret (or a JWT still valid)",
    responses={
        200: {
            "description": "the token and what it grants",
            "content": {JSON: {"schema": AUTHORIZATION_SCHEMA}},
        },
        401: ERROR_RESPONSES[401],
        **UNROUTABLE,
    },
)
def authorization_request(token: str, access: RequestAccess) -> Response:
    issued = access.issue_token(token)
    if issued is None:
        raise ApiError(401, "Unauthorized", "Invalid/Missing")
    return json_response(issued)


@router.get(
    "/api/v3/version",
    summary="v3 VERSION: the Nightscout release and API version followed, and the storage",
    responses={200: {"description": "versions", "content": {JSON: {"schema": v3_result(V3_VERSION_RESULT)}}}},
)
def version(context: Context) -> Response:
    # public, as in Nightscout
    return Response(v3.envelope(_version_info(context.clock())), media_type=JSON)


@router.get(
    "/api/v3/status",
    summary="v3 STATUS: the versions, and what the token may do with each collection",
    responses={
        200: {"description": "status", "content": {JSON: {"schema": v3_result(V3_STATUS_RESULT)}}},
        401: V3_ERRORS[401],
    },
    openapi_extra={"security": V3_SECURITY},
)
def status(access: RequestAccess, context: Context) -> Response:
    access.require_read_v3()
    permissions = {
        name: PERMISSIONS if context.writer is not None and v3.stored(name) is not None else READ_ONLY
        for name in v3.V3_COLLECTIONS
    }
    info = {**_version_info(context.clock()), "apiPermissions": permissions}
    return Response(v3.envelope(info), media_type=JSON)


@router.get(
    "/api/v3/lastModified",
    summary="v3 LAST MODIFIED: the time of the last change, per collection",
    responses={
        200: {
            "description": "server time and last changes",
            "content": {JSON: {"schema": v3_result(V3_LAST_MODIFIED_RESULT)}},
        },
        401: V3_ERRORS[401],
        503: V3_ERRORS[503],
    },
    openapi_extra={"security": V3_SECURITY},
)
def last_modified(access: RequestAccess, context: Context) -> Response:
    access.require_read_v3()
    collections = context.reader.last_modified()
    result = {"srvDate": context.clock(), "collections": collections}
    return Response(v3.envelope(result), media_type=JSON)


def _collection(request: Request, access: RequestAccess) -> str:
    name = v3.collection_of(request.path_params["collection"])
    access.require_read_v3()
    return name


@router.get(
    "/api/v3/{collection}",
    summary="v3 SEARCH: documents by filters (field$op=value), sorted and paged",
    responses={
        200: {"description": "the matching documents", "content": {JSON: {"schema": V3_DOCUMENTS}}},
        **NOT_MODIFIED,
        **V3_ERRORS,
    },
    openapi_extra={
        "parameters": [_COLLECTION, *v3_search_parameters(v3.MAX_LIMIT, v3.MAX_VALUES)],
        "security": V3_SECURITY,
    },
)
def search(request: Request, access: RequestAccess, context: Context) -> Response:
    name = _collection(request, access)
    params = request.query_params.multi_items()
    fields = v3.parse_fields(params)
    collection = v3.stored(name)
    # what v3 refuses is refused for an empty collection too
    query = v3.parse_search(collection or "entries", params)

    def render() -> Rendered:
        rows = context.reader.search(query) if collection is not None else []
        return Rendered(v3.envelope(v3.documents(name, rows, fields)))

    return context.respond(request, render)


def _history(request: Request, context: Context, name: str, since: int, *, inclusive: bool) -> Response:
    params = request.query_params.multi_items()
    limit = v3.parse_limit(params)
    fields = v3.parse_fields(params)

    collection = v3.stored(name)

    def render() -> Rendered:
        rows = (
            context.reader.history(collection, since, limit, inclusive=inclusive)
            if collection is not None
            else []
        )
        # v3's ETag is the newest srvModified served: clients resume from it. With nothing
        # newer, it is the time asked for, which still says where to resume
        newest = max((row.srv_modified for row in rows), default=since)
        headers = {"ETag": f'W/"{newest}"'}
        if rows:
            headers["Last-Modified"] = v3.http_date(newest)
        return Rendered(v3.envelope(v3.documents(name, rows, fields)), headers=headers)

    return context.respond(request, render)


_HISTORY_RESPONSES: Final = {
    200: {
        "description": 'documents changed since, oldest change first; ETag W/"<newest srvModified>"',
        "content": {JSON: {"schema": V3_DOCUMENTS}},
    },
    **NOT_MODIFIED,
    **V3_ERRORS,
}


@router.get(
    "/api/v3/{collection}/history",
    summary="v3 HISTORY: documents changed at or after the Last-Modified request header (to the second)",
    responses=_HISTORY_RESPONSES,
    openapi_extra={
        "parameters": [
            _COLLECTION,
            {
                "name": "Last-Modified",
                "in": "header",
                "required": True,
                "description": "an HTTP date",
                "schema": {"type": "string", "pattern": v3.HTTP_DATE_PATTERN},
            },
            *v3_common_parameters(v3.MAX_LIMIT),
        ],
        "security": V3_SECURITY,
    },
)
def history_by_header(request: Request, access: RequestAccess, context: Context) -> Response:
    name = _collection(request, access)
    since = v3.parse_http_date(request.headers.get("last-modified"))
    return _history(request, context, name, since, inclusive=True)


@router.get(
    "/api/v3/{collection}/history/{lastModified}",
    summary="v3 HISTORY: documents changed after a time (epoch ms), oldest change first",
    responses=_HISTORY_RESPONSES,
    openapi_extra={
        "parameters": [
            _COLLECTION,
            {
                "name": "lastModified",
                "in": "path",
                "required": True,
                "description": "epoch ms (or s); 0 for every document",
                "schema": {"type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999},
            },
            *v3_common_parameters(v3.MAX_LIMIT),
        ],
        "security": V3_SECURITY,
    },
)
def history(request: Request, access: RequestAccess, context: Context) -> Response:
    name = _collection(request, access)
    since = v3.parse_last_modified(request.path_params["lastModified"])
    return _history(request, context, name, since, inclusive=False)


@router.get(
    "/api/v3/{collection}/{identifier}",
    summary="v3 READ: one document by its identifier (or the _id the v1 reads serve)",
    responses={
        200: {"description": "the document", "content": {JSON: {"schema": V3_ONE}}},
        **NOT_MODIFIED,
        **V3_ERRORS,
    },
    openapi_extra={
        "parameters": [
            _COLLECTION,
            {"name": "identifier", "in": "path", "required": True, "schema": {"type": "string"}},
            v3_common_parameters(v3.MAX_LIMIT)[1],
        ],
        "security": V3_SECURITY,
    },
)
def read(request: Request, access: RequestAccess, context: Context) -> Response:
    name = _collection(request, access)
    identifier = request.path_params["identifier"]
    fields = v3.parse_fields(request.query_params.multi_items())

    collection = v3.stored(name)

    def render() -> Rendered:
        row = context.reader.one(collection, identifier) if collection is not None else None
        if row is None:
            raise V3Error(404, "")
        if not row.valid:
            raise V3Error(410, "")  # deleted: v3's READ says it is gone
        return Rendered(
            v3.envelope(v3.document(name, row, fields)),
            headers={"Last-Modified": v3.http_date(row.srv_modified)},
        )

    return context.respond(request, render)
