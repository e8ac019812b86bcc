"""The command line: ``nightscout-connect <command> [--flags]``.

Commands: run (the daemon), once (cron mode), check (settings and login, nothing written),
demo (the simulated CGM into a store with the API up), diagram (the machines as text),
accounts and fleet (the accounts of a PostgreSQL database, and which process runs each;
``run --fleet`` runs those it can lease),
login (CareLink's first login, which needs a person at a browser), capture (one frame's
HTTP exchanges, secrets replaced, saved for a maintainer) and rejected (records set aside, and
sending them again).
Bad settings exit 2 with one line per problem; nothing prints a traceback for them. So does a
store that cannot be used (not a database, a newer schema, read-only, a directory, a missing
directory, or held by another daemon: one daemon per store).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from api.settings import ApiSettings, check_bind
from connect import accounts, peers
from connect import daemon as daemon_mod
from connect.assemble import assemble, try_outputs, try_subscription
from connect.builder import SourcePlan
from connect.contract import SourceInfo
from connect.errors import ConfigError, ConnectError, StoreError
from connect.loading import UsageError, flag_source, load_settings, selected_source, take_option
from connect.logs import configure
from connect.redact import describe_error
from connect.rejected import cmd_rejected
from connect.settings import (
    CoreSettings,
    env_for,
    env_notes,
    extra_settings_models,
    field_names,
    flag_for,
    infer_source,
    installed_legacy_env,
    legacy_env_for,
    load_source,
    recognised_env,
    settings_model,
)
from connect.statusword import cmd_status
from store import Store

USAGE = """usage: nightscout-connect <command> [--flags]

commands:
  run       run every loop of the configured source forever (the daemon)
  once      one frame per loop, deliver, then exit (non-zero if any failed)
            (both take --accounts-dir DIR: one account per DIR/NAME.env, all in one process;
            a bad file is reported and the others start, unless --strict)
  check     validate settings, try the login and each output; writes no data (exit 1: one
            failed; also --accounts-dir DIR)
  demo      the simulated CGM into a local store, with live logs and the API
  serve     the HTTP API alone over an existing store (serve --fleet: every account of the
            database, each under /a/NAME/)
  status    what the daemon on the store (--store-path) last said, in words
  diagram   print the machines as mermaid, md or dot (--format)
  login     login carelink [--import FILE]: CareLink's first login (a person at a browser)
  capture   capture DIR: one frame per loop, each HTTP exchange saved to DIR, secrets replaced
  rejected  the records outputs set aside (refused for good); `rejected retry` sends them again
            ([--output NAME] [--collection NAME])
  export    records of a time range (--from, --to: both included) as csv, json or ndjson
  accounts  accounts in PostgreSQL: import DIR (NAME.env files), list [--json], remove NAME
  fleet     every account of the database: the process holding it, its state [--json]
            (run --fleet runs every account this process can lease; all three take the
            database from --store-url or CONNECT_STORE_URL)

