"""LibreLinkUp graph payloads → Nightscout records. Pure: no I/O, no clock (``last_known.now``).

A graph response holds about twelve hours of history points (``graphData``, no trend arrow) and
the current reading (``connection.glucoseMeasurement``, with one), which is usually newer than
the last history point. Both become ``sgv`` entries; the current one keeps its direction.
History points that show up after a newer current reading was stored are still written: each
frame looks :data:`~sources.linkup.const.OVERLAP_MS` back from the checkpoint.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from connect.contract import LastKnown
from connect.errors import ProtocolError
from connect.records import SGV_RANGE, Batch, DeviceStatus, Entry, Record, Treatment, iso_from_ms
from sources.linkup.const import DEVICE, FUTURE_TOLERANCE_MS, OVERLAP_MS, TREND_ARROWS, UNKNOWN_DIRECTION

#: ``M/D/YYYY h:mm:ss AM/PM`` without zero padding; parsed by hand so no locale can change %p
_TIMESTAMP: Final = re.compile(
    r"^\s*(\d{1,2})/(\d{1,2})/(\d{4})\s+(\d{1,2}):(\d{2}):(\d{2})\s*([AaPp][Mm])\s*$"
)
#: the range connect.records accepts for a time (2000 … 2100)
_EARLIEST_MS: Final = 946_684_800_000
_LATEST_MS: Final = 4_102_444_800_000


def parse_timestamp(text: object) -> int:
    """A LibreLinkUp ``FactoryTimestamp`` (UTC) as epoch milliseconds."""
    if not isinstance(text, str):
        raise ProtocolError(f"LibreLinkUp timestamp is {type(text).__name__}, not text")
    match = _TIMESTAMP.match(text)
    if match is None:
        raise ProtocolError("LibreLinkUp timestamp is not M/D/YYYY h:mm:ss AM/PM")
    month, day, year, hour, minute, second = (int(g) for g in match.groups()[:6])
    if not 1 <= hour <= 12:
        raise ProtocolError("LibreLinkUp timestamp has an hour outside 1-12")
    hour = hour % 12 + (12 if match.group(7).upper() == "PM" else 0)
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise ProtocolError("LibreLinkUp timestamp is not a real date") from None
    ms = int(moment.timestamp()) * 1000
    if not _EARLIEST_MS <= ms <= _LATEST_MS:
        raise ProtocolError("LibreLinkUp timestamp lies outside 2000-2100")
    return ms


def direction_for(arrow: object) -> str:
    """Nightscout's direction for a TrendArrow; 0, missing or unknown is NOT COMPUTABLE."""
    if isinstance(arrow, bool) or not isinstance(arrow, int):
        return UNKNOWN_DIRECTION
    return TREND_ARROWS.get(arrow, UNKNOWN_DIRECTION)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _parse_item(item: object) -> tuple[int, int | None]:
    """(time, sgv) of a GlucoseItem; sgv None for an item without a usable glucose value.

    Items without ``ValueInMgPerDl`` (alarm markers in older payloads) and values no sensor can
    report are skipped; an item of the wrong shape is a :class:`ProtocolError`.
    """
    if not isinstance(item, Mapping):
        raise ProtocolError(f"LibreLinkUp glucose item is {type(item).__name__}, not an object")
    date = parse_timestamp(item.get("FactoryTimestamp"))
    if "ValueInMgPerDl" not in item:
        return date, None
    value = _number(item["ValueInMgPerDl"])
    if value is None or not math.isfinite(value):
        raise ProtocolError("LibreLinkUp ValueInMgPerDl is not a number")
    sgv = int(round(value))
    return date, (sgv if SGV_RANGE[0] <= sgv <= SGV_RANGE[1] else None)


def _entry(date: int, sgv: int, item: Mapping[str, Any], *, current: bool) -> Entry:
    direction = direction_for(item.get("TrendArrow")) if current else None
    return Entry(type="sgv", date=date, device=DEVICE, sgv=sgv, direction=direction)


def reading(item: object, *, current: bool) -> Entry | None:
    """One GlucoseItem as an sgv entry (with its direction when ``current``), or None."""
    date, sgv = _parse_item(item)
    if sgv is None or not isinstance(item, Mapping):
        return None
    return _entry(date, sgv, item, current=current)


def graph_parts(raw: object) -> tuple[Mapping[str, Any], list[Any]]:
    """The ``connection`` object and the ``graphData`` list of a graph response."""
    if not isinstance(raw, Mapping):
        raise ProtocolError("LibreLinkUp graph response is not an object")
    data = raw.get("data")
    if not isinstance(data, Mapping):
        raise ProtocolError("LibreLinkUp graph response has no data object")
    graph = data.get("graphData")
    if graph is None:
        graph = []
    if not isinstance(graph, list):
        raise ProtocolError("LibreLinkUp graphData is not a list")
    connection = data.get("connection")
    if connection is None:
        connection = {}
    if not isinstance(connection, Mapping):
        raise ProtocolError("LibreLinkUp graph connection is not an object")
    return connection, graph


def _current_item(connection: Mapping[str, Any]) -> object:
    current = connection.get("glucoseMeasurement")
    return connection.get("glucoseItem") if current is None else current


def _epoch_s_ms(value: object) -> int | None:
    """Epoch seconds (as LibreLinkUp sends sensor and upload times) → ms, when plausible."""
    number = _number(value)
    if number is None or not math.isfinite(number):
        return None
    ms = int(number) * 1000
    return ms if _EARLIEST_MS <= ms <= _LATEST_MS else None


