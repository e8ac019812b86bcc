"""Every failure's answer: Nightscout's error body, and nothing a client sent quoted back."""

from __future__ import annotations

import json
import sqlite3

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.auth import READS_OFF_BODY, READS_OFF_HINT, UNAUTHORIZED_BODY
from api.context import context_of
from api.query import QueryError
from api.responses import JSON, error_body
from connect.errors import StoreError
from connect.redact import describe_error, redact_text

log = structlog.get_logger("api")


class ApiError(Exception):
    """An answer other than 200, with Nightscout's error body."""

    def __init__(self, status: int, message: str, description: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.description = description


class V3Error(ApiError):
    """An API v3 answer other than 200: ``{"status", "message"?}``, its 401 included."""


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.status == 401 and isinstance(exc, V3Error):
        hint = READS_OFF_HINT if context_of(request).auth.reads_off else None
        return Response(error_body(401, exc.message, hint), status_code=401, media_type=JSON)
    if exc.status == 401:
        # with reading off, no credential can help: say what setting turns it on
        body = READS_OFF_BODY if context_of(request).auth.reads_off else UNAUTHORIZED_BODY
        return Response(body, status_code=401, media_type=JSON)
    if exc.message == "" and isinstance(exc, V3Error):
        # v3's answer for a document that is not there: the status alone
        return Response(json.dumps({"status": exc.status}).encode(), status_code=exc.status, media_type=JSON)
    return Response(
        error_body(exc.status, exc.message, exc.description), status_code=exc.status, media_type=JSON
    )


async def on_query_error(_request: Request, exc: Exception) -> Response:
    # a parameter's name may be anything a client typed, the secret included
    return Response(error_body(400, "Bad Request", redact_text(str(exc))), status_code=400, media_type=JSON)


async def on_validation_error(_request: Request, _exc: Exception) -> Response:
    # FastAPI's default body repeats the input, which may hold a secret
    return Response(error_body(400, "Bad Request", "invalid request"), status_code=400, media_type=JSON)


async def on_http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    phrases = {404: "Not Found", 405: "Method Not Allowed"}
    return Response(
        error_body(exc.status_code, phrases.get(exc.status_code, "Error")),
        status_code=exc.status_code,
        media_type=JSON,
        headers=exc.headers,
    )


async def on_store_error(_request: Request, exc: Exception) -> Response:
    log.warning("store unavailable", error=describe_error(exc))
    return Response(
        error_body(503, "Service Unavailable", "the store cannot be read right now"),
        status_code=503,
        media_type=JSON,
        headers={"retry-after": "5"},
    )


class StoreUnavailable(Exception):
    """The daemon cannot write its store right now (a full disk, an I/O error)."""


async def on_store_unavailable(_request: Request, _exc: Exception) -> Response:
    return Response(
        error_body(
            503, "Service Unavailable", "the store is unavailable right now: the daemon cannot write it"
        ),
        status_code=503,
        media_type=JSON,
        headers={"retry-after": "30"},
    )


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(QueryError, on_query_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(sqlite3.Error, on_store_error)
    # a reader's fault of a PostgreSQL store (a lost server, no free connection)
    app.add_exception_handler(StoreError, on_store_error)
    app.add_exception_handler(StoreUnavailable, on_store_unavailable)
