"""Dexcom Share constants in one place: hosts, application ids, paths, trends, error codes.

Facts come from the protocol notes (protocols/01-dexcom-share.md): the service is unofficial,
so every value here is what current public clients send and what recorded responses show.
"""

from __future__ import annotations

from typing import Final

import attrs


@attrs.frozen
class Region:
    """One Share deployment: an account exists in exactly one of them."""

    name: str
    host: str
    application_id: str


#: the US and outside-US hosts take the same application id; Japan has its own
APPLICATION_ID_US: Final = "d89443d2-327c-4a6f-89e5-496bbb0317db"
APPLICATION_ID_JP: Final = "d8665ade-9673-4e27-9ff6-92db4ce13d13"

REGIONS: Final[dict[str, Region]] = {
    "us": Region("us", "share2.dexcom.com", APPLICATION_ID_US),
    "ous": Region("ous", "shareous1.dexcom.com", APPLICATION_ID_US),
    "jp": Region("jp", "share.dexcom.jp", APPLICATION_ID_JP),
}
DEFAULT_REGION: Final = "us"

#: spellings of a region accepted in settings; "EU" and "US" are what the older bridges
#: (Nightscout's BRIDGE_SERVER) take, so old configurations keep working
REGION_ALIASES: Final[dict[str, str]] = {
    "us": "us",
    "ous": "ous",
    "eu": "ous",
    "jp": "jp",
}

#: every endpoint lives under this prefix on every host
PATH_PREFIX: Final = "/ShareWebServices/Services/"
AUTHENTICATE_PATH: Final = "General/AuthenticatePublisherAccount"
LOGIN_BY_ID_PATH: Final = "General/LoginPublisherAccountById"
READ_GLUCOSE_PATH: Final = "Publisher/ReadPublisherLatestGlucoseValues"

#: older servers answered bad credentials with this instead of an error
ZERO_UUID: Final = "00000000-0000-0000-0000-000000000000"

#: the server caps a read at one day of readings
MAX_MINUTES: Final = 1440
MAX_COUNT: Final = 288
READING_INTERVAL_MS: Final = 5 * 60 * 1000

#: the device name the long-standing bridges (share2nightscout-bridge and Nightscout's own
#: bridge plugin) write, so identifiers match entries a site already holds from them
DEVICE: Final = "share2"

#: Share trend names in their numeric order (0..9) and the Nightscout direction of each
SHARE_TRENDS: Final[tuple[str, ...]] = (
    "None",
    "DoubleUp",
    "SingleUp",
    "FortyFiveUp",
    "Flat",
    "FortyFiveDown",
    "SingleDown",
    "DoubleDown",
    "NotComputable",
    "RateOutOfRange",
)
NS_DIRECTIONS: Final[tuple[str, ...]] = (
    "NONE",
    "DoubleUp",
    "SingleUp",
    "FortyFiveUp",
    "Flat",
    "FortyFiveDown",
    "SingleDown",
    "DoubleDown",
    "NOT COMPUTABLE",
    "RATE OUT OF RANGE",
)


def _fold(name: str) -> str:
    return name.replace(" ", "").replace("_", "").lower()


#: a trend string, compared with case, spaces and underscores ignored, to its direction;
#: both the Share names and the Nightscout names are accepted, as the bridges do
TREND_BY_NAME: Final[dict[str, str]] = {
    **{_fold(n): d for n, d in zip(NS_DIRECTIONS, NS_DIRECTIONS, strict=True)},
    **{_fold(n): d for n, d in zip(SHARE_TRENDS, NS_DIRECTIONS, strict=True)},
}


def direction_for_name(name: str) -> str:
    """Nightscout direction of a trend string; unknown names become ``NONE`` as in the bridges."""
    return TREND_BY_NAME.get(_fold(name), "NONE")


def direction_for_number(number: int) -> str:
    """Nightscout direction of a legacy trend number (0..9); anything else is ``NONE``."""
    return NS_DIRECTIONS[number] if 0 <= number < len(NS_DIRECTIONS) else "NONE"


# --- error codes (HTTP 500 bodies {Code, Message, SubCode, TypeName}) --------------------------

SESSION_CODES: Final = frozenset({"SessionIdNotFound", "SessionNotValid"})
CREDENTIAL_CODES: Final = frozenset(
    {"AccountPasswordInvalid", "SSO_AuthenticatePasswordInvalid", "SSO_AuthenticateAccountNotFound"}
)
#: the server spells it "...Exceeed"; newer pydexcom spells it "...Exceeded": match the prefix
LOCKOUT_PREFIX: Final = "SSO_AuthenticateMaxAttempts"
#: what the emulator (like the server) sends
LOCKOUT_CODE: Final = "SSO_AuthenticateMaxAttemptsExceeed"
INTERNAL_CODE: Final = "SSO_InternalError"
#: SSO_InternalError messages that mean bad credentials
INTERNAL_CREDENTIAL_HINTS: Final = ("Cannot Authenticate by AccountName", "Cannot Authenticate by AccountId")
INVALID_ARGUMENT_CODE: Final = "InvalidArgument"

#: Dexcom publishes no lockout length; xDrip4iOS tells users to wait ten minutes, so wait
#: well beyond that before the next attempt
LOCKOUT_SECONDS: Final = 1800.0
#: a Retry-After longer than this is taken as this: a misconfigured proxy must not park the
#: loop for days (the rejected state's own ceiling is the same six hours)
MAX_RETRY_AFTER_SECONDS: Final = 6 * 3600.0
#: a Cloudflare ban page carries no Retry-After: stay away this long
BAN_SECONDS: Final = 900.0
#: sessions live about a day (nightscout-connect expires them after 24 h); stop using one a
#: little before that, so a read never races the server's own expiry
SESSION_LIFETIME_S: Final = 24 * 3600 - 600