def _scalar(value: object, *kinds: type) -> Any:
    if isinstance(value, bool) and bool not in kinds:
        return None
    if isinstance(value, kinds) and not (isinstance(value, float) and not math.isfinite(value)):
        return value
    return None


def _sensor_records(
    connection: Mapping[str, Any], entries: list[Entry], last_known: LastKnown
) -> list[Record]:
    """A Sensor Start treatment for a new sensor and a devicestatus for the newest reading."""
    out: list[Record] = []
    sensor = connection.get("sensor")
    sensor = sensor if isinstance(sensor, Mapping) else None
    device = connection.get("patientDevice")
    device = device if isinstance(device, Mapping) else None
    horizon = last_known.now + FUTURE_TOLERANCE_MS
    started = _epoch_s_ms(sensor.get("a")) if sensor is not None else None
    if started is not None and last_known.get("treatments") < started <= horizon:
        out.append(
            Treatment(
                event_type="Sensor Start",
                date=started,
                device=DEVICE,
                entered_by="nightscout-connect",
                notes="LibreLinkUp sensor start",
            )
        )
    newest = max((e.date for e in entries), default=None)
    if newest is None or newest <= last_known.get("devicestatus") or (sensor is None and device is None):
        return out
    status: dict[str, Any] = {}
    if sensor is not None:
        status["sensor"] = {
            "startedAt": None if started is None else iso_from_ms(started),
            "ageSeconds": None if started is None else max(0, (newest - started) // 1000),
            "warmupMinutes": _scalar(sensor.get("w"), int),
            "productType": _scalar(sensor.get("pt"), int),
        }
    if device is not None:
        uploaded = _epoch_s_ms(device.get("u"))
        status["patientDevice"] = {
            "deviceTypeId": _scalar(device.get("dtid"), int),
            "appVersion": _scalar(device.get("v"), str),
            "alarms": _scalar(device.get("alarms"), bool),
            "lowAlarmMgDl": _scalar(device.get("ll"), int, float),
            "highAlarmMgDl": _scalar(device.get("hl"), int, float),
            "lastUpload": None if uploaded is None else iso_from_ms(uploaded),
        }
    out.append(DeviceStatus(device=DEVICE, date=newest, payload={"librelinkup": status}))
    return out


def reading_times(raw: object) -> list[int]:
    """The times of the readings a graph response holds (history and current), oldest first.

    What a poll saw, for the schedule; a payload without usable items is a ProtocolError.
    """
    try:
        connection, graph = graph_parts(raw)
        current = _current_item(connection)
        items = [*graph, *([] if current is None else [current])]
        return sorted({date for date, sgv in map(_parse_item, items) if sgv is not None})
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ProtocolError(f"LibreLinkUp graph payload unusable ({type(exc).__name__})") from None


def transform(
    raw: object,
    last_known: LastKnown,
    *,
    sensor_info: bool = False,
    recent: Mapping[int, Entry] | None = None,
) -> Batch:
    """The records of one graph response that are newer than ``last_known``, and late history.

    The checkpoint is usually set by a current reading that the graph does not hold yet, so a
    history point dated before it can still arrive in a later answer. History points up to
    :data:`OVERLAP_MS` before the checkpoint are therefore written again (identifiers are UUID
    v5 of device, date and type, so an unchanged point is a no-op upsert). ``recent`` holds
    the current readings written lately, by date: a history point of the same moment is
    written as that reading (with its arrow) rather than replacing it with one without.
    """
    try:
        return _transform(raw, last_known, sensor_info=sensor_info, recent=recent or {})
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        # total by construction; this only turns an oversight into the typed error
        raise ProtocolError(f"LibreLinkUp graph payload unusable ({type(exc).__name__})") from None


def _transform(
    raw: object, last_known: LastKnown, *, sensor_info: bool, recent: Mapping[int, Entry]
) -> Batch:
    connection, graph = graph_parts(raw)
    after = last_known.get("entries")
    # a first frame reads everything since the backfill start; later ones look back a little,
    # but not before that start (which the first frame did not write either)
    floor = after
    if last_known.has("entries"):
        floor = min(after, max(after - OVERLAP_MS, last_known.backfill_from))
    horizon = last_known.now + FUTURE_TOLERANCE_MS
    items: list[tuple[object, bool]] = [(item, False) for item in graph]
    current_item = _current_item(connection)
    if current_item is not None:
        # last, so that it wins over a history point of the same time (it has the arrow)
        items.append((current_item, True))
    entries: list[Entry] = []
    for item, current in items:
        date, sgv = _parse_item(item)  # every item is checked, even the old ones
        if sgv is None or not floor < date <= horizon or not isinstance(item, Mapping):
            continue
        if date in recent and not current:
            entries.append(recent[date])
        elif date > after:
            entries.append(_entry(date, sgv, item, current=current))
        elif not current and date != after:
            # a late history point; the one at the checkpoint is the newest stored reading,
            # most likely stored as the current one with its arrow, so it is left alone
            entries.append(_entry(date, sgv, item, current=False))
        elif current and any(e.date == date for e in entries):
            # this answer's own current reading is that late point: written with its arrow
            entries.append(_entry(date, sgv, item, current=True))
    records: list[Record] = list(entries)
    if sensor_info:
        records.extend(_sensor_records(connection, entries, last_known))
    return Batch.of(records)
