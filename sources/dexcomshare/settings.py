"""Settings of the dexcomshare source and where they point: region, host and base URL."""

from __future__ import annotations

import attrs
import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from connect.fields import ConnectSettings
from connect.httpkit import server_base
from sources.dexcomshare.const import DEFAULT_REGION, PATH_PREFIX, REGION_ALIASES, REGIONS, Region


class DexcomShareSettings(ConnectSettings):
    """``CONNECT_SHARE_*``: the publisher's Share credentials and where the account lives."""

    share_account_name: str = Field(
        min_length=1, description="Dexcom Share user name, e-mail or phone number of the publisher"
    )
    share_password: SecretStr = Field(description="Dexcom Share password of the publisher")
    share_region: str = Field(
        default=DEFAULT_REGION, description="where the account lives: us, ous (outside the US) or jp"
    )
    share_server: str | None = Field(
        default=None,
        description="override the Share host: a host name (https implied), a base URL such as "
        "http://127.0.0.1:8080, or US/EU as the older bridges accept",
    )

    @field_validator("share_password")
    @classmethod
    def _password_present(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("the Share password is empty")
        return value

    @field_validator("share_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        region = REGION_ALIASES.get(value.strip().lower())
        if region is None:
            raise ValueError("unknown Share region; use us, ous or jp")
        return region

    @field_validator("share_server")
    @classmethod
    def _usable_server(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        endpoint_for(value, DEFAULT_REGION)  # raises ValueError with the reason
        return value.strip()

    @model_validator(mode="after")
    def _server_matches_region(self) -> DexcomShareSettings:
        if self.share_server is None or "share_region" not in self.model_fields_set:
            return self
        named = endpoint_for(self.share_server, self.share_region).region
        if named.name != self.share_region:
            raise ValueError(
                f"CONNECT_SHARE_SERVER {self.share_server!r} is Dexcom's {named.name} deployment "
                f"but CONNECT_SHARE_REGION is {self.share_region}; set one of them"
            )
        return self


@attrs.frozen
class Endpoint:
    """Where requests go: the base URL (ending in the Share path prefix) and the region's app id."""

    base_url: str
    region: Region


def endpoint_for(server: str | None, region: str) -> Endpoint:
    """Resolve the configured server and region.

    ``server`` may be empty (the region's own host), a region alias (``US``/``EU``/``jp``…),
    a host name with an optional port (https implied), or a URL with scheme, host and port.
    The Share path prefix is appended unless the URL already ends with it.
    """
    chosen = REGIONS[REGION_ALIASES.get(region.strip().lower(), DEFAULT_REGION)]
    text = (server or "").strip()
    if not text:
        return Endpoint(f"https://{chosen.host}{PATH_PREFIX}", chosen)
    alias = REGION_ALIASES.get(text.lower())
    if alias is not None:
        named = REGIONS[alias]
        return Endpoint(f"https://{named.host}{PATH_PREFIX}", named)
    base, path = server_base(text, "Share server")
    if not path.endswith(PATH_PREFIX.rstrip("/")):
        path += PATH_PREFIX.rstrip("/")
    # a Dexcom host names its deployment: Japan's takes another application id, and a wrong
    # id is answered like a wrong password (and counts towards the lockout)
    return Endpoint(f"{base}{path}/", region_of_host(base) or chosen)


def region_of_host(base: str) -> Region | None:
    """The region whose Share host ``base`` (``scheme://host[:port]``) is, if it is one."""
    host = httpx.URL(base).host.lower().rstrip(".")
    return next((r for r in REGIONS.values() if r.host == host), None)
