"""Settings of the glooko source: the account, the server, and the pump's time zone."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, timedelta, timezone, tzinfo

import httpx
from pydantic import Field, SecretStr, field_validator

from connect.fields import HTTP_SCHEMES, ConnectSettings, check_url
from sources.glooko.const import DEFAULT_LATE_SYNC_HOURS, DEFAULT_SERVER, HOSTS


class GlookoSettings(ConnectSettings):
    """``CONNECT_GLOOKO_*``: the Glooko login, where it lives, and how to read its local times."""

    glooko_email: str = Field(min_length=3, description="e-mail address of the Glooko account")
    glooko_password: SecretStr = Field(description="password of the Glooko account")
    glooko_server: str | None = Field(
        default=None,
        description="default, us, eu, de-fr, ca, production or development; or a host name (https implied) "
        "or a URL such as http://127.0.0.1:8080",
    )
    glooko_env: str | None = Field(
        default=None, description="nightscout-connect's name for a server key (eu, development…)"
    )
    glooko_timezone: str | None = Field(
        default=None,
        description="IANA zone of the pump and phone clocks (e.g. Europe/Berlin): Glooko writes their "
        "local times labelled as UTC",
    )
    glooko_timezone_offset: float | None = Field(
        default=None,
        ge=-14,
        le=14,
        description="the older fixed alternative to CONNECT_GLOOKO_TIMEZONE: hours east of UTC (no summer time)",
    )
    glooko_lookback_days: int = Field(
        default=14,
        ge=1,
        le=90,
        description="how far back a first start reads Glooko's history (for Glooko it replaces "
        "CONNECT_BACKFILL_DAYS)",
    )
    glooko_late_sync_hours: int = Field(
        default=DEFAULT_LATE_SYNC_HOURS,
        ge=12,
        le=168,
        description="how late a record may reach Glooko (a pump or meter that uploads once a day) and "
        "still be read: every feed reads this many hours again once an hour",
    )

    @field_validator("glooko_password")
    @classmethod
    def _password_present(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("the Glooko password is empty")
        return value

    @field_validator("glooko_timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            zoneinfo.ZoneInfo(value.strip())
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                "not an IANA time zone name (such as Europe/Berlin or America/New_York)"
            ) from None
        return value.strip()

    @field_validator("glooko_server", "glooko_env")
    @classmethod
    def _usable_server(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        base_url(value)
        return value.strip()

    def zone(self) -> tzinfo:
        """The clocks' zone: the IANA one, else the fixed offset, else UTC."""
        if self.glooko_timezone:
            return zoneinfo.ZoneInfo(self.glooko_timezone)
        if self.glooko_timezone_offset is not None:
            return timezone(timedelta(hours=self.glooko_timezone_offset))
        return UTC

    def base(self) -> str:
        return base_url(self.glooko_server or self.glooko_env or DEFAULT_SERVER)


def base_url(server: str) -> str:
    """``scheme://host[:port][/path]`` of a server key, host name or URL (no trailing slash)."""
    text = server.strip()
    key = HOSTS.get(text.lower())
    if key is not None:
        return f"https://{key}"
    check_url(text, schemes=HTTP_SCHEMES, what="Glooko server", default_scheme="https")
    url = httpx.URL(text if "://" in text else f"https://{text}")
    if url.userinfo or url.query or url.fragment:
        raise ValueError("Glooko server must not carry credentials, a query or a fragment")
    port = f":{url.port}" if url.port is not None else ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}{port}{url.path.rstrip('/')}"


def web_origin(base: str) -> str:
    """The web app's origin for an API host (``eu.api.glooko.com`` → ``https://eu.my.glooko.com``)."""
    url = httpx.URL(base)
    host = url.host
    host = "my." + host[4:] if host.startswith("api.") else host.replace(".api.", ".my.")
    return f"https://{host}"
