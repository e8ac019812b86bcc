"""The HTTP API's settings, and the rule that keeps an unprotected API on this machine.

Kept free of web-framework imports: the CLI composes these fields into its settings model
before it knows whether the API will run.
"""

from __future__ import annotations

import ipaddress
from typing import Final

import attrs
from pydantic import Field, SecretStr, ValidationInfo, field_validator

from connect.errors import ConfigError
from connect.fields import ConnectSettings, check_host, check_path
from machines.alerts import Thresholds, is_mmol

#: Nightscout's MIN_PASSPHRASE_LENGTH
MIN_SECRET_LENGTH: Final = 12
DEFAULT_BIND: Final = "127.0.0.1:1338"
DISABLED: Final = frozenset({"0", "", "off", "false", "no", "none"})
#: the status page's time ranges, in hours (Nightscout's own choices)
PAGE_HOURS: Final = (3, 6, 12, 24)


class ApiSettings(ConnectSettings):
    """``CONNECT_HTTP_*``: where the API listens and who may read it."""

    # the secret comes before the address: the address's check reads it
    http_secret: SecretStr | None = Field(
        default=None,
        description="secret that protects the HTTP API (12+ characters; api-secret header, ?token= or Bearer)",
    )
    http_bind: str = Field(
        default=DEFAULT_BIND,
        description="HTTP API address host:port (0 disables the API)",
    )
    http_readable: bool = Field(
        default=False,
        description="let anyone read the HTTP API without the secret",
    )
    hide_inactive_after_days: float = Field(
        default=30.0,
        ge=0,
        le=36500,
        description="/api/connect/latest leaves out devices silent for longer (0 shows every device)",
    )

    page_hours: int = Field(
        default=24,
        description="hours the status page's chart shows unless the page is asked for another range (3, 6, 12 or 24)",
    )

    @field_validator("page_hours")
    @classmethod
    def _page_range(cls, value: int) -> int:
        if value not in PAGE_HOURS:
            raise ValueError("must be 3, 6, 12 or 24")
        return value

    @field_validator("http_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            # the message must not carry the value (pydantic errors are shown to people)
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        return value

    @field_validator("http_bind")
    @classmethod
    def _usable_bind(cls, value: str, info: ValidationInfo) -> str:
        # checked with the other settings, so that every problem is reported at once
        bind = _parse_bind(value)
        if bind is not None and not bind.loopback and info.data.get("http_secret", "") is None:
            # (a secret that failed its own check is reported there, not here)
            raise ValueError(PUBLIC_WITHOUT_SECRET.format(address="the address"))
        return value


@attrs.frozen(kw_only=True)
class Display:
    """How the API shows glucose: the site's units (``mg/dl`` or ``mmol``) and its thresholds in
    mg/dL. The daemon builds it from the alert settings (``CONNECT_DISPLAY_UNITS``,
    ``CONNECT_BG_*``), so the status page's target band and ``status.json`` say what the alert
    rules judge by; without them, Nightscout's defaults."""

    units: str = "mg/dl"
    thresholds: Thresholds = attrs.field(factory=Thresholds)

    @property
    def mmol(self) -> bool:
        return is_mmol(self.units)


#: the address (quoted only when it passed the settings' checks) and what to do
PUBLIC_WITHOUT_SECRET: Final = (
    "{address} is reachable from other machines; "
    "set --http-secret / CONNECT_HTTP_SECRET (12+ characters) or bind 127.0.0.1"
)


@attrs.frozen
class Bind:
    """A parsed ``host:port`` (or ``unix:/path``)."""

    text: str
    host: str
    port: int | None
    loopback: bool


def parse_bind(text: str) -> Bind | None:
    """Parse ``CONNECT_HTTP_BIND``; ``None`` when the API is disabled."""
    try:
        return _parse_bind(text)
    except ValueError as exc:
        raise ConfigError(f"--http-bind / CONNECT_HTTP_BIND: {exc}") from None


def _parse_bind(text: str) -> Bind | None:
    value = text.strip()
    if value.lower() in DISABLED:
        return None
    if value.startswith("unix:"):
        # a unix socket is reachable from this machine only (file permissions decide who)
        if len(value) <= len("unix:"):
            raise ValueError("a unix socket needs a path (unix:/path)")
        check_path(value[len("unix:") :], "the socket path")
        return Bind(text=value, host=value, port=None, loopback=True)
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("expected host:port (for example 127.0.0.1:1338), or 0 to disable")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError("name the address to listen on (127.0.0.1:1338)")
    try:
        check_host(host)
    except ValueError as exc:
        raise ValueError(f"the address: {exc}") from None
    return Bind(text=value, host=host, port=int(port_text), loopback=_is_loopback(host))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # a host name may resolve anywhere
        return False


def check_bind(settings: ApiSettings) -> str | None:
    """The address to serve on, or ``None`` when the API is disabled.

    Raises :class:`ConfigError` for a malformed address, and for an address other machines can
    reach when no secret protects the API.
    """
    bind = parse_bind(settings.http_bind)
    if bind is None:
        return None
    if not bind.loopback and settings.http_secret is None:
        raise ConfigError(
            "--http-bind / CONNECT_HTTP_BIND: " + PUBLIC_WITHOUT_SECRET.format(address=bind.text)
        )
    return bind.text
