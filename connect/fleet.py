"""``run --fleet``: every account this process can lease from PostgreSQL, one daemon each.

The accounts (``nightscout-connect accounts import DIR``) and their leases live in the database
named by ``CONNECT_STORE_URL`` (``store/fleet.py``). Any number of processes on any number of
hosts run ``run --fleet`` over the same database; the Lease machine (``machines/lease.py``)
decides what each process renews, claims, gives back and stops, and this driver performs it:
the SQL (in a worker thread, bounded by the first lease that could run out) and the accounts'
daemons (each in its own cancel scope in one nursery, as ``--accounts-dir`` runs them).

A leased account runs exactly as a ``NAME.env`` file of ``--accounts-dir`` does: read in an
environment of its own, labelled ``NAME``, no API unless it binds one, its data in the store
that :func:`open_account_store` opens: the account's rows of the fleet's own database, unless its
file names a store of its own or ``CONNECT_FLEET_STORE_DIR`` keeps SQLite files (``NAME.db``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import queue
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final

import attrs
import structlog
import trio

from connect import accounts
from connect import daemon as daemon_mod
from connect.accounts import OPENING_AT_ONCE, Account, account_from_text, settings_names
from connect.assemble import assemble, open_store
from connect.clock import jitter_rng
from connect.errors import ConnectError, StoreError
from connect.loading import UsageError, take_option
from connect.redact import describe_error, redact_text
from machines.decisions import ClaimLeases, RenewLeases, StopAccounts, WaitUntil
from machines.lease import LeaseMachine, LeasePolicy
from store.abc import WriterStore
from store.fleet import Claim, FleetStore
from store.postgres import Shared, acquire_shared, release_shared

log = structlog.get_logger("connect.fleet")

DEFAULT_LEASE_S: Final = 60.0
#: shorter leases make every process write to the database several times a second
MIN_LEASE_S: Final = 2.0
MAX_LEASE_S: Final = 3600.0
URL_SCHEMES: Final = ("postgresql://", "postgres://")

#: how long a stopping account (its last status write) and a leaving process may take
STOP_GRACE_S: Final = 10.0
#: the longest a database call is waited for while no lease depends on it
CALL_TIMEOUT_S: Final = 30.0


@attrs.frozen
class FleetSettings:
    """The process's own settings in fleet mode (every account's are in the database)."""

    url: str
    lease_s: float = DEFAULT_LEASE_S
    max_accounts: int | None = None
    #: where an account's SQLite store goes when its settings name none; None: the fleet's own
    #: database (the account's rows of the PostgreSQL store)
    store_dir: Path | None = None


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
    text = environ.get("CONNECT_FLEET_STORE_DIR", "").strip()
    store_dir = Path(text) if text else None
    if store_dir is not None and not store_dir.is_dir():
        problems.append("CONNECT_FLEET_STORE_DIR: must name an existing directory")
    if problems or url is None:
        raise UsageError(problems)
    return FleetSettings(url=url, lease_s=lease_s, max_accounts=max_accounts, store_dir=store_dir), rest


def holder_id() -> str:
    """This process among the fleet's: ``host:pid:random`` (a restarted container may reuse the
    host name and the pid, never the random part)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def open_account_store(account: Account) -> WriterStore:
    """The store a leased account's daemon writes, as ``run`` opens it: the account's rows of the
    PostgreSQL store its settings name (the fleet's own database unless its file names another
    store), or its SQLite file (``CONNECT_STORE_PATH`` in its file, or ``CONNECT_FLEET_STORE_DIR``)."""
    return open_store(account.settings)


StoreFactory = Callable[[Account], WriterStore]


@attrs.define
class Running:
    """One account this process runs (owned by the trio loop)."""

    scope: trio.CancelScope
    done: trio.Event
    daemon: daemon_mod.Daemon | None = None
    #: why its daemon would not start or ended (None: it runs, or was stopped)
    error: str | None = None


Report = tuple[str, int | None, str | None]


