"""Settings of the linkup source (``CONNECT_LINK_UP_*``) and where they point."""

from __future__ import annotations

import attrs
import httpx
from pydantic import Field, SecretStr, field_validator

from connect.errors import ConfigError, ProtocolError
from connect.fields import HTTP_SCHEMES, ConnectSettings, check_url
from sources.linkup.const import (
    API_PREFIX,
    DEFAULT_PRODUCT,
    DEFAULT_REGION,
    DEFAULT_VERSION,
    LIBREVIEW_HOST,
    REGION_ALIASES,
    REGION_CODE,
    REGION_HOST_PATTERN,
    REGION_HOSTS,
)


def region_key(value: str) -> str | None:
    """The table key for a region as users or the API spell it (``eu2``, ``GB`` …), if known."""
    key = value.strip().upper()
    key = REGION_ALIASES.get(key, key)
    return key if key in REGION_HOSTS else None


class LinkUpSettings(ConnectSettings):
    """A LibreLinkUp follower account and where it lives."""

    link_up_username: str = Field(min_length=1, description="LibreLinkUp (follower) account e-mail")
    link_up_password: SecretStr = Field(description="LibreLinkUp account password")
    link_up_region: str = Field(
        default=DEFAULT_REGION,
        description="region of the account: "
        + ", ".join(k for k in REGION_HOSTS if k != "GLOBAL")
        + " (a login redirect corrects a wrong one)",
    )
    link_up_server: str | None = Field(
        default=None,
        description="override the API host: a host name (https implied) or a base URL such as "
        "http://127.0.0.1:8080 (a trailing /llu is the API's own prefix and is dropped)",
    )
    link_up_patient_id: str | None = Field(
        default=None, description="patientId to follow when the account follows several (default: the first)"
    )
    link_up_version: str = Field(
        default=DEFAULT_VERSION, description="LibreLinkUp app version sent in the version header"
    )
    link_up_product: str = Field(
        default=DEFAULT_PRODUCT, description="product header: llu.android or llu.ios"
    )
    link_up_interval: int = Field(default=5, ge=1, le=60, description="minutes between readings")
    link_up_auto_accept_terms: bool = Field(
        default=False, description="accept new terms of use / privacy policy on the user's behalf"
    )
    link_up_sensor_info: bool = Field(
        default=False, description="also write Sensor Start treatments and a devicestatus"
    )

    @field_validator("link_up_password")
    @classmethod
    def _password_present(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("the LibreLinkUp password is empty")
        return value

    @field_validator("link_up_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        key = region_key(value)
        if key is None:
            known = ", ".join(k for k in REGION_HOSTS if k != "GLOBAL")
            raise ValueError(f"unknown LibreLinkUp region; use one of {known}")
        return key

    @field_validator("link_up_server")
    @classmethod
    def _usable_server(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            endpoint_for(value, DEFAULT_REGION)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()

    @field_validator("link_up_patient_id", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("link_up_version", "link_up_product")
    @classmethod
    def _header_safe(cls, value: str) -> str:
        value = value.strip()
        if not value or any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
            raise ValueError("must be non-empty printable ASCII")
        return value


@attrs.frozen
class Endpoint:
    """Where requests go: a base URL without a trailing slash, and the region it serves."""

    base_url: str
    #: the region key when known (from the table or a redirect), else None
    region: str | None
    #: a configured server rather than a region's own host
    custom: bool = False


def _region_endpoint(key: str) -> Endpoint:
    return Endpoint(f"https://{REGION_HOSTS[key]}", key)


def endpoint_for(server: str | None, region: str) -> Endpoint:
    """Resolve the configured server (host name, or URL with scheme/host/port) or the region."""
    text = (server or "").strip()
    if not text:
        return _region_endpoint(region_key(region) or DEFAULT_REGION)
    try:
        check_url(text, schemes=HTTP_SCHEMES, what="LibreLinkUp server", default_scheme="https")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    url = httpx.URL(text if "://" in text else f"https://{text}")
    if url.userinfo or url.query or url.fragment:
        raise ConfigError("LibreLinkUp server must not carry credentials, a query or a fragment")
    path = url.path.rstrip("/")
    if path.endswith(API_PREFIX):
        # the request paths carry /llu themselves: a server written as ".../llu" (as the API's
        # own URLs read) would otherwise be asked for /llu/llu/auth/login
        path = path.removesuffix(API_PREFIX)
    port = f":{url.port}" if url.port is not None else ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    known = next((k for k, h in REGION_HOSTS.items() if h == url.host), None)
    return Endpoint(f"{url.scheme}://{host}{port}{path}", known, custom=True)


def redirect_endpoint(current: Endpoint, region: object) -> Endpoint:
    """The endpoint a login redirect names (``{"redirect": true, "region": "eu2"}``)."""
    if not isinstance(region, str) or not REGION_CODE.match(region.strip().lower()):
        raise ProtocolError("LibreLinkUp login redirect names no usable region")
    code = region.strip().lower()
    key = region_key(code) or code.upper()
    host = REGION_HOSTS.get(key) or REGION_HOST_PATTERN.format(region=code)
    if not current.custom:
        return Endpoint(f"https://{host}", key)
    url = httpx.URL(current.base_url)
    if LIBREVIEW_HOST.match(url.host or ""):
        # a configured Abbott host: the redirect names its sibling in the other region
        port = f":{url.port}" if url.port is not None else ""
        return Endpoint(f"{url.scheme}://{host}{port}{url.path.rstrip('/')}", key, custom=True)
    raise ConfigError(
        f"LibreLinkUp says this account lives in region {key}, but CONNECT_LINK_UP_SERVER points at "
        f"another server; set CONNECT_LINK_UP_REGION={key} and unset CONNECT_LINK_UP_SERVER, or point "
        "the server at that region"
    )
