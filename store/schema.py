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
    """Server times per row. Rows written before have neither: both are taken from the record's
    own time, as Nightscout's v3 reads do for documents its v1 API wrote."""
    for name in V1_COLUMNS:
        for column in SERVER_TIME_COLUMNS:
            db.execute(f"ALTER TABLE {name} ADD COLUMN {column} INTEGER")
        db.execute(f"UPDATE {name} SET srv_created = date, srv_modified = date")
        db.execute(f"CREATE INDEX {name}_srv_modified ON {name} (srv_modified, seq)")
        # the newest records of one device (latest per device) without a scan
        db.execute(f"CREATE INDEX {name}_device_date ON {name} (device, date)")


#: index i holds the migration from version i to i + 1
MIGRATIONS: Final[tuple[Callable[[Database], None], ...]] = (_v1, _v2)
SCHEMA_VERSION: Final = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The store was written by a newer version of the daemon."""


def migrate(db: Database) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`, each step in its own transaction."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(f"store schema {version} is newer than this program's {SCHEMA_VERSION}")
    while version < SCHEMA_VERSION:
        with db.conn:
            MIGRATIONS[version](db)
            version += 1
            db.execute(f"PRAGMA user_version = {version}")
    return version
