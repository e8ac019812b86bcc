"""Many accounts in one process: a directory of ``NAME.env`` files, one daemon per file.

Each file holds one account's settings in the format of ``examples/dexcomshare.env``
(``KEY=VALUE`` lines, ``#`` comments, blank lines), and is read exactly as ``load_settings``
reads the environment: while it is read, ``os.environ`` is the process environment without its
own ``CONNECT_*`` and old names, plus the file's pairs. Unless the file says otherwise the
account is labelled ``NAME``, stores into ``DIR/NAME.db`` and serves no API.

The daemons share one trio run and nothing else: a refused password or a crashed task of one
account leaves the others polling, and a file that cannot be read or holds a bad setting keeps
only its own account from starting (unless ``--strict``).

One process holds every account's descriptors, so the soft limit of open files is raised to the
hard one at start, and a directory that would still need more than the limit allows is refused
in one line before any store is opened (see :func:`descriptors_needed`).
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import resource
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final

import attrs
import structlog
import trio

from api.settings import ApiSettings, check_bind
from connect import daemon as daemon_mod
from connect import peers
from connect.assemble import assemble, open_store, reserve_stores
from connect.builder import SourcePlan
from connect.contract import SourceInfo
from connect.errors import ConfigError, ConnectError
from connect.loading import UsageError, load_settings
from connect.logs import configure
from connect.redact import describe_error
from connect.settings import (
    CoreSettings,
    installed_legacy_env,
    legacy_env_for,
    preserved_environ,
    replace_environ,
)
from store import Store
from store.abc import WriterStore

log = structlog.get_logger("connect.accounts")

#: process-wide settings: one log stream serves every account, so these stay in each
#: account's environment (a file may still set them; the most verbose level wins)
PROCESS_WIDE_ENV = frozenset({"CONNECT_LOG_FORMAT", "CONNECT_LOG_LEVEL"})
LEVELS = ("debug", "info", "warning", "error")


@attrs.frozen
class Account:
    name: str
    settings: CoreSettings
    source: SourceInfo
    #: the API's address, or None when this account serves none
    bind: str | None


@attrs.frozen
class Refused:
    """An account whose file could not be read, holds a bad setting, or shares a store or an
    API address with another file; each problem is one line beginning with a file's name."""

    name: str
    file: str
    problems: tuple[str, ...]

    def status(self) -> dict[str, Any]:
        return {"account": self.name, "file": self.file, "state": "refused", "problems": list(self.problems)}


@attrs.frozen
class Loaded:
    """A directory read: the accounts that can start and those refused, in file order."""

    accounts: list[Account]
    refused: list[Refused]

    @property
    def problems(self) -> list[str]:
        """Every problem line once (a shared store names both files in one line)."""
        return list(dict.fromkeys(line for refused in self.refused for line in refused.problems))

    def status(self) -> dict[str, Any]:
        """What every started account's status says about the directory."""
        return {"accounts": {"started": len(self.accounts), "refused": [r.status() for r in self.refused]}}


def parse_env_file(text: str) -> dict[str, str]:
    """``KEY=VALUE`` pairs, read by python-dotenv: ``#`` comments (a line's and a value's after
    a space), blank lines, ``export`` and quotes as a shell writes them, no ``$`` expansion.
    Raises ``ValueError`` naming the line (never its content)."""
    from dotenv.parser import parse_stream

    pairs: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.key is None and not binding.error:
            continue  # a comment or a blank line
        if binding.error or binding.key is None or binding.value is None:
            raise ValueError(f"line {binding.original.line}: expected KEY=VALUE")
        pairs[binding.key] = binding.value
    return pairs


def settings_names() -> set[str]:
    """Names the settings read: ours and every installed source's old ones."""
    names = set(legacy_env_for(None)) | peers.all_names()
    for legacy in installed_legacy_env().values():
        names.update(legacy)
    return names


@contextlib.contextmanager
def account_environ(
    pairs: Mapping[str, str], *, defaults: Mapping[str, str], names: Collection[str] | None = None
) -> Iterator[None]:
    """``os.environ`` as one account sees it while the block runs; the process's afterwards.
    ``names``: the settings' old names, when the caller has them already (they are found by
    loading every installed source)."""
    legacy = settings_names() if names is None else names
    with preserved_environ() as saved:
        env = {
            key: value
            for key, value in saved.items()
            if key in PROCESS_WIDE_ENV or not (key.startswith("CONNECT_") or key in legacy)
        }
        # an empty value is no value: the account's default applies (CONNECT_HTTP_BIND= serves
        # no API, as an account without the line)
        replace_environ({**env, **defaults, **{k: v for k, v in pairs.items() if v.strip()}})
        yield


