"""Nightscout documents pushed to us (the write API, an MQTT message) read into records.

Every document is checked before any is kept: the first problem is reported with the index of
its document and the field at fault, so a request is taken whole or not at all. The checks
follow what Nightscout itself insists on (an entry needs a time and a known type, an sgv needs
its value; a treatment or a device status without ``created_at`` is stamped now) and what our
records hold (numbers are numbers, or numbers written as strings).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from connect.records import (
    ENTRY_TYPES,
    SGV_RANGE,
    Collection,
    Record,
    from_nightscout,
    iso_from_ms,
    ms_from_iso,
)

#: documents in one push (Nightscout has no such cap; ours keeps one transaction bounded)
MAX_DOCUMENTS: Final = 10_000
#: the epoch-ms window a record's time must fall in (as :class:`connect.records.Entry` checks)
TIME_RANGE: Final = (946_684_800_000, 4_102_444_800_000)
OBJECT_ID: Final = re.compile(r"^[0-9a-fA-F]{24}$")

_NUMBERS: Final[dict[Collection, tuple[str, ...]]] = {
    "entries": (
        "sgv", "mbg", "trend", "noise", "slope", "intercept", "scale", "filtered", "unfiltered",
        "rssi", "delta",
    ),
    "treatments": ("insulin", "carbs", "duration", "absolute", "rate", "percent", "glucose"),
    "devicestatus": (),
    "profile": (),
}  # fmt: skip
_STRINGS: Final[dict[Collection, tuple[str, ...]]] = {
    "entries": ("device", "direction", "type"),
    "treatments": ("device", "eventType", "enteredBy", "notes", "units", "glucoseType", "identifier"),
    "devicestatus": ("device",),
    "profile": ("device", "defaultProfile", "units"),
}


#: what the rows of records pushed to us carry as their source, before their origin
PUSH_SOURCE: Final = "push"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def push_origin(url: str) -> str:
    """The source column of records pushed to the site at ``url``: ``push@scheme://host:port``.

    The write API stamps its rows with the address the uploader sent them to; the Nightscout
    output does not send rows stamped with its own site's address back to it (an uploader that
    pushes to the site we upload to would otherwise get its records echoed). The path is left
    out: one host and port is one site."""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
    except ValueError:  # a Host header that is no host ("[::1")
        return f"{PUSH_SOURCE}@unknown"
    scheme = (parts.scheme or "https").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or _DEFAULT_PORTS.get(scheme)
    return f"{PUSH_SOURCE}@{scheme}://{host}:{port}"


class DocumentError(ValueError):
    """A pushed document that cannot be read: which one, which field, what is wrong."""

    def __init__(self, index: int, field: str, problem: str) -> None:
        super().__init__(f"document {index}: {field}: {problem}")
        self.index = index
        self.field = field
        self.problem = problem


@attrs.frozen
class Pushed:
    """One pushed document as a record, with the names its sender gave it."""

    record: Record
    #: the sender's ``_id`` (a treatment it replaces), lower case
    object_id: str | None = None
    #: the sender's ``identifier`` (Nightscout 15 dedupes treatments on it)
    identifier: str | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(body: bytes | str) -> Any:
    """Strict JSON (no NaN or Infinity); raises ``DocumentError`` for index -1 when unreadable."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        problem = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
        raise DocumentError(-1, "(body)", problem) from None


def documents(value: Any) -> list[Any]:
    """A body's documents: an object is one, an array is each of its items."""
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list):
        if len(value) > MAX_DOCUMENTS:
            raise DocumentError(-1, "(body)", f"more than {MAX_DOCUMENTS} documents")
        return value
    raise DocumentError(-1, "(body)", "expected a JSON object or an array of objects")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        if value == "":
            return True
        try:
            return math.isfinite(float(value))
        except (ValueError, OverflowError):
            return False
    return False


def _time(doc: Mapping[str, Any], index: int, keys: Sequence[str], now: int | None) -> int:
    """The document's time from the first of ``keys`` present; ``now`` when none is (and
    ``now`` is given), else an error naming the first key."""
    for key in keys:
        value = doc.get(key)
        if value is None or value == "":
            continue
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            if isinstance(value, str):
                ms = int(value) if value.isdigit() else ms_from_iso(value)
            else:
                if not math.isfinite(value):
                    raise ValueError
                ms = int(value)
        except (ValueError, OverflowError):
            raise DocumentError(index, key, "not a time (epoch milliseconds or ISO 8601)") from None
        if not TIME_RANGE[0] <= ms <= TIME_RANGE[1]:
            raise DocumentError(index, key, "outside 2000-2100 (seconds for milliseconds?)")
        return ms
    if now is None:
        raise DocumentError(index, keys[0], "missing")
    return now


def read_document(collection: Collection, doc: Any, index: int, *, now: int) -> Pushed:
    """One pushed document as a record; raises :class:`DocumentError` naming the field."""
    if not isinstance(doc, Mapping):
        raise DocumentError(index, "(document)", "expected a JSON object")
    for key in _STRINGS[collection]:
        value = doc.get(key)
        if value is not None and not isinstance(value, str):
            raise DocumentError(index, key, "expected a string")
    for key in _NUMBERS[collection]:
        value = doc.get(key)
        if value is not None and not _is_number(value):
            raise DocumentError(index, key, "expected a number")
    # Nightscout takes a credential in the body too; it is never kept
    fixed = {k: v for k, v in doc.items() if k not in {"secret", "token"}}
    object_id = doc.get("_id")
    if object_id is not None and not (isinstance(object_id, str) and OBJECT_ID.match(object_id)):
        raise DocumentError(index, "_id", "expected 24 hexadecimal digits")
    if collection == "entries":
        kind = doc.get("type") or "sgv"
        if kind not in ENTRY_TYPES:
            raise DocumentError(index, "type", f"expected one of {', '.join(sorted(ENTRY_TYPES))}")
        at = _time(doc, index, ("date", "dateString"), None)
        fixed.update(type=kind, date=at, dateString=iso_from_ms(at))
        if kind == "sgv":
            sgv = doc.get("sgv")
            if sgv is None or sgv == "" or not SGV_RANGE[0] <= round(float(sgv)) <= SGV_RANGE[1]:
                raise DocumentError(index, "sgv", f"expected a value in {SGV_RANGE[0]}-{SGV_RANGE[1]}")
        if kind == "mbg" and doc.get("mbg") in (None, ""):
            raise DocumentError(index, "mbg", "missing")
    elif collection == "treatments":
        at = _time(doc, index, ("created_at", "date", "timestamp"), now)
        fixed.update(created_at=iso_from_ms(at))
        fixed.pop("date", None)
        fixed.pop("timestamp", None)
    elif collection == "devicestatus":
        at = _time(doc, index, ("created_at", "date"), now)
        fixed.update(created_at=iso_from_ms(at))
        fixed.pop("date", None)
    else:
        _time(doc, index, ("startDate", "created_at"), now)
    try:
        record = from_nightscout(collection, fixed)
        # what the store keeps must be JSON again (and nothing a sender smuggled in is not)
        json.dumps(fixed, allow_nan=False)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise DocumentError(index, "(document)", type(exc).__name__) from None
    identifier = doc.get("identifier")
    return Pushed(
        record=record,
        object_id=None if object_id is None else object_id.lower(),
        identifier=identifier if isinstance(identifier, str) and identifier else None,
    )


def read_documents(collection: Collection, docs: Sequence[Any], *, now: int) -> list[Pushed]:
    """Every document read, or :class:`DocumentError` for the first that cannot be."""
    return [read_document(collection, doc, index, now=now) for index, doc in enumerate(docs)]
