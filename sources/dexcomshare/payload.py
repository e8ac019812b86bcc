"""Share glucose payloads to Nightscout entries: pure functions, no I/O, no clock.

A payload that is not what the protocol describes raises :class:`ProtocolError` and nothing
else, so a bad answer from the server fails one frame with a clear message instead of
crashing the loop.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from connect.contract import LastKnown
from connect.errors import ProtocolError
from connect.records import SGV_RANGE, Batch, Entry
from sources.dexcomshare.const import DEVICE, direction_for_name, direction_for_number

#: ``Date(ms)``, ``Date(ms±hhmm)`` and the legacy .NET ``/Date(ms-0700)/``; the ms are UTC and
#: the offset only says where the display was
_DATE: Final = re.compile(r"/?Date\(([0-9]{1,16})(?:[+-][0-9]{4})?\)/?")
#: fields holding the reading time, in order of preference: WT is what the bridges use
_TIME_FIELDS: Final = ("WT", "ST", "DT")


def parse_share_date(text: object) -> int:
    """Epoch ms of a Share timestamp string; :class:`ProtocolError` when it is not one."""
    if not isinstance(text, str):
        raise ProtocolError(f"timestamp is a {type(text).__name__}, not a Date(...) string")
    match = _DATE.fullmatch(text.strip())
    if match is None:
        # the value is vendor data, not a secret, but keep messages short and bounded
        raise ProtocolError(f"timestamp {text[:40]!r} is not in Date(ms) form")
    return int(match.group(1))


def _is_number(text: str) -> bool:
    # str.isdigit() also accepts "²" and other digits int() refuses: ASCII only
    stripped = text.strip()
    return 0 < len(stripped) <= 16 and stripped.isascii() and stripped.isdigit()


def _reading_time(reading: Mapping[str, Any]) -> int:
    for field in _TIME_FIELDS:
        if field in reading and reading[field] is not None:
            return parse_share_date(reading[field])
    raise ProtocolError("reading has no WT/ST/DT timestamp")


def _value(reading: Mapping[str, Any]) -> int:
    value = reading.get("Value")
    # bool is an int in Python but never a glucose value
    if isinstance(value, bool) or value is None:
        raise ProtocolError(f"reading Value is {type(value).__name__}, not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _is_number(value):
        return int(value.strip())
    raise ProtocolError(f"reading Value of type {type(value).__name__} is not an integer")


def _direction(reading: Mapping[str, Any]) -> str:
    trend = reading.get("Trend")
    if trend is None:
        return "NONE"
    if isinstance(trend, bool):
        raise ProtocolError("reading Trend is a boolean")
    if isinstance(trend, int):
        return direction_for_number(trend)
    if isinstance(trend, str):
        stripped = trend.strip()
        return direction_for_number(int(stripped)) if _is_number(stripped) else direction_for_name(stripped)
    raise ProtocolError(f"reading Trend of type {type(trend).__name__} is neither a name nor a number")


def entry_from_reading(reading: object) -> Entry | None:
    """One Share reading as an sgv entry; ``None`` for a well-formed reading with no glucose.

    Share marks "no value" with numbers outside any sensor's range (0 for instance); such a
    reading is skipped rather than failing the frame, or one odd value would block a whole
    day of data behind it.
    """
    if not isinstance(reading, Mapping):
        raise ProtocolError(f"reading is a {type(reading).__name__}, not an object")
    date = _reading_time(reading)
    value = _value(reading)
    direction = _direction(reading)
    if not SGV_RANGE[0] <= value <= SGV_RANGE[1]:
        return None
    try:
        return Entry(type="sgv", date=date, device=DEVICE, sgv=value, direction=direction)
    except (ValueError, TypeError) as exc:
        # the record validators reject times outside 2000..2100 (a unit mistake upstream)
        raise ProtocolError(f"reading cannot be stored: {exc}") from None


def entries_from_payload(payload: object) -> list[Entry]:
    """Every entry of a ReadPublisherLatestGlucoseValues answer (a JSON array, newest first)."""
    if not isinstance(payload, list):
        raise ProtocolError(f"glucose answer is a {type(payload).__name__}, not a list")
    entries: dict[str, Entry] = {}
    for reading in payload:
        entry = entry_from_reading(reading)
        # the first of two readings with the same time wins: the answer is newest first, so
        # that is the server's current version, whatever order a test or proxy gives
        if entry is not None and entry.identifier not in entries:
            entries[entry.identifier] = entry
    return list(entries.values())


def reading_times(payload: object) -> list[int]:
    """The reading times in an answer, skipping anything malformed; never raises.

    Only the read schedule uses them: whether the answer is usable is :func:`transform`'s call.
    """
    times: list[int] = []
    if not isinstance(payload, list):
        return times
    for reading in payload:
        if not isinstance(reading, Mapping):
            continue
        try:
            times.append(_reading_time(reading))
        except ProtocolError:
            continue
    return times


def transform(raw: object, last_known: LastKnown) -> Batch:
    """The frame's batch: entries, unique by identifier, oldest first.

    ``covered`` is left unset on purpose: the checkpoint then stays on the newest reading,
    which is what aligns the next poll to the sensor's five-minute phase.
    """
    del last_known  # the server already sized the answer; nothing here depends on time
    return Batch.of(entries_from_payload(raw))
