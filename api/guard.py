"""The outermost layer of the app: no exception reaches the server."""

from __future__ import annotations

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.responses import JSON, error_body
from connect.httpkit import INSTANCE_ID, LOOP_HEADER
from connect.redact import describe_error, redact_text

log = structlog.get_logger("api")


class GuardMiddleware:
    """The last line: any exception becomes a bare 500 with no detail, logged without secrets.

    Every known failure has its own answer (400, 401, 503); this only catches bugs, and keeps
    tracebacks (which may quote a request) out of the server's error log.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.error(
                "request failed", path=redact_text(str(scope.get("path", ""))), error=describe_error(exc)
            )
            if started:
                raise
            body = error_body(500, "Internal Server Error")
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", JSON.encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


class LoopGuardMiddleware:
    """Refuses (508 Loop Detected) a request sent by a webhook of this very process: a hook that
    points back at our own API would otherwise turn every event into a request into another
    event. Settings refuse such a hook at start; this catches the ones a name or a proxy hides."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._marker = INSTANCE_ID.encode()
        self._header = LOOP_HEADER.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(
            name.lower() == self._header and value == self._marker for name, value in scope.get("headers", ())
        ):
            log.warning("request from our own webhook refused", path=redact_text(str(scope.get("path", ""))))
            body = error_body(
                508, "Loop Detected", "this request came from one of this daemon's own webhooks"
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 508,
                    "headers": [
                        (b"content-type", JSON.encode()),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
