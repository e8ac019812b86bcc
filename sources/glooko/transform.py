"""Glooko v2 answers → Nightscout records. Pure.

Glooko writes the pump's and phone's local wall clock with a ``Z`` as if it were UTC
(``pumpTimestamp: "2023-06-15T12:07:30.000Z"`` at 12:07 local). The configured zone turns
it into UTC; query windows go the other way (UTC → local wall clock labelled ``Z``). In the
hour a clock falls back, a wall time is ambiguous; the first (summer) reading is taken.

A frame of a feed is every page of the windows ``windows.plan`` chose, each window read to its
end, with the checkpoints that plan vouches for once they were read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any, Final

import attrs

from connect.errors import ProtocolError
from connect.records import Batch, Entry, Record, Treatment
from sources.glooko.const import DEVICE, FEEDS_BY_KEY, TRENDS, Feed

_WALL = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:?\d{2})?$"
)


@attrs.frozen(kw_only=True)
class Page:
    """One answer of one feed."""

    feed: Feed
    body: Any = attrs.field(repr=False, default=None)


@attrs.frozen(kw_only=True)
class Frame:
    """Every page one frame of a feed read, and what the frame's plan vouches for."""

    feed: Feed
    pages: tuple[Page, ...]
    covered: Mapping[str, int] = attrs.field(factory=dict)
    more: bool = False


#: where each feed's items keep the time they happened (readings come in several shapes)
TIME_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "readings": ("timestamp", "displayTime", "display_time", "deviceTimestamp", "device_timestamp"),
    "normalBoluses": ("pumpTimestamp",),
    "scheduledBasals": ("pumpTimestamp",),
    "foods": ("timestamp",),
}


def wall_text(ms: int, zone: tzinfo) -> str:
    """A UTC time as Glooko writes it: the local wall clock labelled ``Z``."""
    local = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(zone)
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def wall_ms(ms: int, zone: tzinfo) -> int:
    """A UTC time's local wall clock, as the epoch ms it would be were it UTC: the frame in
    which Glooko compares ``startDate`` with its records, and so the one paging must use."""
    offset = datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(zone).utcoffset()
    return ms + (0 if offset is None else int(offset.total_seconds() * 1000))


def utc_ms(text: Any, zone: tzinfo, *, what: str) -> int:
    """UTC epoch ms of a Glooko time: its wall clock read in ``zone`` (any stated zone ignored)."""
    if not isinstance(text, str):
        raise ProtocolError(f"Glooko {what} time is not a string")
    match = _WALL.match(text.strip())
    if match is None:
        raise ProtocolError(f"Glooko {what} time is not an ISO time")
    year, month, day, hour, minute = (int(match.group(i)) for i in range(1, 6))
    second = int(match.group(6) or 0)
    millis = int(((match.group(7) or "") + "000")[:3])
    try:
        wall = datetime(year, month, day, hour, minute, second, millis * 1000, tzinfo=zone, fold=0)
    except ValueError:
        raise ProtocolError(f"Glooko {what} time is not a real date") from None
    return int(wall.timestamp() * 1000 + 0.5) if millis else int(wall.timestamp()) * 1000


