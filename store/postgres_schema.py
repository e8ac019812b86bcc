"""The PostgreSQL store's schema and its forward migrations, versioned in ``schema_version``.

One database holds any number of accounts: every table has an ``account`` column, first in its
primary key, so one account's rows never meet another's. The tables mirror the SQLite store's
(:mod:`store.schema`) column for column, with these differences:

* ``counters`` keeps each account's sequences (``seq`` for the collections, ``events`` for the
  events outbox). A write takes the next values with ``UPDATE … RETURNING``, which locks that
  account's row until the transaction ends: two writers of one account queue there, so ``seq``
  grows in commit order and an output reading past its cursor misses nothing.
* the collection tables keep ``object_id`` (the ``_id`` clients see) in a column, since
  PostgreSQL has no SHA-1 of its own to compute it in a query.
* in ``events`` the alert label is ``label``, and in ``episodes`` / ``alert_state`` the alert's
  key is ``alert_key`` (both are ``account`` in SQLite, which has one account per file).
* the stored JSON is ``text``, not ``jsonb``: it is returned byte for byte as written, which
  outputs rely on (jsonb would reorder keys and rewrite numbers).

``schema_version`` has one row per applied step. Steps run in order, each in its own
transaction under an advisory lock, so processes starting together migrate once.
"""

from __future__ import annotations

from typing import Final

import psycopg

from store.schema import SERVER_TIME_COLUMNS, V1_COLUMNS

#: the advisory lock key migrations run under ("nsconnect" as a number)
MIGRATION_LOCK: Final = 0x6E73636F6E6E6563

_TYPES: Final = {int: "bigint", str: "text", float: "double precision"}
_NOT_NULL: Final = frozenset({"seq", "date", "json"})


def _collection_table(name: str) -> list[str]:
    columns = {**V1_COLUMNS[name], **SERVER_TIME_COLUMNS}
    parts = ["account text NOT NULL"]
    for column, kind in columns.items():
        null = " NOT NULL" if column in _NOT_NULL or column == "identifier" else ""
        parts.append(f"{column} {_TYPES[kind]}{null}")
    parts.append("object_id text NOT NULL")
    parts.append("PRIMARY KEY (account, identifier)")
    parts.append("UNIQUE (account, seq)")
    statements = [
        f"CREATE TABLE {name} ({', '.join(parts)})",
        f"CREATE INDEX {name}_date ON {name} (account, date)",
        f"CREATE INDEX {name}_object_id ON {name} (account, object_id)",
        f"CREATE INDEX {name}_srv_modified ON {name} (account, srv_modified, seq)",
        f"CREATE INDEX {name}_device_date ON {name} (account, device, date)",
    ]
    if name == "entries":
        statements.append("CREATE INDEX entries_type_date ON entries (account, type, date)")
    if name == "treatments":
        statements.append("CREATE INDEX treatments_event_type_date ON treatments (account, event_type, date)")
    return statements


def _v1() -> list[str]:
    statements = [
        "CREATE TABLE counters (account text NOT NULL, name text NOT NULL, value bigint NOT NULL, "
        "PRIMARY KEY (account, name))",
    ]
    for name in V1_COLUMNS:
        statements.extend(_collection_table(name))
    statements += [
        "CREATE TABLE checkpoints (account text NOT NULL, source text NOT NULL, loop text NOT NULL, "
        "collection text NOT NULL, last_known bigint NOT NULL, updated_at bigint NOT NULL, "
        "PRIMARY KEY (account, source, loop, collection))",
        "CREATE TABLE cursors (account text NOT NULL, output text NOT NULL, collection text NOT NULL, "
        "seq bigint NOT NULL, updated_at bigint NOT NULL, PRIMARY KEY (account, output, collection))",
        "CREATE TABLE rejected (id bigserial PRIMARY KEY, account text NOT NULL, output text NOT NULL, "
        "collection text NOT NULL, first_seq bigint NOT NULL, last_seq bigint NOT NULL, "
        "records bigint NOT NULL, status integer NOT NULL, error text, at bigint NOT NULL, "
        "retry smallint NOT NULL DEFAULT 0)",
        "CREATE INDEX rejected_output ON rejected (account, output, collection, retry)",
        "CREATE TABLE machine_status (account text NOT NULL, key text NOT NULL, json text NOT NULL, "
        "updated_at bigint NOT NULL, PRIMARY KEY (account, key))",
        "CREATE TABLE events (account text NOT NULL, seq bigint NOT NULL, id text NOT NULL, "
        "event text NOT NULL, label text NOT NULL, time bigint NOT NULL, json text NOT NULL, "
        "PRIMARY KEY (account, seq), UNIQUE (account, id))",
        "CREATE INDEX events_time ON events (account, time)",
        "CREATE TABLE episodes (id bigserial PRIMARY KEY, account text NOT NULL, alert_key text NOT NULL, "
        "kind text NOT NULL, start_at bigint NOT NULL, end_at bigint, sgv_min integer, sgv_max integer, "
        "readings integer NOT NULL DEFAULT 0, updated_at bigint NOT NULL)",
        "CREATE INDEX episodes_key_start ON episodes (account, alert_key, start_at)",
        "CREATE INDEX episodes_end ON episodes (account, end_at)",
        "CREATE TABLE alert_state (account text NOT NULL, alert_key text NOT NULL, json text NOT NULL, "
        "entries_seq bigint NOT NULL DEFAULT 0, treatments_seq bigint NOT NULL DEFAULT 0, "
        "updated_at bigint NOT NULL, PRIMARY KEY (account, alert_key))",
        "CREATE TABLE webhook_log (account text NOT NULL, hook text NOT NULL, event_id text NOT NULL, "
        "seq bigint NOT NULL, event text NOT NULL, attempts integer NOT NULL, status integer, "
        "outcome text NOT NULL, at bigint NOT NULL, body text NOT NULL, "
        "PRIMARY KEY (account, hook, event_id))",
        "CREATE INDEX webhook_log_hook_at ON webhook_log (account, hook, at)",
        # documents deleted through the write API, as API v3 still shows them (store.schema._deleted)
        "CREATE TABLE deleted (account text NOT NULL, collection text NOT NULL, identifier text NOT NULL, "
        "seq bigint NOT NULL, srv_created bigint NOT NULL, srv_modified bigint NOT NULL, json text, "
        "PRIMARY KEY (account, collection, identifier), UNIQUE (account, seq))",
        "CREATE INDEX deleted_srv_modified ON deleted (account, collection, srv_modified, seq)",
    ]
    return statements


#: index i holds the statements taking the schema from version i to i + 1 (never changed once
#: released; a new step is appended)
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (tuple(_v1()),)
SCHEMA_VERSION: Final = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer version of the daemon."""

    def __init__(self, version: int) -> None:
        super().__init__(f"store schema {version} is newer than this program's {SCHEMA_VERSION}")
        self.version = version


def current_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """The applied version (0 for an empty database); nothing is written."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    (version,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone() or (0,)
    return int(str(version))


def migrate(conn: psycopg.Connection[tuple[object, ...]], now_ms: int) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` (``conn`` in autocommit mode); each step in
    its own transaction, under an advisory lock so that processes starting together take turns."""
    version = current_version(conn)
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(version)
    while version < SCHEMA_VERSION:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, applied_at bigint NOT NULL)"
            )
            version = current_version(conn)  # as of the lock: another process may have migrated
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(version)
            if version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version]:
                    conn.execute(statement.encode("utf-8"))
                version += 1
                conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)", (version, now_ms)
                )
    return version


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SchemaTooNew", "current_version", "migrate"]
