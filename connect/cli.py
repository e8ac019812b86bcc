"""The command line: ``nightscout-connect <command> [--flags]``.

Commands: run (the daemon), once (cron mode), check (settings and login, nothing written),
demo (the simulated CGM into a store with the API up), diagram (the machines as text).
Bad settings exit 2 with one line per problem; nothing prints a traceback for them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pydantic
import structlog
import trio
from pydantic_settings import CliApp, SettingsError

from api.settings import ApiSettings, check_bind
from connect import daemon as daemon_mod
from connect.builder import Builder
from connect.contract import SourceInfo
from connect.errors import ConfigError, ConnectError
from connect.logs import configure
from connect.redact import describe_error, register_secret
from connect.settings import (
    CoreSettings,
    apply_legacy_env,
    describe_validation,
    extra_settings_models,
    load_source,
    recognised_env,
    secret_values,
    settings_model,
)

USAGE = """usage: nightscout-connect <command> [--flags]

commands:
  run       run every loop of the configured source forever (the daemon)
  once      one frame per loop, deliver, then exit (non-zero if any failed)
  check     validate settings and try the login; writes no data
  demo      the simulated CGM into a local store, with live logs and the API
  serve     the HTTP API alone over an existing store
  diagram   print the machines as mermaid, md or dot (--format)

Every setting is a --flag or a CONNECT_* variable; `nightscout-connect <command> --help` lists them.
"""

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command line or settings: one line per problem, exit 2."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def _source_name(args: Sequence[str]) -> str:
    """The source named by ``--source`` (flags win) or CONNECT_SOURCE, before full parsing."""
    for i, arg in enumerate(args):
        if arg == "--source" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--source="):
            return arg.split("=", 1)[1]
    return os.environ.get("CONNECT_SOURCE", "sim")


def load_settings(
    args: Sequence[str], *, defaults: dict[str, Any] | None = None, source_name: str | None = None
) -> tuple[CoreSettings, SourceInfo]:
    """Parse flags and environment for the selected source; raise :class:`UsageError` on problems."""
    try:
        source = load_source(source_name or _source_name(args))
    except ConfigError as exc:
        raise UsageError([str(exc)]) from None
    apply_legacy_env(source.legacy_env)
    model = settings_model(source)
    try:
        settings = CliApp.run(model, cli_args=list(args), **(defaults or {}))
    except pydantic.ValidationError as exc:
        raise UsageError(describe_validation(exc)) from None
    except SettingsError as exc:
        raise UsageError([f"settings: {exc}"]) from None
    register_secret(*secret_values(settings))
    if isinstance(settings, ApiSettings):
        try:
            check_bind(settings)
        except ConfigError as exc:
            raise UsageError([str(exc)]) from None
    return settings, source


def _configure_logs(settings: CoreSettings, *, fmt: str | None = None, level: str | None = None) -> None:
    configure(fmt=fmt or settings.log_format, level=level or settings.log_level)


def cmd_run(args: Sequence[str]) -> int:
    settings, source = load_settings(args)
    _configure_logs(settings)

    async def main() -> None:
        async with daemon_mod.open_daemon(settings, source) as daemon:
            await daemon_mod.run_forever(daemon)

    trio.run(main)
    return EXIT_OK


def cmd_once(args: Sequence[str]) -> int:
    settings, source = load_settings(args)
    _configure_logs(settings)

    async def main() -> bool:
        async with daemon_mod.open_daemon(settings, source) as daemon:
            return await daemon_mod.run_once(daemon)

    return EXIT_OK if trio.run(main) else EXIT_FAILED


def cmd_demo(args: Sequence[str]) -> int:
    defaults = {
        "source": "sim",
        "store_path": os.environ.get("CONNECT_STORE_PATH", "nightscout-connect-demo.db"),
        "backfill_days": float(os.environ.get("CONNECT_BACKFILL_DAYS", "1")),
    }
    os.environ["CONNECT_SOURCE"] = "sim"
    settings, source = load_settings(args, defaults=defaults)
    _configure_logs(settings, fmt="console", level="debug")
    log = structlog.get_logger("connect.demo")
    log.info("demo: simulated CGM → machines → store", store=settings.store_path)

    async def main() -> None:
        async with daemon_mod.open_daemon(settings, source) as daemon:
            await daemon_mod.run_forever(daemon)

    trio.run(main)
    return EXIT_OK


def cmd_serve(args: Sequence[str]) -> int:
    """The HTTP API alone over an existing store, showing the status its daemon last saved."""
    settings, _ = load_settings(args, source_name="sim")
    _configure_logs(settings)
    if not isinstance(settings, ApiSettings) or check_bind(settings) is None:
        raise UsageError(["--http-bind / CONNECT_HTTP_BIND: serve needs an address (it is 0)"])
    path = settings.store_path
    if path == ":memory:" or not os.path.exists(path):
        raise UsageError([f"--store-path / CONNECT_STORE_PATH: no store at {path!r}"])
    from store.reader import StoreReader

    reader = StoreReader(path)

    async def main() -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon_mod.watch_signals, scope)
                binds = await nursery.start(daemon_mod.serve_api, settings, path, reader.saved_status)
                structlog.get_logger("connect.serve").info("serving the store", store=path, on=binds)

    try:
        trio.run(main)
    finally:
        reader.close()
    return EXIT_OK


def cmd_check(args: Sequence[str]) -> int:
    settings, source = load_settings(args)
    _configure_logs(settings)
    models = [settings_model(source)]
    used, ignored = recognised_env(models, os.environ)
    print(f"source: {source.name} — {source.description}")
    print("recognised variables: " + (", ".join(used) if used else "none"))
    print("ignored variables: " + (", ".join(ignored) if ignored else "none"))

    async def main() -> str | None:
        async with daemon_mod.http_client() as client:
            builder = Builder(source.name)
            source.factory(settings, client).generate_driver(builder)
            plan = builder.build()
            if plan.session is None:
                return None
            try:
                authn = await plan.session.authenticate()
                await plan.session.authorize(authn)
            except ConnectError as exc:
                return describe_error(exc)
            return None

    problem = trio.run(main)
    if problem is not None:
        print(f"login: failed — {problem}")
        return EXIT_FAILED
    print("login: ok" if source.name != "sim" else "login: not needed")
    return EXIT_OK


def cmd_diagram(args: Sequence[str]) -> int:
    from connect.diagram import render

    fmt = "mermaid"
    for i, arg in enumerate(args):
        if arg == "--format" and i + 1 < len(args):
            fmt = args[i + 1]
        elif arg.startswith("--format="):
            fmt = arg.split("=", 1)[1]
    if fmt not in ("mermaid", "md", "dot"):
        raise UsageError([f"--format: must be mermaid, md or dot, not {fmt!r}"])
    print(render(fmt))
    return EXIT_OK


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "run": cmd_run,
    "once": cmd_once,
    "check": cmd_check,
    "serve": cmd_serve,
    "demo": cmd_demo,
    "diagram": cmd_diagram,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return EXIT_OK if args else EXIT_USAGE
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"nightscout-connect: unknown command {args[0]!r}\n\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return command(args[1:])
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
    except KeyboardInterrupt:
        return EXIT_OK


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def entry() -> None:
    sys.exit(main())


__all__ = ["extra_settings_models", "main"]
