"""Abbott LibreLinkUp: the readings a Libre sensor's owner shares with followers.

``CONNECT_SOURCE=linkup`` with ``CONNECT_LINK_UP_USERNAME`` and ``CONNECT_LINK_UP_PASSWORD`` (a
LibreLinkUp follower account), ``CONNECT_LINK_UP_REGION`` (default EU; a login redirect finds
the right one) and optionally ``CONNECT_LINK_UP_SERVER``, ``CONNECT_LINK_UP_PATIENT_ID``,
``CONNECT_LINK_UP_VERSION``, ``CONNECT_LINK_UP_PRODUCT``, ``CONNECT_LINK_UP_INTERVAL``,
``CONNECT_LINK_UP_AUTO_ACCEPT_TERMS`` and ``CONNECT_LINK_UP_SENSOR_INFO``. The variable names
of nightscout-librelink-up (``LINK_UP_USERNAME`` …) keep working.
"""

from __future__ import annotations

from typing import Any

import httpx

from connect.contract import SourceInfo, own_settings
from sources.linkup.client import LinkUpClient, Login, Session, classify
from sources.linkup.const import DEFAULT_REGION, LOOP_NAME, REGION_HOSTS
from sources.linkup.driver import LinkUp
from sources.linkup.settings import Endpoint, LinkUpSettings, endpoint_for, redirect_endpoint
from sources.linkup.transform import direction_for, parse_timestamp, transform


def make(settings: Any, client: httpx.AsyncClient) -> LinkUp:
    """Bind settings and the daemon's HTTP client into a driver."""
    settings = own_settings(LinkUpSettings, settings)
    return LinkUp(settings, client)


SOURCE = SourceInfo(
    name="linkup",
    description="Abbott LibreLinkUp (FreeStyle Libre readings shared with followers), all regions",
    settings=LinkUpSettings,
    factory=make,
    legacy_env={
        "LINK_UP_USERNAME": "CONNECT_LINK_UP_USERNAME",
        "LINK_UP_PASSWORD": "CONNECT_LINK_UP_PASSWORD",
        "LINK_UP_REGION": "CONNECT_LINK_UP_REGION",
        "LINK_UP_CONNECTION": "CONNECT_LINK_UP_PATIENT_ID",
        "LINK_UP_TIME_INTERVAL": "CONNECT_LINK_UP_INTERVAL",
        "LINK_UP_VERSION": "CONNECT_LINK_UP_VERSION",
    },
    default_server=f"https://{REGION_HOSTS[DEFAULT_REGION]}",
)

__all__ = [
    "LOOP_NAME",
    "SOURCE",
    "Endpoint",
    "LinkUp",
    "LinkUpClient",
    "LinkUpSettings",
    "Login",
    "Session",
    "classify",
    "direction_for",
    "endpoint_for",
    "make",
    "parse_timestamp",
    "redirect_endpoint",
    "transform",
]
