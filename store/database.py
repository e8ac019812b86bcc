"""The store's synchronous core: one connection, explicit transactions, no threads of its own.

The runtime owns exactly one writer :class:`Store` and calls it through
:class:`store.aio.AsyncStore` (``trio.to_thread`` with a one-slot limiter). Readers — the API,
the tests, Datasette — open their own connections; WAL lets them read while a frame is written.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
from sqlite_utils import Database

from connect.records import (
    COLLECTIONS,
    Batch,
    Collection,
    DeviceStatus,
    Entry,
    Profile,
    Record,
    Treatment,
    iso_from_ms,
    to_nightscout,
)
from store.schema import COLLECTION_COLUMNS, migrate


def _now_ms() -> int:
    return int(time.time() * 1000)


def row_for(record: Record, source: str, seq: int, now: int | None = None) -> tuple[Any, ...]:
    """The columns of ``record`` in :data:`COLLECTION_COLUMNS` order, written at ``now`` (epoch
    ms; the wall clock when not given)."""
    doc = json.dumps(to_nightscout(record), separators=(",", ":"), sort_keys=True)
    at = _now_ms() if now is None else now
    match record:
        case Entry():
            return (
                record.identifier, seq, record.date, iso_from_ms(record.date), record.type,
                record.sgv, record.direction, record.device, source, doc, at, at,
            )  # fmt: skip
        case Treatment():
            return (
                record.identifier, seq, record.date, iso_from_ms(record.date), record.event_type,
                record.insulin, record.carbs, record.device, source, doc, at, at,
            )  # fmt: skip
        case DeviceStatus() | Profile():
            return (
                record.identifier, seq, record.date, iso_from_ms(record.date), record.device,
                source, doc, at, at,
            )  # fmt: skip


def _upsert_sql(collection: str) -> str:
    columns = list(COLLECTION_COLUMNS[collection])
    names = ", ".join(columns)
    marks = ", ".join("?" for _ in columns)
    # srv_created stays the time of the first write
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in ("identifier", "srv_created"))
    # an unchanged record keeps its seq and srv_modified: resending identical data must not
    # re-deliver it, nor show it as changed to a history read
    return (
        f"INSERT INTO {collection} ({names}) VALUES ({marks}) "
        f"ON CONFLICT(identifier) DO UPDATE SET {updates} "
        f"WHERE {collection}.json IS NOT excluded.json"
    )


UPSERT_SQL: dict[str, str] = {c: _upsert_sql(c) for c in COLLECTIONS}


@attrs.frozen
class PersistResult:
    """What one persisted frame changed: rows written (new or changed) per collection."""

    written: Mapping[str, int]
    checkpoint: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.written.values())


@attrs.frozen
class Pending:
    """A record waiting for an output: its sequence number and Nightscout JSON."""

    seq: int
    doc: dict[str, Any]


def connect_sqlite(path: str | Path, *, writer: bool) -> sqlite3.Connection:
    """A connection with the pragmas every store connection uses."""
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA busy_timeout = 30000")
    if writer:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


class Store:
    """The writer side of the store (and simple reads on the same connection)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = connect_sqlite(self.path, writer=True)
        self.db = Database(self.conn)
        self.version = migrate(self.db)
        #: the newest srv_modified written: a write never gets an older one, even when the
        #: wall clock steps back, so a history read that resumes from it misses nothing
        self._last_write_ms = max(
            int(self.conn.execute(f"SELECT coalesce(max(srv_modified), 0) FROM {name}").fetchone()[0])
            for name in COLLECTIONS
        )

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception (a frame is all or nothing)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # --- frames -----------------------------------------------------------------------

    def _upsert(self, conn: sqlite3.Connection, source: str, records: Sequence[Record]) -> dict[str, int]:
        written: dict[str, int] = {}
        if not records:
            return written
        (seq,) = conn.execute("SELECT value FROM sequence WHERE name = 'seq'").fetchone()
        now = max(_now_ms(), self._last_write_ms)
        by_collection: dict[str, list[tuple[Any, ...]]] = {}
        for record in records:
            seq += 1
            by_collection.setdefault(record.collection, []).append(row_for(record, source, seq, now))
        for collection, rows in by_collection.items():
            before = conn.total_changes
            conn.executemany(UPSERT_SQL[collection], rows)
            written[collection] = conn.total_changes - before
        conn.execute("UPDATE sequence SET value = ? WHERE name = 'seq'", (seq,))
        self._last_write_ms = now
        return written

    def upsert(self, records: Sequence[Record], *, source: str = "") -> dict[str, int]:
        """Upsert records in one transaction; returns rows written per collection."""
        with self.transaction() as conn:
            return self._upsert(conn, source, records)

    def persist_frame(self, source: str, loop: str, batch: Batch) -> PersistResult:
        """Write a frame's batch and advance its checkpoints in one transaction."""
        records: list[Record] = []
        for collection in COLLECTIONS:
            records.extend(batch.records(collection))
        now = _now_ms()
        with self.transaction() as conn:
            written = self._upsert(conn, source, records)
            checkpoint = self._checkpoints(conn, source, loop)
            for key, value in batch.newest().items():
                if value > checkpoint.get(key, -1):
                    checkpoint[key] = value
                    conn.execute(
                        "INSERT INTO checkpoints (source, loop, collection, last_known, updated_at) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(source, loop, collection) DO UPDATE "
                        "SET last_known = excluded.last_known, updated_at = excluded.updated_at",
                        (source, loop, key, value, now),
                    )
        return PersistResult(written=written, checkpoint=checkpoint)

    @staticmethod
    def _checkpoints(conn: sqlite3.Connection, source: str, loop: str) -> dict[str, int]:
        rows = conn.execute(
            "SELECT collection, last_known FROM checkpoints WHERE source = ? AND loop = ?",
            (source, loop),
        )
        return {collection: int(value) for collection, value in rows}

    def checkpoints(self, source: str, loop: str) -> dict[str, int]:
        """last_known per collection for one loop of one source (empty before its first frame)."""
        return self._checkpoints(self.conn, source, loop)

    # --- reads used by outputs and tests -----------------------------------------------

    def count(self, collection: Collection) -> int:
        (n,) = self.conn.execute(f"SELECT count(*) FROM {collection}").fetchone()
        return int(n)

    def newest_date(self, collection: Collection) -> int | None:
        (value,) = self.conn.execute(f"SELECT max(date) FROM {collection}").fetchone()
        return None if value is None else int(value)

    def max_seq(self, collection: Collection) -> int:
        (value,) = self.conn.execute(f"SELECT max(seq) FROM {collection}").fetchone()
        return 0 if value is None else int(value)

    def pending(self, output: str, collection: Collection, *, limit: int = 500) -> list[Pending]:
        """Records past ``output``'s cursor, oldest change first."""
        after = self.cursor(output, collection)
        rows = self.conn.execute(
            f"SELECT seq, json FROM {collection} WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [Pending(seq=int(seq), doc=json.loads(doc)) for seq, doc in rows]

    def lag(self, output: str, collection: Collection | None = None) -> int:
        """How many records ``output`` has not delivered yet."""
        total = 0
        names: tuple[Collection, ...] = (collection,) if collection else COLLECTIONS
        for name in names:
            after = self.cursor(output, name)
            (n,) = self.conn.execute(f"SELECT count(*) FROM {name} WHERE seq > ?", (after,)).fetchone()
            total += int(n)
        return total

    def cursor(self, output: str, collection: Collection) -> int:
        row = self.conn.execute(
            "SELECT seq FROM cursors WHERE output = ? AND collection = ?", (output, collection)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def advance(self, output: str, collection: Collection, seq: int) -> None:
        """Move ``output``'s cursor forward to ``seq`` (never backwards)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO cursors (output, collection, seq, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(output, collection) DO UPDATE SET seq = max(seq, excluded.seq), "
                "updated_at = excluded.updated_at",
                (output, collection, seq, _now_ms()),
            )

    def set_aside(
        self,
        output: str,
        collection: Collection,
        first_seq: int,
        last_seq: int,
        records: int,
        status: int,
        error: str,
    ) -> None:
        """Record a batch the output's remote side refused for good, and move past it."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO rejected (output, collection, first_seq, last_seq, records, status, "
                "error, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (output, collection, first_seq, last_seq, records, status, error, _now_ms()),
            )
            conn.execute(
                "INSERT INTO cursors (output, collection, seq, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(output, collection) DO UPDATE SET seq = max(seq, excluded.seq), "
                "updated_at = excluded.updated_at",
                (output, collection, last_seq, _now_ms()),
            )

    def rejected_count(self, output: str) -> int:
        (n,) = self.conn.execute(
            "SELECT coalesce(sum(records), 0) FROM rejected WHERE output = ?", (output,)
        ).fetchone()
        return int(n)

    # --- status ---------------------------------------------------------------------------

    def save_status(self, key: str, value: Mapping[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO machine_status (key, json, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at",
                (key, json.dumps(value, sort_keys=True, default=str), _now_ms()),
            )

    def load_status(self) -> dict[str, Any]:
        return {
            key: json.loads(doc)
            for key, doc in self.conn.execute("SELECT key, json FROM machine_status ORDER BY key")
        }

    def docs(
        self, collection: Collection, *, newest_first: bool = True, limit: int | None = None
    ) -> list[dict[str, Any]]:
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT json FROM {collection} ORDER BY date {order}, identifier"
        params: Iterable[Any] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        return [json.loads(doc) for (doc,) in self.conn.execute(sql, tuple(params))]
