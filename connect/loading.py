"""Reading one run's settings: the selected source, then its flags and environment.

Shared by the CLI's commands and by ``--accounts-dir`` (which reads each account file the same
way), so it sits below both rather than inside the CLI they would otherwise import in a circle.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import pydantic
from pydantic_settings import CliApp, SettingsError

from connect.contract import SourceInfo
from connect.errors import ConfigError
from connect.fields import MAX_VALUE_LENGTH
from connect.redact import register_secret
from connect.settings import (
    CoreSettings,
    apply_legacy_env,
    apply_node_values,
    describe_validation,
    env_for,
    infer_source,
    legacy_env_for,
    load_source,
    no_source_problem,
    preserved_environ,
    secret_values,
    settings_model,
)


class UsageError(Exception):
    """Bad command line or settings: one line per problem, exit 2."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def sqlite_only(settings: CoreSettings, command: str) -> None:
    """``command`` reads a SQLite store file: with a PostgreSQL store named, say so (exit 2)
    rather than read the default file beside it."""
    if settings.store_url is not None:
        raise UsageError(
            [
                f"--store-url / CONNECT_STORE_URL: {command} reads a SQLite store (--store-path / CONNECT_STORE_PATH)"
            ]
        )


def flag_source(args: Sequence[str]) -> str | None:
    """The value of ``--source`` among ``args``, if given."""
    for i, arg in enumerate(args):
        if arg == "--source" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--source="):
            return arg.split("=", 1)[1]
    return None


def selected_source(args: Sequence[str]) -> str | None:
    """The source named by ``--source`` (flags win) or CONNECT_SOURCE, before full parsing.

    Without either, the old variables of exactly one other tool (``BRIDGE_USER_NAME`` …)
    choose its source, as the single-vendor bridges they come from did. Otherwise None: there
    is no default source (see :func:`connect.settings.no_source_problem`).
    """
    flag = flag_source(args)
    if flag is not None and flag.strip():
        return flag.strip()
    named = os.environ.get("CONNECT_SOURCE", "").strip()
    if named:
        return named
    inferred = infer_source(os.environ)
    return None if inferred is None else inferred[0]


@contextlib.contextmanager
def _translated_environ(source: SourceInfo | None) -> Iterator[None]:
    """nightscout-connect's names and values translated into ours while the settings are read,
    and the process environment as it was afterwards (an embedding program's included)."""
    with preserved_environ():
        apply_node_values()
        apply_legacy_env(legacy_env_for(source))
        yield


def load_settings(
    args: Sequence[str], *, defaults: dict[str, Any] | None = None, source_name: str | None = None
) -> tuple[CoreSettings, SourceInfo]:
    """Parse flags and environment for the selected source; raise :class:`UsageError` listing
    every problem (a missing or unknown source among them) at once."""
    problems: list[str] = []
    name = source_name or selected_source(args)
    source: SourceInfo | None = None
    if name is None:
        problems.append(no_source_problem(os.environ))
    else:
        try:
            source = load_source(name)
        except ConfigError as exc:
            problems.append(str(exc))
    overlong = overlong_arguments(args)
    if overlong:
        problems.extend(overlong)
        args = without_overlong(args)
    model = settings_model(source)
    # the source as chosen (a flag, the variable, another tool's names or the command itself)
    given = {**(defaults or {}), **({"source": source.name} if source is not None else {})}
    settings: CoreSettings | None = None
    try:
        with _translated_environ(source):
            # without flags there is nothing for the command-line parser to read, and building
            # it costs more than the rest of the settings (--accounts-dir reads one per file)
            settings = CliApp.run(model, cli_args=list(args), **given) if args else model(**given)
    except pydantic.ValidationError as exc:
        problems.extend(describe_validation(exc))
    except SettingsError as exc:
        problems.append(describe_settings_error(exc))
    if problems or settings is None or source is None:
        raise UsageError(problems or ["settings: could not be read"])
    register_secret(*secret_values(settings))
    return settings, source


def overlong_arguments(args: Sequence[str]) -> list[str]:
    """One line per command-line value over :data:`MAX_VALUE_LENGTH`, naming its flag.

    Checked here, before the settings' own cap, because pydantic-settings tokenises every
    argument with :mod:`shlex`, which takes seconds for one of a few hundred kilobytes."""
    lines = []
    for i, arg in enumerate(args):
        if len(arg) <= MAX_VALUE_LENGTH:
            continue
        flag = arg.split("=", 1)[0] if arg.startswith("--") else (args[i - 1] if i else "")
        if re.fullmatch(r"--[a-z0-9-]{1,64}", flag):
            lines.append(
                f"{flag} / {env_for(flag[2:].replace('-', '_'))}: longer than {MAX_VALUE_LENGTH} characters"
            )
        else:
            lines.append(f"command line: an argument is longer than {MAX_VALUE_LENGTH} characters")
    return lines


def without_overlong(args: Sequence[str]) -> list[str]:
    """``args`` without the over-long values (and the flag before one given separately), so the
    other arguments are still checked."""
    kept: list[str] = []
    for arg in args:
        if len(arg) <= MAX_VALUE_LENGTH:
            kept.append(arg)
        elif not arg.startswith("--") and kept and kept[-1].startswith("--"):
            kept.pop()
    return kept


def describe_settings_error(exc: SettingsError) -> str:
    """pydantic-settings' complaint about the command line (argparse's words), on one line,
    naming the flag and its variable, and without the values it quotes (a value given to the
    wrong flag may be a secret)."""
    text = " ".join(str(exc).split()).removeprefix("error parsing CLI: ")
    _, sep, rest = text.partition("unrecognized arguments:")
    if sep:
        flags = [word.split("=", 1)[0] for word in rest.split() if word.startswith("-")]
        return f"unknown flags: {' '.join(flags) or '(values without a flag)'}"
    text = re.sub(r"'[^']*'", "'…'", text)
    named = re.match(r"argument (--[a-z0-9-]+)(?:/--[a-z0-9-]+)*: (.*)", text)
    if named:
        flag, message = named.groups()
        if message.startswith("ignored explicit argument"):
            message = f"takes no value: {flag} or --no-{flag[2:]}"
        return f"{flag} / {env_for(flag[2:].replace('-', '_'))}: {message}"
    return f"command line: {text}"


def take_option(args: Sequence[str], flag: str, missing: str) -> tuple[str | None, list[str]]:
    """A command's own ``--flag VALUE`` (or ``--flag=VALUE``) taken out before the settings see
    the rest: (the value or None, the other arguments). ``missing`` is the usage line when the
    flag comes without a value."""
    rest: list[str] = []
    value: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == flag:
            if i + 1 >= len(args):
                raise UsageError([f"{flag}: {missing}"])
            value = args[i + 1]
            i += 2
            continue
        if arg.startswith(f"{flag}="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest
