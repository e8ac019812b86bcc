"""The store's synchronous core: one connection, explicit transactions, no threads of its own.

The runtime owns exactly one writer :class:`Store` and calls it through
:class:`store.aio.AsyncStore` (``trio.to_thread`` with a one-slot limiter). Readers — the API,
the tests, Datasette — open their own connections; WAL lets them read while a frame is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any, Final

import orjson
from sqlite_utils import Database

from connect.errors import StoreError, StoreUnusable
from connect.records import (
    COLLECTIONS,
    EVENTS,
    Batch,
    Collection,
    DeviceStatus,
    Entry,
    Profile,
    Record,
    Stream,
    Treatment,
    entry_doc,
    iso_from_ms,
    to_nightscout,
)
from store import events as ev
from store.abc import AlertTransaction, StoredRow
from store.events import AlertState, EventRow, NewRecord
from store.lock import StoreLock
from store.schema import (
    COLLECTION_COLUMNS,
    SCHEMA_VERSION,
    NotAStore,
    SchemaTooNew,
    check_schema,
    migrate,
    write_fresh_store,
)
from store.values import Pending, PersistResult, RejectedGroup, Stored
from store.writes import SharedWrites


def _now_ms() -> int:
    return int(time.time() * 1000)


def object_id(identifier: str) -> str:
    """A stable 24-hex Mongo-style ``_id`` for a record identifier (clients expect ObjectIds).

    Identifiers are UUID v5, themselves the leading bytes of a SHA-1: their first 24 hex digits
    serve as they are. Anything else gets the first 24 hex digits of its own SHA-1.
    """
    if _UUID.match(identifier):
        return identifier.replace("-", "").lower()[:24]
    return hashlib.sha1(identifier.encode("utf-8")).hexdigest()[:24]


_OBJECT_ID: Final = re.compile(r"^[0-9a-fA-F]{24}$")
_UUID: Final = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def stored_json(doc: Mapping[str, Any]) -> str:
    """A document as its row keeps it: compact, keys sorted, non-ASCII escaped — the text the
    standard encoder writes (``json.dumps(doc, separators=(",", ":"), sort_keys=True)``), made
    by orjson, with the standard encoder for what orjson writes differently (non-ASCII text)
    or not at all (integers past 64 bits, keys that are not strings). One difference is kept:
    floats below 1e-4 in magnitude are written positionally (``0.00001``, not ``1e-05``)."""
    try:
        text = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError is one
        text = b"\x80"
    if text.isascii():
        return text.decode("ascii")
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def row_for(
    record: Record, source: str, seq: int, now: int | None = None, identifier: str | None = None
) -> tuple[Any, ...]:
    """The columns of ``record`` in :data:`COLLECTION_COLUMNS` order, written at ``now`` (epoch
    ms; the wall clock when not given), under ``identifier`` when a pushed record replaces a
    stored one of another identifier."""
    at = _now_ms() if now is None else now
    # the ISO time and the identifier are made once, for the columns and the document
    ident = identifier or record.identifier
    iso = iso_from_ms(record.date)
    match record:
        case Entry():
            doc = stored_json(entry_doc(record, iso, ident))
            return (
                ident, seq, record.date, iso, record.type,
                record.sgv, record.direction, record.device, source, doc, at, at,
            )  # fmt: skip
        case Treatment():
            doc = stored_json(_with_identifier(to_nightscout(record), identifier))
            return (
                ident, seq, record.date, iso, record.event_type,
                record.insulin, record.carbs, record.device, source, doc, at, at,
            )  # fmt: skip
        case DeviceStatus() | Profile():
            doc = stored_json(_with_identifier(to_nightscout(record), identifier))
            return (
                ident, seq, record.date, iso, record.device,
                source, doc, at, at,
            )  # fmt: skip


def _with_identifier(doc: dict[str, Any], identifier: str | None) -> dict[str, Any]:
    if identifier is not None:
        doc["identifier"] = identifier
    return doc


def status_json(value: Mapping[str, Any]) -> str:
    """A status snapshot as the ``machine_status`` row keeps it."""
    return json.dumps(value, sort_keys=True, default=str)


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


def _queued_count_sql(collection: str) -> str:
    # records queued for another try, still in the store under the seq they were refused with
    # (at or below the cursor: a record past it is counted there already)
    return (
        f"SELECT count(*) FROM rejected r JOIN {collection} c "
        "ON c.seq BETWEEN r.first_seq AND r.last_seq "
        f"WHERE r.output = ? AND r.collection = '{collection}' AND r.retry = 1 AND c.seq <= ?"
    )


QUEUED_COUNT_SQL: dict[str, str] = {c: _queued_count_sql(c) for c in COLLECTIONS}


def _rejected_where(output: str | None, collection: str | None) -> tuple[str, tuple[Any, ...]]:
    clauses, params = ["1 = 1"], []
    if output is not None:
        clauses.append("output = ?")
        params.append(output)
    if collection is not None:
        clauses.append("collection = ?")
        params.append(collection)
    return " AND ".join(clauses), tuple(params)


def has_retry_queue(conn: sqlite3.Connection) -> bool:
    return any(row[1] == "retry" for row in conn.execute("PRAGMA table_info(rejected)"))


def rejected_groups(
    conn: sqlite3.Connection, output: str | None = None, collection: str | None = None
) -> list[RejectedGroup]:
    """The ``rejected`` table summed up (any connection: the writer's, or a reader's)."""
    where, params = _rejected_where(output, collection)
    # a store from before schema 2 (read by `serve` before a daemon migrated it) has no queue
    retry = "retry" if has_retry_queue(conn) else "0 AS retry"
    rows = conn.execute(
        f"SELECT output, collection, status, error, {retry}, sum(records), min(at), max(at) FROM rejected "
        f"WHERE {where} GROUP BY output, collection, status, error, retry "
        "ORDER BY output, collection, retry, min(at)",
        params,
    ).fetchall()
    return [
        RejectedGroup(
            output=str(out), collection=str(coll), status=int(status), reason=str(error or ""),
            records=int(records), queued=bool(retry), first_at=int(first), last_at=int(last),
        )
        for out, coll, status, error, retry, records, first, last in rows
    ]  # fmt: skip


#: the first 16 bytes of every SQLite database file
SQLITE_HEADER: Final = b"SQLite format 3\x00"


#: how long a store connection waits for a lock another connection holds
BUSY_TIMEOUT_MS: Final = 30_000
#: SQLite's default: WAL pages after which a commit checkpoints the WAL into the database
WAL_AUTOCHECKPOINT_PAGES: Final = 1000
#: SQLITE_BUSY and SQLITE_LOCKED (primary result codes)
BUSY_CODES: Final = frozenset({5, 6})


def connect_sqlite(path: str | Path, *, writer: bool) -> sqlite3.Connection:
    """A connection with the pragmas every store connection uses."""
    conn = sqlite3.connect(
        str(path), check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if writer:
        _writer_pragmas(conn)
    return conn


def _writer_pragmas(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")


def check_path(path: str) -> None:
    """What can be told about the store file before SQLite opens it, each problem one line
    (:class:`StoreUnusable`) naming the store; nothing is created or written here."""
    where = f"store {path!r}"
    file = Path(path)
    parent = file.absolute().parent
    try:
        if file.is_dir():
            raise StoreUnusable(
                f"{where}: is a directory; name a file, such as {str(file / 'nightscout-connect.db')!r}"
            )
        if not parent.exists():
            raise StoreUnusable(f"{where}: the directory {str(parent)!r} does not exist")
        if not parent.is_dir():
            raise StoreUnusable(f"{where}: {str(parent)!r} is not a directory")
        if file.exists():
            if not file.is_file():
                raise StoreUnusable(f"{where}: is not a regular file")
            if not os.access(file, os.R_OK):
                raise StoreUnusable(f"{where}: cannot be read (permission denied)")
            if not os.access(file, os.W_OK):
                raise StoreUnusable(f"{where}: is read-only; the daemon writes to its store")
            with file.open("rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
            if header and header != SQLITE_HEADER:
                raise StoreUnusable(f"{where}: is not a SQLite database (the file was left as it is)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StoreUnusable(
                f"{where}: the directory {str(parent)!r} is read-only; the store keeps its journal and "
                "lock files beside it"
            )
    except OSError as exc:
        raise StoreUnusable(f"{where}: cannot be used ({exc.strerror or type(exc).__name__})") from None


def as_store_error(exc: sqlite3.Error, path: str) -> StoreError | None:
    """A fault of the store's disk or file as a :class:`StoreError`; None for anything else
    (a constraint or a misuse is a bug, not a fault to wait out)."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return None
    if isinstance(exc, sqlite3.DataError | sqlite3.NotSupportedError):
        return None
    return StoreError(f"store {path!r}: {exc}")


