"""The PostgreSQL store: the same writer as :class:`store.database.Store`, for many accounts in
one database (``CONNECT_STORE_URL=postgresql://…``).

A :class:`PostgresStore` is one account's view of the database: every statement names its
``account``, so any number of them — in one process or in many, on one pool or on several —
share the tables without meeting (the schema: :mod:`store.postgres_schema`). Connections come
from a :class:`psycopg_pool.ConnectionPool` in autocommit mode; a write is one explicit
transaction, so a frame's records and its checkpoints commit together or not at all.

The rows, their JSON and their ``seq`` are made exactly as the SQLite store makes them
(:func:`store.database.row_for`), so an output sends the same bytes whichever store it reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg_pool
import structlog

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
)
from connect.redact import redact_text, register_secret
from store.abc import AlertTransaction, StoredRow
from store.database import object_id, row_for, status_json
from store.events import WEBHOOK_LOG_KEEP, AlertState, EventRow, NewEvent, NewRecord
from store.postgres_schema import SCHEMA_VERSION, SchemaTooNew, migrate
from store.schema import COLLECTION_COLUMNS
from store.values import Pending, PersistResult, RejectedGroup, Stored
from store.writes import SharedWrites

Conn = psycopg.Connection[tuple[Any, ...]]

#: URL schemes that name a PostgreSQL store
SCHEMES: Final = ("postgresql", "postgres")
#: connections one pool keeps at most (the writer uses one at a time; the rest serve readers)
POOL_MAX: Final = 4
#: connections of the pool the daemons of one process share (one per database URL)
SHARED_POOL_MAX: Final = 8
#: how long opening waits for a first connection (seconds)
CONNECT_TIMEOUT: Final = 10.0
#: how long a call waits for a free connection of the pool (seconds): past it, a StoreError
POOL_WAIT: Final = 30.0


_OBJECT_ID: Final = re.compile(r"^[0-9a-fA-F]{24}$")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _q(text: str) -> bytes:
    # statements built from the fixed collection names (never from data) are passed as bytes:
    # psycopg takes them as they are, placeholders and all
    return text.encode("utf-8")


def is_store_url(value: str) -> bool:
    """Whether ``value`` is a URL of a PostgreSQL store."""
    scheme, sep, _ = value.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def display_url(url: str) -> str:
    """``url`` as logs, status and errors show it: no password, no query (which may hold one)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://(unreadable URL)"
    user = f"{parts.username}@" if parts.username else ""
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))