def account_report(running: Running) -> Report:
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
    """The driver of one process's Lease machine.

    Two sides. The lease thread owns the machine and the database: it sleeps until the
    machine's next time, runs the SQL (each call abandoned at the first moment a held lease
    would need stopping) and sends the trio loop what to start and stop. The trio loop owns the
    accounts' daemons. Renewals have a thread of their own because a hundred accounts storing
    their first frames keep a trio loop busy for seconds at a time: a renewal waiting behind
    them would let leases lapse under accounts that are running well.
    """

    def __init__(
        self,
        db: FleetStore,
        settings: FleetSettings,
        args: Sequence[str] = (),
        *,
        holder: str | None = None,
        open_store: StoreFactory = open_account_store,
        rng: random.Random | None = None,
        pause_collection: bool = False,
    ) -> None:
        self.db = db
        #: the cyclic garbage collector off while claimed accounts are assembled (the command
        #: line's choice, as for ``--accounts-dir``: an embedding program's collector is its own)
        self.pause_collection = pause_collection
        #: claimed accounts not yet assembled (or failed): the collector is on again at none
        self._assembling = 0
        self.settings = settings
        self.args = list(args)
        self.holder = holder or holder_id()
        self.open_store = open_store
        self.rng = rng or jitter_rng()
        self.machine = LeaseMachine(
            LeasePolicy(lease_ms=int(settings.lease_s * 1000), max_accounts=settings.max_accounts)
        )
        # --- the trio loop's
        self.running: dict[str, Running] = {}
        #: accounts cancelled and not yet stopped
        self.stopping: dict[str, Running] = {}
        self._names = settings_names()
        #: stores being opened at once (see :meth:`_run_account`)
        self._opening = trio.CapacityLimiter(OPENING_AT_ONCE)
        #: the process's pool and lock session for the fleet's database, once accounts store
        #: their data there (see :meth:`_reserve`)
        self._shared: Shared | None = None
        self._nursery: trio.Nursery | None = None
        #: what ended the lease thread, if it failed (the run then ends with it)
        self._failure: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        # --- shared: each written by one side, replaced whole (never changed in place)
        #: what the loop last said about each running account
        self.reports: dict[str, Report] = {}
        #: accounts whose daemons ended by themselves, for the lease thread
        self._ended: queue.SimpleQueue[str] = queue.SimpleQueue()
        #: leases to give back: their accounts have stopped
        self._releases: queue.SimpleQueue[frozenset[str]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._halt = threading.Event()
        # --- the lease thread's
        self.published: dict[str, Report] = {}
        #: the token of each lease this process holds (a release names it)
        self.tokens: dict[str, str] = {}
        self._sql = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="fleet-sql")

    @staticmethod
    def now() -> int:
        """The machine's clock: monotonic, in ms."""
        return int(time.monotonic() * 1000)

    # --- the trio loop --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Lease and run accounts until cancelled; then stop them all and give the leases back."""
        log.info("fleet started", holder=self.holder, lease_s=self.settings.lease_s, store=self.db.where)
        self._token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(target=self._lease_thread, name="fleet-leases", daemon=True)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._report_task)
                thread.start()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None  # the lease thread's last requests find nothing to start
            with trio.CancelScope(shield=True), trio.move_on_after(STOP_GRACE_S):
                self._halt.set()
                self._wake.set()
                if thread.is_alive():
                    await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)
                if not thread.is_alive():  # the machine is this side's now
                    self.machine.shutdown()
                await self._stop_all()
                try:
                    await trio.to_thread.run_sync(self.db.leave, self.holder, abandon_on_cancel=True)
                except StoreError as exc:
                    log.warning("leases not given back: they lapse", error=describe_error(exc))
                self._sql.shutdown(wait=False, cancel_futures=True)
                if self._shared is not None:
                    await trio.to_thread.run_sync(release_shared, self._shared, abandon_on_cancel=True)
                    self._shared = None
                log.info("fleet stopped", holder=self.holder)
        if self._failure is not None:
            raise RuntimeError("the lease thread failed") from self._failure

    async def _stop_all(self) -> None:
        stopping = list(self.running.values())
        self.running.clear()
        for running in stopping:
            running.scope.cancel()
        for running in stopping:
            await running.done.wait()

    async def _report_task(self) -> None:
        """Each running account's state, refreshed for the lease thread to publish."""
        every = max(0.5, self.settings.lease_s / 3)
        while True:
            self.reports = {name: account_report(running) for name, running in self.running.items()}
            await trio.sleep(every)

    def _start(self, claimed: dict[str, str]) -> None:
        """(In the loop.) Start these accounts."""
        if self._nursery is None:
            return
        ready = trio.Event()
        self._nursery.start_soon(self._reserve, sorted(claimed), ready)
        if self.pause_collection and claimed:
            accounts.pause_collection()
        self._assembling += len(claimed)
        for name, text in sorted(claimed.items()):
            running = Running(scope=trio.CancelScope(), done=trio.Event())
            self.running[name] = running
            self._nursery.start_soon(self._run_account, name, text, running, ready)

    def _assembled(self, counted: bool) -> bool:
        """One claimed account assembled (or failed), once; with none left, the collector on."""
        if not counted:
            self._assembling -= 1
            if self._assembling == 0:
                accounts.resume_collection()
        return True

    async def _reserve(self, names: list[str], ready: trio.Event) -> None:
        """Before the accounts just claimed open their stores in the fleet's database: their
        one-daemon locks taken in one statement (each open then finds its own; see
        :meth:`store.postgres.Shared.reserve`), not one round trip after another."""
        try:
            if self.settings.store_dir is None:
                if self._shared is None:
                    self._shared = await trio.to_thread.run_sync(acquire_shared, self.settings.url)
                await trio.to_thread.run_sync(self._shared.reserve, names)
        except Exception as exc:  # each account's own open says what is wrong
            log.debug("locks not reserved", error=describe_error(exc))
        finally:
            ready.set()

    def _stop(self, names: frozenset[str], release: bool) -> None:
        """(In the loop.) Stop these accounts; with ``release``, their leases are given back
        once every one has stopped (never before: another process would open a store this one
        still writes)."""
        stopping = []
        for name in names:
            running = self.running.pop(name, None) or self.stopping.get(name)
            if running is not None:
                running.scope.cancel()
                self.stopping[name] = running
                stopping.append((name, running))

        async def wait() -> None:
            for name, running in stopping:
                await running.done.wait()
                if self.stopping.get(name) is running:
                    del self.stopping[name]
            if release:
                self._releases.put(names)
                self._wake.set()

        if self._nursery is not None:
            self._nursery.start_soon(wait)

    async def _run_account(self, name: str, text: str, running: Running, ready: trio.Event) -> None:
        """One leased account until its scope is cancelled (or it fails: the lease thread then
        gives the lease back). Its settings are read at once (on the loop: nothing else runs
        while ``os.environ`` is the account's), its store opened on a worker thread, a few at a
        time, as ``--accounts-dir`` opens them."""
        counted = False  # whether this account is no longer among those being assembled
        try:
            with running.scope:
                earlier = self.stopping.get(name)
                if earlier is not None:  # taken back while it was still stopping here
                    await earlier.done.wait()
                async with AsyncExitStack() as stack:
                    store_dir = self.settings.store_dir
                    account = account_from_text(
                        name,
                        text,
                        self.args,
                        store_path=str((store_dir or Path(".")) / f"{name}.db"),
                        # the account's data goes to the fleet's database unless its file
                        # or CONNECT_FLEET_STORE_DIR names another store
                        store_url=self.settings.url if store_dir is None else None,
                        names=self._names,
                    )
                    if isinstance(account, list):
                        raise UsageError(account)
                    # off the loop: opening waits on the database (or the disk), and every
                    # running account's frames wait on the loop meanwhile
                    await ready.wait()
                    store = await trio.to_thread.run_sync(self.open_store, account, limiter=self._opening)
                    stack.callback(store.close)
                    daemon = await stack.enter_async_context(
                        assemble(account.settings, account.source, store=store)
                    )
                    counted = self._assembled(counted)
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
            self._assembled(counted)
            shared = self._shared
            if shared is not None:  # a lock reserved for a store never opened is given back
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(shared.unreserve, [name])
            running.done.set()
            if running.error is not None and self.running.get(name) is running:
                self.reports = {**self.reports, name: account_report(running)}
                self._ended.put(name)
                self._wake.set()

    # --- the lease thread ------------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        """One database call, abandoned (and failed) when a held lease would run out first."""
        deadline = self.machine.deadline
        timeout = CALL_TIMEOUT_S if deadline is None else max(0.0, (deadline - self.now()) / 1000)
        future = self._sql.submit(fn)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            raise StoreError(f"store {self.db.where}: no answer before a lease would run out") from None

    def _in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)

    def _lease_thread(self) -> None:
        try:
            while not self._halt.is_set():
                self.step()
        except Exception as exc:  # a bug here must not leave accounts running without leases
            log.error("the lease thread failed: stopping", error=describe_error(exc))
            self._in_loop(self._fail_run, exc)

    def _fail_run(self, exc: BaseException) -> None:
        self._failure = exc
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def step(self) -> None:
        """One decision of the machine, performed (in the lease thread)."""
        while True:
            try:
                ended = self._ended.get_nowait()
            except queue.Empty:
                break
            self.machine.ended(ended, self.now(), self.rng.random())
        self._release_stopped()
        now = self.now()
        decision = self.machine.next(now)
        if isinstance(decision, RenewLeases):
            try:
                renewal = self._call(
                    lambda: self.db.renew(self.holder, self.settings.lease_s, self.settings.max_accounts)
                )
            except StoreError as exc:
                log.warning("lease renewal failed", error=describe_error(exc), held=len(self.machine.held))
                self.machine.failed(self.now(), exc, self.rng.random())
                return
            self.tokens.update(renewal.tokens)
            self.machine.renewed(
                now, self.now(), renewal.held, renewal.accounts, renewal.holders, renewal.caps
            )
            self._publish(self.machine.held)
        elif isinstance(decision, ClaimLeases):
            try:
                claimed: dict[str, Claim] = self._call(
                    lambda: self.db.claim(self.holder, self.settings.lease_s, decision.count, decision.skip)
                )
            except StoreError as exc:
                log.warning("lease claim failed", error=describe_error(exc))
                self.machine.failed(self.now(), exc, self.rng.random())
                return
            self.machine.claimed(now, self.now(), claimed)
            self.tokens.update({name: claim.token for name, claim in claimed.items()})
            if claimed:
                log.info("accounts leased", count=len(claimed), holding=len(self.machine.held))
                self._in_loop(self._start, {name: claim.settings for name, claim in claimed.items()})
        elif isinstance(decision, StopAccounts):
            # not waited for here: renewals go on while daemons stop (the loop says when they
            # have, and only then are the leases given back)
            self._in_loop(self._stop, decision.names, decision.release)
            if not decision.release:
                log.warning("leases lost: accounts stopped", accounts=sorted(decision.names))
            for name in decision.names:
                self.published.pop(name, None)
            self.machine.stopped()
        elif isinstance(decision, WaitUntil):
            self._wake.wait(max(0.0, (decision.until - self.now()) / 1000))
            self._wake.clear()

    def _release_stopped(self) -> None:
        """Give back the leases of accounts the loop has stopped (with what was last said of
        them: why an account that failed did)."""
        names: set[str] = set()
        while True:
            try:
                names |= self._releases.get_nowait()
            except queue.Empty:
                break
        # one this process has claimed again since is not given back
        names -= self.machine.held
        if not names:
            return
        self._publish({name for name in names if self.reports.get(name, ("",))[0] == "failed"})
        leases = {name: self.tokens.pop(name) for name in names if name in self.tokens}
        try:
            self._call(lambda: self.db.release(self.holder, leases))
        except StoreError as exc:
            log.warning("leases not given back: they lapse", error=describe_error(exc))

    def _publish(self, names: Collection[str]) -> None:
        """These accounts' states, written only when they changed."""
        reports = self.reports
        changed = [
            (name, *reports[name])
            for name in names
            if name in reports and self.published.get(name) != reports[name]
        ]
        if not changed:
            return
        try:
            self._call(lambda: self.db.publish(self.holder, changed))
        except StoreError as exc:
            log.warning("account states not published", error=describe_error(exc))
            return
        for name, state, last_success, last_error in changed:
            self.published[name] = (state, last_success, last_error)


async def run_fleet(settings: FleetSettings, args: Sequence[str], db: FleetStore) -> None:
    """``run --fleet`` until SIGTERM or SIGINT."""
    fleet = Fleet(db, settings, args, pause_collection=True)
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
