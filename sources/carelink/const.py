"""Medtronic CareLink constants: hosts, paths, headers, the trend table and timing.

Everything vendor-specific that is not logic lives here, so a change on Medtronic's side is
a one-line change (see protocols/03-medtronic-carelink.md).
"""

from __future__ import annotations

from typing import Final

#: the cloud ("cumulus") host per region; the discovery document is served by both
CLOUD_HOSTS: Final[dict[str, str]] = {"us": "clcloud.minimed.com", "eu": "clcloud.minimed.eu"}
DEFAULT_DISCOVERY_REGION: Final = "us"
#: Medtronic's domains and the region they serve: a host in one of them (the portal
#: ``carelink.minimed.eu`` the older bridges' ``MMCONNECT_SERVER`` could name, the cloud
#: host, the login host) stands for its region
REGION_DOMAINS: Final[dict[str, str]] = {"minimed.com": "us", "minimed.eu": "eu"}

#: the discovery document of the CareLink Connect (carepartner) app. v11/3.2 is the version
#: in the protocol summary; v13/3.6 is the one whose entries name the Auth0 login
#: (``UseSSOConfiguration``), which is the only login a person can still complete.
DISCOVERY_PATH: Final = "/connect/carepartner/v13/discover/android/3.6"

#: relative to ``baseUrlCareLink`` / ``baseUrlCumulus`` from the discovery document
USERS_ME_PATH: Final = "/users/me"
LINKED_PATIENTS_PATH: Final = "/links/patients"
DISPLAY_MESSAGE_PATH: Final = "/display/message"

#: ``display/message`` answers 206 "Upgrade application" to app versions below 3.7
APP_VERSION: Final = "3.8.0"

#: the SSO configuration key used when a discovery entry does not name one
DEFAULT_SSO_KEY: Final = "SSOConfiguration"

#: roles of a care partner (a follower): their data request names the patient
CARE_PARTNER_ROLES: Final = frozenset({"CARE_PARTNER", "CARE_PARTNER_OUS"})

#: the app's own headers; CareLink's gateway is picky about unknown clients
USER_AGENT: Final = "Dalvik/2.1.0 (Linux; U; Android 14; Pixel 7 Build/UQ1A.240105.004)"
JSON_HEADERS: Final[dict[str, str]] = {
    "Accept": "application/json",
    "Content-Type": "application/json",
    "User-Agent": USER_AGENT,
}

#: lastSGTrend → Nightscout direction. Medtronic draws no arrow while glucose changes by
#: less than 1 mg/dL/min, which is Nightscout's Flat (as nightscout-connect maps it).
#: ``FLAT`` appears in other projects' mock data. Unknown values become NOT COMPUTABLE.
TREND_DIRECTIONS: Final[dict[str, str]] = {
    "NONE": "Flat",
    "FLAT": "Flat",
    "UP": "SingleUp",
    "UP_DOUBLE": "DoubleUp",
    "UP_TRIPLE": "TripleUp",
    "DOWN": "SingleDown",
    "DOWN_DOUBLE": "DoubleDown",
    "DOWN_TRIPLE": "TripleDown",
}
UNKNOWN_DIRECTION: Final = "NOT COMPUTABLE"

#: the older format of pump-local times, e.g. "Oct 19, 2015 08:15:00"
MONTHS: Final[dict[str, int]] = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1
    )
}

#: pump clocks are set by hand and drift, so their zone is rounded to the half hour (this
#: still tells India's +5:30 from +5 or +6); the phone clock is network-synced: quarter hours
PUMP_ZONE_STEP_MS: Final = 30 * 60_000
PHONE_ZONE_STEP_MS: Final = 15 * 60_000
#: no zone on earth is further than this from UTC; a larger difference means bad clocks
MAX_ZONE_OFFSET_MS: Final = 14 * 3_600_000

#: marker types that carry a finger-stick glucose value
BG_MARKERS: Final = frozenset({"CALIBRATION", "BG READING", "BG_READING", "BG"})

READING_INTERVAL_MS: Final = 5 * 60_000
#: the next upload is due one interval after the last one reached CareLink; ask this much later
UPLOAD_BUFFER_MS: Final = 30_000
#: between a reading's (pump) time and its arrival at CareLink, when no upload time is known
UPLOAD_LAG_MS: Final = 90_000
LOOP_NAME: Final = "MinimedCarelink"
#: used when neither the token response nor the JWT tells the access token's lifetime
FALLBACK_TOKEN_LIFETIME_S: Final = 30 * 60
#: an access token read from the token file is used without a refresh only while it stays
#: valid this much longer (the clients refresh when fewer than 600 s remain)
TOKEN_MIN_REMAINING_S: Final = 600
#: the fields a token file must hold, whichever tool wrote it
REQUIRED_TOKEN_FIELDS: Final = ("access_token", "refresh_token", "client_id")
