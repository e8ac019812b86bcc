"""A short store call made on the event loop never holds the loop waiting for a lock: with the
writer lock held by another connection it goes to a worker thread, waits there, and succeeds;
the process keeps running meanwhile, and the wait is no fault of the store."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from connect.records import Batch, Entry
from store import AsyncStore, Store
from store.aio import BRIEF_COMMITS, BRIEF_RECORDS

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


def _on_loop(astore: AsyncStore, call: Callable[[], Awaitable[object]]) -> bool:
    """Whether ``call`` ran on the loop's own thread (not handed to a store thread)."""
    threads: set[int] = set()
    store = astore.store
    real = store.persist_frame, store.save_status, store.checkpoints

    def spy(fn: Callable[..., object]) -> Callable[..., object]:
        def wrapped(*args: object, **kwargs: object) -> object:
            threads.add(threading.get_ident())
            return fn(*args, **kwargs)

        return wrapped

    store.persist_frame, store.save_status, store.checkpoints = (spy(f) for f in real)  # type: ignore[method-assign]
    try:
        trio.run(call)
    finally:
        store.persist_frame, store.save_status, store.checkpoints = real  # type: ignore[method-assign]
    return threads == {threading.get_ident()}


def _readings(start: int, count: int) -> Batch:
    return Batch.of(
        [Entry(type="sgv", date=start + i * 300_000, device="d", sgv=100 + i % 50) for i in range(count)]
    )


def test_a_polls_frame_its_checkpoints_and_the_status_are_written_on_the_loop(tmp_path: Path) -> None:
    store = _store(tmp_path)
    astore = AsyncStore(store)
    assert _on_loop(astore, lambda: astore.persist_frame("t", "entries", _readings(T0 + 300_000, 3)))
    assert _on_loop(astore, lambda: astore.checkpoints("t", "entries"))
    assert _on_loop(astore, lambda: astore.save_status("daemon", {"state": "ok"}))
    # a backfill's thousands of readings are not: the loop would stop for the whole write
    assert not _on_loop(
        astore, lambda: astore.persist_frame("t", "entries", _readings(T0 + 10**9, BRIEF_RECORDS + 1))
    )
    assert store.count("entries") == 1 + 3 + BRIEF_RECORDS + 1
    store.close()


def test_the_log_is_folded_back_even_when_every_write_is_brief(tmp_path: Path) -> None:
    """Commits on the loop skip the WAL checkpoint (the one step that syncs the disk); after
    BRIEF_COMMITS of them the next write goes to a thread, whose commit runs it."""
    store = _store(tmp_path)
    astore = AsyncStore(store)
    on_loop = [
        _on_loop(
            astore, lambda i=i: astore.persist_frame("t", "entries", _readings(T0 + (i + 1) * 300_000, 1))
        )  # type: ignore[misc]
        for i in range(2 * BRIEF_COMMITS + 2)
    ]
    off = [i for i, flag in enumerate(on_loop) if not flag]
    assert off == [BRIEF_COMMITS, 2 * BRIEF_COMMITS + 1]
    store.close()


def test_background_calls_leave_threads_to_frames(tmp_path: Path) -> None:
    """Alert passes of many accounts at once (work no frame waits on) hold at most the store's
    ``background_threads``: the others stay free for the next account's frame. PostgreSQL
    keeps half its threads (its pool's connections) for frames."""
    from store.postgres import PostgresStore

    assert PostgresStore.background_threads == PostgresStore.threads // 2

    class Kept(Store):
        threads = 4
        background_threads = 2

    stores = [Kept(tmp_path / f"{i}.db") for i in range(8)]
    busy = 0
    most = 0
    guard = threading.Lock()
    release = threading.Event()

    def slow() -> None:
        nonlocal busy, most
        with guard:
            busy += 1
            most = max(most, busy)
        release.wait(5)
        with guard:
            busy -= 1

    def count(store: Store) -> int:
        return store.count("entries")

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            for store in stores:
                nursery.start_soon(AsyncStore(store).call_background, slow)
            await trio.sleep(0.3)
            # a frame of another account still finds a thread at once
            with trio.fail_after(2):
                found = await AsyncStore(stores[0]).call(count, stores[0])
            release.set()
        return found

    assert trio.run(main) == 0
    assert most == 2
    for store in stores:
        store.close()