class Store(SharedWrites[sqlite3.Connection]):
    """The writer side of the store (and simple reads on the same connection).

    ``Store(path)`` opens a file as it is (tests, benchmarks, tools); a daemon opens its store
    with :meth:`open`, which checks it first and takes the one-daemon lock.
    """

    #: store threads of the process all SQLite stores share: a call is mostly Python and the
    #: disk's page cache, so more threads would only take turns at the interpreter lock (and
    #: take it from the event loop, which then waits to get it back after every system call)
    threads = 4

    def __init__(self, path: str | Path = ":memory:", *, lock: StoreLock | None = None) -> None:
        self.path = str(path)
        self.lock = lock
        #: transactions committed on this connection (a store that commits is healthy again)
        self.commits = 0
        self._object_id_function = False
        conn = connect_sqlite(self.path, writer=False)
        try:
            check_schema(conn)  # before anything is written: a store we cannot use stays as it is
            _writer_pragmas(conn)
            self.conn = conn
            self.db = Database(conn)
            self.version = migrate(self.db)
        except BaseException:
            conn.close()
            raise
        #: the newest srv_modified written: a write never gets an older one, even when the
        #: wall clock steps back, so a history read that resumes from it misses nothing
        self._last_write_ms = max(
            int(self.conn.execute(f"SELECT coalesce(max(srv_modified), 0) FROM {name}").fetchone()[0])
            for name in COLLECTIONS
        )
        #: whether any deleted document is remembered (a write then clears its identifier's)
        self._tombstones = self.conn.execute("SELECT EXISTS (SELECT 1 FROM deleted)").fetchone()[0] == 1

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """The daemon's store: checked, locked for this process, migrated. A store that cannot be
        used raises :class:`StoreUnusable` in one line naming it, and is left as it was."""
        text = str(path)
        if text == ":memory:":
            return cls(text)
        where = f"store {text!r}"
        check_path(text)
        lock = StoreLock.acquire(text)
        try:
            write_fresh_store(text)  # a new store: its file copied whole, checked like any other
            return cls(text, lock=lock)
        except SchemaTooNew as exc:
            problem = (
                f"{where}: written by a newer version of nightscout-connect (schema {exc.version}; "
                f"this version knows up to {SCHEMA_VERSION}); upgrade, or name another store"
            )
        except NotAStore:
            problem = (
                f"{where}: is a SQLite database of something else, not a store (the file was left as it is)"
            )
        except sqlite3.Error as exc:
            problem = f"{where}: cannot be opened ({exc})"
        except BaseException:
            lock.release()
            raise
        lock.release()
        raise StoreUnusable(problem)

    def close(self) -> None:
        self.conn.close()
        if self.lock is not None:
            self.lock.release()

    def as_store_error(self, exc: BaseException) -> StoreError | None:
        """A fault of the disk or the file as a :class:`StoreError` (see :func:`as_store_error`)."""
        return as_store_error(exc, self.path) if isinstance(exc, sqlite3.Error) else None

    @contextmanager
    def without_waiting(self) -> Iterator[None]:
        """For a short call run on the event loop (:meth:`store.aio.AsyncStore.call_brief`):
        SQLite answers busy at once instead of waiting up to its timeout for a lock held by
        another connection, and the WAL checkpoint — the one step of a commit that syncs the
        disk (``synchronous = NORMAL``) — is left to the next commit made off the loop."""
        conn = self.conn
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            yield
        finally:
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def busy(self, exc: BaseException) -> bool:
        """Whether ``exc`` is SQLite's busy or locked answer (a lock another connection holds)."""
        code = getattr(exc, "sqlite_errorcode", None)
        return isinstance(exc, sqlite3.OperationalError) and code is not None and code & 0xFF in BUSY_CODES

    def alert_transaction(self) -> AbstractContextManager[AlertTransaction]:
        """One transaction for an alert pass (:func:`connect.alerting.evaluate`)."""
        return _alert_transaction(self)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception, a failed COMMIT included (a
        frame is all or nothing)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (a full disk, an I/O error): the error that
            # caused it is the one to report
            if self.conn.in_transaction:
                with suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise
        self.commits += 1

    # --- frames -----------------------------------------------------------------------

    def _upsert(
        self,
        conn: sqlite3.Connection,
        source: str,
        records: Sequence[Record],
        identifiers: Sequence[str] | None = None,
    ) -> dict[str, int]:
        written: dict[str, int] = {}
        if not records:
            return written
        (seq,) = conn.execute("SELECT value FROM sequence WHERE name = 'seq'").fetchone()
        now = max(_now_ms(), self._last_write_ms)
        by_collection: dict[str, list[tuple[Any, ...]]] = {}
        for i, record in enumerate(records):
            seq += 1
            ident = None if identifiers is None else identifiers[i]
            by_collection.setdefault(record.collection, []).append(row_for(record, source, seq, now, ident))
        for collection, rows in by_collection.items():
            before = conn.total_changes
            conn.executemany(UPSERT_SQL[collection], rows)
            written[collection] = conn.total_changes - before
            if self._tombstones:
                # a deleted document written again is a document again
                conn.executemany(
                    "DELETE FROM deleted WHERE collection = ? AND identifier = ?",
                    [(collection, row[0]) for row in rows],
                )
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

    # --- pushed records (the write API, an MQTT subscription) --------------------------------

    def _stored_by_object_id(self, conn: sqlite3.Connection, collection: Collection, oid: str) -> str | None:
        """The identifier of the stored record served with ``_id`` ``oid``, if any."""
        if not self._object_id_function:
            conn.create_function("object_id", 1, object_id, deterministic=True)
            self._object_id_function = True
        row = conn.execute(
            f"SELECT identifier FROM {collection} WHERE object_id(identifier) = ? LIMIT 1", (oid.lower(),)
        ).fetchone()
        return None if row is None else str(row[0])

    def _stored_by_key(self, conn: sqlite3.Connection, record: Record) -> str | None:
        """The identifier of the stored record Nightscout would replace with ``record``: an entry
        of the same time and type, a treatment of the same time and event type."""
        if isinstance(record, Entry):
            sql, key = "SELECT identifier FROM entries WHERE date = ? AND type = ? LIMIT 1", record.type
        elif isinstance(record, Treatment):
            sql = "SELECT identifier FROM treatments WHERE date = ? AND event_type = ? LIMIT 1"
            key = record.event_type
        else:
            return None
        row = conn.execute(sql, (record.date, key)).fetchone()
        return None if row is None else str(row[0])

    def delete_pushed(self, collection: Collection, oid: str) -> bool:
        """Remove the record served with ``_id`` ``oid``; False when there is none. API v3 still
        shows it as deleted (``isValid: false`` in its history), so its sync clients learn of it."""
        with self.transaction() as conn:
            ident = self._stored_by_object_id(conn, collection, oid)
            if ident is None:
                return False
            self._bury(conn, collection, ident, permanent=False)
        return True

    # --- API v3's writes: one document each, by identifier ------------------------------------

    def _live(self, conn: sqlite3.Connection, collection: Collection, identifier: str) -> Stored:
        """The stored document with this identifier, or served with this 24-hex ``_id``."""
        row = conn.execute(
            f"SELECT identifier, json FROM {collection} WHERE identifier = ?", (identifier,)
        ).fetchone()
        if row is None and _OBJECT_ID.match(identifier):
            ident = self._stored_by_object_id(conn, collection, identifier)
            if ident is not None:
                row = conn.execute(
                    f"SELECT identifier, json FROM {collection} WHERE identifier = ?", (ident,)
                ).fetchone()
        if row is None:
            return None
        doc = json.loads(row[1])
        return str(row[0]), doc if isinstance(doc, dict) else {}

    def _deleted(self, conn: sqlite3.Connection, collection: Collection, identifier: str) -> bool:
        """Whether a document with this identifier was deleted (and not permanently)."""
        if not self._tombstones:
            return False
        row = conn.execute(
            "SELECT 1 FROM deleted WHERE collection = ? AND identifier = ? AND json IS NOT NULL",
            (collection, identifier),
        ).fetchone()
        return row is not None

    def _stored_by_fallback(self, conn: sqlite3.Connection, record: Record) -> str | None:
        """API v3's dedupe fallback: the stored document of the same date and type (entries),
        created_at and eventType (treatments), created_at and device (device status), or
        created_at (profiles)."""
        if isinstance(record, DeviceStatus):
            row = conn.execute(
                "SELECT identifier FROM devicestatus WHERE date = ? AND device = ? LIMIT 1",
                (record.date, record.device),
            ).fetchone()
            return None if row is None else str(row[0])
        if isinstance(record, Profile):
            row = conn.execute(
                "SELECT identifier FROM profile WHERE date = ? LIMIT 1", (record.date,)
            ).fetchone()
            return None if row is None else str(row[0])
        return self._stored_by_key(conn, record)

    def _write_one(self, conn: sqlite3.Connection, source: str, record: Record, ident: str) -> int:
        """Write ``record`` under ``ident``; its ``srv_modified`` afterwards."""
        self._upsert(conn, source, [record], [ident])
        conn.execute(
            "DELETE FROM deleted WHERE collection = ? AND identifier = ?", (record.collection, ident)
        )
        (modified,) = conn.execute(
            f"SELECT srv_modified FROM {record.collection} WHERE identifier = ?", (ident,)
        ).fetchone()
        return int(modified)

    def delete_v3(self, collection: Collection, identifier: str, *, permanent: bool) -> bool:
        """API v3's DELETE: the document leaves its collection and is remembered as deleted
        (permanently: remembered only so that the store's revision moves). False when there is
        no such document; deleting a deleted one again is done already (permanent: forgotten)."""
        with self.transaction() as conn:
            live = self._live(conn, collection, identifier)
            if live is not None:
                self._bury(conn, collection, live[0], permanent=permanent)
                return True
            if not self._deleted(conn, collection, identifier):
                return False
            if permanent:
                self._bury(conn, collection, identifier, permanent=True)
        return True

    def _bury(self, conn: sqlite3.Connection, collection: Collection, ident: str, *, permanent: bool) -> None:
        """Move a document from its collection table to ``deleted`` (its JSON dropped when
        ``permanent``), under a new ``seq`` and ``srv_modified``."""
        (seq,) = conn.execute("SELECT value FROM sequence WHERE name = 'seq'").fetchone()
        seq += 1
        now = max(_now_ms(), self._last_write_ms)
        row = conn.execute(
            f"SELECT json, srv_created FROM {collection} WHERE identifier = ?", (ident,)
        ).fetchone()
        if row is None:  # deleted already: keep its creation time
            row = conn.execute(
                "SELECT json, srv_created FROM deleted WHERE collection = ? AND identifier = ?",
                (collection, ident),
            ).fetchone()
        doc, created = (None, now) if row is None else row
        conn.execute(
            "INSERT INTO deleted (collection, identifier, seq, srv_created, srv_modified, json) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(collection, identifier) DO UPDATE SET "
            "seq = excluded.seq, srv_modified = excluded.srv_modified, json = excluded.json",
            (
                collection,
                ident,
                seq,
                created if created is not None else now,
                now,
                None if permanent else doc,
            ),
        )
        conn.execute(f"DELETE FROM {collection} WHERE identifier = ?", (ident,))
        conn.execute("UPDATE sequence SET value = ? WHERE name = 'seq'", (seq,))
        self._last_write_ms = now
        self._tombstones = True

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

    def pending_rows(self, output: str, collection: Collection, limit: int) -> list[StoredRow]:
        """Records past ``output``'s cursor, oldest change first, with their JSON as stored."""
        return self.rows_after(collection, self.cursor(output, collection), limit)

    def queued_rows(self, output: str, collection: Collection, limit: int) -> list[StoredRow]:
        """Records ``output`` set aside that ``rejected retry`` queued for another try, oldest first."""
        rows = self.conn.execute(
            f"SELECT DISTINCT c.seq, c.json, c.source FROM rejected r JOIN {collection} c "
            "ON c.seq BETWEEN r.first_seq AND r.last_seq "
            "WHERE r.output = ? AND r.collection = ? AND r.retry = 1 AND c.seq <= ? ORDER BY c.seq LIMIT ?",
            (output, collection, self.cursor(output, collection), limit),
        )
        return [
            StoredRow(seq=int(seq), text=str(text), source=str(source or "")) for seq, text, source in rows
        ]

    def queued_collections(self, output: str) -> set[str]:
        """The collections in which ``rejected retry`` queued records of ``output``."""
        rows = self.conn.execute(
            "SELECT DISTINCT collection FROM rejected WHERE output = ? AND retry = 1", (output,)
        )
        return {str(name) for (name,) in rows}

    def rows_after(self, collection: Collection, after: int, limit: int) -> list[StoredRow]:
        """Records with ``seq`` above ``after`` (not a cursor: a pipeline reads ahead of it)."""
        kind = "type" if collection == "entries" else "NULL"
        rows = self.conn.execute(
            f"SELECT seq, json, source, device, {kind}, date FROM {collection} WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [
            StoredRow(int(seq), str(text), str(source or ""), device, kind, date)
            for seq, text, source, device, kind, date in rows
        ]

    def newest_sgv(self, *, upto_seq: int | None = None) -> StoredRow | None:
        """The sgv of the newest time (among those with ``seq`` up to ``upto_seq``)."""
        row = self.conn.execute(
            "SELECT seq, json, source FROM entries WHERE type = 'sgv' AND seq <= ? ORDER BY date DESC LIMIT 1",
            (SQLITE_INT_MAX if upto_seq is None else upto_seq,),
        ).fetchone()
        return None if row is None else StoredRow(seq=int(row[0]), text=str(row[1]), source=str(row[2] or ""))

    def sgv_before(self, date: int, since: int) -> int | None:
        """The value of the newest sgv before ``date`` and at or after ``since``."""
        row = self.conn.execute(
            "SELECT sgv FROM entries WHERE type = 'sgv' AND date < ? AND date >= ? AND sgv IS NOT NULL "
            "ORDER BY date DESC LIMIT 1",
            (date, since),
        ).fetchone()
        return None if row is None else int(row[0])

    def sgv_summary(self) -> tuple[int, tuple[Any, ...] | None]:
        """How many sgvs are stored, and the newest one's date, value and direction."""
        (count,) = self.conn.execute("SELECT count(*) FROM entries WHERE type = 'sgv'").fetchone()
        newest = self.conn.execute(
            "SELECT date, sgv, direction FROM entries WHERE type = 'sgv' ORDER BY date DESC LIMIT 1"
        ).fetchone()
        return int(count), None if newest is None else tuple(newest)

    def lag(self, output: str, collection: Collection | None = None) -> int:
        """How many records ``output`` has not delivered yet: those past its cursor and those
        set aside and queued for another try."""
        total = 0
        names: tuple[Collection, ...] = (collection,) if collection else COLLECTIONS
        for name in names:
            after = self.cursor(output, name)
            (n,) = self.conn.execute(f"SELECT count(*) FROM {name} WHERE seq > ?", (after,)).fetchone()
            (queued,) = self.conn.execute(QUEUED_COUNT_SQL[name], (output, after)).fetchone()
            total += int(n) + int(queued)
        return total

    def cursor(self, output: str, collection: Stream) -> int:
        row = self.conn.execute(
            "SELECT seq FROM cursors WHERE output = ? AND collection = ?", (output, collection)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def advance(self, output: str, collection: Stream, seq: int) -> None:
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
        collection: Stream,
        first_seq: int,
        last_seq: int,
        records: int,
        status: int,
        error: str,
    ) -> None:
        """Record a batch the output's remote side refused for good, and move past it."""
        with self.transaction() as conn:
            # refused again after `rejected retry`: the new refusal replaces the queued one
            conn.execute(
                "DELETE FROM rejected WHERE output = ? AND collection = ? AND retry = 1 "
                "AND first_seq >= ? AND last_seq <= ?",
                (output, collection, first_seq, last_seq),
            )
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

    def set_aside_message(self, source: str, topic: str, reason: str) -> bool:
        """Keep a pushed message that could not be read in ``rejected`` (its topic and why; the
        reason names the message, so one resent is kept once); no cursor moves, since nothing of
        it was stored. False when that message was already set aside."""
        error = f"topic {topic}: {reason}"[:1000]
        with self.transaction() as conn:
            if conn.execute(
                "SELECT 1 FROM rejected WHERE output = ? AND error = ? LIMIT 1", (source, error)
            ).fetchone():
                return False
            conn.execute(
                "INSERT INTO rejected (output, collection, first_seq, last_seq, records, status, "
                "error, at) VALUES (?, ?, 0, 0, 1, 0, ?, ?)",
                (source, "entries", error, _now_ms()),
            )
        return True

    def rejected_count(self, output: str) -> int:
        """Records ``output`` set aside and not queued for another try."""
        (n,) = self.conn.execute(
            "SELECT coalesce(sum(records), 0) FROM rejected WHERE output = ? AND retry = 0", (output,)
        ).fetchone()
        return int(n)

    def rejected(
        self, output: str | None = None, collection: Collection | None = None
    ) -> list[RejectedGroup]:
        """Records set aside, grouped by output, collection, status code, reason and whether
        they are queued for another try."""
        return rejected_groups(self.conn, output, collection)

    def queue_retry(self, output: str | None = None, collection: Collection | None = None) -> dict[str, int]:
        """Queue the records set aside (by ``output`` / in ``collection``, or all) for another
        try: the output's next pass sends them before anything past its cursor. Returns the
        records queued, per ``output collection``.

        A record changed since it was set aside went out again under its new ``seq`` (or was
        set aside again under it): its old entry has nothing left to send and is dropped.
        """
        queued: dict[str, int] = {}
        with self.transaction() as conn:
            for name in COLLECTIONS:
                if collection is not None and name != collection:
                    continue
                where, params = _rejected_where(output, name)
                conn.execute(
                    f"DELETE FROM rejected WHERE {where} AND NOT EXISTS "
                    f"(SELECT 1 FROM {name} c WHERE c.seq BETWEEN rejected.first_seq AND rejected.last_seq)",
                    params,
                )
                rows = conn.execute(
                    f"SELECT output, sum(records) FROM rejected WHERE {where} AND retry = 0 GROUP BY output",
                    params,
                ).fetchall()
                conn.execute(f"UPDATE rejected SET retry = 1 WHERE {where} AND retry = 0", params)
                for name_of_output, records in rows:
                    queued[f"{name_of_output} {name}"] = int(records)
        return queued

    def retry_done(self, output: str, collection: Collection, seqs: Sequence[int]) -> None:
        """The far side accepted the queued records ``seqs``: their entries leave ``rejected``
        (and so do queued entries whose records are no longer in the store under their seq)."""
        queued = self.conn.execute(
            "SELECT 1 FROM rejected WHERE output = ? AND collection = ? AND retry = 1 LIMIT 1",
            (output, collection),
        ).fetchone()
        if queued is None:  # the common case, once per pass: no write
            return
        with self.transaction() as conn:
            if seqs:
                sent = set(seqs)
                rows = conn.execute(
                    "SELECT id, first_seq, last_seq FROM rejected WHERE output = ? AND collection = ? "
                    "AND retry = 1 AND first_seq >= ? AND last_seq <= ?",
                    (output, collection, min(sent), max(sent)),
                ).fetchall()
                for row_id, first, last in rows:
                    held = conn.execute(
                        f"SELECT seq FROM {collection} WHERE seq BETWEEN ? AND ?", (first, last)
                    ).fetchall()
                    if all(int(seq) in sent for (seq,) in held):
                        conn.execute("DELETE FROM rejected WHERE id = ?", (row_id,))
            conn.execute(
                "DELETE FROM rejected WHERE output = ? AND collection = ? AND retry = 1 AND NOT EXISTS "
                f"(SELECT 1 FROM {collection} c WHERE c.seq BETWEEN rejected.first_seq AND rejected.last_seq)",
                (output, collection),
            )

    # --- the events outbox -----------------------------------------------------------------

    def events_after(self, after: int, *, limit: int = 500) -> list[EventRow]:
        """Events with ``seq`` above ``after``, oldest first."""
        return ev.events_after(self.conn, after, limit)

    def events_lag(self, output: str) -> int:
        """Events ``output`` has not delivered yet."""
        return ev.events_lag(self.conn, self.cursor(output, EVENTS))

    def ensure_cursors(self, output: str, streams: Sequence[Stream]) -> None:
        """A cursor (at 0) for each stream ``output`` delivers that has none yet, so readers of
        the store see what an output delivers before it has delivered anything."""
        with self.transaction() as conn:
            ev.ensure_cursors(conn, output, streams)

    def log_delivery(
        self,
        hook: str,
        event_id: str,
        seq: int,
        event: str,
        body: str,
        *,
        outcome: str,
        status: int | None,
        at: int,
    ) -> None:
        """Note what became of an event at ``hook`` (its attempts counted); the newest
        :data:`store.events.WEBHOOK_LOG_KEEP` events per hook are kept."""
        row = EventRow(seq=seq, id=event_id, event=event, account="", time=at, text=body)
        with self.transaction() as conn:
            ev.log_delivery(conn, hook, row, outcome=outcome, status=status, at=at)

    # --- status ---------------------------------------------------------------------------

    def save_status(self, key: str, value: Mapping[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO machine_status (key, json, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at",
                (key, status_json(value), _now_ms()),
            )

    def load_status(self) -> dict[str, Any]:
        return {
            key: json.loads(doc)
            for key, doc in self.conn.execute("SELECT key, json FROM machine_status ORDER BY key")
        }

    def status_of(self, key: str) -> dict[str, Any] | None:
        """One status snapshot (None before it was first saved)."""
        row = self.conn.execute("SELECT json FROM machine_status WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        value = json.loads(row[0])
        return value if isinstance(value, dict) else None

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


#: the largest integer SQLite keeps (a bound that lets every row through)
SQLITE_INT_MAX: Final = 2**63 - 1


class SqliteAlertTransaction:
    """An alert pass's reads and writes on the writer connection, inside its transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def load_alert_state(self, key: str) -> AlertState:
        return ev.load_alert_state(self.conn, key)

    def save_alert_state(self, key: str, value: AlertState) -> None:
        ev.save_alert_state(self.conn, key, value)

    def new_entries(self, source: str, after: int, limit: int) -> list[NewRecord]:
        return ev.new_entries(self.conn, source, after, limit)

    def new_treatments(self, source: str, after: int, limit: int) -> list[NewRecord]:
        return ev.new_treatments(self.conn, source, after, limit)

    def add_events(self, events: Sequence[ev.NewEvent]) -> int:
        return ev.add_events(self.conn, events)

    def prune_events(self, before_ms: int) -> int:
        return ev.prune_events(self.conn, before_ms)

    def close_episode(self, key: str, end: int, now: int) -> None:
        ev.close_episode(self.conn, key, end, now)

    def open_episode(self, key: str, kind: str, start: int, now: int) -> None:
        ev.open_episode(self.conn, key, kind, start, now)

    def update_open_episode(
        self, key: str, sgv_min: int | None, sgv_max: int | None, readings: int, now: int
    ) -> None:
        ev.update_open_episode(self.conn, key, sgv_min, sgv_max, readings, now)


@contextmanager
def _alert_transaction(store: Store) -> Iterator[SqliteAlertTransaction]:
    with store.transaction() as conn:
        yield SqliteAlertTransaction(conn)
