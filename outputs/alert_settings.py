"""Settings of the alert rules and of the outputs that carry events (webhooks, notifications).

Composed into the run's settings model like the outputs' and the API's. The thresholds use
Nightscout's own names with our prefix (``CONNECT_BG_LOW`` …), and a site's unprefixed names
(``BG_LOW`` …, :data:`LEGACY_ENV`) are read when ours are unset, so its environment carries over.
Glucose values are in the site's units: ``CONNECT_DISPLAY_UNITS`` (``DISPLAY_UNITS``) of
``mmol`` with ``BG_HIGH`` below 50 means all four thresholds are mmol/L, as Nightscout decides.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import pydantic
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from machines.alerts import MIN_MS, MMOL_TO_MGDL, Thresholds, is_mmol, site_thresholds

#: every event the daemon emits, in the order README describes them
EVENT_NAMES: Final = ("glucose:new", "treatment:new", "episode:changed", "alert:raised", "alert:cleared")
#: a site's own variables, read when ours are unset
LEGACY_ENV: Final[Mapping[str, str]] = {
    "BG_LOW": "CONNECT_BG_LOW",
    "BG_TARGET_BOTTOM": "CONNECT_BG_TARGET_BOTTOM",
    "BG_TARGET_TOP": "CONNECT_BG_TARGET_TOP",
    "BG_HIGH": "CONNECT_BG_HIGH",
    "ALARM_TIMEAGO_WARN_MINS": "CONNECT_ALARM_TIMEAGO_WARN_MINS",
    "ALARM_TIMEAGO_URGENT_MINS": "CONNECT_ALARM_TIMEAGO_URGENT_MINS",
    "DISPLAY_UNITS": "CONNECT_DISPLAY_UNITS",
}
#: a threshold below this (in mg/dL) is a value in mmol/L on a site set to mg/dL
LOWEST_THRESHOLD_MGDL: Final = 20.0
HIGHEST_THRESHOLD_MGDL: Final = 600.0
#: the hysteresis margin when none is set
DEFAULT_HYSTERESIS_MGDL: Final = 5.0
LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@attrs.frozen
class HookSpec:
    """One webhook: where to, signed with what, for which events."""

    name: str
    url: str
    secret: str | None = attrs.field(default=None, repr=False)
    #: None: every event
    events: frozenset[str] | None = None
    #: a JMESPath expression over the body; the event is sent when it is truthy
    filter: str | None = None
    timeout: float = 10.0


def parse_events(value: str | Sequence[str] | None) -> frozenset[str] | None:
    """A comma list (or a list) of event names; None (every event) when empty or ``all``."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = {str(v).strip() for v in items if str(v).strip()}
    if not names or names == {"all"}:
        return None
    unknown = sorted(names - set(EVENT_NAMES))
    if unknown:
        # the names given are not quoted back (a value is never echoed): the known ones are
        raise ValueError(f"{len(unknown)} unknown event name(s); known: {', '.join(EVENT_NAMES)}, or all")
    return frozenset(names)


def check_filter(expression: str | None) -> str | None:
    """A JMESPath expression compiled once to find mistakes at start."""
    import jmespath
    from jmespath.exceptions import JMESPathError

    if expression is None or not expression.strip():
        return None
    try:
        jmespath.compile(expression)
    except JMESPathError as exc:
        # the library's message quotes the expression: only its kind is said
        raise ValueError(f"not a JMESPath expression ({type(exc).__name__})") from None
    return expression.strip()


def check_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL")
    return url.strip()


def hook_from(entry: Any, index: int, *, default_timeout: float) -> HookSpec:
    """One entry of a webhooks file (the same fields as the CONNECT_WEBHOOK_* settings)."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"hook {index}: expected a table/object with url, secret, events, filter")
    known = {"name", "url", "secret", "events", "filter", "timeout"}
    extra = sorted(set(entry) - known)
    if extra:
        raise ValueError(
            f"hook {index}: unknown fields {', '.join(map(str, extra))} (known: {', '.join(sorted(known))})"
        )
    url = entry.get("url")
    if not isinstance(url, str):
        raise ValueError(f"hook {index}: url is required")
    try:
        url = check_url(url)
        events = parse_events(entry.get("events"))
        expression = check_filter(entry.get("filter"))
    except ValueError as exc:
        raise ValueError(f"hook {index}: {exc}") from None
    name = entry.get("name") or urlsplit(url).hostname or f"hook{index}"
    secret = entry.get("secret")
    timeout = entry.get("timeout", default_timeout)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 300:
        raise ValueError(f"hook {index}: timeout must be seconds between 0 and 300")
    return HookSpec(
        name=str(name),
        url=url,
        secret=str(secret) if secret else None,
        events=events,
        filter=expression,
        timeout=float(timeout),
    )


def load_hooks_file(path: Path, *, default_timeout: float) -> list[HookSpec]:
    """The hooks of a JSON or TOML file: a list of entries, or ``{"webhooks": [...]}``
    (``[[webhooks]]`` tables in TOML)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r} ({type(exc).__name__})") from None
    try:
        data: Any = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise ValueError(f"{str(path)!r} is not valid {kind} ({type(exc).__name__})") from None
    entries = data.get("webhooks") if isinstance(data, Mapping) else data
    if not isinstance(entries, list):
        raise ValueError(f"{str(path)!r}: expected a list of hooks (or a 'webhooks' list)")
    return [hook_from(entry, i, default_timeout=default_timeout) for i, entry in enumerate(entries, 1)]


