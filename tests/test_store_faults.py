"""A store that fails while the daemon runs (a full disk, an I/O error): each failure is a
typed ``StoreError`` in status, retried as the machines decide, nothing half written, nothing
lost; the daemon keeps running and the API says the store is unavailable meanwhile. And the
lock, in one process: one writer per store file."""

from __future__ import annotations

import itertools
import os
import random
import sqlite3
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from api import ApiSettings, create_app
from connect.assemble import assemble
from connect.builder import Builder
from connect.clock import VirtualClock
from connect.contract import Backoff, LastKnown
from connect.errors import StoreError, StoreUnusable
from connect.loading import load_settings
from connect.records import Batch, Entry
from connect.runtime import SourceRuntime
from outputs.delivery import Output
from store import AsyncStore, Store
from store.lock import lock_path
from store.reader import StoreReader
from store.schema import SCHEMA_VERSION
from tests.test_api_support import ApiClient, populate, snapshot

START = 1_750_000_000_000
FIVE_MIN = 300_000
FULL = "database or disk is full"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("CONNECT_") or key in ("API_SECRET", "BASE_URL"):
            monkeypatch.delenv(key)
    yield


def disk_full(store: Store) -> None:
    """SQLite's own SQLITE_FULL: the file may not grow by a page from now on."""
    (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
    store.conn.execute(f"PRAGMA max_page_count = {int(pages)}")


def disk_freed(store: Store) -> None:
    store.conn.execute("PRAGMA max_page_count = 1073741823")


class Vendor:
    """A reading every five minutes; every fetch noted."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.fetches: list[int] = []

    async def fetch(self, session: Any, last_known: LastKnown) -> list[int]:
        await trio.lowlevel.checkpoint()
        self.fetches.append(self.clock())
        first = (last_known.get("entries") // FIVE_MIN + 1) * FIVE_MIN
        return list(range(first, self.clock() + 1, FIVE_MIN))

    def transform(self, raw: list[int], last_known: LastKnown) -> Batch:
        return Batch.of(Entry(type="sgv", date=t, sgv=100 + (t // FIVE_MIN) % 50, device="cgm") for t in raw)


async def test_a_full_disk_fails_frames_with_a_store_error_and_loses_nothing(
    autojump_clock: trio.abc.Clock,
) -> None:
    clock = VirtualClock(START)
    vendor = Vendor(clock)
    builder = Builder("fake")
    builder.register_loop(
        "Entries",
        fetch=vendor.fetch,
        transform=vendor.transform,
        expected_interval=timedelta(minutes=5),
        frame_retries=2,
        frame_backoff=Backoff(base=2.0, cap=60.0, jitter=0.0),
        cycle_backoff=Backoff(base=30.0, cap=600.0, jitter=0.0),
    )
    store = Store(":memory:")
    astore = AsyncStore(store)
    rt = SourceRuntime(builder.build(), astore, clock=clock, backfill_days=0.25, rng=random.Random(7))
    # full from the start: a frame of six hours of readings needs pages the file cannot have
    disk_full(store)
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        await trio.sleep(3600)

        # every frame fails with the typed error, each retried, and the daemon runs on
        loop = rt.status()["loops"]["Entries"]
        assert loop["last_error"].startswith("StoreError: store ':memory:': " + FULL), loop
        assert loop["frames_failed"] >= 3 and loop["frames_ok"] == 0
        first_frame = [t for t in vendor.fetches if t < START + 30_000]  # before the cycle backs off
        assert len(first_frame) == 3  # one attempt and the two retries the loop allows
        assert len(vendor.fetches) == 3 * loop["frames_failed"]
        assert rt.poller.current_state_value == "running"
        assert astore.health["state"] == "failing" and FULL in astore.health["error"]
        # nothing of a rolled-back frame stays behind: no row, no checkpoint, no sequence number
        assert store.count("entries") == 0
        assert store.checkpoints("fake", "Entries") == {}
        assert store.conn.execute("SELECT value FROM sequence").fetchone() == (0,)

        disk_freed(store)
        freed_at = clock()
        await trio.sleep(3600)
        nursery.cancel_scope.cancel()

    loop = rt.status()["loops"]["Entries"]
    assert loop["frames_missing"] == 0 and loop["frames_ok"] >= 2
    assert astore.health["state"] == "ok"
    # every reading of the backfill window and after it, each stored once
    dates = [d for (d,) in store.conn.execute("SELECT date FROM entries ORDER BY date")]
    assert dates[0] <= freed_at - int(0.25 * 86_400_000) + 10 * FIVE_MIN
    assert dates == list(range(dates[0], dates[-1] + 1, FIVE_MIN))
    assert dates[-1] >= clock() - 2 * FIVE_MIN
    assert store.conn.execute("SELECT value FROM sequence").fetchone() == (len(dates),)
    assert store.checkpoints("fake", "Entries")["entries"] == dates[-1]


class RecordingOutput(Output):
    """Takes every entry it reads; the cursor moves only when the store says so."""

    received: list[str]

    def target(self) -> str:
        return "memory:"

    async def _deliver_once(self) -> None:
        self._new_pass()
        while chunk := await self.astore.pending(self.name, "entries", limit=50):
            self.received.extend(str(p.doc["identifier"]) for p in chunk)
            await self._accepted("entries", chunk)

    async def _serve(self) -> None:
        while True:
            await self._deliver_once()
            await self._idle()


class Faults:
    """Store methods that raise SQLite's disk-full error while switched on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, store: Store, *names: str) -> None:
        self.on: set[str] = set()
        self.raised = 0
        for name in names:
            monkeypatch.setattr(store, name, self._wrap(name, getattr(store, name)))

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if name in self.on:
                self.raised += 1
                raise sqlite3.OperationalError(FULL)
            return method(*args, **kwargs)

        return wrapper


async def test_a_failing_store_under_a_running_daemon_delays_and_never_doubles(
    autojump_clock: trio.abc.Clock, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, source = load_settings(["--backfill-days", "0.1", "--http-bind", "0"], source_name="sim")
    store = Store(":memory:")
    faults = Faults(monkeypatch, store, "persist_frame", "advance", "save_status")
    clock = VirtualClock(START)
    async with assemble(settings, source, store=store, clock=clock, rng=random.Random(3)) as daemon:
        output = RecordingOutput("memory", daemon.astore, clock=clock, rng=random.Random(4))
        output.received = []
        daemon.outputs.append(output)
        async with trio.open_nursery() as nursery:
            # 1. frames are stored, but no cursor can move and no status row be written
            faults.on = {"advance", "save_status"}
            await nursery.start(daemon.run)
            await trio.sleep(20 * 60)
            out = daemon.status()["outputs"][0]
            assert out["last_error"].startswith("StoreError: ") and FULL in out["last_error"], out
            assert out["lag"] > 0 and store.cursor("memory", "entries") == 0
            sent_while_failing = len(output.received)
            assert sent_while_failing > 0  # sent, and sent again: the far side's upsert absorbs it

            # 2. nothing can be written at all: frames fail with the typed error, in status
            faults.on = {"persist_frame", "advance", "save_status"}
            await trio.sleep(30 * 60)
            status = daemon.status()
            loop = status["sources"][0]["loops"]["SimEntries"]
            assert loop["last_error"].startswith("StoreError: ") and FULL in loop["last_error"], loop
            assert loop["frames_failed"] >= 1
            assert status["store"]["state"] == "failing" and FULL in status["store"]["error"]
            assert daemon.store_fault() is not None

            # 3. space again: everything catches up, the daemon never stopped
            faults.on = set()
            await trio.sleep(60 * 60)
            nursery.cancel_scope.cancel()

    assert faults.raised > 0
    status = daemon.status()
    assert status["store"]["state"] == "ok" and daemon.store_fault() is None
    assert status["sources"][0]["loops"]["SimEntries"]["frames_missing"] == 0
    dates = [d for (d,) in store.conn.execute("SELECT date FROM entries ORDER BY date")]
    assert len(dates) == len(set(dates)) and dates
    assert all(b - a == FIVE_MIN for a, b in itertools.pairwise(dates)), "a frame went missing"
    assert dates[-1] >= clock() - 2 * FIVE_MIN
    stored = {i for (i,) in store.conn.execute("SELECT identifier FROM entries")}
    assert set(output.received) == stored and store.lag("memory", "entries") == 0
    assert '"state": "ok"' in store.conn.execute("SELECT json FROM machine_status").fetchone()[0]
    store.close()


def test_the_api_says_the_store_is_unavailable_while_the_daemon_cannot_write(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    populate(db, count=10)
    fault: list[str | None] = ["StoreError: store 's.db': " + FULL]

    def status() -> dict[str, Any]:
        snap = snapshot()
        snap["store"] = {"state": "ok"} if fault[0] is None else {"state": "failing", "error": fault[0]}
        return snap

    reader = StoreReader(db)
    app = create_app(
        reader, status, ApiSettings(http_secret=None, http_readable=True), store_fault=lambda: fault[0]
    )
    with ApiClient(app) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["problems"] == ["store failing"]
        for path in ("/api/v1/entries.json", "/api/v1/entries/sgv.json", "/api/v1/treatments.json"):
            refused = c.get(path)
            assert refused.status_code == 503, path
            assert "store is unavailable" in refused.json()["description"]
            assert FULL not in refused.text  # the cause is for the status, behind the secret
        view = c.get("/api/connect/status").json()["store"]
        assert view["state"] == "failing" and FULL in view["error"]
        assert view["collections"]["entries"]["records"] == 12
        page = c.get("/")  # the status page shows the problem, in words
        assert page.status_code == 200
        assert "Local store:</span> cannot write the store" in page.text and FULL in page.text

        fault[0] = None
        assert c.get("/readyz").status_code == 200
        assert len(c.get("/api/v1/entries.json?count=5").json()) == 5
        assert c.get("/api/connect/status").json()["store"]["state"] == "ok"
    reader.close()


# --- opening: checked and locked -------------------------------------------------------------------


def test_one_writer_per_store_file_and_the_lock_goes_with_it(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    first = Store.open(db)
    assert Path(lock_path(str(db))).read_text().strip() == str(os.getpid())
    with pytest.raises(StoreUnusable, match=rf"in use by another daemon \(pid {os.getpid()}\)"):
        Store.open(db)
    with pytest.raises(StoreUnusable, match="in use"):
        Store.open(tmp_path / "." / "s.db")  # the same file by another name
    reader = StoreReader(db)  # readers take no lock
    assert reader.verify() == SCHEMA_VERSION
    reader.close()
    first.close()
    Store.open(db).close()
    Store.open(":memory:").close()  # a private store needs no lock
    Store.open(":memory:").close()


def test_a_refused_store_leaves_no_lock_behind(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    for _ in range(2):  # the second attempt meets the same problem, not a lock
        with pytest.raises(StoreUnusable, match="newer version"):
            Store.open(db)


def test_a_store_error_is_retryable_and_says_store() -> None:
    error = StoreError("store 'x': " + FULL)
    assert error.retryable and error.kind == "store"


async def test_a_bug_in_a_query_is_not_taken_for_a_store_fault() -> None:
    astore = AsyncStore(Store(":memory:"))

    def broken(store: Store) -> None:
        store.conn.execute("SELECT nosuchcolumn FROM entries")

    with pytest.raises(StoreError):  # no such column: SQLite says OperationalError
        await astore.call(broken, astore.store)

    def misuse(store: Store) -> None:
        store.conn.execute("SELECT ?", (1, 2))

    with pytest.raises(sqlite3.ProgrammingError):
        await astore.call(misuse, astore.store)
    astore.store.close()


async def test_the_transaction_survives_a_failed_write_and_commits_the_next(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    disk_full(store)
    batch = Batch.of(Entry(type="sgv", date=START + i * FIVE_MIN, sgv=100, device="d") for i in range(500))
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.persist_frame("x", "L", batch)
    assert not store.conn.in_transaction
    disk_freed(store)
    assert store.persist_frame("x", "L", batch).total == 500
    store.close()
