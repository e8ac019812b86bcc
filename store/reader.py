"""A read-only view of a store file, for the HTTP API and other readers.

The daemon's one writer connection belongs to the runtime. Readers never touch it: each use of
a :class:`StoreReader` borrows a connection of its own (from a small pool, one borrower at a
time), opened without the right to create the file and with ``PRAGMA query_only``. Under WAL a
reader sees the last committed state and is never blocked by a frame being written.

Documents are served as the stored Nightscout JSON with a Mongo-style ``_id`` spliced in (and,
for CGM readings, a computed ``delta``), without parsing and re-serialising every document:
the stored JSON is compact and key-sorted, written by :func:`connect.records.to_nightscout`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from connect.errors import ConfigError, StoreUnusable
from connect.records import COLLECTIONS, EVENTS, Collection
from store import search
from store.database import QUEUED_COUNT_SQL, SQLITE_HEADER, has_retry_queue, object_id, rejected_groups
from store.schema import SCHEMA_VERSION
from store.terms import Row as SearchRow
from store.terms import Search
from store.values import OPS, Dose, Filter, Reading, RejectedGroup, StoredEpisode, Where

#: columns a reader may filter on, per collection (interpolated into SQL, so a closed set)
FILTER_COLUMNS: Final[dict[Collection, frozenset[str]]] = {
    "entries": frozenset({"date", "type", "device", "sgv"}),
    "treatments": frozenset({"date", "event_type", "device"}),
    "devicestatus": frozenset({"date", "device"}),
    "profile": frozenset({"date", "device"}),
}


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


#: the columns that make a record's identifier, per collection (uuid5 over device, date and kind)
KEY_COLUMNS: Final[dict[Collection, tuple[str, ...]]] = {
    "entries": ("date", "device", "type"),
    "treatments": ("date", "device", "event_type"),
    "devicestatus": ("date", "device"),
    "profile": ("date", "device"),
}


#: a reading this close to the previous one of the same device gets a ``delta``
DELTA_WINDOW_MS: Final = 15 * 60_000
#: beyond this gap, the difference is scaled to five minutes (as a 5-minute delta is read)
DELTA_SCALE_AFTER_MS: Final = 390_000
FIVE_MINUTES_MS: Final = 300_000


def _delta(sgv: int, date: int, prev_sgv: int, prev_date: int) -> int | float:
    """The change since the previous reading, per five minutes when readings were missed (as a
    five-minute delta is read)."""
    diff = sgv - prev_sgv
    gap = date - prev_date
    if gap <= DELTA_SCALE_AFTER_MS:
        return diff
    return round(diff * FIVE_MINUTES_MS / gap, 1)


def splice(doc: str, identifier: str, delta: int | float | None = None, mills: int | None = None) -> str:
    """``doc`` (a stored JSON object) with ``_id`` (and ``delta``, and ``mills``: the record's
    time in epoch ms, as Nightscout serves it on entries and treatments) added in front.

    The stored JSON is a compact object written by ``to_nightscout``, so the text after its
    opening brace can follow the new members as it is (no parsing, no re-encoding).
    """
    head = '{"_id":"' + object_id(identifier) + '"'
    if delta is not None:
        head += ',"delta":' + repr(delta)
    if mills is not None and '"mills":' not in doc:
        head += ',"mills":' + str(int(mills))
    if doc == "{}":
        return head + "}"
    return head + "," + doc[1:]


#: collections whose served documents carry ``mills``
WITH_MILLS: Final = frozenset({"entries", "treatments"})


#: filters under which a device's readings in a page are consecutive in the store
_RUN_KEEPING: Final = {
    ("date", ">="),
    ("date", ">"),
    ("date", "<="),
    ("date", "<"),
    ("type", "="),
    ("device", "="),
}


def _keeps_runs(f: Filter) -> bool:
    return (f.column, f.op) in _RUN_KEEPING


_REVISION_SQL: Final = (
    "SELECT max("
    + ", ".join(f"(SELECT coalesce(max(seq), 0) FROM {name})" for name in (*COLLECTIONS, "deleted"))
    + ")"
)
#: the same, for a store from before deletions were remembered (read by `serve` before a
#: daemon migrated it)
_REVISION_SQL_OLD: Final = (
    "SELECT max(" + ", ".join(f"(SELECT coalesce(max(seq), 0) FROM {name})" for name in COLLECTIONS) + ")"
)


class StoreReader:
    """Read-only queries over a store file; safe to use from many threads at once."""

    def __init__(self, path: str | Path, *, pool_size: int = 8, busy_timeout_ms: int = 5000) -> None:
        self.path = str(path)
        if self.path == ":memory:" or self.path.startswith("file::memory:"):
            # a private in-memory database cannot be opened a second time
            raise ConfigError("the HTTP API reads the store from a file; an in-memory store cannot be shared")
        self.pool_size = pool_size
        self.busy_timeout_ms = busy_timeout_ms
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        #: the store has the ``deleted`` table (schema 5): looked up until it has
        self._remembers_deletions = False

    # --- connections ----------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        # mode=rw: never create an empty file where the store should be (a typo in the path
        # must show up as "not ready", not as a silently empty site)
        uri = "file:" + quote(str(Path(self.path).absolute())) + "?mode=rw"
        conn = sqlite3.connect(
            uri, uri=True, check_same_thread=False, isolation_level=None, timeout=self.busy_timeout_ms / 1000
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA query_only = ON")
        return conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for this use only (autocommit: every statement is its own snapshot)."""
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError("the store reader is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        healthy = False
        try:
            yield conn
            healthy = True
        finally:
            with self._lock:
                keep = healthy and not self._closed and len(self._idle) < self.pool_size
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- documents ------------------------------------------------------------------------

    @staticmethod
    def _where(
        collection: Collection, filters: Sequence[Filter], alias: str, extra: Where | None = None
    ) -> tuple[str, list[Any]]:
        allowed = FILTER_COLUMNS[collection]
        clauses: list[str] = []
        params: list[Any] = []
        if extra is not None:
            clauses.append(f"({extra.sql})")
            params.extend(extra.params)
        for f in filters:
            if f.column not in allowed or f.op not in OPS:
                raise ValueError(f"cannot filter {collection} on {f.column!r}")
            clauses.append(f"{alias}.{f.column} {f.op} ?")
            params.append(f.value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def doc_texts(
        self,
        collection: Collection,
        filters: Sequence[Filter] = (),
        limit: int = 10,
        *,
        page_deltas: bool = True,
        extra: Where | None = None,
    ) -> list[str]:
        """The newest ``limit`` documents matching every filter, as JSON texts, newest first.

        CGM readings stored without a ``delta`` get one from the previous reading of the same
        device (within :data:`DELTA_WINDOW_MS`). ``page_deltas=False`` always looks that reading
        up in the store (the tests compare both ways). ``extra`` is one more condition on every
        document (a search on any field, :func:`store.search.where`).
        """
        if collection not in COLLECTIONS:
            raise ValueError(f"unknown collection {collection!r}")
        where, params = self._where(collection, filters, "e", extra)
        if collection != "entries":
            sql = (
                f"SELECT e.identifier, e.json, e.date FROM {collection} e{where} "
                "ORDER BY e.date DESC, e.rowid DESC LIMIT ?"
            )
            with self.connection() as conn:
                if extra is not None:
                    extra.prepare(conn)
                rows = conn.execute(sql, [*params, limit]).fetchall()
            served = collection in WITH_MILLS
            return [splice(doc, identifier, mills=date if served else None) for identifier, doc, date in rows]
        if page_deltas and extra is None and all(_keeps_runs(f) for f in filters):
            return self._entries_from_page(where, params, limit)
        # p: the previous reading of the same device within the window, looked up per row
        sql = (
            "SELECT e.identifier, e.json, e.sgv, e.date, p.sgv, p.date FROM entries e "
            "LEFT JOIN entries p ON p.rowid = ("
            "  SELECT q.rowid FROM entries q WHERE e.type = 'sgv' AND q.type = 'sgv' "
            "  AND q.device = e.device AND q.date < e.date AND q.date >= e.date - ? "
            "  AND q.sgv IS NOT NULL ORDER BY q.date DESC LIMIT 1)"
            f"{where} ORDER BY e.date DESC, e.rowid DESC LIMIT ?"
        )
        with self.connection() as conn:
            if extra is not None:
                extra.prepare(conn)
            rows = conn.execute(sql, [DELTA_WINDOW_MS, *params, limit]).fetchall()
        out: list[str] = []
        for identifier, doc, sgv, date, prev_sgv, prev_date in rows:
            # a delta the source sent is kept as it is
            if prev_sgv is None or sgv is None or '"delta":' in doc:
                out.append(splice(doc, identifier, mills=date))
            else:
                out.append(splice(doc, identifier, _delta(sgv, date, prev_sgv, prev_date), mills=date))
        return out

    def _entries_from_page(self, where: str, params: list[Any], limit: int) -> list[str]:
        """Entries whose deltas come from the page itself.

        With filters that only cut the time range or pick a type or device, the readings of one
        device in the page are consecutive in the store: each reading's predecessor is the next
        older reading of its device in the page. Only each device's oldest reading in the page
        needs a lookup.
        """
        sql = (
            "SELECT e.identifier, e.json, e.type, e.sgv, e.date, e.device FROM entries e"
            f"{where} ORDER BY e.date DESC, e.rowid DESC LIMIT ?"
        )
        previous_sql = (
            "SELECT sgv, date FROM entries WHERE type = 'sgv' AND device = ? AND date < ? AND date >= ? "
            "AND sgv IS NOT NULL ORDER BY date DESC LIMIT 1"
        )
        with self.connection() as conn:
            rows = conn.execute(sql, [*params, limit]).fetchall()
            # oldest first: remember each device's last reading on the way up
            last: dict[str, tuple[int, int]] = {}
            deltas: list[int | float | None] = [None] * len(rows)
            for index in range(len(rows) - 1, -1, -1):
                _identifier, doc, kind, sgv, date, device = rows[index]
                if kind != "sgv" or sgv is None:
                    continue
                prev = last.get(device)
                if prev is None:
                    found = conn.execute(previous_sql, (device, date, date - DELTA_WINDOW_MS)).fetchone()
                    prev = None if found is None else (int(found[0]), int(found[1]))
                if prev is not None and date - prev[1] <= DELTA_WINDOW_MS and '"delta":' not in doc:
                    deltas[index] = _delta(sgv, date, prev[0], prev[1])
                last[device] = (sgv, date)
        return [splice(row[1], row[0], delta, mills=row[4]) for row, delta in zip(rows, deltas, strict=True)]

    def body(self, collection: Collection, filters: Sequence[Filter] = (), limit: int = 10) -> bytes:
        """A JSON array of :meth:`doc_texts`, ready to send."""
        return ("[" + ",".join(self.doc_texts(collection, filters, limit)) + "]").encode("utf-8")

    def docs(
        self, collection: Collection, filters: Sequence[Filter] = (), limit: int = 10
    ) -> list[dict[str, Any]]:
        """Like :meth:`doc_texts`, parsed."""
        return [json.loads(text) for text in self.doc_texts(collection, filters, limit)]

    def id_filters(self, collection: Collection, wanted: str) -> tuple[Filter, ...] | None:
        """Filters that select the record served with ``_id`` ``wanted``, or None if none is.

        The id we serve is the first 24 hex digits of the record's identifier (a UUID): the
        identifier is found by prefix on its primary key, and the record's own key columns
        become the filters."""
        # a UUID's first 24 hex digits, with its dashes: 8-4-4-4 and 4 of the last group
        prefix = f"{wanted[:8]}-{wanted[8:12]}-{wanted[12:16]}-{wanted[16:20]}-{wanted[20:24]}"
        columns = KEY_COLUMNS[collection]
        sql = (
            f"SELECT identifier, {', '.join(columns)} FROM {collection} "
            "WHERE identifier >= ? AND identifier < ? LIMIT 8"
        )
        with self.connection() as conn:
            # "~" sorts after every hex digit: the range is the identifiers that start with prefix
            rows = conn.execute(sql, (prefix, prefix + "~")).fetchall()
        for identifier, *values in rows:
            if object_id(str(identifier)) == wanted:
                return tuple(
                    Filter(column, "=", value)
                    for column, value in zip(columns, values, strict=True)
                    if isinstance(value, (int, str))
                )
        return None

    def distinct_values(self, collection: Collection, column: str, limit: int) -> list[str]:
        """Up to ``limit`` values ``column`` holds in ``collection``."""
        if column not in FILTER_COLUMNS[collection]:
            raise ValueError(f"cannot read the values of {collection}.{column}")
        sql = f"SELECT DISTINCT {column} FROM {collection} WHERE {column} IS NOT NULL LIMIT ?"
        with self.connection() as conn:
            return [str(value) for (value,) in conn.execute(sql, (limit,))]

    def pages_between(self, collection: Collection, since: int, until: int, page: int) -> Iterator[list[str]]:
        """The stored JSON of the records with ``since <= date <= until``, oldest first, ``page``
        rows at a time (each page a query of its own: a long export holds no connection)."""
        first = f"SELECT date, rowid, json FROM {collection} WHERE date >= ? AND date <= ? ORDER BY date, rowid LIMIT ?"
        # from the last row's time on (an index range), past the last row itself
        after_sql = (
            f"SELECT date, rowid, json FROM {collection} WHERE date >= ? AND date <= ? "
            "AND (date > ? OR rowid > ?) ORDER BY date, rowid LIMIT ?"
        )
        last: tuple[int, int] | None = None
        while True:
            with self.connection() as conn:
                if last is None:
                    rows = conn.execute(first, (since, until, page)).fetchall()
                else:
                    rows = conn.execute(after_sql, (last[0], until, last[0], last[1], page)).fetchall()
            if not rows:
                return
            yield [str(doc) for _date, _rowid, doc in rows]
            if len(rows) < page:
                return
            last = (int(rows[-1][0]), int(rows[-1][1]))

    def devices(self, collection: Collection) -> list[tuple[str, int]]:
        """Every device of a collection with the time of its newest record, newest first."""
        with self.connection() as conn:
            rows = conn.execute(
                f"SELECT device, max(date) AS newest FROM {collection} WHERE device IS NOT NULL "
                "GROUP BY device ORDER BY newest DESC, device"
            ).fetchall()
        return [(str(device), int(newest)) for device, newest in rows]

    # --- API v3's reads by identifier and by time of change (store.search) ----------------------

    def one(self, collection: Collection, identifier: str) -> SearchRow | None:
        return search.one(self, collection, identifier)

    def history(
        self, collection: Collection, since: int, limit: int, *, inclusive: bool = False
    ) -> list[SearchRow]:
        return search.history(self, collection, since, limit, inclusive=inclusive)

    def search(self, query: Search) -> list[SearchRow]:
        return search.search(self, query)

    def last_modified(self) -> dict[Collection, int]:
        return search.last_modified(self)

    # --- what the status page and the status API show ----------------------------------------

    def readings(self, since_ms: int, until_ms: int) -> list[Reading]:
        """CGM readings with ``since_ms <= date <= until_ms``, oldest first."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT date, sgv, direction, device FROM entries WHERE type = 'sgv' AND sgv IS NOT NULL "
                "AND date >= ? AND date <= ? ORDER BY date, rowid",
                (since_ms, until_ms),
            ).fetchall()
        return [Reading(int(d), int(s), direction, str(device)) for d, s, direction, device in rows]

    def latest_reading(self) -> Reading | None:
        with self.connection() as conn:
            row = conn.execute(
                "SELECT date, sgv, direction, device FROM entries WHERE type = 'sgv' AND sgv IS NOT NULL "
                "ORDER BY date DESC, rowid DESC LIMIT 1"
            ).fetchone()
        return None if row is None else Reading(int(row[0]), int(row[1]), row[2], str(row[3]))

    def latest_delta(self) -> float | None:
        """The newest CGM reading's ``delta``, as ``/api/v1/entries/current.json`` serves it (the
        source's own, else the change since the device's previous reading), or None."""
        texts = self.doc_texts("entries", [Filter("type", "=", "sgv")], limit=1)
        if not texts:
            return None
        delta = json.loads(texts[0]).get("delta")
        return float(delta) if isinstance(delta, (int, float)) and not isinstance(delta, bool) else None

    def doses(self, since_ms: int, until_ms: int) -> list[Dose]:
        """Treatments with carbs or insulin and ``since_ms <= date <= until_ms``, oldest first."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT date, event_type, insulin, carbs FROM treatments WHERE date >= ? AND date <= ? "
                "AND (insulin > 0 OR carbs > 0) ORDER BY date, rowid",
                (since_ms, until_ms),
            ).fetchall()
        return [
            Dose(
                int(d),
                None if e is None else str(e),
                None if i is None else float(i),
                None if c is None else float(c),
            )
            for d, e, i, c in rows
        ]

    def collections(self) -> dict[str, dict[str, int | None]]:
        """Records stored and the newest record time, per collection."""
        out: dict[str, dict[str, int | None]] = {}
        with self.connection() as conn:
            for name in COLLECTIONS:
                count, newest = conn.execute(f"SELECT count(*), max(date) FROM {name}").fetchone()
                out[name] = {"records": int(count), "newest": None if newest is None else int(newest)}
        return out

    def outputs(self) -> list[str]:
        """Every output that has a delivery cursor in this store."""
        with self.connection() as conn:
            return [
                str(name) for (name,) in conn.execute("SELECT DISTINCT output FROM cursors ORDER BY output")
            ]

    def lag(self, outputs: Iterable[str]) -> dict[str, dict[str, int]]:
        """Records each output has not delivered yet, per collection (by the store's cursors)."""
        result: dict[str, dict[str, int]] = {}
        with self.connection() as conn:
            for output in outputs:
                cursors = dict(
                    conn.execute("SELECT collection, seq FROM cursors WHERE output = ?", (output,))
                )
                queue = has_retry_queue(conn)
                per: dict[str, int] = {}
                # an output with an events cursor delivers the events and the collections it
                # has cursors for (webhooks: none); any other output delivers every collection
                delivers_events = EVENTS in cursors
                for name in COLLECTIONS:
                    if delivers_events and name not in cursors:
                        continue
                    after = int(cursors.get(name, 0))
                    (n,) = conn.execute(f"SELECT count(*) FROM {name} WHERE seq > ?", (after,)).fetchone()
                    # set-aside records queued by `rejected retry` wait for delivery too
                    (queued,) = (
                        conn.execute(QUEUED_COUNT_SQL[name], (output, after)).fetchone() if queue else (0,)
                    )
                    per[name] = int(n) + int(queued)
                if delivers_events:
                    (n,) = conn.execute(
                        "SELECT count(*) FROM events WHERE seq > ?", (int(cursors[EVENTS]),)
                    ).fetchone()
                    per[EVENTS] = int(n)
                result[output] = per
        return result

    def rejected(self) -> list[RejectedGroup]:
        """Records the outputs set aside, grouped (see :meth:`store.database.Store.rejected`)."""
        with self.connection() as conn:
            return rejected_groups(conn)

    def episodes(self, since_ms: int, until_ms: int, *, account: str | None = None) -> list[StoredEpisode]:
        """Episodes that overlap ``[since_ms, until_ms]``, oldest first (an open one has no end)."""
        sql = (
            "SELECT account, kind, start_at, end_at, sgv_min, sgv_max, readings FROM episodes "
            "WHERE start_at <= ? AND (end_at IS NULL OR end_at >= ?)"
        )
        params: list[Any] = [until_ms, since_ms]
        if account is not None:
            sql += " AND account = ?"
            params.append(account)
        sql += " ORDER BY start_at, id"
        with self.connection() as conn:
            if not _has_table(conn, "episodes"):  # a store written before episodes existed
                return []
            rows = conn.execute(sql, params).fetchall()
        return [
            StoredEpisode(str(a), str(k), int(s), None if e is None else int(e), lo, hi, int(n))
            for a, k, s, e, lo, hi, n in rows
        ]

    def webhook_log(self) -> dict[str, list[dict[str, Any]]]:
        """The payloads each webhook was last sent (newest first) and what became of them."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self.connection() as conn:
            if not _has_table(conn, "webhook_log"):
                return out
            rows = conn.execute(
                "SELECT hook, event_id, seq, event, attempts, status, outcome, at, body FROM webhook_log "
                "ORDER BY hook, seq DESC"
            ).fetchall()
        for hook, event_id, seq, event, attempts, status, outcome, at, body in rows:
            try:
                payload: Any = json.loads(body)
            except ValueError:
                payload = body
            out.setdefault(str(hook), []).append(
                {
                    "id": event_id,
                    "seq": int(seq),
                    "event": event,
                    "attempts": int(attempts),
                    "status": status,
                    "outcome": outcome,
                    "at": int(at),
                    "payload": payload,
                }
            )
        return out

    def saved_status(self, key: str = "daemon") -> dict[str, Any]:
        """The status snapshot a daemon last wrote into this store (``serve`` shows it)."""
        with self.connection() as conn:
            row = conn.execute("SELECT json FROM machine_status WHERE key = ?", (key,)).fetchone()
        if row is None:
            return {"sources": [], "outputs": []}
        loaded = json.loads(row[0])
        return loaded if isinstance(loaded, dict) else {"sources": [], "outputs": []}

    def revision(self) -> int:
        """The newest ``seq`` in the store: it grows whenever a document is inserted or changed
        (and only then: an identical record written again keeps its ``seq``). One lookup on
        each collection's unique ``seq`` index, so a reader can ask it before every answer.
        A deletion takes a ``seq`` too, so it moves the revision as well."""
        with self.connection() as conn:
            if not self._remembers_deletions:
                self._remembers_deletions = _has_table(conn, "deleted")
            sql = _REVISION_SQL if self._remembers_deletions else _REVISION_SQL_OLD
            (value,) = conn.execute(sql).fetchone()
        return int(value)

    def ping(self) -> int:
        """Check that the store can be read; returns its schema version."""
        with self.connection() as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            conn.execute("SELECT 1 FROM entries LIMIT 1").fetchall()
        return int(version)

    def verify(self) -> int:
        """The store as a reader needs it, checked once before serving: a SQLite database, a
        store of ours (not of a newer version) that passes ``PRAGMA quick_check``. Returns its
        schema version, or raises :class:`StoreUnusable` in one line naming the store."""
        where = f"store {self.path!r}"
        file = Path(self.path)
        if file.is_dir():
            raise StoreUnusable(f"{where}: is a directory, not a store file")
        try:
            with file.open("rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise StoreUnusable(f"{where}: cannot be read ({exc.strerror or type(exc).__name__})") from None
        if header != SQLITE_HEADER:
            raise StoreUnusable(f"{where}: is not a SQLite database")
        try:
            with self.connection() as conn:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version > SCHEMA_VERSION:
                    raise StoreUnusable(
                        f"{where}: written by a newer version of nightscout-connect (schema {version}; "
                        f"this version knows up to {SCHEMA_VERSION}); upgrade to serve it"
                    )
                if version == 0:
                    raise StoreUnusable(f"{where}: is not a nightscout-connect store (no schema)")
                problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(1)")]
        except sqlite3.Error as exc:
            raise StoreUnusable(f"{where}: cannot be read ({exc})") from None
        if problems != ["ok"]:
            first = " ".join(problems[0].split())[:200] if problems else "no answer"
            raise StoreUnusable(f"{where}: is damaged (quick_check: {first}); restore it from a backup")
        return version
