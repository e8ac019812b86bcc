"""Schema and forward migrations, versioned through ``PRAGMA user_version``.

Each collection table has the record's ``identifier`` as primary key, an epoch-ms ``date``,
typed columns for the fields people filter on, the full Nightscout JSON in ``json``, and a
``seq``: a store-wide sequence number that grows whenever a row is inserted or its content
changes. Outputs deliver "everything past my cursor" by ``seq``.

Since version 2 each row also keeps ``srv_created`` and ``srv_modified``: the epoch ms of its
first write and of its last write that changed it (Nightscout API v3's ``srvCreated`` and
``srvModified``; its history reads go by the latter).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from collections.abc import Callable
from typing import Final

from sqlite_utils import Database

#: the collection tables as version 1 created them (a migration never changes)
V1_COLUMNS: Final[dict[str, dict[str, type]]] = {
    "entries": {
        "identifier": str,
        "seq": int,
        "date": int,
        "date_string": str,
        "type": str,
        "sgv": int,
        "direction": str,
        "device": str,
        "source": str,
        "json": str,
    },
    "treatments": {
        "identifier": str,
        "seq": int,
        "date": int,
        "created_at": str,
        "event_type": str,
        "insulin": float,
        "carbs": float,
        "device": str,
        "source": str,
        "json": str,
    },
    "devicestatus": {
        "identifier": str,
        "seq": int,
        "date": int,
        "created_at": str,
        "device": str,
        "source": str,
        "json": str,
    },
    "profile": {
        "identifier": str,
        "seq": int,
        "date": int,
        "created_at": str,
        "device": str,
        "source": str,
        "json": str,
    },
}


#: the server times version 2 added to every collection table
SERVER_TIME_COLUMNS: Final[dict[str, type]] = {"srv_created": int, "srv_modified": int}
#: every column of a collection table, in the order a row is written
COLLECTION_COLUMNS: Final[dict[str, dict[str, type]]] = {
    name: {**columns, **SERVER_TIME_COLUMNS} for name, columns in V1_COLUMNS.items()
}


def _v1(db: Database) -> None:
    for name, columns in V1_COLUMNS.items():
        table = db[name]
        table.create(columns, pk="identifier", not_null={"seq", "date", "json"})  # type: ignore[union-attr]
        table.create_index(["date"], index_name=f"{name}_date")  # type: ignore[union-attr]
        table.create_index(["seq"], index_name=f"{name}_seq", unique=True)  # type: ignore[union-attr]
    db["entries"].create_index(["type", "date"], index_name="entries_type_date")  # type: ignore[union-attr]
    db["checkpoints"].create(  # type: ignore[union-attr]
        {"source": str, "loop": str, "collection": str, "last_known": int, "updated_at": int},
        pk=("source", "loop", "collection"),
    )
    db["cursors"].create(  # type: ignore[union-attr]
        {"output": str, "collection": str, "seq": int, "updated_at": int},
        pk=("output", "collection"),
    )
    db["rejected"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "output": str,
            "collection": str,
            "first_seq": int,
            "last_seq": int,
            "records": int,
            "status": int,
            "error": str,
            "at": int,
        },
        pk="id",
    )
    db["machine_status"].create({"key": str, "json": str, "updated_at": int}, pk="key")  # type: ignore[union-attr]
    db["sequence"].create({"name": str, "value": int}, pk="name")  # type: ignore[union-attr]
    db.execute("INSERT INTO sequence (name, value) VALUES ('seq', 0)")


def _v2(db: Database) -> None:
    # records set aside and queued by `nightscout-connect rejected retry` for another try
    db.execute("ALTER TABLE rejected ADD COLUMN retry INTEGER NOT NULL DEFAULT 0")
    db["rejected"].create_index(["output", "collection", "retry"], index_name="rejected_output")  # type: ignore[union-attr]


def _alerts_episodes_events(db: Database) -> None:
    """Alerts, episodes and the events outbox.

    ``events`` is an outbox delivered like the collections: each row has a ``seq`` (its own,
    growing, never reused) that event outputs keep a cursor on (``cursors.collection =
    'events'``), and a stable ``id`` that makes writing an event twice a no-op. ``alert_state``
    holds each account's alert machine and how far into the collections it has looked;
    ``episodes`` the bands a series went through (``end_at`` NULL while one lasts);
    ``webhook_log`` the last payloads each webhook was sent and what became of them.
    """
    db.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
        "event TEXT NOT NULL, account TEXT NOT NULL, time INTEGER NOT NULL, json TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX events_time ON events (time)")
    db.execute(
        "CREATE TABLE episodes (id INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL, "
        "kind TEXT NOT NULL, start_at INTEGER NOT NULL, end_at INTEGER, sgv_min INTEGER, "
        "sgv_max INTEGER, readings INTEGER NOT NULL DEFAULT 0, updated_at INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX episodes_account_start ON episodes (account, start_at)")
    db.execute("CREATE INDEX episodes_end ON episodes (end_at)")
    db.execute(
        "CREATE TABLE alert_state (account TEXT PRIMARY KEY, json TEXT NOT NULL, "
        "entries_seq INTEGER NOT NULL DEFAULT 0, treatments_seq INTEGER NOT NULL DEFAULT 0, "
        "updated_at INTEGER NOT NULL)"
    )
    db.execute(
        "CREATE TABLE webhook_log (hook TEXT NOT NULL, event_id TEXT NOT NULL, seq INTEGER NOT NULL, "
        "event TEXT NOT NULL, attempts INTEGER NOT NULL, status INTEGER, outcome TEXT NOT NULL, "
        "at INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (hook, event_id))"
    )
    db.execute("CREATE INDEX webhook_log_hook_at ON webhook_log (hook, at)")


def _server_times(db: Database) -> None:
    """Server times per row. Rows written before have neither: both are taken from the record's
    own time, as Nightscout's v3 reads do for documents its v1 API wrote."""
    for name in V1_COLUMNS:
        for column in SERVER_TIME_COLUMNS:
            db.execute(f"ALTER TABLE {name} ADD COLUMN {column} INTEGER")
        db.execute(f"UPDATE {name} SET srv_created = date, srv_modified = date")
        db.execute(f"CREATE INDEX {name}_srv_modified ON {name} (srv_modified, seq)")
        # the newest records of one device (latest per device) without a scan
        db.execute(f"CREATE INDEX {name}_device_date ON {name} (device, date)")


