"""Keeping secrets out of everything the daemon writes: logs, status, errors, captures."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

PLACEHOLDER: Final = "[redacted]"
#: keys whose values are secret wherever they appear (compared lower-case, '-' and '_' ignored)
SECRET_KEYS: Final = frozenset(
    {
        "password", "apisecret", "secret", "token", "accesstoken", "refreshtoken", "authorization",
        "sessionid", "accountid", "cookie", "setcookie", "ticket", "idtoken", "clientsecret",
    }
)  # fmt: skip

#: the shortest value :func:`register_secret` keeps: also the width of the index's keys
SHORTEST: Final = 4


@attrs.define
class _Secrets:
    """Every registered value, indexed by its first :data:`SHORTEST` characters.

    A fleet registers thousands of values (each account's password, tokens and their hashes),
    and every log line and status string is redacted: comparing each text with every value
    would cost each account time in proportion to the number of accounts. A text is instead
    cut into its windows of four characters, and only the values starting with one of them
    are looked for, so redacting costs what the text's length does."""

    values: set[str] = attrs.Factory(set)
    #: first four characters → the values starting with them, longest first
    by_prefix: dict[str, tuple[str, ...]] = attrs.Factory(dict)

    def add(self, value: str) -> None:
        if value in self.values:
            return
        self.values.add(value)
        key = value[:SHORTEST]
        self.by_prefix[key] = tuple(sorted((*self.by_prefix.get(key, ()), value), key=len, reverse=True))

    def found_in(self, text: str) -> list[str]:
        """The registered values ``text`` contains (and some of their prefixes' others)."""
        by_prefix = self.by_prefix
        if not by_prefix or len(text) < SHORTEST:
            return []
        windows = {text[i : i + SHORTEST] for i in range(len(text) - SHORTEST + 1)}
        # one lookup per window (never iterating the dict, which another thread may add to)
        return [
            value for key in windows if (values := by_prefix.get(key)) for value in values if value in text
        ]


_lock = threading.Lock()
_secrets = _Secrets()


def _variants(secret: str) -> set[str]:
    encoded = secret.encode("utf-8")
    return {
        secret,
        hashlib.sha1(encoded).hexdigest(),
        hashlib.sha1(encoded).hexdigest().upper(),
        hashlib.sha256(encoded).hexdigest(),
    }


def register_secret(*values: str | None) -> None:
    """Remember values that must never be written anywhere (with their SHA-1 and SHA-256)."""
    with _lock:
        for value in values:
            if value and len(value) >= SHORTEST:
                for variant in _variants(value):
                    _secrets.add(variant)


def registered() -> frozenset[str]:
    with _lock:
        return frozenset(_secrets.values)


def is_secret_key(key: str) -> bool:
    return key.lower().replace("-", "").replace("_", "") in SECRET_KEYS


def redact_text(text: str, extra: Iterable[str] = ()) -> str:
    """Replace every registered secret (and every ``extra`` value) in ``text``, longest first:
    a value inside a longer one is not left behind as the longer one's remains."""
    found = _secrets.found_in(text)  # without the lock: see _Secrets.found_in
    found.extend(e for e in extra if e and e in text)
    for value in sorted(found, key=len, reverse=True):
        text = text.replace(value, PLACEHOLDER)
    return _URL_USERINFO.sub(r"\1" + PLACEHOLDER + "@", text) if "@" in text else text


_URL_USERINFO: Final = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def redact(value: Any) -> Any:
    """A copy of a JSON-like value with secret keys blanked and secret values replaced."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (PLACEHOLDER if isinstance(k, str) and is_secret_key(k) and v else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def describe_error(error: object | None) -> str | None:
    """An error as one line for status and logs: its type and message, secrets removed."""
    if error is None:
        return None
    message = str(error) or type(error).__name__
    return redact_text(f"{type(error).__name__}: {message}")
