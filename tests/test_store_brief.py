"""A short store call made on the event loop never holds the loop waiting for a lock: with the
writer lock held by another connection it goes to a worker thread, waits there, and succeeds;
the process keeps running meanwhile, and the wait is no fault of the store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

from connect.records import Batch, Entry
from store import AsyncStore, Store

T0 = 1_700_000_000_000


def _store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "s.db")
    store.persist_frame("t", "entries", Batch.of([Entry(type="sgv", date=T0, device="d", sgv=100)]))
    return store


def test_a_locked_store_does_not_stop_the_loop(tmp_path: Path) -> None:
    store = _store(tmp_path)
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing: the writer lock is taken
    astore = AsyncStore(store)
    ticks = 0

    async def main() -> None:
        nonlocal ticks

        async def ticker() -> None:
            nonlocal ticks
            for _ in range(20):
                ticks += 1
                await trio.sleep(0.01)
            other.execute("COMMIT")  # the other writer finishes

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await astore.call_brief(store.advance, "out", "entries", 1)

    trio.run(main)
    assert ticks == 20  # the loop ran the whole time the call waited
    assert store.cursor("out", "entries") == 1
    assert astore.health["state"] == "ok"
    # the connection waits for locks again as every other call expects
    assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    other.close()
    store.close()


def test_a_free_store_answers_on_the_loop(tmp_path: Path) -> None:
    store = _store(tmp_path)
    astore = AsyncStore(store)

    async def main() -> list[int]:
        await astore.call_brief(store.advance, "out", "entries", 1)
        return [row.seq for row in await astore.call_brief(store.pending_rows, "out", "entries", 10)]

    assert trio.run(main) == []
    assert store.cursor("out", "entries") == 1
    assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    store.close()
