"""The store: schema, idempotent upserts, frame transactions, checkpoints, cursors, readers."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import trio

from connect.records import Batch, Entry, Treatment
from store import AsyncStore, Store
from store.schema import SCHEMA_VERSION, SchemaTooNew

T0 = 1_700_000_000_000


def readings(n: int, start: int = T0) -> list[Entry]:
    return [Entry(type="sgv", date=start + i * 300_000, device="d", sgv=100 + i % 50) for i in range(n)]


def test_schema_is_versioned_and_wal(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    columns = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
    assert {"identifier", "date", "sgv", "direction", "type", "device", "json", "seq"} <= columns
    store.close()
    Store(tmp_path / "s.db").close()  # reopening migrates nothing and fails nothing


def test_a_new_store_has_the_schema_and_rows_every_migration_step_makes(tmp_path: Path) -> None:
    from sqlite_utils import Database

    from store.schema import MIGRATIONS

    Store(tmp_path / "new.db").close()
    stepwise = sqlite3.connect(tmp_path / "steps.db", isolation_level=None)
    for version, step in enumerate(MIGRATIONS):
        step(Database(stepwise))
        stepwise.execute(f"PRAGMA user_version = {version + 1}")
    new = sqlite3.connect(tmp_path / "new.db")

    def schema(conn: sqlite3.Connection) -> set[tuple[str, str, str, str]]:
        return set(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))

    assert schema(new) == schema(stepwise)
    assert new.execute("PRAGMA user_version").fetchone() == stepwise.execute("PRAGMA user_version").fetchone()
    assert list(new.execute("SELECT * FROM sequence")) == list(stepwise.execute("SELECT * FROM sequence"))


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew):
        Store(tmp_path / "s.db")


def test_upserts_are_idempotent_and_changes_get_a_new_seq() -> None:
    store = Store()
    batch = Batch.of(readings(10))
    assert store.persist_frame("src", "loop", batch).total == 10
    assert store.persist_frame("src", "loop", batch).total == 0
    assert store.count("entries") == 10
    seq_before = store.max_seq("entries")
    corrected = Entry(type="sgv", date=T0, device="d", sgv=180)
    assert store.persist_frame("src", "loop", Batch.of([corrected])).total == 1
    assert store.max_seq("entries") > seq_before
    assert store.count("entries") == 10
    row = store.conn.execute("SELECT sgv, json FROM entries WHERE date = ?", (T0,)).fetchone()
    assert row[0] == 180 and json.loads(row[1])["sgv"] == 180


def test_frame_and_checkpoint_commit_together() -> None:
    store = Store()
    store.persist_frame("src", "loop", Batch.of(readings(3)))
    assert store.checkpoints("src", "loop") == {"entries": T0 + 600_000}
    bad = Batch.of([*readings(3, start=T0 + 3_600_000)])
    # a failure inside the transaction leaves neither rows nor checkpoint behind
    store.conn.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON entries WHEN NEW.sgv = 102 BEGIN SELECT RAISE(ABORT, 'x'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        store.persist_frame("src", "loop", bad)
    assert store.count("entries") == 3
    assert store.checkpoints("src", "loop") == {"entries": T0 + 600_000}


def test_checkpoints_never_go_backwards_and_covered_advances_them() -> None:
    store = Store()
    store.persist_frame("src", "loop", Batch.of(readings(3)))
    store.persist_frame("src", "loop", Batch.of(readings(1)))
    assert store.checkpoints("src", "loop")["entries"] == T0 + 600_000
    store.persist_frame("src", "loop", Batch(covered={"entries": T0 + 10 * 86_400_000}))
    assert store.checkpoints("src", "loop")["entries"] == T0 + 10 * 86_400_000
    assert store.checkpoints("src", "other") == {}


def test_cursors_pending_lag_and_set_aside() -> None:
    store = Store()
    store.persist_frame(
        "src", "loop", Batch.of([*readings(5), Treatment(event_type="Note", date=T0, device="d")])
    )
    assert store.lag("ns") == 6
    pending = store.pending("ns", "entries", limit=3)
    assert [p.doc["sgv"] for p in pending] == [100, 101, 102]
    store.advance("ns", "entries", pending[-1].seq)
    assert store.lag("ns", "entries") == 2
    store.advance("ns", "entries", 0)  # never backwards
    assert store.lag("ns", "entries") == 2
    rest = store.pending("ns", "entries")
    store.set_aside("ns", "entries", rest[0].seq, rest[-1].seq, len(rest), 400, "bad request")
    assert store.lag("ns", "entries") == 0 and store.rejected_count("ns") == 2
    assert store.lag("mqtt") == 6  # every output has its own cursor


async def test_async_store_serialises_writes_through_a_thread(tmp_path: Path) -> None:
    astore = AsyncStore(Store(tmp_path / "s.db"))
    assert astore.inline is False
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(
                astore.persist_frame, "src", f"loop{i}", Batch.of(readings(50, start=T0 + i * 10**8))
            )
    assert await astore.count("entries") == 250


def test_readers_see_committed_data_while_a_write_is_open(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.persist_frame("src", "loop", Batch.of(readings(10)))
    reader = sqlite3.connect(tmp_path / "s.db", timeout=0.1)
    store.conn.execute("BEGIN IMMEDIATE")
    store.conn.executemany(
        "INSERT INTO entries (identifier, seq, date, json) VALUES (?, ?, ?, '{}')",
        [(f"x{i}", 10_000 + i, T0 + i) for i in range(1000)],
    )
    assert reader.execute("SELECT count(*) FROM entries").fetchone()[0] == 10  # not blocked, not dirty
    store.conn.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM entries").fetchone()[0] == 1010


def test_stored_rows_are_pinned_byte_for_byte() -> None:
    # the stored JSON is what the standard encoder writes (compact, sorted, non-ASCII escaped):
    # a row whose text changed would be written again and delivered again
    from store.database import row_for, stored_json

    entry = Entry(
        type="sgv", date=1_700_000_000_000, device="xDrip-DexcomG6", sgv=120, direction="Flat", delta=-1.5
    )
    assert row_for(entry, "sim", 7, now=1_700_000_300_000) == (
        "6aa9aca1-40fa-57fe-b237-c0a983100d88", 7, 1_700_000_000_000, "2023-11-14T22:13:20.000Z", "sgv",
        120, "Flat", "xDrip-DexcomG6", "sim",
        '{"date":1700000000000,"dateString":"2023-11-14T22:13:20.000Z","delta":-1.5,'
        '"device":"xDrip-DexcomG6","direction":"Flat","identifier":"6aa9aca1-40fa-57fe-b237-c0a983100d88",'
        '"sgv":120,"trend":4,"type":"sgv"}',
        1_700_000_300_000, 1_700_000_300_000,
    )  # fmt: skip
    treatment = Treatment(
        event_type="Meal Bolus",
        date=1_700_000_000_000,
        device="pump",
        insulin=2.5,
        carbs=30.0,
        notes="café ☕",
    )
    assert row_for(treatment, "sim", 8, now=1)[9] == (
        '{"carbs":30.0,"created_at":"2023-11-14T22:13:20.000Z","date":1700000000000,"device":"pump",'
        '"eventType":"Meal Bolus","identifier":"0f831bce-10ba-59c2-8334-33423209cfa8","insulin":2.5,'
        '"notes":"caf\\u00e9 \\u2615"}'
    )
    for doc in ({"big": 2**70, "b": [1.5, None, True]}, {1: "a"}, {"z": {"y": 0.25, "x": "q"}}):
        assert stored_json(doc) == json.dumps(doc, separators=(",", ":"), sort_keys=True)
