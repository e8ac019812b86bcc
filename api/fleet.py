"""One API over many accounts: ``/a/{account}/…`` answered by that account's own app, and the
operator's ``GET /api/connect/fleet``.

This module only routes: which app answers an account (built by :func:`api.create_app` over the
account's rows, with the account's own secret) is decided by the ``lookup`` it is given, so it
knows nothing of where accounts come from. An account's app sees the request with its
``root_path`` set to ``/a/{account}``: its routes match as they do at ``/``, and what it builds
from the request's address (redirects, the documents' ``servers``) stays under the prefix.

The operator's secret opens ``/api/connect/fleet`` only: it reads no account's data, and no
account's secret opens the fleet's table.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette._utils import get_route_path
from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import Authenticator
from api.responses import JSON, error_body
from connect.errors import StoreError

#: an account's app for its name, None when there is no such account (raises StoreError when
#: the accounts cannot be looked up)
AccountLookup = Callable[[str], Awaitable[ASGIApp | None]]
#: the rows of ``nightscout-connect fleet --json``
FleetRows = Callable[[], Awaitable[list[dict[str, Any]]]]

PREFIX: Final = "/a/"
FLEET_PATH: Final = "/api/connect/fleet"
OPERATOR_OFF: Final = (
    "the fleet's table is off: set CONNECT_FLEET_OPERATOR_SECRET (12+ characters) and send it as "
    "api-secret (its SHA-1), ?token= or Authorization: Bearer"
)


class FleetDispatcher:
    """The ASGI app of ``serve --fleet``."""

    def __init__(self, lookup: AccountLookup, rows: FleetRows, operator: Authenticator) -> None:
        self.lookup = lookup
        self.rows = rows
        self.operator = operator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here
        head = scope["method"] == "HEAD"
        path = get_route_path(scope)
        if path.startswith(PREFIX):
            name = path[len(PREFIX) :].partition("/")[0]
            if name:
                await self._account(name, scope, receive, send)
                return
        if path == FLEET_PATH:
            await self._fleet(scope, send)
        elif path == "/healthz":
            await _send(send, 200, json.dumps({"status": "ok"}).encode(), head=head)
        else:
            await _send(
                send, 404, error_body(404, "Not Found", "accounts are under /a/{account}/"), head=head
            )

    async def _account(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            app = await self.lookup(name)
        except StoreError:
            await _send(send, 503, error_body(503, "Service Unavailable", "the accounts cannot be read now"))
            return
        if app is None:
            await _send(send, 404, error_body(404, "Not Found", "no such account"))
            return
        # the account's app matches its routes below root_path, and `path` keeps the whole
        # address (the ASGI rule), so the links and redirects it builds keep the prefix
        child = dict(scope)
        child["root_path"] = scope.get("root_path", "") + PREFIX + name
        await app(child, receive, send)

    async def _fleet(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, error_body(405, "Method Not Allowed"), allow="GET, HEAD")
            return
        headers = Headers(scope=scope)
        query = QueryParams(scope.get("query_string", b""))
        if self.operator.reads_off:
            await _send(send, 401, error_body(401, "Unauthorized", OPERATOR_OFF))
            return
        if self.operator.credentials_valid(headers, query) is not True:
            await _send(send, 401, error_body(401, "Unauthorized", "Invalid/Missing"))
            return
        try:
            rows = await self.rows()
        except StoreError:
            await _send(send, 503, error_body(503, "Service Unavailable", "the accounts cannot be read now"))
            return
        body = json.dumps(rows, ensure_ascii=False).encode("utf-8")
        await _send(send, 200, body, head=scope["method"] == "HEAD")


async def _send(
    send: Send, status: int, body: bytes, *, allow: str | None = None, head: bool = False
) -> None:
    headers = [
        (b"content-type", JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        # the operator's table and an account's refusal are never kept by a cache in between
        (b"cache-control", b"no-store"),
    ]
    if allow is not None:
        headers.append((b"allow", allow.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop: the accounts' apps are built on their first request."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def refusal(status: int, description: str) -> ASGIApp:
    """An app that answers every request of an account with one error (an account whose settings
    cannot be served): nothing of the account's data, no secret needed to learn why."""
    body = error_body(status, "Unauthorized" if status == 401 else "Service Unavailable", description)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await _send(send, status, body)

    return app


__all__ = ["FLEET_PATH", "PREFIX", "AccountLookup", "FleetDispatcher", "FleetRows", "refusal"]