def account_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise UsageError([f"--accounts-dir: {str(directory)!r} is not a directory"])
    # anything but a directory: a dangling link or a device is reported as unreadable, not skipped
    files = sorted(p for p in directory.glob("*.env") if not p.is_dir() and not p.name.startswith("."))
    if not files:
        raise UsageError([f"--accounts-dir: no NAME.env files in {str(directory)!r}"])
    return files


def _read_account(
    directory: Path, path: Path, args: Sequence[str], names: Collection[str]
) -> Account | list[str]:
    """One file's account, or its problems (each line naming the file)."""
    name = path.stem
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [f"{path.name}: cannot be read ({exc.strerror or type(exc).__name__})"]
    except UnicodeDecodeError:
        return [f"{path.name}: cannot be read (not UTF-8 text)"]
    return account_from_text(
        name, text, args, names=names, label=path.name, store_path=str(directory / f"{name}.db")
    )


def account_from_text(
    name: str,
    text: str,
    args: Sequence[str],
    *,
    store_path: str,
    store_url: str | None = None,
    label: str | None = None,
    names: Collection[str] | None = None,
) -> Account | list[str]:
    """An account from the text of its ``NAME.env`` file (read as ``--accounts-dir`` reads it:
    labelled ``name``, its store at ``store_path``, no API unless it binds one), or its
    problems, each line beginning with ``label`` (the file's name) and never quoting a value."""
    label = label or f"{name}.env"
    try:
        pairs = parse_env_file(text)
    except ValueError as exc:
        return [f"{label}: {exc}"]
    defaults = {
        "CONNECT_ACCOUNT": name,
        "CONNECT_STORE_PATH": store_path,
        "CONNECT_HTTP_BIND": "0",
    }
    if store_url is not None and not any(
        pairs.get(k, "").strip() for k in ("CONNECT_STORE_PATH", "CONNECT_STORE_URL")
    ):
        # a store the file names wins over the default database
        defaults["CONNECT_STORE_URL"] = store_url
    try:
        with account_environ(pairs, defaults=defaults, names=names):
            settings, source = load_settings(args)
            bind = check_bind(settings) if isinstance(settings, ApiSettings) else None
    except ConfigError as exc:
        return [f"{label}: {exc}"]
    except UsageError as exc:
        return [f"{label}: {line}" for line in exc.lines]
    return Account(name=name, settings=settings, source=source, bind=bind)


def read_accounts(directory: Path, args: Sequence[str]) -> Loaded:
    """Every account file read, before anything is opened. ``args`` (the other flags) apply to
    every account. A file that cannot be read or holds a bad setting is refused with its
    problems; files that share a store file or an API address are all refused (which of them
    owns it is not for the file order to decide). :class:`UsageError` only when the directory
    itself is unusable."""
    read: list[tuple[Path, Account]] = []
    problems: dict[str, list[str]] = {}
    names = settings_names()
    for path in account_files(directory):
        result = _read_account(directory, path, args, names)
        if isinstance(result, Account):
            read.append((path, result))
        else:
            problems[path.name] = result
    stores: dict[str, str] = {}
    binds: dict[str, str] = {}
    for path, account in read:
        store = account.settings.store_path
        url = account.settings.store_url
        if url is not None:
            # one database holds many accounts: what two files must not share is an account of it
            from store.postgres import display_url

            where, name = display_url(url.get_secret_value()), account.settings.account
            key = f"{where}#{name}"
            if key in stores:
                line = f"{path.name}: --account / CONNECT_ACCOUNT: {name} of {where} is {stores[key]}'s account too"
                problems.setdefault(stores[key], []).append(line)
                problems.setdefault(path.name, []).append(line)
            stores.setdefault(key, path.name)
        elif store != ":memory:":
            key = os.path.realpath(store)
            if key in stores:
                line = f"{path.name}: --store-path / CONNECT_STORE_PATH: {store} is {stores[key]}'s store too"
                problems.setdefault(stores[key], []).append(line)
                problems.setdefault(path.name, []).append(line)
            stores.setdefault(key, path.name)
        if account.bind is not None:
            if account.bind in binds:
                line = f"{path.name}: --http-bind / CONNECT_HTTP_BIND: {account.bind} is bound by {binds[account.bind]}"
                problems.setdefault(binds[account.bind], []).append(line)
                problems.setdefault(path.name, []).append(line)
            binds.setdefault(account.bind, path.name)
    accounts = [account for path, account in read if path.name not in problems]
    refused = [
        Refused(name=Path(file).stem, file=file, problems=tuple(lines))
        for file, lines in sorted(problems.items())
    ]
    return Loaded(accounts=accounts, refused=refused)


