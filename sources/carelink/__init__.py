"""Medtronic CareLink: readings, pump state and therapy markers of a MiniMed pump or Guardian CGM.

``CONNECT_SOURCE=minimedcarelink`` reads the CareLink Connect (carepartner) API with the
tokens in ``CONNECT_CARELINK_TOKEN_FILE``. CareLink's login shows a captcha, so a person runs
``nightscout-connect login carelink`` once (see :mod:`sources.carelink.login`); the daemon
then refreshes the access token itself and writes each rotated refresh token back to the
file (mode 0600). Other settings: ``CONNECT_CARELINK_REGION`` (us | eu),
``CONNECT_COUNTRY_CODE``, ``CONNECT_CARELINK_USERNAME``, ``CONNECT_CARELINK_PATIENT_USERNAME``
(care partners following one of several patients) and ``CONNECT_CARELINK_SERVER`` (send every
request to a proxy or an emulator). nightscout-connect's ``CONNECT_CARELINK_*`` names are ours;
the older bridges' ``CARELINK_USERNAME``, ``MMCONNECT_USER_NAME``, ``MMCONNECT_SERVER`` (EU, US
or a CareLink host such as ``carelink.minimed.eu``, which stands for its region) and
``MMCONNECT_COUNTRYCODE`` are read too.
"""

from __future__ import annotations

from typing import Any

import httpx

from connect.contract import SourceInfo, own_settings
from sources.carelink.client import CareLink, Session
from sources.carelink.const import CLOUD_HOSTS, LOOP_NAME
from sources.carelink.settings import CareLinkSettings
from sources.carelink.transform import transform


def make(settings: Any, client: httpx.AsyncClient, **options: Any) -> CareLink:
    """Bind settings and the daemon's HTTP client into a driver (``clock=`` for tests)."""
    settings = own_settings(CareLinkSettings, settings)
    return CareLink(settings, client, **options)


SOURCE = SourceInfo(
    name="minimedcarelink",
    description="Medtronic CareLink (MiniMed 7xxG pumps, Guardian CGMs) through the care partner API; "
    "needs a one-time `nightscout-connect login carelink`",
    settings=CareLinkSettings,
    factory=make,
    legacy_env={
        # minimed-connect-to-nightscout's and Nightscout's mmconnect plugin's names (the
        # password they also took is of no use now: CareLink's login needs a browser)
        "CARELINK_USERNAME": "CONNECT_CARELINK_USERNAME",
        "MMCONNECT_USER_NAME": "CONNECT_CARELINK_USERNAME",
        "CARELINK_PATIENT": "CONNECT_CARELINK_PATIENT_USERNAME",
        # EU, US or a portal host: the region setting takes all three (settings.region_of)
        "MMCONNECT_SERVER": "CONNECT_CARELINK_REGION",
        "MMCONNECT_COUNTRYCODE": "CONNECT_COUNTRY_CODE",
    },
    default_server=f"https://{CLOUD_HOSTS['us']}",
)

__all__ = ["LOOP_NAME", "SOURCE", "CareLink", "CareLinkSettings", "Session", "make", "transform"]
