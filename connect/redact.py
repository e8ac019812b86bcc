"""Keeping secrets out of everything the daemon writes: logs, status, errors, captures."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final

PLACEHOLDER: Final = "[redacted]"
#: keys whose values are secret wherever they appear (compared lower-case, '-' and '_' ignored)
SECRET_KEYS: Final = frozenset(
    {
        "password", "apisecret", "secret", "token", "accesstoken", "refreshtoken", "authorization",
        "sessionid", "accountid", "cookie", "setcookie", "ticket", "idtoken", "clientsecret",
    }
)  # fmt: skip

_lock = threading.Lock()
_secrets: set[str] = set()


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
            if value and len(value) >= 4:
                _secrets.update(_variants(value))


def registered() -> frozenset[str]:
    with _lock:
        return frozenset(_secrets)


def is_secret_key(key: str) -> bool:
    return key.lower().replace("-", "").replace("_", "") in SECRET_KEYS


def redact_text(text: str, extra: Iterable[str] = ()) -> str:
    """Replace every registered secret (longest first) in ``text``."""
    values = sorted(registered() | {e for e in extra if e}, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, PLACEHOLDER)
    return _URL_USERINFO.sub(r"\1" + PLACEHOLDER + "@", text)


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