def _number(value: Any, *, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ProtocolError(f"Glooko {what} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"Glooko {what} is not a number")
    if value < 0:
        raise ProtocolError(f"Glooko {what} is negative")
    # a whole number stays one (carbs: 30 is served back as 30, not 30.0)
    return value


def _first(item: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = item.get(key)
        if value is not None and value != "":
            return value
    return None


def _deleted(item: Mapping[str, Any]) -> bool:
    return item.get("softDeleted") is True or item.get("soft_deleted") is True


def _extra(item: Mapping[str, Any]) -> dict[str, Any]:
    guid = item.get("guid")
    return {"glookoGuid": guid} if isinstance(guid, str) and guid else {}


def bolus(item: Mapping[str, Any], zone: tzinfo) -> Treatment | None:
    """A pump bolus: Meal Bolus when carbs were entered, else Correction Bolus."""
    when = _first(item, *TIME_KEYS["normalBoluses"])
    if when is None:
        return None
    date = utc_ms(when, zone, what="pumpTimestamp")
    insulin = _number(
        _first(item, "insulinDelivered", "deliveredUnits", "programmedUnits"), what="insulinDelivered"
    )
    carbs = _number(item.get("carbsInput"), what="carbsInput") or 0.0
    if not insulin and not carbs:
        return None
    return Treatment(
        event_type="Meal Bolus" if carbs > 0 else "Correction Bolus",
        date=date,
        device=DEVICE,
        insulin=insulin or None,
        carbs=carbs or None,
        extra=_extra(item),
    )


def basal(item: Mapping[str, Any], zone: tzinfo) -> Treatment | None:
    """A scheduled basal segment, shown as Nightscout's Temp Basal (rate U/h, minutes)."""
    when = _first(item, *TIME_KEYS["scheduledBasals"])
    if when is None:
        return None
    rate = _number(item.get("rate"), what="rate")
    seconds = _number(item.get("duration"), what="duration")
    if rate is None or seconds is None:
        raise ProtocolError("Glooko scheduled basal lacks its rate or duration")
    return Treatment(
        event_type="Temp Basal",
        date=utc_ms(when, zone, what="pumpTimestamp"),
        device=DEVICE,
        rate=rate,
        absolute=rate,
        duration=round(seconds / 60.0, 3),
        extra=_extra(item),
    )


def food(item: Mapping[str, Any], zone: tzinfo) -> Treatment | None:
    when = _first(item, *TIME_KEYS["foods"])
    carbs = _number(item.get("carbs"), what="carbs")
    if when is None or not carbs:
        return None
    return Treatment(
        event_type="Carb Correction", date=utc_ms(when, zone, what="timestamp"), device=DEVICE, carbs=carbs,
        extra=_extra(item),
    )  # fmt: skip


def reading(item: Mapping[str, Any], zone: tzinfo) -> Entry | None:
    """A CGM reading; the value may be mg/dL or mg/dL × 100 (both shapes are seen)."""
    when = _first(item, *TIME_KEYS["readings"])
    value = _number(_first(item, "value", "bg_value", "sgv", "glucose"), what="value")
    if when is None or not value:
        return None
    mgdl = value / 100.0 if value > 1000 else value
    sgv = int(math.floor(mgdl + 0.5))
    if not 1 <= sgv <= 1000:
        raise ProtocolError("Glooko reading value is out of range")
    trend = item.get("trend")
    direction = None
    if isinstance(trend, str):
        direction = TRENDS.get(re.sub(r"[^a-z]", "", trend.lower()))
    return Entry(
        type="sgv", date=utc_ms(when, zone, what="reading"), device=DEVICE, sgv=sgv, direction=direction
    )


CONVERTERS = {"normalBoluses": bolus, "scheduledBasals": basal, "foods": food, "readings": reading}


def items_of(page: Page) -> list[Mapping[str, Any]]:
    body = page.body
    if not isinstance(body, Mapping):
        raise ProtocolError(f"Glooko {page.feed.key} answer is not a JSON object")
    items = body.get(page.feed.key)
    if not isinstance(items, list):
        raise ProtocolError(f"Glooko answer has no {page.feed.key} list")
    for item in items:
        if not isinstance(item, Mapping):
            raise ProtocolError(f"Glooko {page.feed.key} holds something other than objects")
    return items


def newest_wall(page: Page) -> int | None:
    """The latest time on a page, in Glooko's frame (see :func:`wall_ms`), soft-deleted items
    included: they fill pages too. The next page of a window starts there."""
    keys = TIME_KEYS[page.feed.key]
    times = [utc_ms(when, UTC, what=page.feed.key) for item in items_of(page)
             if (when := _first(item, *keys)) is not None]  # fmt: skip
    return max(times, default=None)


def records_of(page: Page, zone: tzinfo) -> list[Record]:
    """The live records of one page (soft-deleted ones and empty ones left out)."""
    if page.feed.key not in FEEDS_BY_KEY:
        raise ProtocolError("not a Glooko feed")
    items = items_of(page)
    convert = CONVERTERS[page.feed.key]
    records: list[Record] = []
    try:
        for item in items:
            if _deleted(item):
                continue
            record = convert(item, zone)
            if record is not None:
                records.append(record)
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ProtocolError(f"Glooko {page.feed.key} has an unusable value ({type(exc).__name__})") from None
    return records


def transform(frame: Any, zone: tzinfo) -> Batch:
    """The records of one frame's pages (a record on two pages counts once), with the checkpoints
    its plan vouches for and whether history remains."""
    if not isinstance(frame, Frame) or any(page.feed != frame.feed for page in frame.pages):
        raise ProtocolError("not a Glooko frame")
    records = [record for page in frame.pages for record in records_of(page, zone)]
    return Batch.of(records, covered=frame.covered, more=frame.more)