Every setting is a --flag or a CONNECT_* variable; `nightscout-connect <command> --help` lists them.
--env-file FILE (or CONNECT_ENV_FILE) reads KEY=VALUE lines, no shell involved; the environment wins.
run, once, check and capture need a source (CONNECT_SOURCE or --source); only demo reads the
simulator by itself. Exit status: 0 done, 1 a frame, delivery or login failed, 2 bad settings.
"""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _configure_logs(settings: CoreSettings, *, fmt: str | None = None, level: str | None = None) -> None:
    configure(fmt=fmt or settings.log_format, level=level or settings.log_level)


def _accounts_dir(args: Sequence[str]) -> tuple[Path | None, bool, list[str]]:
    """``--accounts-dir DIR`` and ``--strict`` taken out of the flags: (DIR or None, strict,
    the other flags)."""
    directory, rest = take_option(args, "--accounts-dir", "name a directory of NAME.env files")
    strict = "--strict" in rest
    if strict and directory is None:
        raise UsageError(["--strict: only with --accounts-dir DIR"])
    return (None if directory is None else Path(directory)), strict, [a for a in rest if a != "--strict"]


def _run_accounts(directory: Path, args: Sequence[str], *, once: bool, strict: bool) -> int:
    """``run`` / ``once`` over every account file in ``directory``, in one trio run: a file with
    a problem is reported and the others start (with ``strict``, nothing starts)."""
    accounts.pause_collection()  # until every account is assembled
    loaded = accounts.load_accounts(directory, args, strict=strict)
    before, limit, needed = accounts.check_open_files(loaded.accounts)
    fmt, level = accounts.log_options(loaded.accounts)
    configure(fmt=fmt, level=level)
    # said when the limit was raised (worth an operator's notice), a debug line otherwise, so a
    # start refused for another reason still prints one line
    log_accounts = structlog.get_logger("connect.accounts")
    (log_accounts.info if limit != before else log_accounts.debug)(
        "open files", accounts=len(loaded.accounts), needed=needed, limit=limit, raised_from=before
    )
    accounts.log_refused(loaded)
    if once:
        ok = trio.run(accounts.once_accounts, loaded.accounts, loaded.refused)
        return EXIT_OK if ok else EXIT_FAILED
    trio.run(accounts.run_accounts, loaded.accounts, loaded.refused)
    return EXIT_OK


def _check_accounts(directory: Path, args: Sequence[str]) -> int:
    """``check --accounts-dir DIR``: exit 2 when a file has a problem (or the open-files limit
    is too low), else 1 when a login failed."""
    problems, failed = accounts.check_directory(directory, args, try_login)
    for line in problems:
        print(f"nightscout-connect: {line}", file=sys.stderr)
    return EXIT_USAGE if problems else EXIT_FAILED if failed else EXIT_OK


def cmd_run(args: Sequence[str]) -> int:
    if "--fleet" in args:
        return _run_fleet([a for a in args if a != "--fleet"])
    directory, strict, args = _accounts_dir(args)
    if directory is not None:
        return _run_accounts(directory, args, once=False, strict=strict)
    settings, source = load_settings(args)
    _configure_logs(settings)

    async def main() -> None:
        async with assemble(settings, source) as daemon:
            await daemon_mod.run_forever(daemon)

    trio.run(main)
    return EXIT_OK


def _run_fleet(args: Sequence[str]) -> int:
    """``run --fleet``: every account this process can lease from the database."""
    from connect import fleet
    from store.fleet import FleetStore

    if any(a == "--accounts-dir" or a.startswith("--accounts-dir=") for a in args):
        raise UsageError(["--fleet: the accounts come from the database, not --accounts-dir"])
    settings, rest = fleet.fleet_settings(args, os.environ)
    fleet.configure_logs(os.environ)
    accounts.raise_open_files_limit()
    # imported now, not by the first account's daemon: a second of imports inside the trio run
    # would hold up the first renewals of a short lease
    import api.context  # noqa: F401

    db = FleetStore.open(settings.url)
    try:
        trio.run(fleet.run_fleet, settings, rest, db)
    finally:
        db.close()
    return EXIT_OK


def cmd_accounts(args: Sequence[str]) -> int:
    """``accounts import DIR | list | remove NAME`` over the database (``--store-url`` or
    ``CONNECT_STORE_URL``)."""
    from connect import fleet
    from store.fleet import FleetStore

    usage = (
        "accounts: import DIR, list [--json] or remove NAME (the database: --store-url or CONNECT_STORE_URL)"
    )
    if not args or args[0] not in ("import", "list", "remove"):
        raise UsageError([usage])
    action, rest = args[0], list(args[1:])
    url, rest = fleet.require_store_url(rest, os.environ)
    as_json = "--json" in rest
    rest = [a for a in rest if a != "--json"]
    configure(fmt="auto", level="warning")
    if action == "import":
        if not rest or rest[0].startswith("-"):
            raise UsageError(["accounts import: name the directory of NAME.env files"])
        directory, flags = Path(rest[0]), rest[1:]
        if flags:
            raise UsageError(
                ["accounts import: takes DIR alone; an account's settings go in its NAME.env file"]
            )
        # read and checked as --accounts-dir reads it: nothing is imported while any file has a problem
        loaded = accounts.read_accounts(directory, [])
        if loaded.refused:
            raise UsageError(loaded.problems)
        texts = {a.name: (directory / f"{a.name}.env").read_text(encoding="utf-8") for a in loaded.accounts}
        with FleetStore.open(url) as db:
            new = sum(db.upsert_account(name, text) for name, text in sorted(texts.items()))
        print(f"imported {len(texts)} accounts ({new} new, {len(texts) - new} updated) into {db.where}")
        return EXIT_OK
    if action == "remove":
        if len(rest) != 1 or rest[0].startswith("-"):
            raise UsageError(["accounts remove: name one account: accounts remove NAME"])
        with FleetStore.open(url) as db:
            if not db.remove_account(rest[0]):
                print(f"nightscout-connect: accounts remove: no account {rest[0]!r}", file=sys.stderr)
                return EXIT_FAILED
        print(f"removed {rest[0]} (a process running it stops it within a lease)")
        return EXIT_OK
    if rest:
        raise UsageError([usage])
    with FleetStore.open(url) as db:
        listed = db.accounts()
    if as_json:
        print(json.dumps([{"account": name, "updated_at": updated} for name, updated in listed]))
    else:
        for name, updated in listed:
            print(f"{name}\t{_iso(updated)}")
    return EXIT_OK


def cmd_fleet(args: Sequence[str]) -> int:
    """``fleet [--json]``: every account, the process holding it and what that process said."""
    from connect import fleet
    from store.fleet import FleetStore

    if any(a in ("-h", "--help") for a in args):
        print(
            "usage: nightscout-connect fleet [--json] [--store-url URL]\n\n"
            "every account of the database (CONNECT_STORE_URL): the process holding its lease, its\n"
            "state, its last good frame and its last error"
        )
        return EXIT_OK
    url, rest = fleet.require_store_url(args, os.environ)
    as_json = "--json" in rest
    if [a for a in rest if a != "--json"]:
        raise UsageError(["fleet: takes --json and --store-url only"])
    configure(fmt="auto", level="warning")
    with FleetStore.open(url) as db:
        rows = db.fleet()
    if as_json:
        print(json.dumps([row.as_dict() for row in rows]))
        return EXIT_OK
    table = [("ACCOUNT", "HOLDER", "STATE", "LAST SUCCESS", "LAST ERROR")]
    for row in rows:
        success = "-" if row.last_success is None else _iso(row.last_success)
        table.append((row.account, row.holder or "-", row.state, success, row.last_error or "-"))
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    for line in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[4]
        )
    return EXIT_OK


def _iso(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_once(args: Sequence[str]) -> int:
    directory, strict, args = _accounts_dir(args)
    if directory is not None:
        return _run_accounts(directory, args, once=True, strict=strict)
    settings, source = load_settings(args)
    _configure_logs(settings)

    async def main() -> bool:
        async with assemble(settings, source) as daemon:
            return await daemon_mod.run_once(daemon)

    return EXIT_OK if trio.run(main) else EXIT_FAILED


def cmd_demo(args: Sequence[str]) -> int:
    """The one command that reads the simulator without being asked to."""
    # the demo's own defaults go where the user's variables would, so the user's flags and
    # variables still win and are checked like any others
    demo_env = {"CONNECT_STORE_PATH": "nightscout-connect-demo.db", "CONNECT_BACKFILL_DAYS": "1"}
    if not os.environ.get("CONNECT_HTTP_SECRET", "").strip() and not any(
        a.startswith("--http-secret") for a in args
    ):
        # the demo is for looking at: with no secret its page and reads are open (on loopback,
        # where the API binds by default; a public bind still needs CONNECT_HTTP_SECRET)
        demo_env["CONNECT_HTTP_READABLE"] = "true"
    for name, value in demo_env.items():
        if not os.environ.get(name, "").strip():
            os.environ[name] = value
    settings, source = load_settings(args, source_name="sim")
    _configure_logs(settings, fmt="console", level="debug")
    log = structlog.get_logger("connect.demo")
    bind = check_bind(settings) if isinstance(settings, ApiSettings) else None
    if bind is not None and not bind.startswith("unix:"):
        host, _, port = bind.rpartition(":")
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        # first, before the logs start: where to look
        print(f"nightscout-connect demo: open http://{host}:{port}/ (Ctrl-C stops it)", flush=True)

    # how often the demo prints its one-line summary
    try:
        every = float(os.environ.get("CONNECT_DEMO_SUMMARY_SECONDS", "").strip() or 60)
    except ValueError:
        raise UsageError(["CONNECT_DEMO_SUMMARY_SECONDS: a number of seconds"]) from None

    async def summaries(daemon: daemon_mod.Daemon) -> None:
        from connect.statusword import one_line

        while True:
            await trio.sleep(max(every, 1.0))
            stored, newest = await daemon.astore.sgv_summary()
            print(one_line(daemon.status(), stored, newest, int(time.time() * 1000)), flush=True)

    async def main() -> None:
        async with assemble(settings, source) as daemon:
            log.info("demo: simulated CGM → machines → store", store=settings.store_name())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(summaries, daemon)
                await daemon_mod.run_forever(daemon)
                nursery.cancel_scope.cancel()

    trio.run(main)
    return EXIT_OK


def cmd_serve(args: Sequence[str]) -> int:
    """The HTTP API alone over an existing store, showing the status its daemon last saved
    (``--fleet``: every account of a PostgreSQL database, each under ``/a/NAME/``)."""
    if "--fleet" in args:
        from connect.fleet_api import cmd_serve_fleet

        return cmd_serve_fleet([a for a in args if a != "--fleet"], os.environ)
    settings, _ = load_settings(args, source_name="sim")
    _configure_logs(settings)
    if not isinstance(settings, ApiSettings) or check_bind(settings) is None:
        raise UsageError(["--http-bind / CONNECT_HTTP_BIND: serve needs an address (it is 0)"])
    from store.abc import ReaderStore
    from store.reader import StoreReader

    reader: ReaderStore
    if settings.store_url is not None:
        from store.postgres_reader import PostgresReader

        reader = PostgresReader(settings.store_url.get_secret_value(), account=settings.account)
    else:
        path = settings.store_path
        if path == ":memory:" or not os.path.exists(path):
            raise UsageError([f"--store-path / CONNECT_STORE_PATH: no store at {path!r}"])
        reader = StoreReader(path)
    try:
        reader.verify()  # a damaged store, or one of a newer version, is refused, not served
    except BaseException:
        reader.close()
        raise

    async def main() -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon_mod.watch_signals, scope)
                binds = await nursery.start(daemon_mod.serve_api, settings, reader, reader.saved_status)
                structlog.get_logger("connect.serve").info("serving the store", store=reader.path, on=binds)

    try:
        trio.run(main)
    finally:
        reader.close()
    return EXIT_OK


def env_report(source: SourceInfo | None, args: Sequence[str], given: Mapping[str, str]) -> list[str]:
    """What ``check`` prints about the environment: the source (and what chose it), the
    variables it recognised (old names included), those it ignored, and a line of advice per
    ignored one that has some. Without a source, the settings every run reads are listed."""
    models = [settings_model(source)]
    legacy = legacy_env_for(source)
    others = {
        old: name
        for name, names in installed_legacy_env().items()
        if source is None or name != source.name
        for old in names
        if old not in legacy
    }
    used, ignored = recognised_env(models, given, legacy=legacy, other_legacy=others)
    inferred = None if flag_source(args) is not None else infer_source(given)
    chosen = f" (chosen by {inferred[1]}: CONNECT_SOURCE is not set)" if inferred else ""
    known = [env_for(name) for name in field_names(models)]
    notes = env_notes(ignored, given, legacy=legacy, other_legacy=others, known=known)
    described = (
        "none: CONNECT_SOURCE is not set" if source is None else f"{source.name} — {source.description}"
    )
    return [
        f"source: {described}{chosen}",
        "recognised variables: " + (", ".join(used) if used else "none"),
        "ignored variables: " + (", ".join(ignored) if ignored else "none"),
        *(f"  {note}" for note in notes),
        *peers.peer_report(given, set(used)),
    ]


def cmd_check(args: Sequence[str]) -> int:
    directory, _strict, args = _accounts_dir(args)  # check reports every file either way
    if directory is not None:
        return _check_accounts(directory, args)
    given = dict(os.environ)  # as the user set it, before old names are copied to ours
    try:
        settings, source = load_settings(args)
    except UsageError:
        # the list still helps most here: a typo is often why a required setting is missing
        with contextlib.suppress(ConfigError):
            name = selected_source(args)
            print("\n".join(env_report(None if name is None else load_source(name), args, given)))
        raise
    _configure_logs(settings)
    print("\n".join(env_report(source, args, given)))

    async def main() -> tuple[str | None, list[tuple[bool, str]], list[tuple[bool, str]]]:
        # the daemon `run` would start, over a store in memory and without outputs: only the
        # vendor is contacted, and nothing is written; then the subscription and each output
        # are tried, storing and writing nothing
        store = Store(":memory:")
        try:
            async with assemble(settings, source, store=store, deliver=False) as daemon:
                problem = await try_login(daemon.runtime.plan)
                subscription = await try_subscription(settings, daemon.astore)
                return problem, subscription, await try_outputs(settings, daemon.astore, daemon.client)
        finally:
            store.close()

    problem, subscription, outputs = trio.run(main)
    if problem is not None:
        print(f"login: failed — {problem}")
    else:
        print("login: ok" if source.name != "sim" and source.polls else "login: not needed")
    if settings.store_url is not None:
        outputs.insert(0, try_postgres(settings.store_url.get_secret_value()))
    for _, line in subscription:
        print(line)
    print("\n".join(line for _, line in outputs) or "outputs: none (records stay in the local store)")
    tried = [*subscription, *outputs]
    return EXIT_FAILED if problem is not None or not all(ok for ok, _ in tried) else EXIT_OK


def try_postgres(url: str) -> tuple[bool, str]:
    """Whether the PostgreSQL store can be reached and used, writing nothing; the line ``check``
    prints for it (without the password)."""
    from store.postgres import display_url
    from store.postgres_reader import PostgresReader
    from store.postgres_schema import SCHEMA_VERSION, current_version

    where = f"store {display_url(url)}"
    try:
        reader = PostgresReader(url)
        try:
            with reader.connection() as conn:
                version = current_version(conn)
        finally:
            reader.close()
    except ConnectError as exc:  # StoreUnusable: the server could not be reached
        return False, str(exc)
    except Exception as exc:
        return False, f"{where}: failed ({describe_error(exc)})"
    if version > SCHEMA_VERSION:
        return (
            False,
            f"{where}: migrated by a newer version (schema {version}; this one knows {SCHEMA_VERSION})",
        )
    if version == 0:
        return True, f"{where}: ok, empty (the daemon creates the schema on its first start)"
    return True, f"{where}: ok, schema {version}"


async def try_login(plan: SourcePlan) -> str | None:
    """Log in as the source's session does; None when that worked (or no login is needed),
    else the problem, secrets removed."""
    if plan.session is None:
        return None
    try:
        authn = await plan.session.authenticate()
        await plan.session.authorize(authn)
    except ConnectError as exc:
        return describe_error(exc)
    return None


#: vendors whose first login needs a person (the names a user might type for each)
LOGIN_VENDORS = {"carelink": "minimedcarelink", "minimedcarelink": "minimedcarelink"}


def cmd_login(args: Sequence[str]) -> int:
    """``login carelink [--import FILE] [--flags]``: the first login, at a terminal."""
    if not args or args[0].startswith("-"):
        raise UsageError(["login: name the vendor: nightscout-connect login carelink [--import FILE]"])
    vendor, rest = args[0], list(args[1:])
    if vendor.lower() not in LOGIN_VENDORS:
        raise UsageError(
            [
                f"login: {vendor!r} has no interactive login; only carelink needs one (the other "
                "sources log in with their CONNECT_* credentials)"
            ]
        )
    imported, flags = take_option(rest, "--import", "name the token file to import (such as logindata.json)")
    import_from = None if imported is None else Path(imported)
    if import_from is not None and not import_from.is_file():
        raise UsageError([f"--import: no file at {str(import_from)!r}"])
    settings, _ = load_settings(flags, source_name=LOGIN_VENDORS[vendor.lower()])
    _configure_logs(settings)
    from sources.carelink.login import run_login
    from sources.carelink.settings import CareLinkSettings

    if not isinstance(settings, CareLinkSettings):  # the model above always is one
        raise UsageError(["login: the CareLink settings could not be loaded"])
    return run_login(settings, import_from=import_from)


def cmd_capture(args: Sequence[str]) -> int:
    """``capture DIR [--flags]``: one frame per loop, every HTTP exchange saved, secrets replaced."""
    from connect.capture import FrameResult, Recorder, capture_frames, existing_capture, write_capture

    if not args or args[0].startswith("-"):
        raise UsageError(
            ["capture: name a directory for the files: nightscout-connect capture DIR [--flags]"]
        )
    directory, flags = Path(args[0]), list(args[1:])
    if directory.exists() and not directory.is_dir():
        raise UsageError([f"capture: {str(directory)!r} is not a directory"])
    if existing := existing_capture(directory):
        raise UsageError(
            [
                f"capture: {str(directory)!r} already holds {len(existing)} captured exchanges; name an empty directory"
            ]
        )
    # a capture is for showing a problem, not for history: one day back unless asked otherwise
    # (given where a variable would be, so a flag still wins)
    if not os.environ.get("CONNECT_BACKFILL_DAYS", "").strip():
        os.environ["CONNECT_BACKFILL_DAYS"] = "1"
    settings, source = load_settings(flags)
    _configure_logs(settings)
    recorder = Recorder()
    result = FrameResult(ok=False, counts={})
    try:
        result = trio.run(capture_frames, settings, source, recorder)
    finally:
        written = write_capture(directory, recorder.exchanges, settings)
        stored = ", ".join(f"{n} {c}" for c, n in result.counts.items() if n) or "no records"
        print(f"captured {len(written)} HTTP exchanges of {source.name} into {directory}")
        print(f"frames: {'ok' if result.ok else 'failed'} ({stored}; nothing was stored or delivered)")
        if written:
            print(
                "passwords, tokens, cookies, ids and names are replaced by placeholders such as "
                "<password-1>; read the files before sending them"
            )
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_diagram(args: Sequence[str]) -> int:
    from connect.diagram import render

    chosen, _ = take_option(args, "--format", "name one of mermaid, md or dot")
    fmt = chosen or "mermaid"
    if fmt not in ("mermaid", "md", "dot"):
        raise UsageError([f"--format: must be mermaid, md or dot, not {fmt!r}"])
    print(render(fmt))
    return EXIT_OK


def cmd_export(args: Sequence[str]) -> int:
    """``export [--from DATE] [--to DATE] [--collection C] [--format F] [--output FILE]``: the
    records of a time range (both ends included), oldest first, to stdout or a file."""
    from connect.export import run_export

    return run_export(args)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "run": cmd_run,
    "once": cmd_once,
    "check": cmd_check,
    "serve": cmd_serve,
    "demo": cmd_demo,
    "diagram": cmd_diagram,
    "login": cmd_login,
    "capture": cmd_capture,
    "rejected": cmd_rejected,
    "export": cmd_export,
    "status": cmd_status,
    "accounts": cmd_accounts,
    "fleet": cmd_fleet,
}


#: what each command that reads settings does, for its --help
SUMMARIES: dict[str, str] = {
    "run": "run every loop of the source forever, with the API and the outputs (the daemon)",
    "once": "one pass of every loop, deliver, then exit (1 if anything failed): cron mode",
    "check": "validate the settings, try the login and each output; writes no data",
    "demo": "the simulated CGM into a local store, with live logs and the API",
    "serve": "the HTTP API alone over an existing store (--fleet: every account of a PostgreSQL "
    "database under /a/NAME/, each behind its own CONNECT_HTTP_SECRET; see the README)",
    "status": "what the daemon on the store last said about itself, in plain words (read-only)",
    "capture": "capture DIR: one frame per loop, each HTTP exchange saved to DIR, secrets replaced",
    "login": "login carelink [--import FILE]: CareLink's first login, at a terminal",
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("nightscout-connect")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _default_words(field: Any) -> str:
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if default is None or default == "":
        return "unset"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def command_help(command: str, args: Sequence[str]) -> str:
    """A command's settings, one line each: the flag, its variable, the default in words and
    what it is for, grouped as the README's tables are."""
    name = "sim" if command == "demo" else LOGIN_VENDORS.get("carelink") if command == "login" else None
    name = name or selected_source([a for a in args if a not in ("-h", "--help")])
    source = None
    with contextlib.suppress(ConfigError):
        source = None if name is None else load_source(name)
    groups: list[tuple[str, Any]] = [("core", CoreSettings)]
    if source is not None:
        groups.append((f"source {source.name}", source.settings))
    groups.extend(
        (model.__name__.removesuffix("Settings").lower() or "other", model)
        for model in extra_settings_models()
    )
    lines = [f"usage: nightscout-connect {command} [--flags]", "", SUMMARIES.get(command, ""), ""]
    seen: set[str] = set()
    for title, model in groups:
        fields = [(f, info) for f, info in model.model_fields.items() if f not in seen]
        if not fields:
            continue
        lines.append(f"{title}:")
        for field, info in fields:
            seen.add(field)
            lines.append(f"  {flag_for(field):34} {env_for(field):36} {_default_words(info)}")
            if info.description:
                lines.append(f"      {info.description}")
        lines.append("")
    if source is None:
        lines.append("name a source (--source NAME or CONNECT_SOURCE) to list its settings too")
    lines.append("--env-file FILE (or CONNECT_ENV_FILE): read KEY=VALUE lines; the environment wins")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return EXIT_OK if args else EXIT_USAGE
    if args[0] in ("--version", "-V", "version"):
        print(f"nightscout-connect {version()}")
        return EXIT_OK
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"nightscout-connect: unknown command {args[0]!r}\n\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    if args[0] in SUMMARIES and any(a in ("-h", "--help") for a in args[1:]):
        try:
            print(command_help(args[0], read_env_file(args[1:])))
        except UsageError as exc:
            for line in exc.lines:
                print(f"nightscout-connect: {line}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK
    try:
        code = command(read_env_file(args[1:]))
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except BrokenPipeError:
        # the reader went away (`diagram | head`): what it wanted it has; no traceback, and
        # stdout pointed at /dev/null so the interpreter's own final flush stays quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except UsageError as exc:
        for line in exc.lines:
            print(f"nightscout-connect: {line}", file=sys.stderr)
        return EXIT_USAGE
    except BaseExceptionGroup as group:
        # a settings problem found only at start (a port already taken) arrives wrapped by trio
        config, rest = group.split(ConfigError)
        if config is None or rest is not None:
            raise
        for leaf in _leaves(config):
            print(f"nightscout-connect: {leaf}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"nightscout-connect: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        # the machines retry a store fault; one that still ends a command is one line
        print(f"nightscout-connect: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


def read_env_file(args: Sequence[str]) -> list[str]:
    """``--env-file FILE`` (or ``CONNECT_ENV_FILE``): settings read from a ``KEY=VALUE`` file by
    the program itself, never by a shell, so a value with ``$``, quotes or spaces arrives as
    written. A variable already in the environment wins over the file, as it does for
    ``docker run --env-file`` and pydantic's own env files. Returns the other arguments."""
    chosen, rest = take_option(args, "--env-file", "name the file of KEY=VALUE lines")
    # Azure's connection strings (CUSTOMCONNSTR_API_SECRET …), as the older bridges read them
    peers.apply_azure_names(os.environ)
    path = chosen if chosen is not None else os.environ.get("CONNECT_ENV_FILE", "").strip() or None
    if path is None:
        return rest
    flag = "--env-file" if chosen is not None else "CONNECT_ENV_FILE"
    if not os.path.isfile(path):
        raise UsageError([f"{flag}: no file at {path!r}"])
    from dotenv import dotenv_values

    try:
        values = dotenv_values(path, interpolate=False, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError([f"{flag}: {path!r} cannot be read ({type(exc).__name__})"]) from None
    for key, value in values.items():
        if value is not None and key not in os.environ:
            os.environ[key] = value
    peers.apply_azure_names(os.environ)
    return rest


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def entry() -> None:
    sys.exit(main())


__all__ = ["UsageError", "extra_settings_models", "load_settings", "main"]
