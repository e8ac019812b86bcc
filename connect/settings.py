"""Configuration: one pydantic-settings model per run, composed from the core settings, the
selected source's settings and the outputs' and API's settings.

Every field comes from a ``--flag`` or a ``CONNECT_*`` variable (flags win). The model is built
for the selected source only, so that source's required fields are required and no other's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, Literal, cast

import pydantic
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from connect.contract import SourceInfo
from connect.errors import ConfigError

ENTRY_POINT_GROUP = "nightscout_connect.sources"


class CoreSettings(BaseSettings):
    """Settings every run has, whatever the source."""

    model_config = SettingsConfigDict(
        env_prefix="CONNECT_",
        extra="ignore",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_exit_on_error=False,
        cli_prog_name="nightscout-connect",
    )

    source: str = Field(default="sim", description="where readings come from")
    store_path: str = Field(
        default="nightscout-connect.db", description="SQLite store file (:memory: allowed)"
    )
    backfill_days: float = Field(default=30.0, gt=0, le=3650, description="history to fetch on first start")
    account: str = Field(default="", description="label for this account in a multi-account store")
    log_format: Literal["auto", "json", "console"] = Field(default="auto", description="json or console logs")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info")


def known_sources() -> dict[str, str]:
    """Source name → entry point value, for every installed source."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_source(name: str) -> SourceInfo:
    """The :class:`SourceInfo` of an installed source (through its entry point)."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            info = ep.load()
            if not isinstance(info, SourceInfo):
                raise ConfigError(f"source {name!r}: entry point {ep.value} is not a SourceInfo")
            return info
    known = ", ".join(sorted(known_sources()))
    raise ConfigError(f"--source / CONNECT_SOURCE: unknown source {name!r} (known: {known})")


def extra_settings_models() -> list[type[BaseSettings]]:
    """Settings of the outputs and the API, when those packages provide them."""
    models: list[type[BaseSettings]] = []
    for module, attr in (("outputs.settings", "OutputSettings"), ("api.settings", "ApiSettings")):
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
    bases: list[type[BaseSettings]] = [CoreSettings]
    if source is not None:
        bases.append(source.settings)
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


def apply_legacy_env(legacy: Mapping[str, str], environ: dict[str, str] | None = None) -> list[str]:
    """Copy old variable names (e.g. ``BRIDGE_USER_NAME``) to ours when ours are unset."""
    env = os.environ if environ is None else environ
    used = []
    for old, new in legacy.items():
        if old in env and new not in env:
            env[new] = env[old]
            used.append(old)
    return used


def flag_for(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_for(field: str) -> str:
    return "CONNECT_" + field.upper()


def describe_validation(exc: pydantic.ValidationError) -> list[str]:
    """One line per problem, naming the flag and the variable, never echoing a value."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(part) for part in error["loc"]]
        field = loc[0] if loc else "settings"
        message = error["msg"]
        if error["type"] == "missing":
            message = "required but not set"
        lines.append(f"{flag_for(field)} / {env_for(field)}: {message}")
    return lines


def field_names(models: Iterable[type[BaseSettings]]) -> set[str]:
    names: set[str] = set()
    for model in models:
        names.update(model.model_fields)
    return names


def recognised_env(
    models: Sequence[type[BaseSettings]], environ: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """``CONNECT_*`` variables a model set reads, and those nothing reads (typos show up here)."""
    known = {env_for(name) for name in field_names(models)}
    present = sorted(k for k in environ if k.startswith("CONNECT_"))
    return [k for k in present if k in known], [k for k in present if k not in known]


def secret_values(settings: BaseSettings) -> list[str]:
    """Every secret a settings instance holds (SecretStr fields and URL passwords)."""
    values = []
    for name in type(settings).model_fields:
        value: Any = getattr(settings, name, None)
        if isinstance(value, pydantic.SecretStr):
            values.append(value.get_secret_value())
        elif isinstance(value, str) and "://" in value and "@" in value:
            userinfo = value.split("://", 1)[1].split("@", 1)[0]
            if ":" in userinfo:
                values.append(userinfo.split(":", 1)[1])
    return [v for v in values if v]
