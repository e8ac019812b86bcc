"""The store's server times (``srv_created``, ``srv_modified``: API v3's ``srvCreated`` and
``srvModified``), the migration that added them, and the revision readers cache by."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlite_utils import Database

from connect.records import Entry, Treatment
from store import Store, database
from store.database import row_for
from store.reader import StoreReader
from store.schema import MIGRATIONS, SCHEMA_VERSION, V1_COLUMNS

T0 = 1_700_000_000_000


def entry(i: int, sgv: int = 100) -> Entry:
    return Entry(type="sgv", date=T0 + i * 300_000, device="d", sgv=sgv)


def times(path: Path, collection: str = "entries") -> dict[int, tuple[int, int, int]]:
    """date → (seq, srv_created, srv_modified)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(f"SELECT date, seq, srv_created, srv_modified FROM {collection}").fetchall()
    finally:
        conn.close()
    return {date: (seq, created, modified) for date, seq, created, modified in rows}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The store's wall clock, set by the test."""
    now = [T0 + 10 * 86_400_000]
    monkeypatch.setattr(database, "_now_ms", lambda: now[0])
    return now


def test_a_version_1_store_gets_server_times_from_its_records(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[0](Database(conn))
    conn.execute("PRAGMA user_version = 1")
    columns = ", ".join(V1_COLUMNS["entries"])
    marks = ", ".join("?" for _ in V1_COLUMNS["entries"])
    for i in range(3):
        conn.execute(
            f"INSERT INTO entries ({columns}) VALUES ({marks})", row_for(entry(i), "old", i + 1)[:10]
        )
    conn.close()

    store = Store(path)
    assert store.version == SCHEMA_VERSION == 5
    store.close()
    # written before server times existed: both are the record's own time (v3's fallback)
    assert times(path) == {T0 + i * 300_000: (i + 1, T0 + i * 300_000, T0 + i * 300_000) for i in range(3)}
    conn = sqlite3.connect(path)
    indexes = {row[1] for row in conn.execute("PRAGMA index_list(entries)")}
    conn.close()
    assert {"entries_srv_modified", "entries_device_date"} <= indexes


def test_server_times_follow_writes_that_change_a_record(tmp_path: Path, clock: list[int]) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    first = clock[0]
    store.upsert([entry(0), entry(1)])
    assert times(path)[T0] == (1, first, first)

    clock[0] += 60_000
    store.upsert([entry(0), entry(1)])  # the same records again: nothing changed
    assert times(path)[T0] == (1, first, first)

    clock[0] += 60_000
    store.upsert([entry(0, sgv=140)])  # changed: modified now, created when it was first written
    seq, created, modified = times(path)[T0]
    assert (created, modified) == (first, clock[0]) and seq > 2
    assert times(path)[T0 + 300_000] == (2, first, first)

    store.upsert([Treatment(event_type="Note", date=T0, device="d", notes="x")])
    assert times(path, "treatments")[T0][1:] == (clock[0], clock[0])
    store.close()


def test_server_times_never_go_back_when_the_clock_does(tmp_path: Path, clock: list[int]) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    store.upsert([entry(0)])
    before = clock[0]
    clock[0] -= 3_600_000  # the wall clock stepped back an hour
    store.upsert([entry(1)])
    store.close()
    assert times(path)[T0 + 300_000][2] == before
    # a store opened again remembers the newest one it wrote
    store = Store(path)
    store.upsert([entry(2)])
    store.close()
    assert times(path)[T0 + 600_000][2] == before


def test_the_revision_grows_with_every_change_and_only_then(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    reader = StoreReader(path)
    assert reader.revision() == 0
    store.upsert([entry(0), entry(1)])
    first = reader.revision()
    assert first > 0
    store.upsert([entry(0), entry(1)])  # identical: every answer stays as it was
    assert reader.revision() == first
    store.upsert([entry(1, sgv=150)])
    assert reader.revision() > first
    changed = reader.revision()
    store.upsert([Treatment(event_type="Note", date=T0, device="d")])
    assert reader.revision() > changed
    reader.close()
    store.close()
