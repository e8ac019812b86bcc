"""Glooko: CGM readings, pump boluses and basals, and logged food, from the Glooko cloud.

``CONNECT_SOURCE=glooko`` with ``CONNECT_GLOOKO_EMAIL``, ``CONNECT_GLOOKO_PASSWORD``,
``CONNECT_GLOOKO_SERVER`` (default, eu, … or a host/URL) and ``CONNECT_GLOOKO_TIMEZONE`` (the
IANA zone of the pump and phone: Glooko writes their local time labelled as UTC). Each v2
feed has its own loop and checkpoints. A first start reads the last
``CONNECT_GLOOKO_LATE_SYNC_HOURS`` (36) at once, then ``CONNECT_GLOOKO_LOOKBACK_DAYS`` of
history a day per frame; once an hour every feed reads those late-sync hours again, for records
that reach Glooko late. nightscout-connect's ``CONNECT_GLOOKO_ENV`` and
``CONNECT_GLOOKO_TIMEZONE_OFFSET`` still work; the ``GLOOKO_EMAIL`` / ``GLOOKO_PASSWORD`` other
Glooko bridges use are read too.
"""

from __future__ import annotations

from typing import Any

import httpx

from connect.contract import SourceInfo, own_settings
from sources.glooko.client import Glooko, GlookoSession
from sources.glooko.const import FEEDS, HOSTS
from sources.glooko.settings import GlookoSettings
from sources.glooko.transform import Frame, Page, transform
from sources.glooko.windows import Plan, plan


def make(settings: Any, client: httpx.AsyncClient) -> Glooko:
    """Bind settings and the daemon's HTTP client into a driver."""
    settings = own_settings(GlookoSettings, settings)
    return Glooko(settings, client)


SOURCE = SourceInfo(
    name="glooko",
    description="Glooko (CGM readings, pump boluses and basals, food) through its v2 web API",
    settings=GlookoSettings,
    factory=make,
    legacy_env={
        "GLOOKO_EMAIL": "CONNECT_GLOOKO_EMAIL",
        "GLOOKO_PASSWORD": "CONNECT_GLOOKO_PASSWORD",
    },
    default_server=f"https://{HOSTS['default']}",
)

__all__ = [
    "FEEDS",
    "SOURCE",
    "Frame",
    "Glooko",
    "GlookoSession",
    "GlookoSettings",
    "Page",
    "Plan",
    "make",
    "plan",
    "transform",
]
