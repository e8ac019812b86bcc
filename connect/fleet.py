"""``run --fleet``: every account this process can lease from PostgreSQL, one daemon each.

The accounts (``nightscout-connect accounts import DIR``) and their leases live in the database
named by ``CONNECT_STORE_URL`` (``store/fleet.py``). Any number of processes on any number of
hosts run ``run --fleet`` over the same database; the Lease machine (``machines/lease.py``)
decides what each process renews, claims, gives back and stops, and this driver performs it:
the SQL (in a worker thread, bounded by the first lease that could run out) and the accounts'
daemons (each in its own cancel scope in one nursery, as ``--accounts-dir`` runs them).

A leased account runs exactly as a ``NAME.env`` file of ``--accounts-dir`` does: read in an
environment of its own, labelled ``NAME``, no API unless it binds one, its data in the store
that :func:`open_account_store` opens (today the account's SQLite file: ``CONNECT_STORE_PATH``
of its settings, else ``CONNECT_FLEET_STORE_DIR/NAME.db``).
"""

from __future__ import annotations

import math
import os
import random
import secrets
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final

import attrs
import structlog
import trio

from connect import daemon as daemon_mod
from connect.accounts import Account, account_from_text, settings_names
from connect.assemble import assemble
from connect.errors import ConnectError, StoreError
from connect.loading import UsageError, take_option
from connect.redact import describe_error, redact_text
from machines.decisions import ClaimLeases, RenewLeases, StopAccounts, WaitUntil
from machines.lease import LeaseMachine, LeasePolicy
from store import Store
from store.fleet import FleetStore

log = structlog.get_logger("connect.fleet")

DEFAULT_LEASE_S: Final = 60.0
#: shorter leases make every process write to the database several times a second
MIN_LEASE_S: Final = 2.0
MAX_LEASE_S: Final = 3600.0
URL_SCHEMES: Final = ("postgresql://", "postgres://")

#: how long a stopping account (its last status write) and a leaving process may take
STOP_GRACE_S: Final = 10.0


@attrs.frozen
class FleetSettings:
    """The process's own settings in fleet mode (every account's are in the database)."""

    url: str
    lease_s: float = DEFAULT_LEASE_S
    max_accounts: int | None = None
    #: where an account's SQLite store goes when its settings name none
    store_dir: Path = Path(".")


def store_url(args: Sequence[str], environ: Mapping[str, str]) -> tuple[str | None, list[str], list[str]]:
    """``--store-url`` (or ``CONNECT_STORE_URL``): (the URL, the problems, the other flags)."""
    flag, rest = take_option(args, "--store-url", "name the database: postgresql://USER@HOST/DB")
    url = flag if flag is not None else environ.get("CONNECT_STORE_URL", "").strip() or None
    if url is None:
        return None, ["--store-url / CONNECT_STORE_URL: required (postgresql://USER@HOST/DB)"], rest
    if not url.startswith(URL_SCHEMES) or len(url) <= len("postgres://"):
        return None, ["--store-url / CONNECT_STORE_URL: must be a postgresql:// URL"], rest
    return url, [], rest


def require_store_url(args: Sequence[str], environ: Mapping[str, str]) -> tuple[str, list[str]]:
    url, problems, rest = store_url(args, environ)
    if problems or url is None:
        raise UsageError(problems)
    return url, rest


def fleet_settings(args: Sequence[str], environ: Mapping[str, str]) -> tuple[FleetSettings, list[str]]:
    """The fleet's settings from the flags and the environment, every problem at once (as
    :class:`UsageError`, no value echoed); returns the flags left for the accounts."""
    url, problems, rest = store_url(args, environ)
    lease_s = DEFAULT_LEASE_S
    text = environ.get("CONNECT_FLEET_LEASE_SECONDS", "").strip()
    if text:
        try:
            lease_s = float(text)
        except ValueError:
            problems.append("CONNECT_FLEET_LEASE_SECONDS: must be a number of seconds")
        else:
            if not (MIN_LEASE_S <= lease_s <= MAX_LEASE_S) or math.isnan(lease_s):
                problems.append(
                    f"CONNECT_FLEET_LEASE_SECONDS: must be between {MIN_LEASE_S:g} and {MAX_LEASE_S:g} seconds"
                )
    max_accounts: int | None = None
    text = environ.get("CONNECT_FLEET_MAX_ACCOUNTS", "").strip()
    if text:
        try:
            max_accounts = int(text)
        except ValueError:
            problems.append("CONNECT_FLEET_MAX_ACCOUNTS: must be a whole number")
        else:
            if max_accounts < 1:
                problems.append("CONNECT_FLEET_MAX_ACCOUNTS: must be at least 1")
    store_dir = Path(environ.get("CONNECT_FLEET_STORE_DIR", "").strip() or ".")
    if not store_dir.is_dir():
        problems.append("CONNECT_FLEET_STORE_DIR: must name an existing directory")
    if problems or url is None:
        raise UsageError(problems)
    return FleetSettings(url=url, lease_s=lease_s, max_accounts=max_accounts, store_dir=store_dir), rest


