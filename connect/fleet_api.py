"""``serve --fleet``: one HTTP API over every account of a PostgreSQL database.

Each account's Nightscout reads and status page are under ``/a/{account}/``, answered by the
app ``serve`` would build for that account alone (:func:`api.create_app` over its rows of the
database), protected by the ``CONNECT_HTTP_SECRET`` of its own settings in ``fleet_accounts``.
The operator's ``CONNECT_FLEET_OPERATOR_SECRET`` opens ``/api/connect/fleet`` (the rows of
``nightscout-connect fleet --json``) and nothing else.

Accounts are looked up in the database, at most every :data:`REFRESH_S` seconds (one query of
every name and a digest of its settings): an account imported or removed is served or refused
without a restart, and an account's app is built on its first request and rebuilt when its
settings change, so at most one app per account is kept.

An account is never readable by accident: without a secret of its own its reads are refused,
unless its settings say ``CONNECT_HTTP_READABLE=true`` and this server listens on a loopback
address only (the rule ``serve`` keeps for one account).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import psycopg_pool
import structlog
import trio
from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp

from api.auth import Authenticator
from api.fleet import FleetDispatcher, refusal
from api.guard import GuardMiddleware
from api.settings import DEFAULT_BIND, MIN_SECRET_LENGTH, ApiSettings, parse_bind
from connect.accounts import account_from_text, settings_names
from connect.errors import ConfigError, StoreUnusable
from connect.loading import UsageError, take_option
from store.fleet import FleetStore

log = structlog.get_logger("connect.fleet_api")

#: how long the list of accounts is trusted before the database is asked again
REFRESH_S: Final = 5.0
OPERATOR_ENV: Final = "CONNECT_FLEET_OPERATOR_SECRET"


@attrs.frozen
class FleetApiSettings:
    """``serve --fleet``'s own settings (every account's are in the database)."""

    url: str
    bind: str
    loopback: bool
    operator_secret: SecretStr | None = attrs.field(default=None, repr=False)


def fleet_api_settings(args: Sequence[str], environ: Mapping[str, str]) -> FleetApiSettings:
    """The settings from the flags and the environment; every problem at once as
    :class:`UsageError` (one line each, no value echoed)."""
    from connect.fleet import store_url

    url, problems, rest = store_url(args, environ)
    flag, rest = take_option(rest, "--http-bind", "name the address to listen on (127.0.0.1:1338)")
    bind_text = flag if flag is not None else environ.get("CONNECT_HTTP_BIND", "").strip() or DEFAULT_BIND
    text = environ.get(OPERATOR_ENV, "")
    operator = SecretStr(text) if text.strip() else None
    if operator is not None and len(text) < MIN_SECRET_LENGTH:
        problems.append(f"{OPERATOR_ENV}: must be at least {MIN_SECRET_LENGTH} characters")
    bind = None
    try:
        bind = parse_bind(bind_text)
        if bind is None:
            problems.append("--http-bind / CONNECT_HTTP_BIND: serve needs an address (it is 0)")
    except ConfigError as exc:
        problems.append(str(exc))
    if bind is not None and not bind.loopback and operator is None:
        problems.append(
            f"--http-bind / CONNECT_HTTP_BIND: {bind.text} is reachable from other machines; "
            f"set {OPERATOR_ENV} (12+ characters) or bind 127.0.0.1"
        )
    for name in ("CONNECT_HTTP_SECRET", "CONNECT_HTTP_READABLE"):
        if environ.get(name, "").strip():
            problems.append(
                f"{name}: not read by serve --fleet: each account's comes from its own settings "
                f"in the database (the operator's secret is {OPERATOR_ENV})"
            )
    if rest:
        problems.append("serve --fleet: takes --store-url and --http-bind only")
    if problems or url is None or bind is None:
        raise UsageError(problems)
    return FleetApiSettings(url=url, bind=bind.text, loopback=bind.loopback, operator_secret=operator)


def digest(text: str) -> str:
    """What PostgreSQL's ``md5(settings)`` says of a settings text (the database is UTF-8)."""
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


@attrs.define
class Built:
    digest: str
    app: ASGIApp


class AccountApps:
    """Each account's app, built on its first request and kept while its settings stay the
    same; accounts come and go with the database (looked at every ``refresh_s`` seconds)."""

    def __init__(
        self,
        db: FleetStore,
        pool: psycopg_pool.ConnectionPool,
        url: str,
        *,
        loopback: bool,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.pool = pool
        self.url = url
        self.loopback = loopback
        self.refresh_s = refresh_s
        self.clock = clock
        self.apps: dict[str, Built] = {}
        self._digests: dict[str, str] = {}
        self._fetched: float | None = None
        self._names = settings_names()

    async def _refresh(self) -> None:
        now = self.clock()
        if self._fetched is not None and now - self._fetched < self.refresh_s:
            return
        digests = await run_in_threadpool(self.db.digests)
        self._digests, self._fetched = digests, self.clock()
        # a removed account's app goes with it; a changed one is built again on its next request
        for name in [n for n, built in self.apps.items() if digests.get(n) != built.digest]:
            del self.apps[name]

    async def lookup(self, name: str) -> ASGIApp | None:
        await self._refresh()
        expected = self._digests.get(name)
        if expected is None:
            return None
        built = self.apps.get(name)
        if built is not None and built.digest == expected:
            return built.app
        text = (await run_in_threadpool(self.db.settings, [name])).get(name)
        if text is None:  # removed since the last look
            return None
        app, keep = await self._build(name, text)
        if keep:
            # the text may be newer than the last look: kept under the digest of what was built
            self._digests[name] = digest(text)
            self.apps[name] = Built(self._digests[name], app)
        return app

    async def _build(self, name: str, text: str) -> tuple[ASGIApp, bool]:
        """The account's app (and whether to keep it), or a refusal saying why it is not served."""
        from api import create_app
        from connect.daemon import display_of
        from store.postgres_reader import PostgresReader

        # read as `run --fleet` reads it (its own environment, the fleet's database as its store);
        # on the event loop: the account's environment replaces the process's while it is read
        account = account_from_text(
            name, text, [], store_path=str(Path(".") / f"{name}.db"), store_url=self.url, names=self._names
        )
        if isinstance(account, list):
            # the lines name settings, never their values
            log.warning("account not served: its settings have problems", account=name, problems=account)
            return refusal(503, "this account's settings have a problem"), True
        settings = account.settings
        if not isinstance(settings, ApiSettings):
            return refusal(503, "this account serves no API"), True
        if settings.store_url is None or settings.store_url.get_secret_value() != self.url:
            log.warning("account not served: its records are in another store", account=name)
            return refusal(503, "this account's records are not in this database"), True
        if settings.http_secret is None and not (settings.http_readable and self.loopback):
            why = (
                "its settings have no CONNECT_HTTP_SECRET: reading without one is served on a loopback address only"
                if settings.http_readable
                else "its settings have no CONNECT_HTTP_SECRET, and reading without one is off"
            )
            return refusal(401, why), True
        reader = PostgresReader(self.pool, account=settings.account)
        try:
            await run_in_threadpool(reader.verify)
        except StoreUnusable as exc:
            # no daemon has created the tables yet: asked again at the next request
            log.warning("account not served yet", account=name, error=str(exc))
            return refusal(503, "no daemon has written this database yet"), False
        app = create_app(reader, reader.saved_status, settings, display=display_of(settings))
        log.info("account served", account=name)
        return app, True


def build_fleet_app(
    db: FleetStore,
    pool: psycopg_pool.ConnectionPool,
    url: str,
    *,
    operator_secret: SecretStr | None,
    loopback: bool,
    refresh_s: float = REFRESH_S,
) -> tuple[ASGIApp, AccountApps]:
    """The ASGI app of ``serve --fleet`` and its accounts' apps."""
    apps = AccountApps(db, pool, url, loopback=loopback, refresh_s=refresh_s)
    operator = Authenticator(operator_secret, readable=False)

    async def rows() -> list[dict[str, Any]]:
        return [row.as_dict() for row in await run_in_threadpool(db.fleet)]

    return GuardMiddleware(FleetDispatcher(apps.lookup, rows, operator)), apps


def cmd_serve_fleet(args: Sequence[str], environ: Mapping[str, str]) -> int:
    """``serve --fleet`` until SIGTERM or SIGINT."""
    from api import serve
    from connect import daemon as daemon_mod
    from connect.fleet import configure_logs
    from store.postgres import open_pool

    if any(a == "--accounts-dir" or a.startswith("--accounts-dir=") for a in args):
        raise UsageError(["--fleet: the accounts come from the database, not --accounts-dir"])
    settings = fleet_api_settings(args, environ)
    configure_logs(environ)
    db = FleetStore.open(settings.url)
    try:
        pool = open_pool(settings.url, name="nightscout-connect-fleet-api")
    except BaseException:
        db.close()
        raise
    try:
        app, _ = build_fleet_app(
            db, pool, settings.url, operator_secret=settings.operator_secret, loopback=settings.loopback
        )

        async def main() -> None:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(daemon_mod.watch_signals, scope)
                    binds = await nursery.start(serve, app, settings.bind)
                    log.info("serving the fleet", store=db.where, on=binds)

        trio.run(main)
    finally:
        pool.close()
        db.close()
    return 0
