"""Many accounts in one process: a directory of ``NAME.env`` files, one daemon per file.

Each file holds one account's settings in the format of ``examples/dexcomshare.env``
(``KEY=VALUE`` lines, ``#`` comments, blank lines), and is read exactly as ``load_settings``
reads the environment: while it is read, ``os.environ`` is the process environment without its
own ``CONNECT_*`` and old names, plus the file's pairs. Unless the file says otherwise the
account is labelled ``NAME``, stores into ``DIR/NAME.db`` and serves no API.

The daemons share one trio run and nothing else: a refused password or a crashed task of one
account leaves the others polling.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import attrs
import structlog
import trio

from api.settings import ApiSettings, check_bind
from connect import daemon as daemon_mod
from connect import peers
from connect.assemble import assemble
from connect.contract import SourceInfo
from connect.errors import ConfigError
from connect.loading import UsageError, load_settings
from connect.redact import describe_error
from connect.settings import CoreSettings, installed_legacy_env, legacy_env_for, preserved_environ

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


def _settings_names() -> set[str]:
    """Names the settings read: ours and every installed source's old ones."""
    names = set(legacy_env_for(None)) | peers.all_names()
    for legacy in installed_legacy_env().values():
        names.update(legacy)
    return names


@contextlib.contextmanager
def account_environ(pairs: Mapping[str, str], *, defaults: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` as one account sees it while the block runs; the process's afterwards."""
    legacy = _settings_names()
    with preserved_environ() as saved:
        env = {
            key: value
            for key, value in saved.items()
            if key in PROCESS_WIDE_ENV or not (key.startswith("CONNECT_") or key in legacy)
        }
        os.environ.clear()
        # an empty value is no value: the account's default applies (CONNECT_HTTP_BIND= serves
        # no API, as an account without the line)
        os.environ.update({**env, **defaults, **{k: v for k, v in pairs.items() if v.strip()}})
        yield


def account_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise UsageError([f"--accounts-dir: {str(directory)!r} is not a directory"])
    files = sorted(p for p in directory.glob("*.env") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UsageError([f"--accounts-dir: no NAME.env files in {str(directory)!r}"])
    return files


def load_accounts(directory: Path, args: Sequence[str]) -> list[Account]:
    """Every account's settings, or :class:`UsageError` listing every problem of every file,
    each line naming its file. ``args`` (the other flags) apply to every account. Two accounts may not share a store file or an API address."""
    accounts: list[Account] = []
    problems: list[str] = []
    stores: dict[str, str] = {}
    binds: dict[str, str] = {}
    for path in account_files(directory):
        name = path.stem
        try:
            pairs = parse_env_file(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        defaults = {
            "CONNECT_ACCOUNT": name,
            "CONNECT_STORE_PATH": str(directory / f"{name}.db"),
            "CONNECT_HTTP_BIND": "0",
        }
        try:
            with account_environ(pairs, defaults=defaults):
                settings, source = load_settings(args)
                bind = check_bind(settings) if isinstance(settings, ApiSettings) else None
        except ConfigError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        except UsageError as exc:
            problems.extend(f"{path.name}: {line}" for line in exc.lines)
            continue
        store = settings.store_path
        if store != ":memory:":
            key = os.path.realpath(store)
            if key in stores:
                problems.append(
                    f"{path.name}: --store-path / CONNECT_STORE_PATH: {store} is {stores[key]}'s store too"
                )
            stores.setdefault(key, path.name)
        if bind is not None:
            if bind in binds:
                problems.append(
                    f"{path.name}: --http-bind / CONNECT_HTTP_BIND: {bind} is bound by {binds[bind]}"
                )
            binds.setdefault(bind, path.name)
        accounts.append(Account(name=name, settings=settings, source=source, bind=bind))
    if problems:
        raise UsageError(problems)
    return accounts


def log_options(accounts: Sequence[Account]) -> tuple[str, str]:
    """(format, level) of the one log stream: the first account's format, the most verbose level."""
    level = min((a.settings.log_level for a in accounts), key=LEVELS.index)
    return accounts[0].settings.log_format, level


async def _open_all(stack: AsyncExitStack, accounts: Sequence[Account]) -> list[daemon_mod.Daemon]:
    return [await stack.enter_async_context(assemble(a.settings, a.source)) for a in accounts]


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


async def run_accounts(accounts: Sequence[Account]) -> None:
    """``run --accounts-dir``: every account's daemon until SIGTERM or SIGINT."""
    async with AsyncExitStack() as stack:
        daemons = await _open_all(stack, accounts)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon_mod.watch_signals, scope)
                for account, daemon in zip(accounts, daemons, strict=True):
                    await nursery.start(run_account, account, daemon)
    log.info("stopped", accounts=len(accounts))


async def once_accounts(accounts: Sequence[Account]) -> bool:
    """``once --accounts-dir``: one frame per loop of every account, concurrently; True if all
    succeeded."""
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
        daemons = await _open_all(stack, accounts)
        async with trio.open_nursery() as nursery:
            for account, daemon in zip(accounts, daemons, strict=True):
                nursery.start_soon(one, account, daemon)
    return all(results.get(a.name, False) for a in accounts)