def holder_id() -> str:
    """This process among the fleet's: ``host:pid:random`` (a restarted container may reuse the
    host name and the pid, never the random part)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def open_account_store(account: Account) -> Store:
    """The store a leased account's daemon writes (the one place that chooses it): the
    account's SQLite file, checked and locked for this process as ``run`` opens it."""
    return Store.open(account.settings.store_path)


StoreFactory = Callable[[Account], Store]


@attrs.define
class Running:
    """One account this process runs."""

    scope: trio.CancelScope
    done: trio.Event
    daemon: daemon_mod.Daemon | None = None
    #: why its daemon would not start or ended (None: it runs, or was stopped)
    error: str | None = None


def account_report(running: Running) -> tuple[str, int | None, str | None]:
    """(state, last_success, last_error) of a running account, from its daemon's status."""
    if running.error is not None:
        return "failed", None, running.error
    daemon = running.daemon
    if daemon is None:
        return "starting", None, None
    status = daemon.runtime.status()
    loops = list(status.get("loops", {}).values())
    successes = [loop["last_success"] for loop in loops if loop.get("last_success")]
    errors = [loop["last_error"] for loop in loops if loop.get("last_error")]
    session_error = status.get("session", {}).get("last_error")
    error = errors[0] if errors else session_error
    last_success = max(successes) if successes else None
    state = "running" if not errors else "failing"
    return state, last_success, None if error is None else redact_text(str(error))[:500]