def _deleted(db: Database) -> None:
    """Documents deleted through the write API, as API v3 still shows them.

    A deleted document leaves its collection table (no read, output or alert sees it any more)
    and is kept here under its collection and identifier: v3's READ answers 410 for it and its
    HISTORY serves it with ``isValid: false``, so a syncing client learns of the deletion. A
    permanent deletion keeps no ``json`` (a plain 404, and nothing in a history). ``seq`` comes
    from the store's sequence, so a deletion changes the store's revision like any write.
    """
    db.execute(
        "CREATE TABLE deleted (collection TEXT NOT NULL, identifier TEXT NOT NULL, seq INTEGER NOT NULL, "
        "srv_created INTEGER NOT NULL, srv_modified INTEGER NOT NULL, json TEXT, "
        "PRIMARY KEY (collection, identifier))"
    )
    db.execute("CREATE UNIQUE INDEX deleted_seq ON deleted (seq)")
    db.execute("CREATE INDEX deleted_srv_modified ON deleted (collection, srv_modified, seq)")


#: index i holds the migration from version i to i + 1; each step stands alone, so steps added
#: on different branches merge by renumbering (reordering this tuple) at most
MIGRATIONS: Final[tuple[Callable[[Database], None], ...]] = (
    _v1,
    _v2,  # → 2
    _alerts_episodes_events,  # → 3
    _server_times,  # → 4
    _deleted,  # → 5
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The store was written by a newer version of the daemon."""

    def __init__(self, version: int) -> None:
        super().__init__(f"store schema {version} is newer than this program's {SCHEMA_VERSION}")
        self.version = version


class NotAStore(RuntimeError):
    """The file is a SQLite database, but of something else (tables and no schema version)."""


def check_schema(conn: sqlite3.Connection) -> int:
    """The store's schema version, read without writing anything; raises :class:`SchemaTooNew`
    or :class:`NotAStore` for a database this program must leave as it is."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(version)
    if version == 0:
        (tables,) = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchone()
        if tables:
            raise NotAStore("a SQLite database of something else (it has tables but no store schema)")
    return version


@functools.cache
def fresh_schema() -> tuple[str, ...]:
    """The statements that make a new store as every migration step would leave it: the steps
    are run once per process on a memory database and the result dumped (tables as altered,
    indexes, the rows the steps insert)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        _migrate_steps(Database(conn), 0)
        return tuple(
            statement for statement in conn.iterdump() if statement not in ("BEGIN TRANSACTION;", "COMMIT;")
        )
    finally:
        conn.close()


#: offsets 18 and 19 of a SQLite file: the write and read format versions, 2 for WAL
WAL_FORMAT_OFFSETS: Final = (18, 19)


@functools.cache
def fresh_image() -> bytes:
    """A new store file, byte for byte, as :func:`migrate` leaves one: :func:`fresh_schema` in
    a memory database at :data:`SCHEMA_VERSION`, serialized, and marked as a WAL database (the
    file format's bytes 18 and 19), which is how every store runs. Made once per process."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute("BEGIN")
        for statement in fresh_schema():
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
        image = bytearray(conn.serialize())
    finally:
        conn.close()
    for offset in WAL_FORMAT_OFFSETS:
        image[offset] = 2
    return bytes(image)


def write_fresh_store(path: str) -> bool:
    """A store file that does not exist yet written whole from :func:`fresh_image`: a copy of
    bytes instead of SQLite running the schema's statements and switching the file to WAL,
    which costs a new store ten times the CPU (seconds when a thousand accounts start at once).

    Called under the store's lock. The image goes to ``PATH-new`` first, is synced, and is then
    linked to ``PATH`` (which fails if anything is there by then), so a crash never leaves a
    partial store at ``PATH``. False, and nothing written, when the file or a journal of it
    exists, or the file system cannot link (SQLite then makes the store as before)."""
    if any(os.path.lexists(name) for name in (path, f"{path}-wal", f"{path}-journal")):
        return False
    staged = f"{path}-new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staged)  # left by a start that crashed: nobody else writes it under the lock
    try:
        # 0o644 before the umask, as SQLite creates its files
        with open(os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb") as file:
            file.write(fresh_image())
            file.flush()
            os.fsync(file.fileno())
        os.link(staged, path)
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(staged)
    return True


def migrate(db: Database) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`, each step in its own transaction (a step
    that fails leaves the store at the version before it).

    A new store (version 0, no tables) is made in one transaction from :func:`fresh_schema`
    instead: the same schema for a few dozen statements and one commit, where the steps take
    about a hundred and sixty (sqlite-utils looks the tables up before each change) and a
    commit each — what a thousand accounts starting in one process would wait for."""
    version = check_schema(db.conn)
    if version == 0:
        db.execute("BEGIN IMMEDIATE")
        try:
            if int(db.execute("PRAGMA user_version").fetchone()[0]) == 0:  # as of the lock
                for statement in fresh_schema():
                    db.conn.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            if db.conn.in_transaction:
                db.execute("ROLLBACK")
            raise
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
    return _migrate_steps(db, version)


def _migrate_steps(db: Database, version: int) -> int:
    while version < SCHEMA_VERSION:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])  # as of the lock
            if version < SCHEMA_VERSION:
                MIGRATIONS[version](db)
                version += 1
                db.execute(f"PRAGMA user_version = {version}")
            db.execute("COMMIT")
        except BaseException:
            if db.conn.in_transaction:
                db.execute("ROLLBACK")
            raise
    return version