def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def open_pool(
    url: str, *, max_size: int = POOL_MAX, name: str = "nightscout-connect"
) -> psycopg_pool.ConnectionPool:
    """A pool of autocommit connections to ``url``, open and with one connection made (else
    :class:`StoreUnusable` in one line, without the password). Share one pool between the
    stores of many accounts: file descriptors then grow with the pool, not the accounts."""
    register_secret(url_password(url))
    try:
        # one connection first: a refused one fails at once, and says why (the pool would
        # retry it quietly until its timeout)
        psycopg.connect(url, connect_timeout=int(CONNECT_TIMEOUT)).close()
    except psycopg.Error as exc:
        raise StoreUnusable(f"store {display_url(url)}: cannot connect ({_one_line(exc)})") from None
    pool: psycopg_pool.ConnectionPool = psycopg_pool.ConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        kwargs={"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT)},
        timeout=POOL_WAIT,
        name=name,
        open=False,
    )
    try:
        pool.open(wait=True, timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        pool.close()
        raise StoreUnusable(f"store {display_url(url)}: cannot connect ({_one_line(exc)})") from None
    return pool


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return redact_text(f"{type(exc).__name__}: {text}")


def locks_application_name() -> str:
    """How the server names this process's lock session (``pg_stat_activity``): an operator,
    or a test, sees which process holds which account's lock. At most 63 bytes, as the server
    keeps them."""
    return f"nightscout-connect locks {socket.gethostname()}:{os.getpid()}"[:63]


def account_lock_key(account: str) -> int:
    """The advisory lock key of one account's daemon (a signed 64-bit number)."""
    digest = hashlib.sha256(f"nightscout-connect account {account}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


log = structlog.get_logger("store")

#: how often, at most, a write asks whether the lock session is still there (see
#: :meth:`Shared.check`)
LOCK_CHECK_S: Final = 10.0


class Shared:
    """What the daemons of one process share per database URL: one pool for every account's
    reads and writes, and one session holding every account's one-daemon lock. File
    descriptors and server connections then grow with the pool, not with the accounts."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = f"store {display_url(url)}"
        self.pool = open_pool(url, max_size=SHARED_POOL_MAX)
        self.users = 0
        self._locks: Conn | None = None
        #: the accounts whose lock this process holds
        self._held: set[str] = set()
        #: accounts whose lock :meth:`reserve` took for a store not yet opened
        self._reserved: set[str] = set()
        #: accounts whose lock went with a lost session and that another daemon holds now
        self._lost: set[str] = set()
        self._checked = time.monotonic()
        self._guard = threading.Lock()

    def _session(self) -> Conn:
        # a session that ended (a server restart) took its locks with it: take a new one
        if self._locks is None or self._locks.closed or self._locks.broken:
            self._held.clear()
            self._reserved.clear()
            self._locks = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=int(CONNECT_TIMEOUT),
                application_name=locks_application_name(),
            )
        return self._locks

    def lock(self, account: str) -> None:
        """One daemon per account, as one daemon per SQLite file: a session-level advisory lock,
        held while the daemon runs and dropped by the server when the session ends, however
        the process ends; :class:`StoreUnusable` when another daemon holds it."""
        taken = False
        try:
            with self._guard:
                # a session's advisory locks stack: a second daemon of this process is told
                # apart here, one of another process by the server
                if account in self._reserved:
                    self._reserved.discard(account)
                    self._held.add(account)
                    taken = True
                elif account not in self._held:
                    key = account_lock_key(account)
                    row = self._session().execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                    taken = row is not None and bool(row[0])
                    if taken:
                        self._held.add(account)
        except psycopg.Error as exc:
            raise StoreUnusable(f"{self.where}: cannot be used ({_one_line(exc)})") from None
        if not taken:
            name = f"account {account!r}" if account else "the account with no --account"
            raise StoreUnusable(
                f"{self.where}: {name} is in use by another daemon; one daemon per account: stop it, "
                "or name another --account / CONNECT_ACCOUNT"
            )

    def reserve(self, accounts: Sequence[str]) -> None:
        """The one-daemon locks of many accounts tried in one statement, before their stores
        are opened one by one (each :meth:`lock` then finds its own taken): a thousand accounts
        starting wait for one round trip, not a thousand in turn on the one lock session. A lock
        not taken here (another daemon holds it, or the server could not be asked) is left to
        the account's own :meth:`lock`, which reports it; :meth:`unreserve` gives back those
        whose store was not opened after all."""
        with self._guard, contextlib.suppress(psycopg.Error):
            keys = {
                account_lock_key(a): a for a in accounts if a not in self._held and a not in self._reserved
            }
            if not keys:
                return
            rows = (
                self._session()
                .execute("SELECT k, pg_try_advisory_lock(k) FROM unnest(%s::bigint[]) AS k", (list(keys),))
                .fetchall()
            )
            self._reserved.update(keys[int(k)] for k, taken in rows if taken)

    def unreserve(self, accounts: Sequence[str]) -> None:
        """The locks :meth:`reserve` took for ``accounts`` whose store was not opened, given back."""
        with self._guard, contextlib.suppress(psycopg.Error):
            keys = [account_lock_key(a) for a in accounts if a in self._reserved]
            self._reserved.difference_update(accounts)
            if keys and self._locks is not None and not self._locks.closed:
                self._locks.execute("SELECT pg_advisory_unlock(k) FROM unnest(%s::bigint[]) AS k", (keys,))

    def check(self, account: str) -> None:
        """Before a write of ``account``'s: is its lock still this process's?

        A session that ended (the server restarted, or someone ended it) took every lock with
        it, and another daemon of the same account could start meanwhile. So at most every
        :data:`LOCK_CHECK_S` seconds a write asks the session whether it is there; when it is
        not, a new one takes every lock again at once. An account whose lock another daemon
        took in between cannot write (:class:`StoreError`, retried as any fault of the store:
        its frames wait) until that daemon lets go; each of its writes tries again."""
        if account not in self._lost and time.monotonic() - self._checked < LOCK_CHECK_S:
            return  # (read without the guard, which a lock being taken holds over a round trip)
        try:
            with self._guard:
                now = time.monotonic()
                if account in self._lost or now - self._checked >= LOCK_CHECK_S:
                    self._checked = now
                    self._retake()
                lost = account in self._lost
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: the lock session: {_one_line(exc)}") from None
        if lost:
            raise StoreError(
                f"{self.where}: account {account!r} is in use by another daemon (this one's lock "
                "went with a lost database session); waiting for it to stop"
            )

    def _retake(self) -> None:
        """(Under the guard.) The locks of a lost session taken again on a new one, and those
        another daemon held when last tried."""
        session = self._locks
        alive = False
        if session is not None and not session.closed and not session.broken:
            with contextlib.suppress(psycopg.Error):
                session.execute("SELECT 1")
                alive = True
        if alive:
            owned = set(self._lost)
        else:
            owned = self._held | self._lost | self._reserved
            if session is not None:
                session.close()
            self._locks = None
        if not owned:
            return
        keys = {account_lock_key(a): a for a in owned}
        rows = (
            self._session()
            .execute("SELECT k, pg_try_advisory_lock(k) FROM unnest(%s::bigint[]) AS k", (list(keys),))
            .fetchall()
        )
        if not alive:
            log.warning(
                "store lock session lost; locks taken again", store=display_url(self.url), accounts=len(keys)
            )
        for key, taken in rows:
            account = keys[int(key)]
            if taken:
                self._lost.discard(account)
                self._held.add(account)
            else:
                self._held.discard(account)
                self._reserved.discard(account)
                self._lost.add(account)

    def unlock(self, account: str) -> None:
        with self._guard, contextlib.suppress(psycopg.Error):
            self._lost.discard(account)
            if account not in self._held:
                return
            self._held.discard(account)
            if self._locks is not None and not self._locks.closed:
                self._locks.execute("SELECT pg_advisory_unlock(%s)", (account_lock_key(account),))

    def close(self) -> None:
        self.pool.close()
        with self._guard:
            if self._locks is not None:
                self._locks.close()
                self._locks = None


_shared: dict[str, Shared] = {}
_shared_guard = threading.Lock()


@contextmanager
def reserved(url: str, accounts: Sequence[str]) -> Iterator[None]:
    """While the block runs, ``accounts``' one-daemon locks on ``url`` are taken in one
    statement (:meth:`Shared.reserve`), for :meth:`PostgresStore.open` of each to find; the
    ones no store took are given back at the end."""
    shared = acquire_shared(url)
    try:
        shared.reserve(accounts)
        yield
    finally:
        shared.unreserve(accounts)
        release_shared(shared)


def acquire_shared(url: str) -> Shared:
    """The process's :class:`Shared` for ``url`` (made on first use), counted as used once more."""
    with _shared_guard:
        shared = _shared.get(url)
        if shared is None:
            shared = _shared[url] = Shared(url)
        shared.users += 1
        return shared


def release_shared(shared: Shared) -> None:
    """One user less; the last one closes the pool and the lock session."""
    with _shared_guard:
        shared.users -= 1
        if shared.users > 0:
            return
        _shared.pop(shared.url, None)
    shared.close()


#: pools whose database this process has brought to the current schema
_migrated: weakref.WeakSet[psycopg_pool.ConnectionPool] = weakref.WeakSet()
_migrate_lock = threading.Lock()


def ensure_schema(pool: psycopg_pool.ConnectionPool) -> int:
    """Migrate the database behind ``pool`` (once per pool and process)."""
    with _migrate_lock:
        if pool in _migrated:
            return SCHEMA_VERSION
        with pool.connection() as conn:
            version = migrate(conn, _now_ms())
        _migrated.add(pool)
        return version


def _upsert_sql(collection: str) -> bytes:
    columns = ["account", *COLLECTION_COLUMNS[collection], "object_id"]
    names = ", ".join(columns)
    marks = ", ".join("%s" for _ in columns)
    keep = {"account", "identifier", "srv_created", "object_id"}
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keep)
    # an unchanged record keeps its seq and srv_modified (see store.database._upsert_sql)
    return _q(
        f"INSERT INTO {collection} ({names}) VALUES ({marks}) "
        f"ON CONFLICT (account, identifier) DO UPDATE SET {updates} "
        f"WHERE {collection}.json IS DISTINCT FROM excluded.json"
    )


UPSERT_SQL: Final[dict[str, bytes]] = {c: _upsert_sql(c) for c in COLLECTIONS}

_CURSOR_UPSERT: Final = (
    "INSERT INTO cursors (account, output, collection, seq, updated_at) VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT (account, output, collection) DO UPDATE SET seq = greatest(cursors.seq, excluded.seq), "
    "updated_at = excluded.updated_at"
)


def _rejected_where(output: str | None, collection: str | None) -> tuple[str, tuple[Any, ...]]:
    clauses: list[str] = []
    params: list[Any] = []
    if output is not None:
        clauses.append("output = %s")
        params.append(output)
    if collection is not None:
        clauses.append("collection = %s")
        params.append(collection)
    return " AND ".join(["true", *clauses]), tuple(params)


class PostgresStore(SharedWrites[Conn]):
    """One account's writer over a PostgreSQL database (see the module's doc).

    ``PostgresStore(url)`` opens a pool of its own (closed by :meth:`close`);
    ``PostgresStore(pool, account=…)`` uses a shared one (left open: it is the caller's).
    """

    #: store threads of the process all PostgreSQL stores share: a call mostly waits for the
    #: server, so as many as the shared pool has connections
    threads = SHARED_POOL_MAX
    #: of which alert passes (work no frame waits on) take at most half: at a thousand accounts'
    #: start their passes would otherwise hold the connections the next frames and opens need
    #: (the start measured a quarter shorter; SQLite's frames run on the loop, so its stores
    #: give passes every thread)
    background_threads = SHARED_POOL_MAX // 2

    def __init__(self, url_or_pool: str | psycopg_pool.ConnectionPool, *, account: str = "") -> None:
        if isinstance(url_or_pool, str):
            self.pool = open_pool(url_or_pool)
            self._owns_pool = True
            self.path = display_url(url_or_pool)
        else:
            self.pool = url_or_pool
            self._owns_pool = False
            info = url_or_pool.conninfo
            self.path = display_url(info) if isinstance(info, str) and is_store_url(info) else "postgresql"
        self.account = account
        #: the process's pool and lock session this store was opened on (:meth:`open` only)
        self._shared: Shared | None = None
        #: transactions committed (a store that commits is healthy again)
        self.commits = 0
        try:
            self.version = ensure_schema(self.pool)
            with self.pool.connection() as conn:
                # one round trip: the account's counters made if new, whether any deleted
                # document is remembered (a write then clears its identifier's), and the newest
                # srv_modified written (see Store._last_write_ms)
                newest = ", ".join(
                    f"(SELECT max(srv_modified) FROM {name} WHERE account = %(account)s)"
                    for name in COLLECTIONS
                )
                row = conn.execute(
                    "WITH made AS (INSERT INTO counters (account, name, value) "
                    "VALUES (%(account)s, 'seq', 0), (%(account)s, 'events', 0) "
                    "ON CONFLICT (account, name) DO NOTHING) "
                    "SELECT EXISTS (SELECT 1 FROM deleted WHERE account = %(account)s), "
                    f"coalesce(greatest({newest}), 0)",
                    {"account": account},
                ).fetchone()
                assert row is not None
                self._tombstones = bool(row[0])
                self._last_write_ms = int(row[1])
        except BaseException:
            if self._owns_pool:
                self.pool.close()
            raise

    @classmethod
    def open(cls, url: str, *, account: str = "") -> PostgresStore:
        """A daemon's store: connected and migrated, on the process's pool for ``url`` (shared by
        every account of the process), with the account's one-daemon lock taken; or
        :class:`StoreUnusable` in one line naming the store without its password."""
        where = f"store {display_url(url)}"
        shared = acquire_shared(url)
        try:
            shared.lock(account)
        except BaseException:
            release_shared(shared)
            raise
        try:
            store = cls(shared.pool, account=account)
            store._shared = shared
            return store
        except SchemaTooNew as exc:
            problem = (
                f"{where}: migrated by a newer version of nightscout-connect (schema {exc.version}; "
                f"this version knows up to {SCHEMA_VERSION}); upgrade, or name another store"
            )
        except psycopg.Error as exc:
            problem = f"{where}: cannot be used ({_one_line(exc)})"
        except BaseException:
            shared.unlock(account)
            release_shared(shared)
            raise
        shared.unlock(account)
        release_shared(shared)
        raise StoreUnusable(problem)

    def _scalar(self, conn: Conn, sql: str, params: Sequence[Any] = ()) -> int:
        # every query given here names the account first
        row = conn.execute(_q(sql), (self.account, *params)).fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def close(self) -> None:
        if self._owns_pool:
            self.pool.close()
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.unlock(self.account)
            release_shared(shared)

    def as_store_error(self, exc: BaseException) -> StoreError | None:
        """A lost server, a pool with no free connection, a full disk, a conflict to retry: a
        :class:`StoreError` (one line, no password); a constraint or a bad statement: None."""
        if isinstance(exc, StoreError):  # the account's lock lost to another daemon (Shared.check)
            return exc
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return StoreError(f"store {self.path}: {_one_line(exc)}")
        return None

    def _check_lock(self) -> None:
        if self._shared is not None:
            self._shared.check(self.account)

    @contextmanager
    def transaction(self) -> Iterator[Conn]:
        """One transaction on a pooled connection, rolled back on any exception; with the
        account's lock checked first (a daemon's store: :meth:`Shared.check`)."""
        self._check_lock()
        with self.pool.connection() as conn, conn.transaction():
            yield conn
        self.commits += 1

    @contextmanager
    def _read(self) -> Iterator[Conn]:
        with self.pool.connection() as conn:
            yield conn

    # --- frames -----------------------------------------------------------------------

    def _take_seqs(self, conn: Conn, name: str, n: int) -> int:
        """Reserve ``n`` values of the account's sequence ``name``; the one before the first.
        The row stays locked until the transaction ends: writers of one account take turns."""
        row = conn.execute(
            "UPDATE counters SET value = value + %s WHERE account = %s AND name = %s RETURNING value",
            (n, self.account, name),
        ).fetchone()
        if row is None:  # the account's counters were removed underneath: start them again
            conn.execute(
                "INSERT INTO counters (account, name, value) VALUES (%s, %s, %s)", (self.account, name, n)
            )
            return 0
        return int(row[0]) - n

    def _upsert(
        self, conn: Conn, source: str, records: Sequence[Record], identifiers: Sequence[str] | None = None
    ) -> dict[str, int]:
        written: dict[str, int] = {}
        if not records:
            return written
        seq = self._take_seqs(conn, "seq", len(records))
        now = max(_now_ms(), self._last_write_ms)
        by_collection: dict[str, list[tuple[Any, ...]]] = {}
        for i, record in enumerate(records):
            seq += 1
            ident = None if identifiers is None else identifiers[i]
            row = row_for(record, source, seq, now, ident)
            by_collection.setdefault(record.collection, []).append((self.account, *row, object_id(row[0])))
        with conn.cursor() as cur:
            for collection, rows in by_collection.items():
                # one statement per row (pipelined): a later row may replace an earlier one;
                # rowcount sums the rows inserted or changed
                cur.executemany(UPSERT_SQL[collection], rows)
                written[collection] = max(cur.rowcount, 0)
                if self._tombstones:
                    # a deleted document written again is a document again
                    cur.executemany(
                        "DELETE FROM deleted WHERE account = %s AND collection = %s AND identifier = %s",
                        [(self.account, collection, row[1]) for row in rows],
                    )
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
            moved = {k: v for k, v in batch.newest().items() if v > checkpoint.get(k, -1)}
            checkpoint.update(moved)
            if moved:  # every collection's in one statement
                conn.execute(
                    "INSERT INTO checkpoints (account, source, loop, collection, last_known, updated_at) "
                    "SELECT %s, %s, %s, c, k, %s FROM unnest(%s::text[], %s::bigint[]) AS m(c, k) "
                    "ON CONFLICT (account, source, loop, collection) "
                    "DO UPDATE SET last_known = excluded.last_known, updated_at = excluded.updated_at",
                    (self.account, source, loop, now, list(moved), list(moved.values())),
                )
        return PersistResult(written=written, checkpoint=checkpoint)

    # --- pushed records --------------------------------------------------------------------

    def _stored_by_object_id(self, conn: Conn, collection: Collection, oid: str) -> str | None:
        row = conn.execute(
            _q(f"SELECT identifier FROM {collection} WHERE account = %s AND object_id = %s LIMIT 1"),
            (self.account, oid.lower()),
        ).fetchone()
        return None if row is None else str(row[0])

    def _stored_by_key(self, conn: Conn, record: Record) -> str | None:
        if isinstance(record, Entry):
            sql, key = (
                "SELECT identifier FROM entries WHERE account = %s AND date = %s AND type = %s",
                record.type,
            )
        elif isinstance(record, Treatment):
            sql = "SELECT identifier FROM treatments WHERE account = %s AND date = %s AND event_type = %s"
            key = record.event_type
        else:
            return None
        row = conn.execute(_q(sql + " LIMIT 1"), (self.account, record.date, key)).fetchone()
        return None if row is None else str(row[0])

    def delete_pushed(self, collection: Collection, oid: str) -> bool:
        """Remove the record served with ``_id`` ``oid`` (remembered as deleted for API v3);
        False when there is none."""
        with self.transaction() as conn:
            ident = self._stored_by_object_id(conn, collection, oid)
            if ident is None:
                return False
            self._bury(conn, collection, ident, permanent=False)
        return True

    # --- API v3's writes: one document each, by identifier (see Store) -----------------------------

    def _live(self, conn: Conn, collection: Collection, identifier: str) -> Stored:
        """The stored document with this identifier, or served with this 24-hex ``_id``."""
        row = conn.execute(
            _q(f"SELECT identifier, json FROM {collection} WHERE account = %s AND identifier = %s"),
            (self.account, identifier),
        ).fetchone()
        if row is None and _OBJECT_ID.match(identifier):
            row = conn.execute(
                _q(
                    f"SELECT identifier, json FROM {collection} WHERE account = %s AND object_id = %s LIMIT 1"
                ),
                (self.account, identifier.lower()),
            ).fetchone()
        if row is None:
            return None
        doc = json.loads(row[1])
        return str(row[0]), doc if isinstance(doc, dict) else {}

    def _deleted(self, conn: Conn, collection: Collection, identifier: str) -> bool:
        if not self._tombstones:
            return False
        row = conn.execute(
            "SELECT 1 FROM deleted WHERE account = %s AND collection = %s AND identifier = %s "
            "AND json IS NOT NULL",
            (self.account, collection, identifier),
        ).fetchone()
        return row is not None

    def _stored_by_fallback(self, conn: Conn, record: Record) -> str | None:
        """API v3's dedupe fallback (see :meth:`Store._stored_by_fallback`)."""
        if isinstance(record, DeviceStatus):
            row = conn.execute(
                "SELECT identifier FROM devicestatus WHERE account = %s AND date = %s AND device = %s LIMIT 1",
                (self.account, record.date, record.device),
            ).fetchone()
            return None if row is None else str(row[0])
        if isinstance(record, Profile):
            row = conn.execute(
                "SELECT identifier FROM profile WHERE account = %s AND date = %s LIMIT 1",
                (self.account, record.date),
            ).fetchone()
            return None if row is None else str(row[0])
        return self._stored_by_key(conn, record)

    def _write_one(self, conn: Conn, source: str, record: Record, ident: str) -> int:
        self._upsert(conn, source, [record], [ident])
        conn.execute(
            "DELETE FROM deleted WHERE account = %s AND collection = %s AND identifier = %s",
            (self.account, record.collection, ident),
        )
        row = conn.execute(
            _q(f"SELECT srv_modified FROM {record.collection} WHERE account = %s AND identifier = %s"),
            (self.account, ident),
        ).fetchone()
        assert row is not None  # written just now, in this transaction
        return int(row[0])

    def delete_v3(self, collection: Collection, identifier: str, *, permanent: bool) -> bool:
        """API v3's DELETE (see :meth:`Store.delete_v3`)."""
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

    def _bury(self, conn: Conn, collection: Collection, ident: str, *, permanent: bool) -> None:
        """Move a document from its collection table to ``deleted`` (its JSON dropped when
        ``permanent``), under a new ``seq`` and ``srv_modified``."""
        seq = self._take_seqs(conn, "seq", 1) + 1
        now = max(_now_ms(), self._last_write_ms)
        row = conn.execute(
            _q(f"SELECT json, srv_created FROM {collection} WHERE account = %s AND identifier = %s"),
            (self.account, ident),
        ).fetchone()
        if row is None:  # deleted already: keep its creation time
            row = conn.execute(
                "SELECT json, srv_created FROM deleted WHERE account = %s AND collection = %s AND identifier = %s",
                (self.account, collection, ident),
            ).fetchone()
        doc, created = (None, now) if row is None else row
        conn.execute(
            "INSERT INTO deleted (account, collection, identifier, seq, srv_created, srv_modified, json) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (account, collection, identifier) DO UPDATE SET "
            "seq = excluded.seq, srv_modified = excluded.srv_modified, json = excluded.json",
            (self.account, collection, ident, seq, created if created is not None else now, now,
             None if permanent else doc),
        )  # fmt: skip
        conn.execute(
            _q(f"DELETE FROM {collection} WHERE account = %s AND identifier = %s"), (self.account, ident)
        )
        self._last_write_ms = now
        self._tombstones = True

    def _checkpoints(self, conn: Conn, source: str, loop: str) -> dict[str, int]:
        rows = conn.execute(
            "SELECT collection, last_known FROM checkpoints WHERE account = %s AND source = %s AND loop = %s",
            (self.account, source, loop),
        ).fetchall()
        return {str(collection): int(value) for collection, value in rows}

    def checkpoints(self, source: str, loop: str) -> dict[str, int]:
        """last_known per collection for one loop of one source (empty before its first frame)."""
        with self._read() as conn:
            return self._checkpoints(conn, source, loop)

    # --- reads used by outputs -------------------------------------------------------------

    def count(self, collection: Collection) -> int:
        with self._read() as conn:
            return self._scalar(conn, f"SELECT count(*) FROM {collection} WHERE account = %s")

    def newest_date(self, collection: Collection) -> int | None:
        with self._read() as conn:
            row = conn.execute(
                _q(f"SELECT max(date) FROM {collection} WHERE account = %s"), (self.account,)
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def max_seq(self, collection: Collection) -> int:
        with self._read() as conn:
            return self._scalar(conn, f"SELECT coalesce(max(seq), 0) FROM {collection} WHERE account = %s")

    def _rows(self, sql: str, params: Sequence[Any]) -> list[StoredRow]:
        with self._read() as conn:
            rows = conn.execute(_q(sql), params).fetchall()
        # (seq, json, source) and, from rows_after, the columns (device, kind, date)
        return [StoredRow(int(row[0]), str(row[1]), str(row[2] or ""), *row[3:]) for row in rows]

    def pending(self, output: str, collection: Collection, *, limit: int = 500) -> list[Pending]:
        """Records past ``output``'s cursor, oldest change first."""
        return [Pending(seq=row.seq, doc=row.doc()) for row in self.pending_rows(output, collection, limit)]

    def pending_rows(self, output: str, collection: Collection, limit: int) -> list[StoredRow]:
        return self.rows_after(collection, self.cursor(output, collection), limit)

    def rows_after(self, collection: Collection, after: int, limit: int) -> list[StoredRow]:
        kind = "type" if collection == "entries" else "NULL"
        return self._rows(
            f"SELECT seq, json, source, device, {kind}, date FROM {collection} "
            "WHERE account = %s AND seq > %s ORDER BY seq LIMIT %s",
            (self.account, after, limit),
        )

    def queued_rows(self, output: str, collection: Collection, limit: int) -> list[StoredRow]:
        return self._rows(
            f"SELECT DISTINCT c.seq, c.json, c.source FROM rejected r JOIN {collection} c "
            "ON c.account = r.account AND c.seq BETWEEN r.first_seq AND r.last_seq "
            "WHERE r.account = %s AND r.output = %s AND r.collection = %s AND r.retry = 1 AND c.seq <= %s "
            "ORDER BY c.seq LIMIT %s",
            (self.account, output, collection, self.cursor(output, collection), limit),
        )

    def queued_collections(self, output: str) -> set[str]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT DISTINCT collection FROM rejected WHERE account = %s AND output = %s AND retry = 1",
                (self.account, output),
            ).fetchall()
        return {str(name) for (name,) in rows}

    def newest_sgv(self, *, upto_seq: int | None = None) -> StoredRow | None:
        rows = self._rows(
            "SELECT seq, json, source FROM entries WHERE account = %s AND type = 'sgv' AND seq <= %s "
            "ORDER BY date DESC LIMIT 1",
            (self.account, 2**63 - 1 if upto_seq is None else upto_seq),
        )
        return rows[0] if rows else None

    def sgv_before(self, date: int, since: int) -> int | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT sgv FROM entries WHERE account = %s AND type = 'sgv' AND date < %s AND date >= %s "
                "AND sgv IS NOT NULL ORDER BY date DESC LIMIT 1",
                (self.account, date, since),
            ).fetchone()
        return None if row is None else int(row[0])

    def sgv_summary(self) -> tuple[int, tuple[Any, ...] | None]:
        with self._read() as conn:
            count = self._scalar(conn, "SELECT count(*) FROM entries WHERE account = %s AND type = 'sgv'")
            newest = conn.execute(
                "SELECT date, sgv, direction FROM entries WHERE account = %s AND type = 'sgv' "
                "ORDER BY date DESC LIMIT 1",
                (self.account,),
            ).fetchone()
        return count, None if newest is None else (int(newest[0]), newest[1], newest[2])

    def lag(self, output: str, collection: Collection | None = None) -> int:
        """Records ``output`` has not delivered: past its cursor, and queued for another try."""
        total = 0
        names: tuple[Collection, ...] = (collection,) if collection else COLLECTIONS
        with self._read() as conn:
            for name in names:
                after = self._cursor(conn, output, name)
                total += self._scalar(
                    conn, f"SELECT count(*) FROM {name} WHERE account = %s AND seq > %s", (after,)
                )
                total += self._scalar(
                    conn,
                    f"SELECT count(*) FROM rejected r JOIN {name} c "
                    "ON c.account = r.account AND c.seq BETWEEN r.first_seq AND r.last_seq "
                    f"WHERE r.account = %s AND r.output = %s AND r.collection = '{name}' AND r.retry = 1 "
                    "AND c.seq <= %s",
                    (output, after),
                )
        return total

    def _cursor(self, conn: Conn, output: str, collection: str) -> int:
        row = conn.execute(
            "SELECT seq FROM cursors WHERE account = %s AND output = %s AND collection = %s",
            (self.account, output, collection),
        ).fetchone()
        return 0 if row is None else int(row[0])

    def cursor(self, output: str, collection: Stream) -> int:
        with self._read() as conn:
            return self._cursor(conn, output, collection)

    def advance(self, output: str, collection: Stream, seq: int) -> None:
        """Move ``output``'s cursor forward to ``seq`` (never backwards)."""
        with self.transaction() as conn:
            conn.execute(_CURSOR_UPSERT, (self.account, output, collection, seq, _now_ms()))

    # --- records set aside -------------------------------------------------------------------

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
        now = _now_ms()
        with self.transaction() as conn:
            conn.execute(
                "DELETE FROM rejected WHERE account = %s AND output = %s AND collection = %s AND retry = 1 "
                "AND first_seq >= %s AND last_seq <= %s",
                (self.account, output, collection, first_seq, last_seq),
            )
            conn.execute(
                "INSERT INTO rejected (account, output, collection, first_seq, last_seq, records, status, "
                "error, at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (self.account, output, collection, first_seq, last_seq, records, status, error, now),
            )
            conn.execute(_CURSOR_UPSERT, (self.account, output, collection, last_seq, now))

    def set_aside_message(self, source: str, topic: str, reason: str) -> bool:
        """Keep a pushed message that could not be read (see :meth:`Store.set_aside_message`)."""
        error = f"topic {topic}: {reason}"[:1000]
        with self.transaction() as conn:
            if conn.execute(
                "SELECT 1 FROM rejected WHERE account = %s AND output = %s AND error = %s LIMIT 1",
                (self.account, source, error),
            ).fetchone():
                return False
            conn.execute(
                "INSERT INTO rejected (account, output, collection, first_seq, last_seq, records, status, "
                "error, at) VALUES (%s, %s, 'entries', 0, 0, 1, 0, %s, %s)",
                (self.account, source, error, _now_ms()),
            )
        return True

    def rejected_count(self, output: str) -> int:
        """Records ``output`` set aside and not queued for another try."""
        with self._read() as conn:
            return self._scalar(
                conn,
                "SELECT coalesce(sum(records), 0) FROM rejected WHERE account = %s AND output = %s AND retry = 0",
                (output,),
            )

    def rejected(
        self, output: str | None = None, collection: Collection | None = None
    ) -> list[RejectedGroup]:
        """Records set aside, grouped as :meth:`Store.rejected` groups them."""
        where, params = _rejected_where(output, collection)
        with self._read() as conn:
            rows = conn.execute(
                _q(
                    "SELECT output, collection, status, error, retry, sum(records), min(at), max(at) "
                    f"FROM rejected WHERE account = %s AND {where} "
                    "GROUP BY output, collection, status, error, retry "
                    'ORDER BY output COLLATE "C", collection COLLATE "C", retry, min(at)'
                ),
                (self.account, *params),
            ).fetchall()
        return [
            RejectedGroup(
                output=str(out), collection=str(coll), status=int(status), reason=str(error or ""),
                records=int(records), queued=bool(retry), first_at=int(first), last_at=int(last),
            )
            for out, coll, status, error, retry, records, first, last in rows
        ]  # fmt: skip

    def queue_retry(self, output: str | None = None, collection: Collection | None = None) -> dict[str, int]:
        """Queue the records set aside for another try (see :meth:`Store.queue_retry`)."""
        queued: dict[str, int] = {}
        with self.transaction() as conn:
            for name in COLLECTIONS:
                if collection is not None and name != collection:
                    continue
                where, params = _rejected_where(output, name)
                conn.execute(
                    _q(
                        f"DELETE FROM rejected WHERE account = %s AND {where} AND NOT EXISTS "
                        f"(SELECT 1 FROM {name} c WHERE c.account = rejected.account "
                        "AND c.seq BETWEEN rejected.first_seq AND rejected.last_seq)"
                    ),
                    (self.account, *params),
                )
                rows = conn.execute(
                    _q(
                        f"SELECT output, sum(records) FROM rejected WHERE account = %s AND {where} AND retry = 0 "
                        "GROUP BY output"
                    ),
                    (self.account, *params),
                ).fetchall()
                conn.execute(
                    _q(f"UPDATE rejected SET retry = 1 WHERE account = %s AND {where} AND retry = 0"),
                    (self.account, *params),
                )
                for name_of_output, records in rows:
                    queued[f"{name_of_output} {name}"] = int(records)
        return queued

    def retry_done(self, output: str, collection: Collection, seqs: Sequence[int]) -> None:
        """The far side accepted the queued records ``seqs`` (see :meth:`Store.retry_done`)."""
        with self._read() as conn:
            queued = conn.execute(
                "SELECT 1 FROM rejected WHERE account = %s AND output = %s AND collection = %s AND retry = 1 LIMIT 1",
                (self.account, output, collection),
            ).fetchone()
        if queued is None:
            return
        with self.transaction() as conn:
            if seqs:
                sent = set(seqs)
                rows = conn.execute(
                    "SELECT id, first_seq, last_seq FROM rejected WHERE account = %s AND output = %s "
                    "AND collection = %s AND retry = 1 AND first_seq >= %s AND last_seq <= %s",
                    (self.account, output, collection, min(sent), max(sent)),
                ).fetchall()
                for row_id, first, last in rows:
                    held = conn.execute(
                        _q(f"SELECT seq FROM {collection} WHERE account = %s AND seq BETWEEN %s AND %s"),
                        (self.account, first, last),
                    ).fetchall()
                    if all(int(seq) in sent for (seq,) in held):
                        conn.execute("DELETE FROM rejected WHERE id = %s", (row_id,))
            conn.execute(
                _q(
                    "DELETE FROM rejected WHERE account = %s AND output = %s AND collection = %s AND retry = 1 "
                    f"AND NOT EXISTS (SELECT 1 FROM {collection} c WHERE c.account = rejected.account "
                    "AND c.seq BETWEEN rejected.first_seq AND rejected.last_seq)"
                ),
                (self.account, output, collection),
            )

    # --- the events outbox -----------------------------------------------------------------

    def events_after(self, after: int, *, limit: int = 500) -> list[EventRow]:
        """Events with ``seq`` above ``after``, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT seq, id, event, label, time, json FROM events WHERE account = %s AND seq > %s "
                "ORDER BY seq LIMIT %s",
                (self.account, after, limit),
            ).fetchall()
        return [EventRow(int(s), str(i), str(e), str(a), int(t), str(j)) for s, i, e, a, t, j in rows]

    def events_lag(self, output: str) -> int:
        """Events ``output`` has not delivered yet."""
        with self._read() as conn:
            after = self._cursor(conn, output, EVENTS)
            return self._scalar(conn, "SELECT count(*) FROM events WHERE account = %s AND seq > %s", (after,))

    def ensure_cursors(self, output: str, streams: Sequence[Stream]) -> None:
        """A cursor (at 0) for each stream ``output`` delivers that has none yet."""
        now = _now_ms()
        with self.transaction() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO cursors (account, output, collection, seq, updated_at) VALUES (%s, %s, %s, 0, %s) "
                "ON CONFLICT (account, output, collection) DO NOTHING",
                [(self.account, output, stream, now) for stream in streams],
            )

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
        """Note what became of an event at ``hook``; the newest events per hook are kept."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO webhook_log (account, hook, event_id, seq, event, attempts, status, outcome, at, body) "
                "VALUES (%s, %s, %s, %s, %s, 1, %s, %s, %s, %s) ON CONFLICT (account, hook, event_id) DO UPDATE SET "
                "attempts = webhook_log.attempts + 1, status = excluded.status, outcome = excluded.outcome, "
                "at = excluded.at",
                (self.account, hook, event_id, seq, event, status, outcome, at, body),
            )
            conn.execute(
                "DELETE FROM webhook_log WHERE account = %s AND hook = %s AND seq NOT IN "
                "(SELECT seq FROM webhook_log WHERE account = %s AND hook = %s ORDER BY seq DESC LIMIT %s)",
                (self.account, hook, self.account, hook, WEBHOOK_LOG_KEEP),
            )

    def alert_transaction(self) -> AbstractContextManager[AlertTransaction]:
        """One transaction for an alert pass (:func:`connect.alerting.evaluate`)."""
        return self._alert_transaction()

    @contextmanager
    def _alert_transaction(self) -> Iterator[PostgresAlertTransaction]:
        with self.transaction() as conn:
            yield PostgresAlertTransaction(self, conn)

    # --- status -----------------------------------------------------------------------------

    def save_status(self, key: str, value: Mapping[str, Any]) -> None:
        # one statement, committed on its own (autocommit): one round trip, not three
        self._check_lock()
        with self._read() as conn:
            conn.execute(
                "INSERT INTO machine_status (account, key, json, updated_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (account, key) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at",
                (self.account, key, status_json(value), _now_ms()),
            )
        self.commits += 1

    def load_status(self) -> dict[str, Any]:
        with self._read() as conn:
            rows = conn.execute(
                'SELECT key, json FROM machine_status WHERE account = %s ORDER BY key COLLATE "C"',
                (self.account,),
            ).fetchall()
        return {str(key): json.loads(doc) for key, doc in rows}

    def status_of(self, key: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT json FROM machine_status WHERE account = %s AND key = %s", (self.account, key)
            ).fetchone()
        if row is None:
            return None
        value = json.loads(row[0])
        return value if isinstance(value, dict) else None

    def docs(
        self, collection: Collection, *, newest_first: bool = True, limit: int | None = None
    ) -> list[dict[str, Any]]:
        order = "DESC" if newest_first else "ASC"
        sql = (
            f'SELECT json FROM {collection} WHERE account = %s ORDER BY date {order}, identifier COLLATE "C"'
        )
        params: tuple[Any, ...] = (self.account,)
        if limit is not None:
            sql += " LIMIT %s"
            params = (self.account, limit)
        with self._read() as conn:
            rows = conn.execute(_q(sql), params).fetchall()
        return [json.loads(doc) for (doc,) in rows]


