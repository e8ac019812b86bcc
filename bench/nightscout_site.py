"""A Nightscout site for the benchmark, served in-process over ASGI: only the part of REST API
v1 the delivery and backfill figures use, each answered the way Nightscout answers it.

* ``GET /api/v1/verifyauth``: what the secret allows (the source asks once per session).
* ``GET /api/v1/entries.json`` with ``find[date][$gt|$gte|$lt|$lte]`` and ``count`` (default
  10, at most 1000): the newest ``count`` entries in that range, newest first.
* ``POST /api/v1/entries`` with a JSON array: each entry upserted on ``sysTime`` + ``type``
  (``sysTime`` and ``utcOffset`` set from ``date``); the answer is the stored documents.

Every request must carry ``api-secret: <sha1 hex of the secret>``, else 401. Anything else is a
404: no roles or tokens, no other collections, no faults.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from itertools import count
from typing import Any
from urllib.parse import parse_qsl

from connect.httpkit import sha1_hex
from connect.records import iso_from_ms

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_COUNT = 1000
DEFAULT_COUNT = 10
DIRECTIONS = ("Flat", "FortyFiveUp", "SingleUp", "Flat", "FortyFiveDown", "SingleDown")
RANGE_OPS = ("$gt", "$gte", "$lt", "$lte")


def sgv_docs(start_ms: int, total: int, *, every_ms: int = 300_000) -> list[dict[str, Any]]:
    """``total`` CGM entries from ``start_ms`` on, ``every_ms`` apart, as an uploader stores them."""
    docs = []
    for i in range(total):
        date = start_ms + i * every_ms
        iso = iso_from_ms(date)
        docs.append(
            {
                "type": "sgv", "sgv": 120 + (i * 7) % 90, "date": date, "dateString": iso,
                "sysTime": iso, "utcOffset": 0, "direction": DIRECTIONS[i % len(DIRECTIONS)],
                "device": "xDrip-DexcomG6",
            }
        )  # fmt: skip
    return docs


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


class _Refused(Exception):
    """A request this site answers with 400."""


class NightscoutSite:
    """One site's entries and the secret that reads and writes them; ``app`` is its ASGI app."""

    def __init__(self, api_secret: str) -> None:
        self._secret = sha1_hex(api_secret)
        self._ids = count(1)
        self._by_key: dict[tuple[str, str], dict[str, Any]] = {}
        # _by_date's answer, made again after a write
        self._sorted: list[dict[str, Any]] | None = None
        self._dates: list[int] = []

    @property
    def entry_count(self) -> int:
        return len(self._by_key)

    def seed_entries(self, docs: Iterable[Mapping[str, Any]]) -> None:
        """Store entries as given (with an ``_id`` each), as if uploaded earlier."""
        for doc in docs:
            stored = dict(doc)
            stored["_id"] = self._new_id()
            self._by_key[(str(stored["sysTime"]), str(stored["type"]))] = stored
        self._sorted = None

    def _new_id(self) -> str:
        return f"{0x65000000:08x}{0xBE7C4:06x}{next(self._ids):010x}"

    # --- ASGI ----------------------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise RuntimeError(f"the benchmark's Nightscout speaks HTTP only, not {scope['type']}")
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, answer = self._answer(scope, body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(answer)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    def _answer(self, scope: Scope, body: bytes) -> tuple[int, bytes]:
        method, path = scope["method"], scope["path"]
        headers = dict(scope["headers"])
        if headers.get(b"api-secret", b"").decode("latin-1") != self._secret:
            return 401, _dumps({"status": 401, "message": "Unauthorized"})
        if method == "GET" and path == "/api/v1/verifyauth":
            info = {"canRead": True, "canWrite": True, "isAdmin": True, "message": "OK",
                    "rolefound": "NOTFOUND", "permissions": "ROLE"}  # fmt: skip
            return 200, _dumps({"status": 200, "message": info})
        try:
            if method == "GET" and path in ("/api/v1/entries.json", "/api/v1/entries"):
                return 200, _dumps(self._read(parse_qsl(scope["query_string"].decode("latin-1"))))
            if method == "POST" and path in ("/api/v1/entries", "/api/v1/entries.json"):
                return 200, _dumps(self._create(body))
        except _Refused as refused:
            return 400, _dumps({"status": 400, "message": str(refused)})
        return 404, _dumps({"status": 404, "message": f"Cannot {method} {path}"})

    # --- entries -------------------------------------------------------------------------------

    def _read(self, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        wanted = DEFAULT_COUNT
        low, low_inclusive, high, high_inclusive = None, True, None, True
        for name, value in params:
            if name == "count" and value.strip().isdigit() and int(value) > 0:
                wanted = int(value)
            for op in RANGE_OPS:
                if name == f"find[date][{op}]":
                    if not value.strip().lstrip("-").isdigit():
                        raise _Refused(f"{name} must be epoch milliseconds")
                    bound = int(value)
                    if op in ("$gt", "$gte"):
                        low, low_inclusive = bound, op == "$gte"
                    else:
                        high, high_inclusive = bound, op == "$lte"
        entries, dates = self._by_date()
        start, stop = 0, len(dates)
        if low is not None:
            start = bisect.bisect_left(dates, low) if low_inclusive else bisect.bisect_right(dates, low)
        if high is not None:
            stop = bisect.bisect_right(dates, high) if high_inclusive else bisect.bisect_left(dates, high)
        newest_first = entries[start:stop][::-1]
        return newest_first[: min(wanted, MAX_COUNT)]

    def _by_date(self) -> tuple[list[dict[str, Any]], list[int]]:
        """The entries sorted by date (ties in insertion order), and their dates."""
        if self._sorted is None:
            self._sorted = sorted(self._by_key.values(), key=lambda doc: int(doc["date"]))
            self._dates = [int(doc["date"]) for doc in self._sorted]
        return self._sorted, self._dates

    def _create(self, body: bytes) -> list[dict[str, Any]]:
        try:
            docs = json.loads(body)
        except ValueError:
            raise _Refused("request body is not valid JSON") from None
        if isinstance(docs, dict):
            docs = [docs]
        if not isinstance(docs, list) or not all(
            isinstance(d, dict) and isinstance(d.get("date"), int) for d in docs
        ):
            raise _Refused("entries are JSON objects with an epoch-ms date")
        return [self._upsert(doc) for doc in docs]

    def _upsert(self, doc: dict[str, Any]) -> dict[str, Any]:
        date: int = doc["date"]
        doc = {k: v for k, v in doc.items() if k != "_id"}  # the server assigns the _id
        doc["sysTime"] = iso_from_ms(date)
        doc["utcOffset"] = 0
        key = (doc["sysTime"], str(doc.get("type")))
        existing = self._by_key.get(key)
        if existing is not None:
            existing.update(doc)  # Nightscout's $set on the matching entry
            stored = existing
        else:
            doc["_id"] = self._new_id()
            self._by_key[key] = stored = doc
        self._sorted = None
        return dict(stored)