def load_accounts(directory: Path, args: Sequence[str], *, strict: bool = False) -> Loaded:
    """:func:`read_accounts`, refused as a whole (:class:`UsageError` listing every problem of
    every file) when no account can start, or with ``strict`` when any file has a problem."""
    loaded = read_accounts(directory, args)
    if loaded.refused and (strict or not loaded.accounts):
        raise UsageError(loaded.problems)
    return loaded


def log_refused(loaded: Loaded) -> None:
    for refused in loaded.refused:
        log.error(
            "account not started", account=refused.name, file=refused.file, problems=list(refused.problems)
        )


# --- open files --------------------------------------------------------------------------------

#: what one account's store holds open: the writer connection's database, WAL and shared-memory
#: index (measured with `once` over sim accounts: 3 each, and 1 more per connected output) and
#: the lock file beside the store
STORE_FDS: Final = 4
#: the account's share of the HTTP client: keep-alive connections to the vendor (the login and
#: the data hosts may differ); sources that contact nothing need none
SOURCE_FDS: Final = 2
LOCAL_SOURCES: Final = frozenset({"sim"})
#: per output: its connection (the Nightscout site over the shared client, or the MQTT broker)
OUTPUT_FDS: Final = 1
#: an account serving the API: its listening socket, the reader's pooled connections (8, each
#: the database and its WAL) and room for 16 clients at once
API_FDS: Final = 1 + 8 * 2 + 16
#: the process's own: standard streams, trio's I/O and wake-up descriptors, the modules it reads
PROCESS_FDS: Final = 64
#: tried in turn when the kernel refuses the hard limit itself (an "unlimited" one): Linux
#: allows at most fs.nr_open (1048576 by default), macOS OPEN_MAX
_FALLBACK_LIMITS: Final = (1_048_576, 10_240)


def account_fds(account: Account) -> int:
    """The descriptors one account is expected to hold open at most."""
    settings = account.settings
    # a PostgreSQL store's connections are the process's one pool, not the account's
    needed = 0 if settings.store_path == ":memory:" or settings.store_url is not None else STORE_FDS
    if account.source.name not in LOCAL_SOURCES:
        needed += SOURCE_FDS
    if getattr(settings, "nightscout_endpoint", None):
        needed += OUTPUT_FDS
    if getattr(settings, "mqtt_url", None) is not None:
        needed += OUTPUT_FDS
    if account.bind is not None:
        needed += API_FDS
    return needed


def descriptors_needed(accounts: Sequence[Account]) -> int:
    return PROCESS_FDS + sum(account_fds(account) for account in accounts)


def raise_open_files_limit() -> tuple[int, int]:
    """The soft limit of open files raised to the hard one (as far as the kernel allows):
    (the soft limit before, the soft limit now)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft in (hard, resource.RLIM_INFINITY):
        return soft, soft
    unlimited = hard == resource.RLIM_INFINITY
    targets = [] if unlimited else [hard]
    targets += [limit for limit in _FALLBACK_LIMITS if soft < limit and (unlimited or limit < hard)]
    for target in targets:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return soft, target
    return soft, soft


def check_open_files(accounts: Sequence[Account]) -> tuple[int, int, int]:
    """Raise the limit and compare it with what the accounts need: (soft limit before, the limit
    now, the estimate). :class:`UsageError` in one line when the accounts need more."""
    before, limit = raise_open_files_limit()
    needed = descriptors_needed(accounts)
    if limit != resource.RLIM_INFINITY and needed > limit:
        raise UsageError([open_files_problem(len(accounts), needed, limit)])
    return before, limit, needed


def open_files_problem(count: int, needed: int, limit: int) -> str:
    return (
        f"--accounts-dir: {count} accounts need about {needed} open files, but the limit is {limit} "
        "(ulimit -n, raised as far as the hard limit allows): raise the hard limit (LimitNOFILE= "
        "in a systemd unit, --ulimit nofile= for Docker) or split the accounts over several directories"
    )


def log_options(accounts: Sequence[Account]) -> tuple[str, str]:
    """(format, level) of the one log stream: the first account's format, the most verbose level."""
    level = min((a.settings.log_level for a in accounts), key=LEVELS.index)
    return accounts[0].settings.log_format, level


