"""Readers under WAL: the API keeps answering, from its own connections, while the daemon's
writer holds a long write transaction; it sees the last committed state, then the new rows once
they commit. The reader can never write."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
import trio

from connect.records import Entry
from store import Store
from store.database import UPSERT_SQL, row_for
from store.reader import StoreReader
from tests.test_api_support import make_app, populate


def bulk(n: int, start: int) -> list[Entry]:
    return [Entry(type="sgv", date=start + i * 1000, device="bulk", sgv=40 + i % 300) for i in range(n)]


async def test_reads_never_wait_for_a_long_write_transaction(tmp_path: Path):
    path = tmp_path / "store.db"
    info = populate(path, count=300)
    committed = 302

    writer = Store(path)
    app, reader = make_app(path, secret=None, readable=True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        # the daemon's writer: BEGIN IMMEDIATE, a big frame, and the transaction left open
        writer.conn.execute("BEGIN IMMEDIATE")
        rows = [row_for(e, "bulk", 10_000 + i) for i, e in enumerate(bulk(50_000, info["end"] + 60_000))]
        writer.conn.executemany(UPSERT_SQL["entries"], rows)
        try:
            # a hang here would be the bug; the deadline turns it into a failure, not a stuck run
            with trio.fail_after(30):
                for _ in range(3):
                    everything = await client.get("/api/v1/entries.json?count=0")
                    assert everything.status_code == 200
                    assert len(everything.json()) == committed  # the open transaction is invisible
                    assert (await client.get("/api/v1/entries/current.json")).json()[0]["device"] == "share2"
                    status = (await client.get("/api/connect/status")).json()
                    assert status["store"]["collections"]["entries"]["records"] == committed
                    assert (await client.get("/readyz")).status_code == 200
                    assert (await client.get("/metrics")).status_code == 200
                    assert (await client.get("/")).status_code == 200
                    await trio.sleep(0)
        finally:
            writer.conn.execute("COMMIT")
        after = (await client.get("/api/v1/entries.json?count=0")).json()
        assert len(after) == 10_000  # the count cap; the new rows are there
        assert (await client.get("/api/v1/entries/current.json")).json()[0]["device"] == "bulk"
        status = (await client.get("/api/connect/status")).json()
        assert status["store"]["collections"]["entries"]["records"] == committed + 50_000
    writer.close()
    reader.close()


async def test_reads_run_off_the_event_loop_while_frames_commit(tmp_path: Path):
    """A writer thread commits frame after frame while many concurrent reads go on."""
    path = tmp_path / "store.db"
    info = populate(path, count=50)
    app, reader = make_app(path, secret=None, readable=True)
    done = trio.Event()
    counts: list[int] = []

    def write_frames() -> None:
        store = Store(path)
        start = info["end"] + 60_000
        for frame in range(30):
            store.upsert(bulk(288, start + frame * 288_000), source="bulk")
        store.close()

    async def writer() -> None:
        await trio.to_thread.run_sync(write_frames)
        done.set()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:

        async def read_until_done() -> None:
            while not done.is_set():
                response = await client.get("/api/v1/entries.json?count=0")
                assert response.status_code == 200
                counts.append(len(response.json()))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                for _ in range(3):
                    nursery.start_soon(read_until_done)
    reader.close()
    # every read saw a whole number of frames: 52 to begin with, then 288 more per commit
    assert counts and all((n - 52) % 288 == 0 for n in counts)
    assert min(counts) >= 52


def test_the_reader_cannot_write(tmp_path: Path):
    path = tmp_path / "store.db"
    populate(path, count=5)
    reader = StoreReader(path)
    with reader.connection() as conn, pytest.raises(sqlite3.OperationalError):
        conn.execute("DELETE FROM entries")
    assert len(reader.docs("entries", limit=100)) == 7
    reader.close()


def test_the_reader_refuses_a_private_memory_store():
    from connect.errors import ConfigError

    with pytest.raises(ConfigError):
        StoreReader(":memory:")
