"""Settings of the minimedcarelink source, and the server override they may carry."""

from __future__ import annotations

import os

import httpx
from pydantic import Field, field_validator

from connect import httpkit
from connect.fields import ConnectSettings, FilePath
from sources.carelink.const import REGION_DOMAINS

#: the older bridges' variable that the source's legacy names copy into CONNECT_CARELINK_REGION
LEGACY_SERVER_ENV = "MMCONNECT_SERVER"


class CareLinkSettings(ConnectSettings):
    """``CONNECT_CARELINK_*``: where the token file is, and which account and patient to read."""

    carelink_token_file: FilePath = Field(
        description="file holding the CareLink tokens; `nightscout-connect login carelink` writes it "
        "(mode 0600) and the daemon rewrites it whenever the refresh token rotates"
    )
    carelink_username: str | None = Field(
        default=None,
        description="CareLink user name of the login (read from the token when not set)",
    )
    carelink_region: str | None = Field(
        default=None,
        description="us or eu, or a Medtronic host such as carelink.minimed.eu that stands for its "
        "region (found from the country or the token when not set)",
    )
    carelink_patient_username: str | None = Field(
        default=None,
        description="for a care partner account: the patient to follow (the first linked one when not set)",
    )
    country_code: str | None = Field(
        default=None, description="two-letter country where the CareLink account was created"
    )
    carelink_server: str | None = Field(
        default=None,
        description="send every CareLink request (discovery, login, data) to this server instead: "
        "a host name (https implied) or a URL such as http://127.0.0.1:8080 (proxies, emulators)",
    )

    @field_validator("carelink_region")
    @classmethod
    def _known_region(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        region = region_of(value)
        if region is not None:
            return region
        if os.environ.get(LEGACY_SERVER_ENV, "").strip() == value.strip():
            # copied from the older bridges' variable: name the one the person actually set
            raise ValueError(
                f"the value comes from {LEGACY_SERVER_ENV}, which must be EU, US or a Medtronic "
                "CareLink host such as carelink.minimed.eu; to send CareLink requests to another "
                "server (a proxy) set CONNECT_CARELINK_SERVER instead"
            )
        raise ValueError("use us or eu")

    @field_validator("country_code")
    @classmethod
    def _two_letters(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        code = value.strip().upper()
        if len(code) != 2 or not code.isalpha():
            raise ValueError("use the two-letter country code, such as GB or US")
        return code

    @field_validator("carelink_username", "carelink_patient_username")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return value.strip()

    @field_validator("carelink_server")
    @classmethod
    def _usable_server(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return server_base(value)


def region_of(value: str) -> str | None:
    """``us`` / ``eu`` of a region name or of a Medtronic host (a bare name or a URL), else None.

    The older bridges' ``MMCONNECT_SERVER`` held EU, US or the CareLink portal's host name, and
    the source's legacy names copy it here.
    """
    text = value.strip().lower()
    if text in ("us", "eu"):
        return text
    host = text.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0].rstrip(".")
    for domain, region in REGION_DOMAINS.items():
        if host == domain or host.endswith("." + domain):
            return region
    return None


def server_base(server: str) -> str:
    """``scheme://host[:port][/path]`` of a configured server, without a trailing slash.

    A bare host name means https. Raises ValueError naming the problem (never echoing
    credentials a URL might carry).
    """
    base, path = httpkit.server_base(server, "CareLink server")
    return f"{base}{path}"


def rebase(url: str, base: str | None) -> str:
    """``url`` with its scheme, host and port replaced by ``base`` (kept as is without one).

    Discovery hands out absolute URLs on several Medtronic hosts; an override sends all of
    them to one server, keeping each path so the server can tell them apart.
    """
    if base is None:
        return url
    parsed = httpx.URL(url)
    query = f"?{parsed.query.decode('ascii')}" if parsed.query else ""
    return f"{base}{parsed.raw_path.decode('ascii').split('?', 1)[0]}{query}"
