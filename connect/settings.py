"""Configuration: one pydantic-settings model per run, composed from the core settings, the
selected source's settings and the outputs' and API's settings.

Every field comes from a ``--flag`` or a ``CONNECT_*`` variable (flags win). The model is built
for the selected source only, so that source's required fields are required and no other's.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Final, Literal, cast
from urllib.parse import urlsplit

import pydantic
from pydantic import Field
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from connect import peers
from connect.contract import SourceInfo
from connect.errors import ConfigError
from connect.fields import ConnectSettings, StorePath

ENTRY_POINT_GROUP = "nightscout_connect.sources"


class _FieldsKnownEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source with what it works out about each field (its
    variable names, whether its value is JSON) kept per field rather than worked out on every
    read. That depends on the model and its config only, never on the environment, and it is
    most of a read's cost (``--accounts-dir`` reads one per account file: seconds at 1,000)."""

    def _extract_field_info(
        self, field: FieldInfo, field_name: str, model_config: Mapping[str, Any] | None = None
    ) -> list[tuple[str, str, bool]]:
        if model_config is not None:  # a nested model's field: not ours to keep
            return super()._extract_field_info(field, field_name, model_config)
        key = (id(field), field_name, self.env_prefix, self.env_prefix_target, self.case_sensitive)
        known = _FIELD_INFO.get(key)
        if known is None or known[0] is not field:
            # the field is held beside its answer, so its id cannot be reused by another
            known = _FIELD_INFO[key] = (field, super()._extract_field_info(field, field_name))
        return list(known[1])

    def _field_is_complex(self, field: FieldInfo) -> tuple[bool, bool]:
        known = _FIELD_COMPLEX.get(id(field))
        if known is None or known[0] is not field:
            known = _FIELD_COMPLEX[id(field)] = (field, super()._field_is_complex(field))
        return known[1]


_FIELD_INFO: dict[tuple[int, str, str, str, bool | None], tuple[FieldInfo, list[tuple[str, str, bool]]]] = {}
_FIELD_COMPLEX: dict[int, tuple[FieldInfo, tuple[bool, bool]]] = {}