class Fleet:
    """The driver of one process's Lease machine."""

    def __init__(
        self,
        db: FleetStore,
        settings: FleetSettings,
        args: Sequence[str] = (),
        *,
        holder: str | None = None,
        open_store: StoreFactory = open_account_store,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.args = list(args)
        self.holder = holder or holder_id()
        self.open_store = open_store
        self.rng = rng or random.Random()
        self.machine = LeaseMachine(
            LeasePolicy(lease_ms=int(settings.lease_s * 1000), max_accounts=settings.max_accounts)
        )
        self.running: dict[str, Running] = {}
        self.published: dict[str, tuple[str, int | None, str | None]] = {}
        self._names = settings_names()
        self._wake = trio.Event()
        #: accounts start one at a time (see :meth:`_run_account`)
        self._starting = trio.Lock()

    @staticmethod
    def now() -> int:
        """The machine's clock: trio's, monotonic, in ms."""
        return int(trio.current_time() * 1000)

    async def _db(self, fn: Callable[[], Any]) -> Any:
        """One database call in a worker thread, abandoned (and failed) when the first held
        lease would run out before it answers."""
        deadline = self.machine.deadline
        at = math.inf if deadline is None else deadline / 1000
        with trio.move_on_at(at):
            return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
        raise StoreError(f"store {self.db.where}: no answer before a lease would run out")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Lease and run accounts until cancelled; then stop them all and give the leases back."""
        log.info("fleet started", holder=self.holder, lease_s=self.settings.lease_s, store=self.db.where)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    await self.step(nursery)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_GRACE_S):
                decision = self.machine.shutdown()
                await self._stop(decision.names)
                try:
                    await trio.to_thread.run_sync(self.db.leave, self.holder, abandon_on_cancel=True)
                except StoreError as exc:
                    log.warning("leases not given back: they lapse", error=describe_error(exc))
                log.info("fleet stopped", holder=self.holder)

    async def step(self, nursery: trio.Nursery) -> None:
        """One decision of the machine, performed."""
        now = self.now()
        decision = self.machine.next(now)
        if isinstance(decision, RenewLeases):
            try:
                renewal = await self._db(lambda: self.db.renew(self.holder, self.settings.lease_s))
            except StoreError as exc:
                log.warning("lease renewal failed", error=describe_error(exc), held=len(self.running))
                self.machine.failed(self.now(), exc, self.rng.random())
                return
            self.machine.renewed(now, self.now(), renewal.held, renewal.accounts, renewal.holders)
            await self._publish()
        elif isinstance(decision, ClaimLeases):
            await self._claim(nursery, decision, now)
        elif isinstance(decision, StopAccounts):
            await self._stop(decision.names)
            if decision.release:
                try:
                    await self._db(lambda: self.db.release(self.holder, decision.names))
                except StoreError as exc:
                    log.warning("leases not given back: they lapse", error=describe_error(exc))
            else:
                log.warning("leases lost: accounts stopped", accounts=sorted(decision.names))
            self.machine.stopped()
        elif isinstance(decision, WaitUntil):
            with trio.move_on_at(decision.until / 1000):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _claim(self, nursery: trio.Nursery, decision: ClaimLeases, sent: int) -> None:
        try:
            claimed: dict[str, str] = await self._db(
                lambda: self.db.claim(self.holder, self.settings.lease_s, decision.count, decision.skip)
            )
        except StoreError as exc:
            log.warning("lease claim failed", error=describe_error(exc))
            self.machine.failed(self.now(), exc, self.rng.random())
            return
        self.machine.claimed(sent, self.now(), claimed)
        if claimed:
            log.info("accounts leased", count=len(claimed), holding=len(self.machine.held))
        for name, text in sorted(claimed.items()):
            running = Running(scope=trio.CancelScope(), done=trio.Event())
            self.running[name] = running
            await nursery.start(self._run_account, name, text, running)

    async def _run_account(
        self,
        name: str,
        text: str,
        running: Running,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One leased account until its scope is cancelled (or it fails, which gives the lease
        back). Started one at a time: reading settings and opening a store block the loop
        briefly, and the renewals must not wait behind a hundred of them."""
        try:
            with running.scope:
                task_status.started()
                async with AsyncExitStack() as stack:
                    async with self._starting:
                        store_path = str(self.settings.store_dir / f"{name}.db")
                        account = account_from_text(
                            name, text, self.args, store_path=store_path, names=self._names
                        )
                        if isinstance(account, list):
                            raise UsageError(account)
                        store = self.open_store(account)
                        stack.callback(store.close)
                        daemon = await stack.enter_async_context(
                            assemble(account.settings, account.source, store=store)
                        )
                    running.daemon = daemon
                    daemon.notes["fleet"] = {"holder": self.holder}
                    await daemon_mod.serve_daemon(daemon)
                    running.error = "the daemon ended"
        except (ConnectError, UsageError) as exc:
            running.error = "; ".join(exc.lines) if isinstance(exc, UsageError) else describe_error(exc)
            log.error("account not started", account=name, error=running.error)
        except Exception as exc:
            running.error = describe_error(exc)
            log.error("account stopped by an error", account=name, error=running.error)
        finally:
            running.done.set()
            if running.error is not None and self.running.get(name) is running:
                await self._report_end(name, running)
                self.machine.ended(name, self.now(), self.rng.random())
                self._wake.set()

    async def _report_end(self, name: str, running: Running) -> None:
        report = account_report(running)
        if self.published.get(name) == report:
            return
        with trio.move_on_after(STOP_GRACE_S):
            try:
                await trio.to_thread.run_sync(
                    self.db.publish, self.holder, [(name, *report)], abandon_on_cancel=True
                )
                self.published[name] = report
            except StoreError:
                pass

    async def _stop(self, names: Collection[str]) -> None:
        """Stop these accounts' daemons and wait until they have (each saves its status)."""
        stopping = [self.running.pop(name) for name in names if name in self.running]
        for running in stopping:
            running.scope.cancel()
        for running in stopping:
            await running.done.wait()
        for name in names:
            self.published.pop(name, None)

    async def _publish(self) -> None:
        """Each account's state, last success and last error, written only when it changed."""
        reports: list[tuple[str, str, int | None, str | None]] = []
        for name, running in self.running.items():
            report = account_report(running)
            if self.published.get(name) != report:
                reports.append((name, *report))
        if not reports:
            return
        try:
            await self._db(lambda: self.db.publish(self.holder, reports))
        except StoreError as exc:
            log.warning("account states not published", error=describe_error(exc))
            return
        for name, state, last_success, last_error in reports:
            self.published[name] = (state, last_success, last_error)


async def run_fleet(settings: FleetSettings, args: Sequence[str], db: FleetStore) -> None:
    """``run --fleet`` until SIGTERM or SIGINT."""
    fleet = Fleet(db, settings, args)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon_mod.watch_signals, scope)
            await nursery.start(fleet.run)


def configure_logs(environ: Mapping[str, str]) -> None:
    """The one log stream of a fleet process (an account's own log settings are not read)."""
    from connect.logs import configure

    fmt = environ.get("CONNECT_LOG_FORMAT", "").strip() or "auto"
    level = environ.get("CONNECT_LOG_LEVEL", "").strip() or "info"
    problems = []
    if fmt not in ("auto", "json", "console"):
        problems.append("CONNECT_LOG_FORMAT: must be auto, json or console")
    if level not in ("debug", "info", "warning", "error"):
        problems.append("CONNECT_LOG_LEVEL: must be debug, info, warning or error")
    if problems:
        raise UsageError(problems)
    configure(fmt=fmt, level=level)
