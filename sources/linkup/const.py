"""LibreLinkUp constants in one place: hosts per region, paths, headers, codes and the trend table.

Facts from the protocol reference (protocols/02-librelinkup.md); Abbott changes the gatekeeping
headers now and then, so the app version is a setting with this file's value as its default.
"""

from __future__ import annotations

import re
from typing import Final

#: region key → API host (https). ``GLOBAL`` is the undecorated host that redirects by account.
REGION_HOSTS: Final[dict[str, str]] = {
    "GLOBAL": "api.libreview.io",
    "US": "api-us.libreview.io",
    "EU": "api-eu.libreview.io",
    "EU2": "api-eu2.libreview.io",
    "DE": "api-de.libreview.io",
    "FR": "api-fr.libreview.io",
    "AE": "api-ae.libreview.io",
    "AP": "api-ap.libreview.io",
    "AU": "api-au.libreview.io",
    "CA": "api-ca.libreview.io",
    "JP": "api-jp.libreview.io",
    "LA": "api-la.libreview.io",
    "RU": "api.libreview.ru",
    "CN": "api-cn.myfreestyle.cn",
}
#: names users type for a region that the table spells differently (the UK lives on eu2)
REGION_ALIASES: Final[dict[str, str]] = {"GB": "EU2", "UK": "EU2", "DEFAULT": "GLOBAL", "WORLD": "GLOBAL"}
#: nightscout-connect starts at EU when nothing is configured; the login redirect corrects it
DEFAULT_REGION: Final = "EU"
#: a redirect names a lower-case region; unknown ones are built on this pattern
REGION_HOST_PATTERN: Final = "api-{region}.libreview.io"
REGION_CODE: Final = re.compile(r"^[a-z][a-z0-9]{1,5}$")
#: a configured server of this shape can follow a redirect by substituting the region
LIBREVIEW_HOST: Final = re.compile(r"^api(?:-[a-z0-9]+)?\.libreview\.(?:io|ru)$")

#: the prefix of every API path but the step acceptance
API_PREFIX: Final = "/llu"
LOGIN_PATH: Final = f"{API_PREFIX}/auth/login"
CONNECTIONS_PATH: Final = f"{API_PREFIX}/connections"
GRAPH_PATH: Final = CONNECTIONS_PATH + "/{patient_id}/graph"
#: accepting a terms step: no ``/llu`` prefix, the step's own short-lived token as Bearer
STEP_ACCEPT_PATH: Final = "/auth/continue/{step}"

DEFAULT_VERSION: Final = "4.16.0"
DEFAULT_PRODUCT: Final = "llu.android"
USER_AGENT: Final = (
    "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) Mobile Safari/537.36"
)
#: headers on every request; ``version``/``product`` are added from settings
BASE_HEADERS: Final[dict[str, str]] = {
    "accept": "application/json",
    "content-type": "application/json",
    "cache-control": "no-cache",
    "user-agent": USER_AGENT,
}

# --- the JSON ``status`` field (HTTP is 200 for most of these) -----------------------------
STATUS_OK: Final = 0
STATUS_BAD_CREDENTIALS: Final = 2
STATUS_STEP: Final = 4  # login: a step to take; graph: couldNotLoadPatient
STATUS_LOCKED: Final = 429
STATUS_MINIMUM_VERSION: Final = 920

#: step types a login may demand, and what a person must do for each
STEP_TYPES: Final[dict[str, str]] = {
    "tou": "accept the terms of use",
    "pp": "accept the privacy policy",
    "verifyEmail": "verify the account's e-mail address",
}
#: steps the API lets a client accept on the user's behalf (with AUTO_ACCEPT_TERMS)
ACCEPTABLE_STEPS: Final = frozenset({"tou", "pp"})
#: how many steps in a row one login follows before giving up (terms, then policy, …)
MAX_STEPS: Final = 4

#: LibreLinkUp TrendArrow → Nightscout direction. 0 or missing is "unknown"; Libre has no doubles.
TREND_ARROWS: Final[dict[int, str]] = {
    1: "SingleDown",
    2: "FortyFiveDown",
    3: "Flat",
    4: "FortyFiveUp",
    5: "SingleUp",
}
UNKNOWN_DIRECTION: Final = "NOT COMPUTABLE"

#: the device name nightscout-connect writes, so identifiers match entries it uploaded before
DEVICE: Final = "nightscout-connect-librelinkup"
LOOP_NAME: Final = "LibreLinkUp"

#: the spread of many accounts' polls over a few seconds (a fixed offset per account)
SPREAD_MS: Final = 10_000
#: readings dated further ahead than this are clock trouble and would poison the checkpoint
FUTURE_TOLERANCE_MS: Final = 15 * 60_000
#: how far before the checkpoint history points are still written. The checkpoint is set by the
#: current reading, which the graph gains only later (§6), so a history point older than it can
#: arrive in a later answer; rewriting an unchanged one is a no-op upsert (UUID-v5 identifiers).
#: It covers a graph that trails the current reading by up to about 25 minutes.
OVERLAP_MS: Final = 30 * 60_000

#: without a Retry-After, how long to leave the service alone after a 429 or a ban page
DEFAULT_RATE_LIMIT_S: Final = 60.0
DEFAULT_BAN_S: Final = 900.0
#: how long to wait before logging in again with an app version the service refuses
VERSION_RETRY_S: Final = 3600.0
