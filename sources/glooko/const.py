"""Glooko constants: hosts, paths, the v2 feeds and how the loops page through them.

See protocols/04-glooko.md. Glooko publishes no API; names come from nightscout-connect's
Glooko driver (from glooko2nightscout-bridge) and other public connectors.
"""

from __future__ import annotations

import uuid
from typing import Final

import attrs

#: ``CONNECT_GLOOKO_SERVER`` may name one of these instead of a host
HOSTS: Final[dict[str, str]] = {
    "default": "api.glooko.com",
    "us": "api.glooko.com",
    "eu": "eu.api.glooko.com",
    "de-fr": "de-fr.api.glooko.com",
    "ca": "ca.api.glooko.com",
    "production": "externalapi.glooko.com",
    "development": "api.glooko.work",
}
DEFAULT_SERVER: Final = "default"

SIGN_IN_PATH: Final = "/api/v2/users/sign_in"
#: answers ``currentUser.glookoCode`` when the sign-in body lacks the patient code
SESSION_USERS_PATH: Final = "/api/v3/session/users"

#: the web app's headers, which nightscout-connect found the API expects
BROWSER_UA: Final = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/16.5 Safari/605.1.15"
)
DEVICE_INFORMATION: Final[dict[str, object]] = {
    "applicationType": "logbook",
    "os": "android",
    "osVersion": "33",
    "device": "Google Pixel 4a",
    "deviceManufacturer": "Google",
    "deviceModel": "Pixel 4a",
    "clinicalResearch": False,
    "applicationVersion": "6.1.3",
    "buildNumber": "0",
}

#: any GUID does for ``lastGuid`` (the server needs one, its value does not matter); ours is fixed
LAST_GUID: Final = str(uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/nightscout/nightscout-connect"))

DEVICE: Final = "nightscout-connect-glooko"

DAY_MS: Final = 86_400_000
HOUR_MS: Final = 3_600_000
#: how much of a feed's history one frame reads while backfilling
PAGE_MS: Final = DAY_MS
#: every frame reads at least this far back: most records reach Glooko minutes to hours after
#: they happened (the phone or pump syncs late), and a time cursor alone would skip them
SYNC_OVERLAP_MS: Final = 6 * HOUR_MS
#: how often a feed re-reads its whole late-sync horizon (``CONNECT_GLOOKO_LATE_SYNC_HOURS``):
#: a meter or pump that uploads once a day delivers a day's records at once. A record that
#: reaches Glooko up to (horizon − this) late is therefore always read.
RESYNC_EVERY_MS: Final = HOUR_MS
DEFAULT_LATE_SYNC_HOURS: Final = 36
#: while history is being read back-to-back, a live read younger than this is not repeated
LIVE_FRESH_MS: Final = 60_000
#: records per request; a full page means more remain in the window
PAGE_LIMIT: Final = 1000
#: pages one window may take before the answers are deemed not to move forward
MAX_PAGES: Final = 50
#: checkpoint names (after the collection's) of a feed's other marks; see ``windows.py``
RESYNC_MARK: Final = ":resync"
HISTORY_MARK: Final = ":history"
HISTORY_END_MARK: Final = ":history_end"
#: the web session cookie lasts a day (nightscout-connect renews 10 minutes early)
SESSION_LIFETIME_S: Final = 24 * 3600 - 600


@attrs.frozen
class Feed:
    """One v2 endpoint read by its own loop, with its own checkpoint."""

    loop: str
    path: str
    key: str
    collection: str
    interval_s: int
    #: the one Nightscout eventType the feed writes, when it writes only one: gap analysis then
    #: asks the site for this feed's newest record, not the newest of every Glooko feed
    event_type: str | None = None


FEEDS: Final[tuple[Feed, ...]] = (
    Feed("GlookoCGM", "/api/v2/cgm/readings", "readings", "entries", 300),
    # Meal Bolus or Correction Bolus: the site is asked for any Glooko treatment; the hourly
    # re-read of the late-sync horizon covers what the answer may overstate
    Feed("GlookoBoluses", "/api/v2/pumps/normal_boluses", "normalBoluses", "treatments", 300),
    Feed(
        "GlookoBasals", "/api/v2/pumps/scheduled_basals", "scheduledBasals", "treatments", 900, "Temp Basal"
    ),
    Feed("GlookoFoods", "/api/v2/foods", "foods", "treatments", 900, "Carb Correction"),
)
FEEDS_BY_KEY: Final[dict[str, Feed]] = {feed.key: feed for feed in FEEDS}

#: trend words other connectors report, folded to Nightscout directions
TRENDS: Final[dict[str, str]] = {
    "doubleup": "DoubleUp",
    "singleup": "SingleUp",
    "fortyfiveup": "FortyFiveUp",
    "flat": "Flat",
    "fortyfivedown": "FortyFiveDown",
    "singledown": "SingleDown",
    "doubledown": "DoubleDown",
    "up": "SingleUp",
    "down": "SingleDown",
    "steady": "Flat",
    "notcomputable": "NOT COMPUTABLE",
    "rateoutofrange": "RATE OUT OF RANGE",
}