class PostgresAlertTransaction:
    """An alert pass's reads and writes for one account, inside one transaction."""

    def __init__(self, store: PostgresStore, conn: Conn) -> None:
        self.store = store
        self.account = store.account
        self.conn = conn

    def load_alert_state(self, key: str) -> AlertState:
        row = self.conn.execute(
            "SELECT json, entries_seq, treatments_seq FROM alert_state WHERE account = %s AND alert_key = %s",
            (self.account, key),
        ).fetchone()
        if row is None:
            return AlertState(None, 0, 0)
        try:
            state = json.loads(row[0])
        except ValueError:
            state = None
        return AlertState(state if isinstance(state, dict) else None, int(row[1]), int(row[2]))

    def save_alert_state(self, key: str, value: AlertState) -> None:
        self.conn.execute(
            "INSERT INTO alert_state (account, alert_key, json, entries_seq, treatments_seq, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (account, alert_key) DO UPDATE SET "
            "json = excluded.json, entries_seq = excluded.entries_seq, "
            "treatments_seq = excluded.treatments_seq, updated_at = excluded.updated_at",
            (
                self.account,
                key,
                json.dumps(value.state, sort_keys=True),
                value.entries_seq,
                value.treatments_seq,
                _now_ms(),
            ),
        )

    def new_entries(self, source: str, after: int, limit: int) -> list[NewRecord]:
        rows = self.conn.execute(
            "SELECT seq, identifier, date, type, sgv, direction, json FROM entries "
            "WHERE account = %s AND seq > %s AND source = %s ORDER BY seq LIMIT %s",
            (self.account, after, source, limit),
        ).fetchall()
        return [
            NewRecord(int(s), str(i), int(d), t, None if v is None else int(v), dr, str(j))
            for s, i, d, t, v, dr, j in rows
        ]

    def new_treatments(self, source: str, after: int, limit: int) -> list[NewRecord]:
        rows = self.conn.execute(
            "SELECT seq, identifier, date, event_type, json FROM treatments "
            "WHERE account = %s AND seq > %s AND source = %s ORDER BY seq LIMIT %s",
            (self.account, after, source, limit),
        ).fetchall()
        return [NewRecord(int(s), str(i), int(d), t, None, None, str(j)) for s, i, d, t, j in rows]

    def add_events(self, events: Sequence[NewEvent]) -> int:
        # three round trips a pass, not three an event: which are there already, the seqs of
        # the rest, and every row in one INSERT
        if not events:
            return 0
        there = {
            str(row[0])
            for row in self.conn.execute(
                "SELECT id FROM events WHERE account = %s AND id = ANY(%s)",
                (self.account, list({e.id for e in events})),
            )
        }
        fresh: dict[str, NewEvent] = {}
        for e in events:
            if e.id not in there:
                fresh.setdefault(e.id, e)  # the first of one id in a pass, as one at a time would
        if not fresh:
            return 0
        rows = list(fresh.values())
        first = self.store._take_seqs(self.conn, "events", len(rows)) + 1
        self.conn.execute(
            "INSERT INTO events (account, seq, id, event, label, time, json) "
            "SELECT %s, * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[])",
            (
                self.account,
                list(range(first, first + len(rows))),
                [e.id for e in rows],
                [e.event for e in rows],
                [e.account for e in rows],
                [e.time for e in rows],
                [e.body for e in rows],
            ),
        )
        return len(rows)

    def prune_events(self, before_ms: int) -> int:
        cur = self.conn.execute(
            "DELETE FROM events WHERE account = %s AND time < %s", (self.account, before_ms)
        )
        return max(cur.rowcount, 0)

    def close_episode(self, key: str, end: int, now: int) -> None:
        self.conn.execute(
            "UPDATE episodes SET end_at = %s, updated_at = %s WHERE account = %s AND alert_key = %s "
            "AND end_at IS NULL",
            (end, now, self.account, key),
        )

    def open_episode(self, key: str, kind: str, start: int, now: int) -> None:
        self.conn.execute(
            "INSERT INTO episodes (account, alert_key, kind, start_at, end_at, readings, updated_at) "
            "VALUES (%s, %s, %s, %s, NULL, 0, %s)",
            (self.account, key, kind, start, now),
        )

    def update_open_episode(
        self, key: str, sgv_min: int | None, sgv_max: int | None, readings: int, now: int
    ) -> None:
        self.conn.execute(
            "UPDATE episodes SET sgv_min = %s, sgv_max = %s, readings = %s, updated_at = %s "
            "WHERE account = %s AND alert_key = %s AND end_at IS NULL",
            (sgv_min, sgv_max, readings, now, self.account, key),
        )


__all__ = ["PostgresAlertTransaction", "PostgresStore", "display_url", "is_store_url", "open_pool"]