# --- the heap while the accounts start -----------------------------------------------------------


@attrs.define
class _Collector:
    #: whether :func:`pause_collection` turned the cyclic collector off
    paused: bool = False


_COLLECTOR = _Collector()


def pause_collection() -> None:
    """The cyclic garbage collector off while the accounts are read and assembled.

    Starting a thousand accounts makes millions of objects that live as long as the process;
    each full collection walks all of them, and the collector runs one whenever the heap has
    grown by a quarter: seconds of a start spent proving that nothing made so far is garbage.
    :func:`resume_collection` turns it on again."""
    if gc.isenabled():
        gc.disable()
        _COLLECTOR.paused = True


def resume_collection() -> None:
    """Once every account is assembled: one collection (what the start left as garbage), then
    every object left is frozen (kept out of later collections: the accounts' parts live as long
    as the process) and the collector is on again. Nothing when :func:`pause_collection` was
    not called (an embedding program's collector is its own)."""
    if _COLLECTOR.paused:
        _COLLECTOR.paused = False
        gc.collect()
        gc.freeze()
        gc.enable()


#: store files opened at once while the accounts start: opening a new one waits mostly on the
#: disk (the file, its WAL, a commit), and SQLite lets the waits overlap on worker threads
OPENING_AT_ONCE: Final = 16


async def _open_stores(
    accounts: Sequence[Account], opened: trio.MemorySendChannel[tuple[int, WriterStore | BaseException]]
) -> None:
    """Every account's store opened as ``run`` opens one (:func:`open_store`: a SQLite file
    checked, locked and migrated, or this account's rows of a PostgreSQL database over the
    process's one pool for it), several at a time; each sent to ``opened`` as soon as it is
    open, with the account's index (or what opening it raised)."""
    limiter = trio.CapacityLimiter(OPENING_AT_ONCE)
    try:
        give_back = await trio.to_thread.run_sync(reserve_stores, [a.settings for a in accounts])
    except Exception:  # each store's own opening reports what is wrong
        give_back = None

    async def one(i: int, settings: CoreSettings) -> None:
        try:
            store: WriterStore | BaseException = await trio.to_thread.run_sync(
                open_store, settings, limiter=limiter
            )
        except Exception as exc:  # each account's own; the first is raised once all are done
            store = exc
        await opened.send((i, store))

    try:
        async with opened, trio.open_nursery() as nursery:
            for i, account in enumerate(accounts):
                nursery.start_soon(one, i, account.settings)
    finally:
        if give_back is not None:
            await trio.to_thread.run_sync(give_back)


async def _open_all(
    stack: AsyncExitStack, accounts: Sequence[Account], notes: Mapping[str, Any]
) -> list[daemon_mod.Daemon]:
    """Every account's store opened and its daemon assembled; none started yet, so a store
    that cannot be used stops the process before any account has run.

    Each daemon is assembled as soon as its store is open: opening waits mostly on the disk or
    the database (on worker threads), assembling is this thread's work, and the two overlap.
    The first problem (in the accounts' order) is raised once every store is open; each store
    opened is closed by ``stack``."""
    daemons: list[daemon_mod.Daemon | None] = [None] * len(accounts)
    unusable: dict[int, BaseException] = {}
    failed: dict[int, BaseException] = {}
    send, receive = trio.open_memory_channel[tuple[int, WriterStore | BaseException]](len(accounts))
    with trio.CancelScope(shield=True):  # a store opened must reach the stack, to be closed
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_open_stores, accounts, send)
            async with receive:
                async for i, store in receive:
                    if isinstance(store, BaseException):
                        unusable[i] = store
                        continue
                    stack.callback(store.close)
                    if unusable or failed:
                        continue  # the process will not run: nothing more to assemble
                    account = accounts[i]
                    try:
                        daemons[i] = await stack.enter_async_context(
                            assemble(account.settings, account.source, store=store)
                        )
                    except Exception as exc:
                        failed[i] = exc
    for problems in (unusable, failed):
        if problems:
            raise problems[min(problems)]
    assembled = [daemon for daemon in daemons if daemon is not None]
    for daemon in assembled:
        daemon.notes.update(notes)
    resume_collection()
    return assembled


