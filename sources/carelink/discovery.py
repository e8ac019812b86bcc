"""CareLink discovery: which hosts serve a region, and where its login lives.

``GET {cloud}/connect/carepartner/…/discover/android/…`` answers ``supportedCountries``
(country → region) and ``CP``, one entry per region with ``baseUrlCareLink``,
``baseUrlCumulus`` and the URL of an SSO configuration. Two configuration shapes exist:
the Auth0 one (``client``, ``system_endpoints``) the app uses today, and the older MAG one
(``oauth.client.client_ids``, ``oauth.system_endpoints``). Both name the token endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from connect.errors import ConfigError, ProtocolError
from sources.carelink.const import DEFAULT_SSO_KEY


@attrs.frozen(kw_only=True)
class RegionConfig:
    region: str
    care_link: str
    cumulus: str
    sso_url: str


@attrs.frozen(kw_only=True)
class SsoConfig:
    kind: Literal["auth0", "mag"]
    authorize_url: str
    token_url: str
    client_id: str
    scope: str | None = None
    audience: str | None = None
    redirect_uri: str | None = None


def _text(node: Any, *path: str) -> str | None:
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node.strip() if isinstance(node, str) and node.strip() else None


def region_of_country(doc: Mapping[str, Any], country: str) -> str | None:
    """The region (``us``/``eu``) ``supportedCountries`` gives a two-letter country."""
    countries = doc.get("supportedCountries")
    if not isinstance(countries, list):
        return None
    for item in countries:
        if isinstance(item, Mapping):
            for code, info in item.items():
                if str(code).upper() == country.upper():
                    region = _text(info, "region")
                    return region.lower() if region else None
    return None


def parse_discovery(doc: Any, *, region: str | None, country: str | None) -> RegionConfig:
    """The entry of the configured region (or the country's region)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("CP"), list):
        raise ProtocolError("CareLink discovery document has no CP list")
    if region is None and country is not None:
        region = region_of_country(doc, country)
        if region is None:
            raise ConfigError(
                f"CONNECT_COUNTRY_CODE: CareLink does not list country {country}; set CONNECT_CARELINK_REGION"
            )
    wanted = (region or "us").lower()
    for entry in doc["CP"]:
        if not isinstance(entry, Mapping) or (_text(entry, "region") or "").lower() != wanted:
            continue
        care_link = _text(entry, "baseUrlCareLink")
        cumulus = _text(entry, "baseUrlCumulus")
        key = _text(entry, "UseSSOConfiguration") or DEFAULT_SSO_KEY
        sso_url = _text(entry, key)
        if care_link is None or cumulus is None or sso_url is None:
            raise ProtocolError(
                f"CareLink discovery entry for {wanted} lacks its base URLs or SSO configuration"
            )
        return RegionConfig(
            region=wanted, care_link=care_link.rstrip("/"), cumulus=cumulus.rstrip("/"), sso_url=sso_url
        )
    raise ConfigError(f"CONNECT_CARELINK_REGION: CareLink discovery has no region {wanted}")


def _server_base(server: Any) -> str:
    host = _text(server, "hostname")
    if host is None:
        raise ProtocolError("CareLink SSO configuration has no server hostname")
    port = server.get("port") if isinstance(server, Mapping) else None
    base = f"https://{host}"
    if isinstance(port, (int, str)) and str(port).strip() and str(port).strip() != "443":
        base += f":{str(port).strip()}"
    prefix = _text(server, "prefix")
    if prefix:
        base += "/" + prefix.strip("/")
    return base


def parse_sso_config(doc: Any) -> SsoConfig:
    """Authorize and token URLs and the app's client, from either configuration shape."""
    if not isinstance(doc, Mapping):
        raise ProtocolError("CareLink SSO configuration is not a JSON object")
    base = _server_base(doc.get("server"))
    if isinstance(doc.get("client"), Mapping):  # Auth0
        client_id = _text(doc, "client", "client_id")
        authorize = _text(doc, "system_endpoints", "authorization_endpoint_path")
        token = _text(doc, "system_endpoints", "token_endpoint_path")
        if client_id is None or authorize is None or token is None:
            raise ProtocolError("CareLink Auth0 configuration lacks its client or endpoints")
        return SsoConfig(
            kind="auth0",
            authorize_url=base + authorize,
            token_url=base + token,
            client_id=client_id,
            scope=_text(doc, "client", "scope"),
            audience=_text(doc, "client", "audience"),
            redirect_uri=_text(doc, "client", "redirect_uri"),
        )
    oauth = doc.get("oauth")
    client = oauth.get("client") if isinstance(oauth, Mapping) else None
    clients = client.get("client_ids") if isinstance(client, Mapping) else None
    first = clients[0] if isinstance(clients, list) and clients else None
    client_id = _text(first, "client_id")
    authorize = _text(oauth, "system_endpoints", "authorization_endpoint_path")
    token = _text(oauth, "system_endpoints", "token_endpoint_path")
    if client_id is None or authorize is None or token is None:
        raise ProtocolError("CareLink SSO configuration lacks its client or endpoints")
    return SsoConfig(
        kind="mag",
        authorize_url=base + authorize,
        token_url=base + token,
        client_id=client_id,
        scope=_text(first, "scope"),
        redirect_uri=_text(first, "redirect_uri"),
    )
