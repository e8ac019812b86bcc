"""The fleet's accounts and leases in PostgreSQL.

Three tables, created by :meth:`FleetStore.migrate` (idempotent, versioned in
``fleet_schema``, serialised by a transaction-scoped advisory lock so processes starting
together do not race on ``CREATE``):

``fleet_accounts``
    one row per account: its ``name`` and its ``settings``, the text of its ``NAME.env`` file
    exactly as the operator gave it (credentials included: the database is as sensitive as the
    files were), and ``updated_at``.
``fleet_leases``
    one row per account: the ``holder`` (``host:pid:random``), the ``token`` of this very lease
    (new at every claim; a release names it) and ``expires_at``, and what the
    holder last published about the account (``state``, ``last_success`` in epoch ms,
    ``last_error``, redacted by the holder).
``fleet_holders``
    one row per live process and its own ``expires_at``: how many processes share the fleet.

Every expiry is computed by the database's clock (``now() + lease``), so the processes' clocks
never have to agree. A lease is taken with ``SELECT … FOR UPDATE SKIP LOCKED`` over the rows that
are free or lapsed: two processes claiming at once lock different rows, and a row changed by a
claim that committed first is re-checked against ``expires_at`` before it can be taken, so one
lease never has two holders. A renewal only extends leases that have not lapsed.

The calls are synchronous (psycopg with a connection pool); the trio driver runs them in a
worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import attrs
import psycopg
import psycopg_pool
from psycopg.rows import dict_row

from connect.errors import StoreError, StoreUnusable
from connect.redact import redact_text, register_secret

SCHEMA_VERSION: Final = 1
#: the advisory lock key that serialises migrations ("nsfleet" in ASCII)
MIGRATION_LOCK: Final = 0x6E73666C656574

MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """CREATE TABLE IF NOT EXISTS fleet_accounts (
            name text PRIMARY KEY,
            settings text NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE IF NOT EXISTS fleet_leases (
            account text PRIMARY KEY REFERENCES fleet_accounts (name) ON DELETE CASCADE,
            holder text,
            token text,
            expires_at timestamptz,
            acquired_at timestamptz,
            renewed_at timestamptz,
            state text,
            last_success bigint,
            last_error text,
            reported_at timestamptz
        )""",
        "CREATE INDEX IF NOT EXISTS fleet_leases_holder ON fleet_leases (holder)",
        """CREATE TABLE IF NOT EXISTS fleet_holders (
            holder text PRIMARY KEY,
            max_accounts integer,
            started_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL
        )""",
    ),
}


@attrs.frozen
class Renewal:
    """What a renewal found: the leases still this holder's (each with its token), the accounts
    in the fleet and the processes alive (this one included)."""

    tokens: dict[str, str]
    accounts: int
    holders: int
    #: each live process's CONNECT_FLEET_MAX_ACCOUNTS (None: none)
    caps: tuple[int | None, ...] = ()

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self.tokens)


@attrs.frozen
class Claim:
    """A lease taken: the account's settings as stored, and the token naming this very lease
    (a release names it, so a late release cannot free a lease taken again since)."""

    settings: str
    token: str


@attrs.frozen
class FleetRow:
    """One account as ``nightscout-connect fleet`` shows it."""

    account: str
    holder: str | None
    state: str
    last_success: int | None
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def describe_url(url: str) -> str:
    """The database's address without its credentials, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{host}{port}{parts.path}"


class FleetStore:
    """The accounts and leases of one PostgreSQL database (``CONNECT_STORE_URL``)."""

    def __init__(self, url: str, *, max_size: int = 4, timeout: float = 10.0) -> None:
        from urllib.parse import urlsplit

        # the pool logs each failed connection attempt; the driver says what failed, once
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        self.where = describe_url(url)
        register_secret(urlsplit(url).password)
        self.timeout = timeout
        self.pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=timeout,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout))},
        )

    @classmethod
    def open(cls, url: str, **kwargs: Any) -> FleetStore:
        """Connected and migrated; a database that cannot be reached or holds a newer schema is
        :class:`StoreUnusable` in one line (without the URL's credentials)."""
        store = cls(url, **kwargs)
        try:
            # one connection first: its error says why (the pool's would only time out)
            psycopg.connect(url, connect_timeout=max(1, int(store.timeout)), autocommit=True).close()
            store.pool.open(wait=True, timeout=store.timeout)
            store.migrate()
        except StoreUnusable:
            store.close()
            raise
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            store.close()
            reason = type(exc).__name__ if isinstance(exc, psycopg_pool.PoolTimeout) else _reason(exc)
            raise StoreUnusable(f"store {store.where}: cannot be used ({reason})") from None
        return store

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> FleetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """One transaction; a database failure is :class:`StoreError` (its words, no URL)."""
        try:
            with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                # a statement that hangs (a lock, a dying server) must not outlive the lease
                cur.execute(f"SET LOCAL statement_timeout = {int(self.timeout * 1000)}")
                yield cur
        except psycopg_pool.PoolTimeout:
            raise StoreError(f"store {self.where}: no connection within {self.timeout:.0f} s") from None
        except psycopg.Error as exc:
            raise StoreError(f"store {self.where}: {_reason(exc)}") from None

    # --- schema ------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Create or upgrade the tables; the version now. A newer schema is refused."""
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS fleet_schema (version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT coalesce(max(version), 0) AS version FROM fleet_schema")
            row = cur.fetchone()
            current = int(row["version"]) if row else 0
            if current > SCHEMA_VERSION:
                raise StoreUnusable(
                    f"store {self.where}: its fleet tables are of a newer version of nightscout-connect "
                    f"(schema {current}; this version knows up to {SCHEMA_VERSION}); upgrade"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    cur.execute(statement)  # type: ignore[arg-type] # constant text, no input
                cur.execute("INSERT INTO fleet_schema (version) VALUES (%s)", (version,))
        return SCHEMA_VERSION

    # --- accounts ----------------------------------------------------------------------------

    def upsert_account(self, name: str, settings: str) -> bool:
        """Store an account's settings as given; True when it is new."""
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO fleet_accounts (name, settings) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET settings = excluded.settings, updated_at = now() "
                "RETURNING (xmax = 0) AS inserted",
                (name, settings),
            )
            row = cur.fetchone()
            cur.execute("INSERT INTO fleet_leases (account) VALUES (%s) ON CONFLICT DO NOTHING", (name,))
        return bool(row and row["inserted"])

    def remove_account(self, name: str) -> bool:
        """Remove an account (its lease row goes with it; a holder stops it at its next
        renewal). False when there was none."""
        with self._tx() as cur:
            cur.execute("DELETE FROM fleet_accounts WHERE name = %s", (name,))
            return cur.rowcount > 0

    def accounts(self) -> list[tuple[str, int]]:
        """Every account's name and when it was last imported (epoch ms), by name."""
        with self._tx() as cur:
            cur.execute(
                "SELECT name, (extract(epoch FROM updated_at) * 1000)::bigint AS updated "
                "FROM fleet_accounts ORDER BY name"
            )
            return [(row["name"], int(row["updated"])) for row in cur.fetchall()]

    def settings(self, names: Collection[str]) -> dict[str, str]:
        """The stored settings text of these accounts (those that still exist)."""
        with self._tx() as cur:
            cur.execute("SELECT name, settings FROM fleet_accounts WHERE name = ANY(%s)", (list(names),))
            return {row["name"]: row["settings"] for row in cur.fetchall()}

    def digests(self) -> dict[str, str]:
        """Every account's name and a digest of its settings text: what changed since the last
        look, without carrying every account's settings over the wire."""
        with self._tx() as cur:
            cur.execute("SELECT name, md5(settings) AS digest FROM fleet_accounts")
            return {row["name"]: row["digest"] for row in cur.fetchall()}

    # --- leases ------------------------------------------------------------------------------

    def renew(self, holder: str, lease_s: float, max_accounts: int | None = None) -> Renewal:
        """Say this holder is alive (and its cap) and extend its leases that have not lapsed."""
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO fleet_holders (holder, max_accounts, expires_at) "
                "VALUES (%s, %s, now() + make_interval(secs => %s)) "
                "ON CONFLICT (holder) DO UPDATE SET expires_at = excluded.expires_at, "
                "max_accounts = excluded.max_accounts",
                (holder, max_accounts, lease_s),
            )
            cur.execute(
                "UPDATE fleet_leases SET expires_at = now() + make_interval(secs => %s), renewed_at = now() "
                "WHERE holder = %s AND expires_at > now() RETURNING account, token",
                (lease_s, holder),
            )
            tokens = {row["account"]: row["token"] for row in cur.fetchall()}
            cur.execute("SELECT count(*) AS accounts FROM fleet_accounts")
            row = cur.fetchone()
            cur.execute("SELECT max_accounts FROM fleet_holders WHERE expires_at > now()")
            caps = tuple(r["max_accounts"] for r in cur.fetchall())
            # gone for a whole lease: forgotten (their leases have lapsed with them)
            cur.execute(
                "DELETE FROM fleet_holders WHERE expires_at < now() - make_interval(secs => %s)", (lease_s,)
            )
        return Renewal(
            tokens=tokens, accounts=int(row["accounts"]) if row else 0, holders=max(1, len(caps)), caps=caps
        )

    def claim(self, holder: str, lease_s: float, count: int, skip: Collection[str] = ()) -> dict[str, Claim]:
        """Take up to ``count`` leases that are free or lapsed (none of ``skip``), by name."""
        if count <= 0:
            return {}
        with self._tx() as cur:
            cur.execute(
                "WITH free AS ("
                "  SELECT account FROM fleet_leases"
                "  WHERE (holder IS NULL OR expires_at IS NULL OR expires_at <= now())"
                "    AND NOT (account = ANY(%s))"
                "  ORDER BY account LIMIT %s FOR UPDATE SKIP LOCKED"
                ") "
                "UPDATE fleet_leases AS l SET holder = %s, token = gen_random_uuid()::text, "
                "  expires_at = now() + make_interval(secs => %s), acquired_at = now(), renewed_at = now(), "
                "  state = 'starting' "
                "FROM free, fleet_accounts a WHERE l.account = free.account AND a.name = l.account "
                "RETURNING l.account, a.settings, l.token",
                (list(skip), count, holder, lease_s),
            )
            return {row["account"]: Claim(row["settings"], row["token"]) for row in cur.fetchall()}

    def release(self, holder: str, leases: Mapping[str, str]) -> None:
        """Give these leases back now (account → token: only the very leases named, and only
        while this holder holds them); an account said to have failed keeps saying so until
        another process runs it."""
        if not leases:
            return
        with self._tx() as cur:
            cur.executemany(
                "UPDATE fleet_leases SET holder = NULL, token = NULL, expires_at = NULL, reported_at = now(), "
                "state = CASE WHEN state = 'failed' THEN state ELSE 'released' END "
                "WHERE holder = %s AND account = %s AND token = %s",
                [(holder, name, token) for name, token in leases.items()],
            )

    def leave(self, holder: str) -> None:
        """This process stops: every lease it holds is given back and it no longer counts."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE fleet_leases SET holder = NULL, token = NULL, expires_at = NULL, state = 'released', "
                "reported_at = now() WHERE holder = %s",
                (holder,),
            )
            cur.execute("DELETE FROM fleet_holders WHERE holder = %s", (holder,))

    def publish(self, holder: str, reports: Sequence[tuple[str, str, int | None, str | None]]) -> None:
        """What this holder says about its accounts: (account, state, last_success, last_error)
        each; a row is only written while this holder holds it, and only when it changed."""
        if not reports:
            return
        with self._tx() as cur:
            cur.executemany(
                "UPDATE fleet_leases SET state = %s, last_success = %s, last_error = %s, reported_at = now() "
                "WHERE account = %s AND holder = %s "
                "AND (state, last_success, last_error) IS DISTINCT FROM (%s, %s, %s)",
                [(s, ok, err, name, holder, s, ok, err) for name, s, ok, err in reports],
            )

    def fleet(self) -> list[FleetRow]:
        """Every account: who holds it (nobody once the lease lapsed) and what was last said."""
        with self._tx() as cur:
            cur.execute(
                "SELECT a.name, l.holder, l.state, l.last_success, l.last_error, "
                "(l.holder IS NOT NULL AND l.expires_at > now()) AS live "
                "FROM fleet_accounts a LEFT JOIN fleet_leases l ON l.account = a.name ORDER BY a.name"
            )
            rows = cur.fetchall()
        result = []
        for row in rows:
            if row["live"]:
                holder, state = row["holder"], row["state"] or "starting"
            else:
                # a holder named on a lapsed lease died or lost the database
                holder, state = None, "lapsed" if row["holder"] else row["state"] or "unclaimed"
            result.append(
                FleetRow(
                    account=row["name"],
                    holder=holder,
                    state=state,
                    last_success=row["last_success"],
                    last_error=row["last_error"],
                )
            )
        return result


def _reason(exc: psycopg.Error) -> str:
    """A database error in a few words: its first line, never the connection string."""
    text = str(exc).strip().splitlines()
    return redact_text(text[0][:200]) if text else type(exc).__name__