async def run_account(
    account: Account,
    daemon: daemon_mod.Daemon,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One account's daemon (and its API when bound) until cancelled.

    A failure while starting (a port already taken) stops the process as a settings error; a
    failure after that stops this account only, logged with its name."""
    started = False
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon_mod.serve_daemon, daemon)
            started = True
            task_status.started()
    except Exception as exc:
        if not started:
            raise
        log.error("account stopped by an error", account=account.name, error=describe_error(exc))


async def run_accounts(accounts: Sequence[Account], refused: Sequence[Refused] = ()) -> None:
    """``run --accounts-dir``: every account's daemon until SIGTERM or SIGINT; the ``refused``
    ones are named in every daemon's status."""
    async with AsyncExitStack() as stack:
        daemons = await _open_all(stack, accounts, Loaded(list(accounts), list(refused)).status())
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon_mod.watch_signals, scope)
                for account, daemon in zip(accounts, daemons, strict=True):
                    await nursery.start(run_account, account, daemon)
    log.info("stopped", accounts=len(accounts), refused=len(refused))


async def once_accounts(accounts: Sequence[Account], refused: Sequence[Refused] = ()) -> bool:
    """``once --accounts-dir``: one frame per loop of every account, concurrently; True if all
    succeeded and none was ``refused``."""
    results: dict[str, bool] = {}

    async def one(account: Account, daemon: daemon_mod.Daemon) -> None:
        try:
            results[account.name] = await daemon_mod.run_once(daemon)
        except Exception as exc:
            log.error("account failed", account=account.name, error=describe_error(exc))
            results[account.name] = False
        if not results[account.name]:
            log.warning("account had failures", account=account.name, source=daemon.runtime.key)

    async with AsyncExitStack() as stack:
        daemons = await _open_all(stack, accounts, Loaded(list(accounts), list(refused)).status())
        async with trio.open_nursery() as nursery:
            for account, daemon in zip(accounts, daemons, strict=True):
                nursery.start_soon(one, account, daemon)
    return not refused and all(results.get(a.name, False) for a in accounts)


#: logins ``check --accounts-dir`` tries at once
CHECK_CONCURRENCY: Final = 8


async def check_logins(
    accounts: Sequence[Account], login: Callable[[SourcePlan], Awaitable[str | None]]
) -> dict[str, str]:
    """Each account's login tried as ``check`` tries one (over a store in memory, without
    outputs: nothing is written); account name → what came of it."""
    results: dict[str, str] = {}
    limiter = trio.CapacityLimiter(CHECK_CONCURRENCY)

    async def one(account: Account) -> None:
        async with limiter:
            store = Store(":memory:")
            try:
                async with assemble(account.settings, account.source, store=store, deliver=False) as daemon:
                    plan = daemon.runtime.plan
                    problem = await login(plan)
            except ConnectError as exc:  # a source that cannot be set up fails its own line
                problem = describe_error(exc)
            finally:
                store.close()
        if problem is not None:
            results[account.name] = f"failed — {problem}"
        else:
            results[account.name] = "not needed" if plan.session is None else "ok"

    async with trio.open_nursery() as nursery:
        for account in accounts:
            nursery.start_soon(one, account)
    return results


def check_directory(
    directory: Path, args: Sequence[str], login: Callable[[SourcePlan], Awaitable[str | None]]
) -> tuple[list[str], int]:
    """``check --accounts-dir``: every file read, the open-files estimate and every account's
    login, one line each on stdout; (the problems, how many logins failed)."""
    loaded = read_accounts(directory, args)
    problems = loaded.problems
    results: dict[str, str] = {}
    if loaded.accounts:
        fmt, level = log_options(loaded.accounts)
        configure(fmt=fmt, level=level)
        try:
            _, limit, needed = check_open_files(loaded.accounts)
        except UsageError as exc:
            problems.extend(exc.lines)
        else:
            print(f"open files: about {needed} needed, the limit is {limit}")
        results = trio.run(check_logins, loaded.accounts, login)
    for account in loaded.accounts:
        print(f"{account.name}: source {account.source.name} — login: {results[account.name]}")
    for refused in loaded.refused:
        print(f"{refused.name}: not started — {len(refused.problems)} problem(s) in {refused.file}")
    failed = sum(1 for result in results.values() if result.startswith("failed"))
    print(f"accounts: {len(loaded.accounts)} ready, {len(loaded.refused)} refused, {failed} login(s) failed")
    return problems, failed
