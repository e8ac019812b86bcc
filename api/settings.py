"""The HTTP API's settings, and the rule that keeps an unprotected API on this machine.

Kept free of web-framework imports: the CLI composes these fields into its settings model
before it knows whether the API will run.
"""

from __future__ import annotations

import ipaddress
from typing import Final

import attrs
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from connect.errors import ConfigError

#: Nightscout's MIN_PASSPHRASE_LENGTH
MIN_SECRET_LENGTH: Final = 12
DEFAULT_BIND: Final = "127.0.0.1:1338"
DISABLED: Final = frozenset({"0", "", "off", "false", "no", "none"})


class ApiSettings(BaseSettings):
    """``CONNECT_HTTP_*``: where the API listens and who may read it."""

    # a rejected secret must not be quoted back in the validation error
    model_config = SettingsConfigDict(env_prefix="CONNECT_", extra="ignore", hide_input_in_errors=True)

    http_bind: str = Field(
        default=DEFAULT_BIND,
        description="HTTP API address host:port (0 disables the API)",
    )
    http_secret: SecretStr | None = Field(
        default=None,
        description="secret that protects the HTTP API (12+ characters; api-secret header, ?token= or Bearer)",
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

    @field_validator("http_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            # the message must not carry the value (pydantic errors are shown to people)
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        return value


@attrs.frozen
class Bind:
    """A parsed ``host:port`` (or ``unix:/path``)."""

    text: str
    host: str
    port: int | None
    loopback: bool


def parse_bind(text: str) -> Bind | None:
    """Parse ``CONNECT_HTTP_BIND``; ``None`` when the API is disabled."""
    value = text.strip()
    if value.lower() in DISABLED:
        return None
    if value.startswith("unix:"):
        # a unix socket is reachable from this machine only (file permissions decide who)
        if len(value) <= len("unix:"):
            raise ConfigError("--http-bind / CONNECT_HTTP_BIND: a unix socket needs a path (unix:/path)")
        return Bind(text=value, host=value, port=None, loopback=True)
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(
            "--http-bind / CONNECT_HTTP_BIND: expected host:port (for example 127.0.0.1:1338), or 0 to disable"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ConfigError("--http-bind / CONNECT_HTTP_BIND: name the address to listen on (127.0.0.1:1338)")
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
            f"--http-bind / CONNECT_HTTP_BIND: {bind.text} is reachable from other machines; "
            "set --http-secret / CONNECT_HTTP_SECRET (12+ characters) or bind 127.0.0.1"
        )
    return bind.text
