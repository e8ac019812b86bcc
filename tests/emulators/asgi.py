"""The ASGI plumbing every emulator shares: lifespan, the request body, a whole response."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def not_http(scope: dict[str, Any], receive: Receive, send: Send) -> bool:
    """Answer a lifespan conversation (servers such as hypercorn start one); True when ``scope``
    is not an HTTP request and the caller has nothing more to do."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return True
    return scope["type"] != "http"


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def respond(send: Send, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
    """One complete response; ``content-length`` is added here."""
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Answer(Exception):
    """An emulator's answer; raised from deep inside a handler (or returned) to end it."""

    def __init__(
        self, status: int, body: bytes | str, content_type: str = "application/json", **headers: str
    ):
        super().__init__(status)
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = {"content-type": content_type, **headers}


def json_answer(value: Any, status: int = 200, **headers: str) -> Answer:
    return Answer(status, json.dumps(value, separators=(",", ":")), **headers)
