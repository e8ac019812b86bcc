"""Answers that depend on the store alone, rendered once per store revision.

A read of stored documents is a function of its path, its query and what the store holds. The
store's revision (:meth:`store.reader.StoreReader.revision`, one indexed row) grows with every
write, so a rendered body is kept under (path, query, revision) and served again until the
store changes; the revision is also the answer's ``ETag``, and a request whose ``If-None-Match``
names it gets 304 with no body. The ETag carries a tag of this app instance as well: after a
restart (perhaps a newer version that renders differently, or another store file) no client
is told that what it kept still holds.

Credentials are judged before any of this, and left out of the key (the body does not depend on
them).
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Final

import attrs
from fastapi import Request
from fastapi.responses import Response

from api.responses import JSON

#: query parameters that carry credentials: not part of what is asked
CREDENTIAL_PARAMS: Final = frozenset({"token", "secret"})


@attrs.frozen
class Rendered:
    """A body ready to send, with its media type and headers (an ``ETag`` of its own, too)."""

    body: bytes
    media_type: str = JSON
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class _Kept:
    revision: int
    etag: str
    rendered: Rendered


class BodyCache:
    """A small LRU of rendered bodies, bounded in entries and in bytes; thread-safe."""

    def __init__(self, *, entries: int = 256, total_bytes: int = 16 << 20, body_bytes: int = 4 << 20) -> None:
        self.entries = entries
        self.total_bytes = total_bytes
        self.body_bytes = body_bytes
        #: this app instance, in every ETag it gives
        self.instance = secrets.token_hex(4)
        self._kept: OrderedDict[Hashable, _Kept] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.renders = 0

    def etag(self, revision: int, extra: str = "") -> str:
        return f'"{revision}-{self.instance}{extra}"'

    def get(self, key: Hashable, revision: int) -> _Kept | None:
        with self._lock:
            kept = self._kept.get(key)
            if kept is None or kept.revision != revision:
                return None
            self._kept.move_to_end(key)
            return kept

    def put(self, key: Hashable, kept: _Kept) -> None:
        size = len(kept.rendered.body)
        with self._lock:
            self.renders += 1
            old = self._kept.pop(key, None)
            if old is not None:
                self._bytes -= len(old.rendered.body)
            if size > self.body_bytes:
                return
            self._kept[key] = kept
            self._bytes += size
            while len(self._kept) > self.entries or self._bytes > self.total_bytes:
                _, dropped = self._kept.popitem(last=False)
                self._bytes -= len(dropped.rendered.body)


def request_key(request: Request, *extra: Hashable) -> tuple[Hashable, ...]:
    """What a request asks: its path and its query (credentials left out), in order."""
    query = tuple((k, v) for k, v in request.query_params.multi_items() if k not in CREDENTIAL_PARAMS)
    return (request.url.path, query, *extra)


def matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110's weak comparison of ``If-None-Match`` with the answer's ``ETag``."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))


def not_modified(etag: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status_code=304, headers={**(headers or {}), "ETag": etag})


def cached(
    request: Request,
    cache: BodyCache,
    revision: int,
    render: Callable[[], Rendered],
    *,
    key: tuple[Hashable, ...] | None = None,
    etag_extra: str = "",
) -> Response:
    """The answer to ``request`` at ``revision``: kept, or rendered now and kept; 304 when the
    client's ``If-None-Match`` names it. A rendered ``ETag`` header replaces the revision's.

    Call it on a worker thread: rendering reads the store.
    """
    cache_key = key if key is not None else request_key(request)
    kept = cache.get(cache_key, revision)
    if kept is None:
        rendered = render()
        etag = rendered.headers.get("ETag") or cache.etag(revision, etag_extra)
        kept = _Kept(revision, etag, rendered)
        cache.put(cache_key, kept)
    headers = {k: v for k, v in kept.rendered.headers.items() if k != "ETag"}
    if matches(request.headers.get("if-none-match"), kept.etag):
        return not_modified(kept.etag, headers)
    return Response(
        kept.rendered.body,
        media_type=kept.rendered.media_type,
        headers={**headers, "ETag": kept.etag},
    )