class CoreSettings(ConnectSettings):
    """Settings every run has, whatever the source."""

    model_config = SettingsConfigDict(
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_exit_on_error=False,
        cli_prog_name="nightscout-connect",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # no .env file or secrets directory is ever configured, so those sources read nothing;
        # they would still cost each read of the settings as much as the environment does
        # (--accounts-dir reads one per account file). Flags come first when given.
        if type(env_settings) is EnvSettingsSource:
            # the same source, already holding this read's environment, keeping its per-field work
            env_settings.__class__ = _FieldsKnownEnvSource
        return init_settings, env_settings

    source: str | None = Field(
        default=None,
        description="where readings come from (no default: sim is the simulator, which only demo picks by itself)",
    )
    store_path: StorePath = Field(
        default="nightscout-connect.db", description="SQLite store file (:memory: allowed)"
    )
    store_url: pydantic.SecretStr | None = Field(
        default=None,
        description="PostgreSQL store instead of the SQLite file, postgresql://user:pass@host:5432/db "
        "(many accounts may share one database; --account names this one)",
    )
    backfill_days: float = Field(default=30.0, gt=0, le=3650, description="history to fetch on first start")
    account: str = Field(default="", description="label for this account in a multi-account store")
    log_format: Literal["auto", "json", "console"] = Field(default="auto", description="json or console logs")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info")

    @pydantic.field_validator("store_url")
    @classmethod
    def _store_url(cls, value: pydantic.SecretStr | None) -> pydantic.SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        check_store_url(value.get_secret_value().strip())
        return pydantic.SecretStr(value.get_secret_value().strip())

    def store_name(self) -> str:
        """The store as logs and messages name it: the SQLite path, or the URL without its password."""
        if self.store_url is None:
            return self.store_path
        from store.postgres import display_url

        return display_url(self.store_url.get_secret_value())


def check_store_url(url: str) -> None:
    """A PostgreSQL URL in a shape psycopg can use, else ValueError (the value is not quoted)."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError("must be a postgresql:// or postgres:// URL")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        raise ValueError("is not a URL psycopg can use (look at the port and the brackets)") from None
    if not parts.path.strip("/") and "dbname=" not in parts.query:
        raise ValueError("names no database (postgresql://user:pass@host:5432/DATABASE)")


#: sources built in beside the entry points: ``none`` polls nothing (push sources only)
BUILTIN_SOURCES: Final[dict[str, str]] = {"none": "sources.none:SOURCE", "mqtt": "sources.none:MQTT"}


@functools.cache
def _source_entry_points() -> tuple[EntryPoint, ...]:
    # read once per process: scanning the installed distributions takes milliseconds, and
    # ``--accounts-dir`` loads a source for every account file
    return tuple(entry_points(group=ENTRY_POINT_GROUP))


def known_sources() -> dict[str, str]:
    """Source name → entry point value, for every installed source (and ``none``)."""
    return {**BUILTIN_SOURCES, **{ep.name: ep.value for ep in _source_entry_points()}}


def load_source(name: str) -> SourceInfo:
    """The :class:`SourceInfo` of an installed source (through its entry point)."""
    if name in BUILTIN_SOURCES:
        module, _, attr = BUILTIN_SOURCES[name].partition(":")
        info = getattr(importlib.import_module(module), attr)
        assert isinstance(info, SourceInfo)
        return info
    for ep in _source_entry_points():
        if ep.name == name:
            info = ep.load()
            if not isinstance(info, SourceInfo):
                raise ConfigError(f"source {name!r}: entry point {ep.value} is not a SourceInfo")
            return info
    known = ", ".join(sorted(known_sources()))
    raise ConfigError(f"--source / CONNECT_SOURCE: unknown source (known: {known})")


def extra_settings_models() -> list[type[BaseSettings]]:
    """Settings of the outputs and the API, when those packages provide them."""
    models: list[type[BaseSettings]] = []
    for module, attr in (
        ("outputs.settings", "OutputSettings"),
        ("outputs.alert_settings", "AlertSettings"),
        ("api.settings", "ApiSettings"),
        ("connect.subscriber", "PushSettings"),
    ):
        try:
            mod = __import__(module, fromlist=[attr])
        except ImportError:
            continue
        model = getattr(mod, attr, None)
        if isinstance(model, type) and issubclass(model, BaseSettings):
            models.append(model)
    return models


def settings_model(source: SourceInfo | None) -> type[CoreSettings]:
    """The settings model of one run: core + the source's + outputs' + API's fields."""
    return _composed_model(None if source is None else source.settings)


@functools.cache
def _composed_model(source_settings: type[BaseSettings] | None) -> type[CoreSettings]:
    # built once per source: a model class costs milliseconds, and every account file of
    # --accounts-dir (and every check) reads its settings through one
    bases: list[type[BaseSettings]] = [CoreSettings]
    if source_settings is not None:
        bases.append(source_settings)
    bases.extend(extra_settings_models())
    if len(bases) == 1:
        return CoreSettings
    model: type[CoreSettings] = type(
        "Settings",
        tuple(bases),
        {
            "__doc__": "Settings of one run.",
            "__module__": __name__,
            # each base carries BaseSettings' full default config; the core's CLI options must win
            "model_config": cast(SettingsConfigDict, {**source_config(bases), **CoreSettings.model_config}),
        },
    )
    return model


def source_config(bases: Sequence[type[BaseSettings]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for base in bases:
        merged.update(base.model_config)
    return merged


#: the Nightscout site's own variables. nightscout-connect running inside a site wrote to that
#: site, so a connector moved out of it with the same environment keeps writing there; the
#: older bridges named the site NS, or by its bare host WEBSITE_HOSTNAME (https://host, as a
#: bare host means here too). The first one set wins
SITE_LEGACY_ENV: Final[Mapping[str, str]] = {
    "BASE_URL": "CONNECT_NIGHTSCOUT_ENDPOINT",
    "NS": "CONNECT_NIGHTSCOUT_ENDPOINT",
    "WEBSITE_HOSTNAME": "CONNECT_NIGHTSCOUT_ENDPOINT",
    "API_SECRET": "CONNECT_API_SECRET",
}
#: an old name is passed over when one of these is set too: nightscout-connect lets a Share
#: region set the new way win over the bridge's server
LEGACY_UNLESS: Final[Mapping[str, tuple[str, ...]]] = {"BRIDGE_SERVER": ("CONNECT_SHARE_REGION",)}
#: nightscout-connect's CareLink portal hosts: as CONNECT_CARELINK_SERVER they picked a region,
#: while here that variable sends every request to one server (a proxy or an emulator)
CARELINK_PORTAL_REGIONS: Final[Mapping[str, str]] = {
    "carelink.minimed.com": "us",
    "carelink.minimed.eu": "eu",
}
#: nightscout-connect variables whose value is translated rather than copied
NODE_TRANSLATED: Final = frozenset({"CONNECT_DEBUG"})
#: variables the command line reads itself, before any settings model (the env file's path)
CLI_READ: Final = frozenset({"CONNECT_ENV_FILE", "CONNECT_DEMO_SUMMARY_SECONDS"})
#: variables nightscout-connect (or the Nightscout plugin it replaced) reads that have no use
#: here, and what to do instead; `check` prints these beside the ignored list
NODE_ONLY: Final[Mapping[str, str]] = {
    "CONNECT_CARELINK_PASSWORD": "CareLink's login needs a person at a browser: run "
    "`nightscout-connect login carelink` once; no CareLink password is kept",
    "CARELINK_PASSWORD": "CareLink's login needs a person at a browser: run `nightscout-connect login carelink`",
    "MMCONNECT_PASSWORD": "CareLink's login needs a person at a browser: run `nightscout-connect login carelink`",
    "CONNECT_LANGUAGE_CODE": "the CareLink API read here takes no language",
    "MONGO_CONNECTION": "CareLink tokens live in CONNECT_CARELINK_TOKEN_FILE here, data in CONNECT_STORE_PATH",
    "CONNECT_LINK_UP_USER_AGENT": "the LibreLinkUp app's user agent is built in",
    "CONNECT_LINK_UP_PROXY": "set HTTPS_PROXY instead (the HTTP client reads it)",
    "CONNECT_LINK_UP_STEALTH_TLS": "not needed here",
    "CONNECT_LINK_UP_MAX_RETRIES": "retries and their backoff are built in (THEORY.md)",
    "CONNECT_LINK_UP_RETRY_INTERVAL_MS": "retries and their backoff are built in (THEORY.md)",
    "CONNECT_LINK_UP_REQUEST_TIMEOUT_MS": "request timeouts are built in (30 s)",
    "CONNECT_LINK_UP_STARTUP_JITTER_MS": "polls are aligned to the readings, with jitter built in",
    "CONNECT_LINK_UP_INTERVAL_JITTER_MS": "polls are aligned to the readings, with jitter built in",
    "CONNECT_GLOOKO_AUTH_MODE": "this Glooko source always signs in through the API",
    "CONNECT_GLOOKO_DATA_MODE": "this Glooko source always reads each v2 feed past its own checkpoint",
    "CONNECT_GLOOKO_USE_V3_GRAPH": "this Glooko source reads the v2 feeds",
    "CONNECT_GLOOKO_IMPORT_PROFILE": "this Glooko source imports no profile",
    "CONNECT_GLOOKO_SKIP_ENTRIES": "this Glooko source always stores its CGM readings",
    "CONNECT_GLOOKO_WEB_ORIGIN": "this Glooko source signs in through the API host (CONNECT_GLOOKO_SERVER)",
    "CONNECT_GLOOKO_DEVICE_ID": "this Glooko source sends no device identity of its own",
    "CONNECT_GLOOKO_SERIAL_NUMBER": "this Glooko source sends no device serial number",
    "CONNECT_OUTPUT": "outputs are enabled by their own settings; the local store always runs",
    "CONNECT_FS_PREFIX": "the local store (CONNECT_STORE_PATH) replaces the filesystem output",
    "CONNECT_FS_LABEL": "the local store (CONNECT_STORE_PATH) replaces the filesystem output",
}
TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
#: every name read elsewhere that has no effect here → why (nightscout-connect's and the other
#: bridges' alike)
NO_USE: Final[Mapping[str, str]] = {**peers.unused_names(), **NODE_ONLY}


def legacy_env_for(source: SourceInfo | None) -> dict[str, str]:
    """Old name → our name, for one run: the source's own and the Nightscout site's (its
    address and secret, and its alarm thresholds)."""
    from outputs.alert_settings import LEGACY_ENV as ALERT_LEGACY_ENV

    return {**SITE_LEGACY_ENV, **ALERT_LEGACY_ENV, **(source.legacy_env if source is not None else {})}


def _winner(old: str, legacy: Mapping[str, str], env: Mapping[str, str]) -> str | None:
    """The name set in ``env`` that an old name gives way to: ours, a name of LEGACY_UNLESS, or an
    old name listed before it for the same setting (``BASE_URL`` before ``NS``)."""
    new = legacy.get(old)
    earlier = []
    for other, target in legacy.items():
        if other == old:
            break
        if target == new:
            earlier.append(other)
    return next((k for k in (new, *LEGACY_UNLESS.get(old, ()), *earlier) if k is not None and k in env), None)


def _legacy_applies(old: str, legacy: Mapping[str, str], env: Mapping[str, str]) -> bool:
    return old in env and _winner(old, legacy, env) is None


@contextlib.contextmanager
def preserved_environ() -> Iterator[dict[str, str]]:
    """Whatever the block does to ``os.environ`` is undone afterwards; yields a copy of it as it
    was. Reading settings translates old names in the environment, and an embedding program
    (or the next account's settings) must not see those translations."""
    saved = dict(os.environ)
    try:
        yield saved
    finally:
        replace_environ(saved)


def replace_environ(target: Mapping[str, str]) -> None:
    """``os.environ`` made equal to ``target`` key by key, never emptied on the way: another
    thread reading a variable both share (``run --fleet`` has database threads) never misses it."""
    for key in [k for k in os.environ if k not in target]:
        del os.environ[key]
    for key, value in target.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def apply_legacy_env(legacy: Mapping[str, str], environ: dict[str, str] | None = None) -> list[str]:
    """Copy old variable names (e.g. ``BRIDGE_USER_NAME``) to ours when ours are unset."""
    env = os.environ if environ is None else environ
    used = []
    original = dict(env)
    for old, new in legacy.items():
        if _legacy_applies(old, legacy, original) and new not in env:
            env[new] = env[old]
            used.append(old)
    return used


def apply_node_values(environ: dict[str, str] | None = None) -> list[str]:
    """Translate nightscout-connect values whose meaning is spelled differently here.

    ``CONNECT_DEBUG=true`` means ``CONNECT_LOG_LEVEL=debug``; ``CONNECT_CARELINK_SERVER`` naming
    one of Medtronic's CareLink portals means that portal's region (here the variable would
    send every request, discovery included, to that one host).
    """
    env = os.environ if environ is None else environ
    used = peers.apply_peer_values(env)
    debug = env.get("CONNECT_DEBUG", "").strip().lower()
    if debug in TRUE_WORDS and "CONNECT_LOG_LEVEL" not in env:
        env["CONNECT_LOG_LEVEL"] = "debug"
        used.append("CONNECT_DEBUG")
    server = env.get("CONNECT_CARELINK_SERVER", "").strip().lower()
    host = server.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    if host in CARELINK_PORTAL_REGIONS:
        env.setdefault("CONNECT_CARELINK_REGION", CARELINK_PORTAL_REGIONS[host])
        del env["CONNECT_CARELINK_SERVER"]
        used.append("CONNECT_CARELINK_SERVER")
    return used


def installed_legacy_env() -> dict[str, dict[str, str]]:
    """Source name → its old variable names (for every installed source that loads)."""
    out: dict[str, dict[str, str]] = {}
    for ep in _source_entry_points():
        try:
            info = ep.load()
        except Exception:  # a broken third-party source must not break `check`
            continue
        if isinstance(info, SourceInfo):
            out[ep.name] = dict(info.legacy_env)
    return out


def implied_sources(environ: Mapping[str, str]) -> dict[str, list[str]]:
    """Source name → the other tools' variables present (not blank) that name it."""
    found = {
        name: sorted(old for old in legacy if environ.get(old, "").strip())
        for name, legacy in installed_legacy_env().items()
    }
    return {name: olds for name, olds in found.items() if olds}


def infer_source(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(source, the variables that name it) when CONNECT_SOURCE is unset and exactly one source's
    old variables are present: the bridges those names come from read one vendor each."""
    if environ.get("CONNECT_SOURCE", "").strip():
        return None
    found = implied_sources(environ)
    if len(found) != 1:
        return None
    ((name, olds),) = found.items()
    return name, ", ".join(olds)


def no_source_problem(environ: Mapping[str, str]) -> str:
    """The one line for a run that names no source: which sources exist, or which tools'
    variables contradict each other. Nothing is read from a source nobody chose: a misspelt or
    missing CONNECT_SOURCE must not send simulated readings to a real site."""
    found = implied_sources(environ)
    if len(found) > 1:
        named = ", ".join(f"{' '.join(olds)} ({name})" for name, olds in sorted(found.items()))
        return (
            f"--source / CONNECT_SOURCE: not set, and other tools' variables name more than one "
            f"source: {named}; set CONNECT_SOURCE to the one to read"
        )
    real = sorted(name for name in known_sources() if name not in {"sim", "none", "mqtt"})
    return (
        "--source / CONNECT_SOURCE: not set; name where readings come from: "
        + ", ".join(real)
        + ", sim for simulated readings, mqtt for an MQTT subscription, or none to take only pushed data"
    )


def flag_for(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_for(field: str) -> str:
    return "CONNECT_" + field.upper()


def describe_validation(exc: pydantic.ValidationError) -> list[str]:
    """One line per problem, naming the flag and the variable, never echoing a value."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(part) for part in error["loc"]]
        message = error["msg"]
        if error["type"] == "missing":
            message = "required but not set"
        elif error["type"] == "value_error":
            # pydantic's "Value error, " prefix says nothing to a person reading it
            message = message.removeprefix("Value error, ")
        if not loc:
            lines.append(message)  # a check across settings: its message names them
            continue
        lines.append(f"{flag_for(loc[0])} / {env_for(loc[0])}: {message}")
    return lines


def field_names(models: Iterable[type[BaseSettings]]) -> set[str]:
    names: set[str] = set()
    for model in models:
        names.update(model.model_fields)
    return names


def recognised_env(
    models: Sequence[type[BaseSettings]],
    environ: Mapping[str, str],
    *,
    legacy: Mapping[str, str] | None = None,
    other_legacy: Mapping[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """Variables a run reads, and those it does not (typos show up here), as the user set them.

    ``environ`` is the environment before old names were copied to ours. Recognised: each
    ``CONNECT_*`` variable some field reads, each old name of ``legacy`` whose target is read
    and not set as well, and nightscout-connect names whose value is translated. Ignored: every
    other ``CONNECT_*`` variable, old names shadowed by ours, and old names of ``other_legacy``
    (old name → the source that reads it) or :data:`NODE_ONLY` that this run has no use for.
    """
    known = {env_for(name) for name in field_names(models)}
    legacy = legacy or {}
    recognised: set[str] = set()
    ignored: set[str] = set()
    for name in environ:
        if name.startswith("CONNECT_"):
            (recognised if name in known or name in NODE_TRANSLATED | CLI_READ else ignored).add(name)
    for old, new in legacy.items():
        if old in environ:
            (recognised if new in known and _legacy_applies(old, legacy, environ) else ignored).add(old)
    translated = set(peers.apply_peer_values(dict(environ)))
    for old in peers.TRANSLATED:
        if old in environ:
            (recognised if old in translated else ignored).add(old)
    for old in (*(other_legacy or {}), *NO_USE):
        if old in environ and old not in legacy and not old.startswith("CONNECT_"):
            ignored.add(old)
    # a misspelt prefix (CONECT_SOURCE, CONNECT-SOURCE) is as silent a mistake as a misspelt
    # name; only near misses of our own names are listed, not the rest of the environment
    ours = sorted(known)
    for name in environ:
        if name.startswith("CONNECT_") or name in recognised or name in ignored:
            continue
        if difflib.get_close_matches(name.upper(), ours, n=1, cutoff=0.85):
            ignored.add(name)
    return sorted(recognised), sorted(ignored)


def env_notes(
    names: Iterable[str],
    environ: Mapping[str, str],
    *,
    legacy: Mapping[str, str] | None = None,
    other_legacy: Mapping[str, str] | None = None,
    known: Iterable[str] = (),
) -> list[str]:
    """One line per ignored variable that has a reason: a nightscout-connect setting not needed
    here, an old name one of ours overrides, another source's old name, or a near miss of one of
    the ``known`` variables (a typo)."""
    legacy, other_legacy = legacy or {}, other_legacy or {}
    candidates = sorted(set(known))
    notes = []
    for name in names:
        winner = _winner(name, legacy, environ) if name in legacy else None
        if name in NO_USE:
            notes.append(f"{name}: {NO_USE[name]}")
        elif name in peers.TRANSLATED:
            notes.append(f"{name}: {peers.TRANSLATED_NOTE[name]}")
        elif name in legacy and winner is not None:
            notes.append(f"{name}: {winner} is set too and wins")
        elif name in other_legacy:
            notes.append(
                f"{name}: read by the {other_legacy[name]} source (CONNECT_SOURCE={other_legacy[name]})"
            )
        elif near := difflib.get_close_matches(name.upper(), candidates, n=1, cutoff=0.85):
            notes.append(f"{name}: nothing reads it; did you mean {near[0]}?")
    return notes


def secret_values(settings: BaseSettings) -> list[str]:
    """Every secret a settings instance holds (SecretStr fields and URL passwords)."""
    values = []
    for name in type(settings).model_fields:
        value: Any = getattr(settings, name, None)
        if isinstance(value, pydantic.SecretStr):
            values.append(value.get_secret_value())
            value = value.get_secret_value()  # a URL held as a secret: its password on its own too
        if isinstance(value, str) and "://" in value and "@" in value:
            userinfo = value.split("://", 1)[1].split("@", 1)[0]
            if ":" in userinfo:
                values.append(userinfo.split(":", 1)[1])
    return [v for v in values if v]
