"""API throughput: ``/api/v1/entries.json?count=288`` over 90 days of readings, served by
hypercorn's trio worker, beside a bare ASGI app answering the same bytes on the same server in
the same run (the ceiling: what hypercorn and the client cost without us).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from api.app import create_app
from api.server import serve
from api.settings import ApiSettings
from bench.timing import Figures
from connect.records import DIRECTIONS, Entry
from store.database import Store
from store.reader import StoreReader

PATH = "/api/v1/entries.json?count=288"
FIVE_MIN = 300_000
DIRECTION_NAMES = sorted(DIRECTIONS)

ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


def bare_app(body: bytes) -> ASGIApp:
    """The smallest ASGI app that answers every request with ``body`` as JSON."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(
        scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def build_store(path: Path, days: int, end_ms: int) -> int:
    """``days`` of five-minute readings (288 a day) ending at ``end_ms``."""
    count = days * 288
    entries = [
        Entry(
            type="sgv",
            date=end_ms - (count - 1 - i) * FIVE_MIN,
            device="bench",
            sgv=40 + (i * 7) % 300,
            direction=DIRECTION_NAMES[i % len(DIRECTION_NAMES)],
        )
        for i in range(count)
    ]
    store = Store(path)
    for i in range(0, count, 2880):
        store.upsert(entries[i : i + 2880], source="bench")
    store.close()
    return count


async def _rate(client: httpx.AsyncClient, url: str, requests: int, concurrency: int) -> float:
    """Requests per second for ``requests`` GETs spread over ``concurrency`` client loops."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            response = await client.get(url)
            if response.status_code != 200:
                raise RuntimeError(f"benchmark request answered {response.status_code}")

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return requests / (time.perf_counter() - started)


async def bench_api_async(requests: int = 600, concurrency: int = 4, days: int = 90) -> Figures:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        build_store(path, days, end_ms=int(time.time() * 1000))
        reader = StoreReader(path)
        app = create_app(
            reader, lambda: {"sources": [], "outputs": []}, ApiSettings(http_secret=None, http_readable=True)
        )
        try:
            async with trio.open_nursery() as nursery:
                (ours_url,) = await nursery.start(serve, app, "127.0.0.1:0")
                limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
                async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
                    body = (await client.get(ours_url + PATH)).content
                    (ceiling_url,) = await nursery.start(serve, bare_app(body), "127.0.0.1:0")
                    # warm both (connections, caches, the thread pool), then measure each twice,
                    # alternating, and keep the better figure of each
                    await _rate(client, ours_url + PATH, 40, concurrency)
                    await _rate(client, ceiling_url + PATH, 40, concurrency)
                    ours = ceiling = 0.0
                    for _ in range(2):
                        ours = max(ours, await _rate(client, ours_url + PATH, requests // 2, concurrency))
                        ceiling = max(
                            ceiling, await _rate(client, ceiling_url + PATH, requests // 2, concurrency)
                        )
                nursery.cancel_scope.cancel()
        finally:
            reader.close()
    return {"ours": ours, "ceiling": ceiling, "ratio": ours / ceiling}


def bench_api(requests: int = 600, concurrency: int = 4, days: int = 90) -> Figures:
    """Requests/s of ``entries.json?count=288`` (ours, the bare-app ceiling, and their ratio)."""
    result: Figures = trio.run(bench_api_async, requests, concurrency, days)
    return result