def points_at(url: str, bind: str | None) -> bool:
    """The URL would reach the API bound at ``bind`` (``host:port``) on this machine."""
    if not bind:
        return False
    host, sep, port_text = bind.strip().rpartition(":")
    if not sep or not port_text.isdigit():
        return False
    host = host.strip("[]").lower()
    parts = urlsplit(url)
    target = (parts.hostname or "").lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    if port != int(port_text):
        return False
    if target == host:
        return True
    wildcard = host in ("0.0.0.0", "::", "")
    return (wildcard or _loopback(host)) and _loopback(target)


def _loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AlertSettings(BaseSettings):
    """Alert thresholds (Nightscout's names), the events outbox, webhooks and notifications."""

    model_config = SettingsConfigDict(env_prefix="CONNECT_", extra="ignore", hide_input_in_errors=True)

    bg_low: float = Field(
        default=55.0, gt=0, description="urgent low threshold (Nightscout's BG_LOW), site units"
    )
    bg_target_bottom: float = Field(default=80.0, gt=0, description="low threshold (BG_TARGET_BOTTOM)")
    bg_target_top: float = Field(default=180.0, gt=0, description="high threshold (BG_TARGET_TOP)")
    bg_high: float = Field(default=260.0, gt=0, description="urgent high threshold (BG_HIGH)")
    display_units: str = Field(
        default="mg/dl", description="the site's units, mg/dl or mmol (Nightscout's DISPLAY_UNITS)"
    )
    alarm_timeago_warn_mins: float = Field(
        default=15.0, gt=0, le=1440, description="minutes without a reading before the stale alert"
    )
    alarm_timeago_urgent_mins: float = Field(
        default=30.0, gt=0, le=2880, description="minutes without a reading before the urgent stale alert"
    )
    alert_repeat_minutes: float = Field(
        default=30.0, gt=0, le=1440, description="an alert that lasts is announced again after this long"
    )
    alert_hysteresis: float | None = Field(
        default=None,
        ge=0,
        description="how far back across a threshold a reading must be to end its alert (site units; 5 mg/dL)",
    )
    events_max_age_minutes: float = Field(
        default=60.0,
        gt=0,
        le=10080,
        description="readings and treatments older than this when stored (a backfill) are not announced",
    )
    events_keep_days: float = Field(default=30.0, gt=0, le=3650, description="days the events outbox is kept")

    webhook_url: str | None = Field(default=None, description="POST every event here (enables the webhook)")
    webhook_secret: SecretStr | None = Field(
        default=None, description="sign each body: X-Connect-Signature: sha256=<HMAC-SHA256 hex>"
    )
    webhook_events: str | None = Field(
        default=None, description="comma list of events to send (default: all)"
    )
    webhook_filter: str | None = Field(
        default=None, description="JMESPath expression over the body; the event is sent when it is truthy"
    )
    webhook_timeout: float = Field(default=10.0, gt=0, le=300, description="seconds per webhook request")
    webhooks_file: Path | None = Field(
        default=None, description="several webhooks: a JSON or TOML file, one entry per hook"
    )
    notify_urls: SecretStr | None = Field(
        default=None, description="Apprise URLs (comma or space separated) that are told about alerts"
    )
    notify_events: str = Field(
        default="alert:raised", description="events the notifications carry (alert:raised, alert:cleared)"
    )

    @pydantic.field_validator("display_units")
    @classmethod
    def _units(cls, value: str) -> str:
        text = value.strip().lower()
        if is_mmol(text):
            return "mmol"
        if text in ("", "mg/dl", "mgdl", "mg"):
            return "mg/dl"
        raise ValueError("must be mg/dl or mmol")

    @pydantic.field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return check_url(value)

    @pydantic.field_validator("webhook_events")
    @classmethod
    def _webhook_events(cls, value: str | None) -> str | None:
        parse_events(value)
        return value

    @pydantic.field_validator("webhook_filter")
    @classmethod
    def _webhook_filter(cls, value: str | None) -> str | None:
        return check_filter(value)

    @pydantic.field_validator("notify_events")
    @classmethod
    def _notify_events(cls, value: str) -> str:
        events = parse_events(value)
        if events is None or not events <= {"alert:raised", "alert:cleared"}:
            raise ValueError("notifications carry alert:raised and alert:cleared only")
        return value

    @pydantic.field_validator("notify_urls")
    @classmethod
    def _notify_urls(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        import apprise

        for i, url in enumerate(split_urls(value.get_secret_value()), 1):
            if not apprise.Apprise().add(url):
                # never the URL itself: it carries tokens and passwords
                raise ValueError(f"URL {i} is not one Apprise can send to (an unknown scheme)")
        return value

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> AlertSettings:
        problems = self.thresholds().problems()
        mgdl = site_thresholds(
            self.bg_low, self.bg_target_bottom, self.bg_target_top, self.bg_high, self.display_units
        )
        if any(v < LOWEST_THRESHOLD_MGDL or v > HIGHEST_THRESHOLD_MGDL for v in mgdl):
            problems.insert(
                0,
                f"the thresholds in mg/dL ({', '.join(f'{v:g}' for v in mgdl)}) are not glucose values; "
                "thresholds in mmol/L need CONNECT_DISPLAY_UNITS=mmol (DISPLAY_UNITS) and all four in mmol/L",
            )
        if problems:
            raise ValueError("; ".join(problems))
        bind = getattr(self, "http_bind", None)
        try:
            hooks = self.hooks()
        except ValueError as exc:
            raise ValueError(f"--webhooks-file / CONNECT_WEBHOOKS_FILE: {exc}") from None
        for hook in hooks:
            if points_at(hook.url, bind if isinstance(bind, str) else None):
                raise ValueError(
                    f"webhook {hook.name!r} points back at this daemon's own API ({bind}): "
                    "every event would come back as a request; refused"
                )
        return self

    # --- what the daemon uses ---------------------------------------------------------------

    def thresholds(self) -> Thresholds:
        low, bottom, top, high = site_thresholds(
            self.bg_low, self.bg_target_bottom, self.bg_target_top, self.bg_high, self.display_units
        )
        if self.alert_hysteresis is None:
            hysteresis = DEFAULT_HYSTERESIS_MGDL
        elif is_mmol(self.display_units) and self.bg_high < 50:
            hysteresis = self.alert_hysteresis * MMOL_TO_MGDL
        else:
            hysteresis = self.alert_hysteresis
        return Thresholds(
            urgent_low=low,
            low=bottom,
            high=top,
            urgent_high=high,
            hysteresis=hysteresis,
            stale_ms=int(self.alarm_timeago_warn_mins * MIN_MS),
            urgent_stale_ms=int(self.alarm_timeago_urgent_mins * MIN_MS),
            repeat_ms=int(self.alert_repeat_minutes * MIN_MS),
        )

    def hooks(self) -> list[HookSpec]:
        """Every webhook: the one of CONNECT_WEBHOOK_URL, then the file's."""
        hooks: list[HookSpec] = []
        if self.webhook_url:
            hooks.append(
                HookSpec(
                    name="webhook",
                    url=self.webhook_url,
                    secret=self.webhook_secret.get_secret_value() if self.webhook_secret else None,
                    events=parse_events(self.webhook_events),
                    filter=self.webhook_filter,
                    timeout=self.webhook_timeout,
                )
            )
        if self.webhooks_file is not None:
            for hook in load_hooks_file(self.webhooks_file, default_timeout=self.webhook_timeout):
                hooks.append(attrs.evolve(hook, name=f"webhook:{hook.name}"))
        names = [h.name for h in hooks]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"webhooks need distinct names (give each a name): {', '.join(duplicated)}")
        return hooks

    def notify_targets(self) -> list[str]:
        return [] if self.notify_urls is None else split_urls(self.notify_urls.get_secret_value())

    def notified_events(self) -> frozenset[str]:
        return parse_events(self.notify_events) or frozenset({"alert:raised", "alert:cleared"})


def split_urls(text: str) -> list[str]:
    """Apprise's own list form: URLs separated by commas or whitespace."""
    return [part for part in text.replace(",", " ").split() if part]


__all__ = [
    "EVENT_NAMES",
    "LEGACY_ENV",
    "AlertSettings",
    "HookSpec",
    "load_hooks_file",
    "parse_events",
    "points_at",
]
