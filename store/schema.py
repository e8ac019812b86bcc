"""Schema and forward migrations, versioned through ``PRAGMA user_version``.

Each collection table has the record's ``identifier`` as primary key, an epoch-ms ``date``,
typed columns for the fields people filter on, the full Nightscout JSON in ``json``, and a
``seq``: a store-wide sequence number that grows whenever a row is inserted or its content
changes. Outputs deliver "everything past my cursor" by ``seq``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Final

from sqlite_utils import Database

COLLECTION_COLUMNS: Final[dict[str, dict[str, type]]] = {
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


def _v1(db: Database) -> None:
    for name, columns in COLLECTION_COLUMNS.items():
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


#: index i holds the migration from version i to i + 1
MIGRATIONS: Final[tuple[Callable[[Database], None], ...]] = (_v1, _v2)
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


def migrate(db: Database) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`, each step in its own transaction (a step
    that fails leaves the store at the version before it)."""
    version = check_schema(db.conn)
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
