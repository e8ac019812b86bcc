"""Dexcom Share: CGM readings a publisher shares through Dexcom's follow service.

``CONNECT_SOURCE=dexcomshare`` with ``CONNECT_SHARE_ACCOUNT_NAME``, ``CONNECT_SHARE_PASSWORD``,
``CONNECT_SHARE_REGION`` (us | ous | jp) and optionally ``CONNECT_SHARE_SERVER``. The names
Nightscout's bridge plugin used (``BRIDGE_USER_NAME``, ``BRIDGE_PASSWORD``, ``BRIDGE_SERVER``)
keep working.
"""

from __future__ import annotations

from typing import Any

import httpx

from connect.contract import SourceInfo, own_settings
from sources.dexcomshare.client import LOOP_NAME, DexcomShare, read_window
from sources.dexcomshare.const import PATH_PREFIX, REGIONS
from sources.dexcomshare.payload import transform
from sources.dexcomshare.settings import DexcomShareSettings, endpoint_for


def make(settings: Any, client: httpx.AsyncClient) -> DexcomShare:
    """Bind settings and the daemon's HTTP client into a driver."""
    return DexcomShare(own_settings(DexcomShareSettings, settings), client)


SOURCE = SourceInfo(
    name="dexcomshare",
    description="Dexcom Share (G6/G7 readings shared with followers), regions us, ous and jp",
    settings=DexcomShareSettings,
    factory=make,
    legacy_env={
        "BRIDGE_USER_NAME": "CONNECT_SHARE_ACCOUNT_NAME",
        "BRIDGE_PASSWORD": "CONNECT_SHARE_PASSWORD",
        "BRIDGE_SERVER": "CONNECT_SHARE_SERVER",
        # share2nightscout-bridge's names (its Dexcom server was always the US one)
        "DEXCOM_ACCOUNT_NAME": "CONNECT_SHARE_ACCOUNT_NAME",
        "DEXCOM_PASSWORD": "CONNECT_SHARE_PASSWORD",
    },
    default_server=f"https://{REGIONS['us'].host}{PATH_PREFIX}",
)

__all__ = [
    "LOOP_NAME",
    "SOURCE",
    "DexcomShare",
    "DexcomShareSettings",
    "endpoint_for",
    "make",
    "read_window",
    "transform",
]
