"""The other bridges' environments, read as they are.

share2nightscout-bridge, nightscout-librelink-up, minimed-connect-to-nightscout and the
Nightscout site's bridge plugin each had their own variable names. Every name of theirs is
either read here for what it meant (copied to one of ours, or its value converted first) or
listed by ``check`` as having no effect, with why: nothing of theirs is dropped without a word.

The plain renames live where the setting does (a source's ``legacy_env``, the site's names in
:mod:`connect.settings`); this module holds the names whose value needs converting, the names
with no use here, and the table ``check`` prints of what each peer's names became.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Final

import attrs

TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
LOG_LEVELS: Final = frozenset({"debug", "info", "warning", "error"})


@attrs.frozen
class Peer:
    """One other bridge: its names read here (old → what it becomes) and those of no use."""

    name: str
    read: Mapping[str, str]
    unused: Mapping[str, str]


NOT_NEEDED_POLL = (
    "polls follow the readings (due when the next one is, plus a small buffer), not a fixed interval"
)
EVERY_READING = (
    "each poll reads every reading since the last one stored (CONNECT_BACKFILL_DAYS on a first start)"
)
NO_LOGIN_STORM = "a refused login waits 30 minutes, then longer, and the daemon keeps running"

PEERS: Final[tuple[Peer, ...]] = (
    Peer(
        "share2nightscout-bridge",
        read={
            "DEXCOM_ACCOUNT_NAME": "CONNECT_SHARE_ACCOUNT_NAME",
            "DEXCOM_PASSWORD": "CONNECT_SHARE_PASSWORD",
            "NS": "CONNECT_NIGHTSCOUT_ENDPOINT",
            "WEBSITE_HOSTNAME": "CONNECT_NIGHTSCOUT_ENDPOINT (https://host)",
            "API_SECRET": "CONNECT_API_SECRET",
        },
        unused={
            "SHARE_INTERVAL": NOT_NEEDED_POLL,
            "maxCount": EVERY_READING,
            "minutes": EVERY_READING,
            "firstFetchCount": EVERY_READING,
            "maxFailures": NO_LOGIN_STORM,
        },
    ),
    Peer(
        "Nightscout's bridge plugin",
        read={
            "BRIDGE_USER_NAME": "CONNECT_SHARE_ACCOUNT_NAME",
            "BRIDGE_PASSWORD": "CONNECT_SHARE_PASSWORD",
            "BRIDGE_SERVER": "CONNECT_SHARE_SERVER",
            "BASE_URL": "CONNECT_NIGHTSCOUT_ENDPOINT",
            "API_SECRET": "CONNECT_API_SECRET",
        },
        unused={
            "BRIDGE_INTERVAL": NOT_NEEDED_POLL,
            "BRIDGE_MAX_COUNT": EVERY_READING,
            "BRIDGE_FIRST_FETCH_COUNT": EVERY_READING,
            "BRIDGE_MINUTES": EVERY_READING,
            "BRIDGE_MAX_FAILURES": NO_LOGIN_STORM,
        },
    ),
    Peer(
        "nightscout-librelink-up",
        read={
            "LINK_UP_USERNAME": "CONNECT_LINK_UP_USERNAME",
            "LINK_UP_PASSWORD": "CONNECT_LINK_UP_PASSWORD",
            "LINK_UP_REGION": "CONNECT_LINK_UP_REGION",
            "LINK_UP_CONNECTION": "CONNECT_LINK_UP_PATIENT_ID",
            "LINK_UP_TIME_INTERVAL": "CONNECT_LINK_UP_INTERVAL",
            "LINK_UP_VERSION": "CONNECT_LINK_UP_VERSION",
            "NIGHTSCOUT_URL": "CONNECT_NIGHTSCOUT_ENDPOINT (https://host, http:// with NIGHTSCOUT_DISABLE_HTTPS)",
            "NIGHTSCOUT_DISABLE_HTTPS": "the scheme of CONNECT_NIGHTSCOUT_ENDPOINT (http://)",
            "NIGHTSCOUT_API_TOKEN": "CONNECT_API_SECRET_SHA1 (a SHA-1, sent as it is; any other value: CONNECT_NIGHTSCOUT_TOKEN)",
            "LOG_LEVEL": "CONNECT_LOG_LEVEL",
        },
        unused={
            "NIGHTSCOUT_DEVICE_NAME": "readings keep the device name the source gives them, which keeps "
            "them apart from other uploaders' (the store's identifiers depend on it)",
            "DEVICE_NAME": "readings keep the device name the source gives them, which keeps "
            "them apart from other uploaders' (the store's identifiers depend on it)",
            "SINGLE_SHOT": "run `nightscout-connect once` for one pass (cron mode)",
            "ALL_DATA": "every reading of the graph is stored and delivered already",
            "NIGHTSCOUT_API_V3": "uploads use Nightscout's v1 API, which every site serves",
        },
    ),
    Peer(
        "minimed-connect-to-nightscout",
        read={
            "CARELINK_USERNAME": "CONNECT_CARELINK_USERNAME",
            "CARELINK_PATIENT": "CONNECT_CARELINK_PATIENT_USERNAME",
            "MMCONNECT_SERVER": "CONNECT_CARELINK_REGION",
            "MMCONNECT_COUNTRYCODE": "CONNECT_COUNTRY_CODE",
            "NS": "CONNECT_NIGHTSCOUT_ENDPOINT",
            "WEBSITE_HOSTNAME": "CONNECT_NIGHTSCOUT_ENDPOINT (https://host)",
            "API_SECRET": "CONNECT_API_SECRET",
        },
        unused={
            "CARELINK_PASSWORD": "CareLink's login needs a person at a browser: run `nightscout-connect login carelink`",
            "CARELINK_REQUEST_INTERVAL": NOT_NEEDED_POLL,
            "CARELINK_SGV_LIMIT": EVERY_READING,
            "CARELINK_MAX_RETRY_DURATION": "retries and their backoff are built in (THEORY.md)",
            "CARELINK_QUIET": "set CONNECT_LOG_LEVEL (warning for a quiet log)",
            "RANDOMIZE_INIT": "polls carry jitter of their own",
        },
    ),
)

#: names whose value is converted before it is read (the rest are plain renames elsewhere)
TRANSLATED: Final = frozenset(
    {"NIGHTSCOUT_URL", "NIGHTSCOUT_DISABLE_HTTPS", "NIGHTSCOUT_API_TOKEN", "LOG_LEVEL"}
)

#: why a converted name was not read, when it was not
TRANSLATED_NOTE: Final[Mapping[str, str]] = {
    "NIGHTSCOUT_URL": "CONNECT_NIGHTSCOUT_ENDPOINT is set too and wins",
    "NIGHTSCOUT_DISABLE_HTTPS": "read only beside NIGHTSCOUT_URL (it makes that host's address http://)",
    "NIGHTSCOUT_API_TOKEN": "CONNECT_API_SECRET, CONNECT_API_SECRET_SHA1 or CONNECT_NIGHTSCOUT_TOKEN is set too and wins",
    "LOG_LEVEL": "not one of debug, info, warning, error, or CONNECT_LOG_LEVEL is set too and wins",
}


def unused_names() -> dict[str, str]:
    """Every peer name with no effect here → why."""
    out: dict[str, str] = {}
    for peer in PEERS:
        out.update(peer.unused)
    return out


def all_names() -> set[str]:
    """Every name of every peer (read or not)."""
    return {name for peer in PEERS for name in (*peer.read, *peer.unused)}


#: Azure App Service hands "connection strings" to a program as CUSTOMCONNSTR_<name>;
#: share2nightscout-bridge and minimed-connect-to-nightscout read their names that way too
AZURE_PREFIX: Final = "CUSTOMCONNSTR_"


def apply_azure_names(env: MutableMapping[str, str]) -> list[str]:
    """``CUSTOMCONNSTR_DEXCOM_PASSWORD`` read as ``DEXCOM_PASSWORD`` (when that is unset), for
    every peer's name: the bridges' own Azure advice put the secrets there. Returns the
    prefixed names used."""
    used = []
    for name in sorted(all_names()):
        prefixed = AZURE_PREFIX + name
        if env.get(prefixed, "").strip() and not env.get(name, "").strip():
            env[name] = env[prefixed]
            used.append(prefixed)
    return used


def is_sha1(value: str) -> bool:
    text = value.strip().lower()
    return len(text) == 40 and all(c in "0123456789abcdef" for c in text)


def apply_peer_values(env: MutableMapping[str, str]) -> list[str]:
    """Convert the peers' values that mean something spelled differently here; our own names,
    when set, win. Returns the peer names used."""
    used = []
    host = env.get("NIGHTSCOUT_URL", "").strip()
    if host and not env.get("CONNECT_NIGHTSCOUT_ENDPOINT", "").strip():
        # nightscout-librelink-up takes a host name without a scheme, https unless told otherwise
        plain = env.get("NIGHTSCOUT_DISABLE_HTTPS", "").strip().lower() in TRUE_WORDS
        env["CONNECT_NIGHTSCOUT_ENDPOINT"] = (
            host if "://" in host else ("http://" if plain else "https://") + host
        )
        used.append("NIGHTSCOUT_URL")
        if "NIGHTSCOUT_DISABLE_HTTPS" in env:
            used.append("NIGHTSCOUT_DISABLE_HTTPS")
    token = env.get("NIGHTSCOUT_API_TOKEN", "").strip()
    ours = ("CONNECT_API_SECRET", "CONNECT_API_SECRET_SHA1", "CONNECT_NIGHTSCOUT_TOKEN")
    if token and not any(env.get(name, "").strip() for name in ours):
        # its README asks for the SHA-1 of the token, sent as the api-secret header as it is
        env["CONNECT_API_SECRET_SHA1" if is_sha1(token) else "CONNECT_NIGHTSCOUT_TOKEN"] = token
        used.append("NIGHTSCOUT_API_TOKEN")
    level = env.get("LOG_LEVEL", "").strip().lower()
    if level in LOG_LEVELS and not env.get("CONNECT_LOG_LEVEL", "").strip():
        env["CONNECT_LOG_LEVEL"] = level
        used.append("LOG_LEVEL")
    return used


def _shared() -> set[str]:
    """Names more than one peer read (the site's address and secret): they name no one peer."""
    seen: dict[str, int] = {}
    for peer in PEERS:
        for name in (*peer.read, *peer.unused):
            seen[name] = seen.get(name, 0) + 1
    return {name for name, count in seen.items() if count > 1} | {"LOG_LEVEL"}


def peer_report(environ: Mapping[str, str], recognised: set[str]) -> list[str]:
    """For ``check``: one line per peer whose names are set, naming what each became (or why it
    has no effect). ``recognised`` holds the names this run reads."""
    lines = []
    translated = set(apply_peer_values(dict(environ)))
    shared = _shared()
    for peer in PEERS:
        if not any(name in environ for name in (*peer.read, *peer.unused) if name not in shared):
            continue
        parts = []
        for name, becomes in peer.read.items():
            if name not in environ:
                continue
            if name in recognised or name in translated:
                parts.append(f"{name} → {becomes}")
            else:
                parts.append(f"{name} → not read (see the ignored variables)")
        parts.extend(f"{name} → no effect" for name in peer.unused if name in environ)
        if parts:
            lines.append(f"names of {peer.name}: " + ", ".join(parts))
    return lines
