"""Settings of the dexcomshare source and where they point: region, host and base URL."""

from __future__ import annotations

import attrs
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from connect.httpkit import server_base
from sources.dexcomshare.const import DEFAULT_REGION, PATH_PREFIX, REGION_ALIASES, REGIONS, Region


class DexcomShareSettings(BaseSettings):
    """``CONNECT_SHARE_*``: the publisher's Share credentials and where the account lives."""

    model_config = SettingsConfigDict(env_prefix="CONNECT_", extra="ignore")

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
            raise ValueError(f"unknown Share region {value!r}; use us, ous or jp")
        return region

    @field_validator("share_server")
    @classmethod
    def _usable_server(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        endpoint_for(value, DEFAULT_REGION)  # raises ValueError with the reason
        return value.strip()


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
    return Endpoint(f"{base}{path}/", chosen)
