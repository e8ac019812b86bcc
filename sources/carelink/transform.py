"""CareLink's recent-data payload → Nightscout records. Pure: no I/O, no clock.

The hard part is time. Sensor and pump times are the pump's local wall clock: the older
payloads write ``"Oct 19, 2015 08:15:00"`` with no zone, the 7xxG payloads write ISO strings
whose ``Z`` or offset is often wrong. The payload also holds pairs of (local clock, true
server time in epoch ms) taken at the same moment; their difference, rounded, is the local
zone, and it places every local time on the UTC axis:

* the phone's ``lastConduitDateTime`` with ``lastConduitUpdateServerDateTime`` (7xxG), else
* the pump's ``sMedicalDeviceTime`` with ``lastMedicalDeviceDataUpdateServerTime``: both are
  taken at the pump's last upload (in the real payloads ``sMedicalDeviceTime`` equals
  ``lastSensorTSAsString`` and stays put while the pump is silent), else
* as a last resort, for a payload without the upload time, ``sMedicalDeviceTime`` with
  ``currentServerTime``, as minimed-connect pairs them. That is right only while the upload
  is fresh: ``currentServerTime`` is the time of the answer, so after a quarter hour of pump
  silence the rounded zone would jump by half an hour and every reading with it.

Only when no pair exists does an explicit offset in the string itself count.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from connect.contract import LastKnown
from connect.errors import ProtocolError
from connect.records import Batch, DeviceStatus, Entry, Record, Treatment, iso_from_ms
from sources.carelink.const import (
    BG_MARKERS,
    MAX_ZONE_OFFSET_MS,
    MONTHS,
    PHONE_ZONE_STEP_MS,
    PUMP_ZONE_STEP_MS,
    TREND_DIRECTIONS,
    UNKNOWN_DIRECTION,
)

#: epoch ms before 2000 are placeholders (CareLink writes 0 for "never")
_EPOCH_FLOOR = 946_684_800_000
_OLD_FORMAT = re.compile(r"^([A-Z][a-z]{2}) (\d{1,2}), (\d{4}) (\d{1,2}):(\d{2}):(\d{2})$")
_ISO_FORMAT = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d{2}(?::?\d{2})?)?$"
)


def unwrap(raw: Any) -> Mapping[str, Any]:
    """The payload, whether bare (before 2025) or wrapped as ``{"patientData": {...}}``."""
    if not isinstance(raw, Mapping):
        raise ProtocolError(f"CareLink data is a {type(raw).__name__}, not a JSON object")
    inner = raw.get("patientData", raw)
    if not isinstance(inner, Mapping):
        raise ProtocolError("CareLink patientData is not a JSON object")
    if not any(key in inner for key in ("sgs", "lastSG", "medicalDeviceFamily")):
        raise ProtocolError("CareLink data has none of sgs, lastSG, medicalDeviceFamily")
    return inner


def transform(raw: Any, last_known: LastKnown | None = None) -> Batch:
    """Readings, therapy markers and pump state of one ``display/message`` answer.

    Every reading of the answer is returned (not only those after the checkpoint): CareLink
    fills gaps when a pump reconnects, and unchanged records cost nothing to upsert.
    """
    data = unwrap(raw)
    try:
        device = device_name(data)
        clock = PumpClock.of(data)
        records: list[Record] = []
        records.extend(sg_entries(data, clock, device))
        records.extend(marker_treatments(data, clock, device))
        status = device_status(data, clock, device)
        if status is not None:
            records.append(status)
        return Batch.of(records)
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
        # a record validator refusing a value (sgv out of range, time before 2000…)
        raise ProtocolError(f"CareLink data has an unusable value ({type(exc).__name__})") from None


def device_name(data: Mapping[str, Any]) -> str:
    family = data.get("medicalDeviceFamily")
    if family is not None and not isinstance(family, str):
        raise ProtocolError("CareLink medicalDeviceFamily is not a string")
    return f"connect-{(family or 'unknown').strip().lower() or 'unknown'}"


# --- time ---------------------------------------------------------------------------------


def parse_local(text: str) -> tuple[int, int | None]:
    """(wall clock as if it were UTC in epoch ms, the offset the string states if any)."""
    value = text.strip()
    old = _OLD_FORMAT.match(value)
    if old:
        month = MONTHS.get(old.group(1))
        if month is None:
            raise ProtocolError("CareLink time has an unknown month name")
        day, year, hour, minute, second = (int(old.group(i)) for i in range(2, 7))
        return _wall_ms(year, month, day, hour, minute, second, 0), None
    iso = _ISO_FORMAT.match(value)
    if iso:
        year, month, day, hour, minute = (int(iso.group(i)) for i in range(1, 6))
        second = int(iso.group(6) or 0)
        fraction = iso.group(7) or ""
        millis = int((fraction + "000")[:3]) if fraction else 0
        return _wall_ms(year, month, day, hour, minute, second, millis), _stated_offset(iso.group(8))
    raise ProtocolError("CareLink time is in neither the old nor the ISO format")


def _wall_ms(year: int, month: int, day: int, hour: int, minute: int, second: int, millis: int) -> int:
    try:
        wall = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise ProtocolError("CareLink time is not a real date") from None
    return int(wall.timestamp()) * 1000 + millis


def _stated_offset(suffix: str | None) -> int | None:
    if suffix is None:
        return None
    if suffix == "Z":
        return 0
    sign = -1 if suffix[0] == "-" else 1
    digits = suffix[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    return sign * (hours * 3_600_000 + minutes * 60_000)


def epoch(data: Mapping[str, Any], *keys: str) -> int | None:
    """The first of ``keys`` holding a real epoch-ms time (0 and other placeholders skipped)."""
    for key in keys:
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProtocolError(f"CareLink {key} is not an epoch-ms number")
        if value >= _EPOCH_FLOOR:
            return int(value)
    return None


def _rounded(value: int, step: int) -> int:
    return math.floor(value / step + 0.5) * step


@attrs.frozen
class PumpClock:
    """The pump's zone (UTC offset in ms) as the payload's clock pairs reveal it, if they do."""

    offset_ms: int | None

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> PumpClock:
        pairs = (
            (
                "lastConduitDateTime",
                ("lastConduitUpdateServerDateTime", "lastConduitUpdateServerTime"),
                PHONE_ZONE_STEP_MS,
            ),
            # the pump's clock and the server's, both at the pump's last upload
            ("sMedicalDeviceTime", ("lastMedicalDeviceDataUpdateServerTime",), PUMP_ZONE_STEP_MS),
            ("medicalDeviceTimeAsString", ("lastMedicalDeviceDataUpdateServerTime",), PUMP_ZONE_STEP_MS),
            # last resort (see the module's docstring): wrong once the pump has been silent
            ("sMedicalDeviceTime", ("currentServerTime",), PUMP_ZONE_STEP_MS),
            ("medicalDeviceTimeAsString", ("currentServerTime",), PUMP_ZONE_STEP_MS),
        )
        for local_key, server_keys, step in pairs:
            local = data.get(local_key)
            server = epoch(data, *server_keys)
            if not isinstance(local, str) or not local.strip() or server is None:
                continue
            try:
                wall, _stated = parse_local(local)
            except ProtocolError:
                continue  # a reference clock we cannot read; another pair may do
            offset = _rounded(wall - server, step)
            if abs(offset) > MAX_ZONE_OFFSET_MS:
                raise ProtocolError(f"CareLink {local_key} and the server time differ by more than 14 hours")
            return cls(offset)
        return cls(None)

    def to_utc(self, text: Any, *, what: str) -> int:
        """Epoch ms (UTC) of a pump-local time string."""
        if not isinstance(text, str):
            raise ProtocolError(f"CareLink {what} time is not a string")
        wall, stated = parse_local(text)
        if self.offset_ms is not None:
            return wall - self.offset_ms
        if stated is not None:
            return wall - stated
        raise ProtocolError(f"CareLink {what} time has no zone and the payload has no server time")


# --- values -------------------------------------------------------------------------------


def number(value: Any, *, what: str) -> float | None:
    """A finite number, or None when absent; anything else is a protocol error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"CareLink {what} is not a number")
    return float(value)


def kept(value: Any, *, what: str) -> int | float | None:
    """A finite number as the payload wrote it (an int stays an int), or None when absent."""
    if number(value, what=what) is None:
        return None
    result: int | float = value
    return result


def _mapping(value: Any, *, what: str) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ProtocolError(f"CareLink {what} is not a JSON object")
    return value


def _items(data: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProtocolError(f"CareLink {key} is not a list")
    for item in value:
        if not isinstance(item, Mapping):
            raise ProtocolError(f"CareLink {key} holds something other than objects")
    return value


# --- glucose ------------------------------------------------------------------------------


def _reading(item: Mapping[str, Any], clock: PumpClock, *, what: str) -> tuple[int, int] | None:
    """(time, mg/dL) of a sensor glucose item, or None for a gap marker (sg 0) or an undated slot."""
    kind = item.get("kind")
    if kind is not None and kind != "SG":
        return None
    sg = number(item.get("sg"), what=f"{what} sg")
    if sg is None or sg == 0:
        return None  # 0: no reading in this slot (gap, warm-up, calibration)
    if sg < 0 or sg != int(sg):
        raise ProtocolError(f"CareLink {what} sg is not a whole positive mg/dL value")
    when = item.get("datetime")
    if when is None or when == "":
        return None  # the newest slot may not have its time yet
    return clock.to_utc(when, what=what), int(sg)


def direction_of(trend: Any) -> str | None:
    if trend is None:
        return None
    if not isinstance(trend, str):
        raise ProtocolError("CareLink lastSGTrend is not a string")
    return TREND_DIRECTIONS.get(trend.strip().upper(), UNKNOWN_DIRECTION)


def sg_entries(data: Mapping[str, Any], clock: PumpClock, device: str) -> list[Entry]:
    """One sgv entry per real reading; the newest reading carries ``lastSGTrend``.

    The trend belongs to ``lastSG``. When ``lastSG`` is missing it belongs to the last slot,
    but only if that slot holds a reading (a trailing gap means no current trend).
    """
    readings: dict[int, int] = {}
    last_slot: tuple[int, int] | None = None
    items = _items(data, "sgs")
    for item in items:
        reading = _reading(item, clock, what="sgs")
        if reading is not None:
            readings[reading[0]] = reading[1]
    if items:
        last_slot = _reading(items[-1], clock, what="sgs")
    direction = direction_of(data.get("lastSGTrend"))
    latest = _mapping(data.get("lastSG"), what="lastSG")
    newest = _reading(latest, clock, what="lastSG") if latest is not None else last_slot
    if newest is not None:
        readings[newest[0]] = newest[1]
    entries = []
    for date, sgv in sorted(readings.items()):
        tagged = newest is not None and date == newest[0]
        entries.append(
            Entry(type="sgv", date=date, sgv=sgv, device=device, direction=direction if tagged else None)
        )
    return entries


# --- therapy markers (7xxG) -----------------------------------------------------------------


def _marker_time(marker: Mapping[str, Any], clock: PumpClock) -> int | None:
    for key in ("dateTime", "datetime", "timestamp"):
        value = marker.get(key)
        if value is not None and value != "":
            return clock.to_utc(value, what=f"markers {key}")
    return None


def _delivered(marker: Mapping[str, Any]) -> float:
    fast = number(marker.get("deliveredFastAmount"), what="markers deliveredFastAmount") or 0.0
    extended = number(marker.get("deliveredExtendedAmount"), what="markers deliveredExtendedAmount") or 0.0
    if fast < 0 or extended < 0:
        raise ProtocolError("CareLink markers hold a negative insulin amount")
    return round(fast + extended, 3)


def marker_treatments(data: Mapping[str, Any], clock: PumpClock, device: str) -> list[Treatment]:
    """MEAL + INSULIN of the same index → Meal Bolus; lone INSULIN → Correction Bolus; lone MEAL
    → Carb Correction; calibrations and meter readings → BG Check."""
    meals: list[tuple[Mapping[str, Any], int]] = []
    doses: list[tuple[Mapping[str, Any], int]] = []
    out: list[Treatment] = []
    for marker in _items(data, "markers"):
        kind = marker.get("type")
        if not isinstance(kind, str):
            raise ProtocolError("CareLink marker has no type")
        when = _marker_time(marker, clock)
        if when is None:
            continue
        kind = kind.strip().upper()
        if kind == "MEAL":
            meals.append((marker, when))
        elif kind == "INSULIN":
            doses.append((marker, when))
        elif kind in BG_MARKERS:
            value = number(marker.get("value"), what="markers value")
            if value is not None and value > 0:
                out.append(
                    Treatment(
                        event_type="BG Check",
                        date=when,
                        device=device,
                        glucose=value,
                        glucose_type="Finger",
                        units="mg/dl",
                    )
                )
    paired: set[int] = set()
    for meal, when in meals:
        # as the payload wrote it: 30 grams are served back as 30, not 30.0
        carbs = kept(meal.get("amount"), what="markers amount") or 0
        if carbs < 0:
            raise ProtocolError("CareLink MEAL marker has negative carbs")
        dose_at = next(
            (
                i
                for i, (dose, _) in enumerate(doses)
                if i not in paired and dose.get("index") == meal.get("index")
            ),
            None,
        )
        if dose_at is not None and meal.get("index") is not None:
            paired.add(dose_at)
            out.append(
                Treatment(
                    event_type="Meal Bolus",
                    date=when,
                    device=device,
                    carbs=carbs,
                    insulin=_delivered(doses[dose_at][0]),
                )
            )
        elif carbs > 0:
            out.append(Treatment(event_type="Carb Correction", date=when, device=device, carbs=carbs))
    for i, (dose, when) in enumerate(doses):
        if i in paired:
            continue
        insulin = _delivered(dose)
        if insulin > 0:
            out.append(Treatment(event_type="Correction Bolus", date=when, device=device, insulin=insulin))
    return out


# --- pump and sensor state -------------------------------------------------------------------

#: sensor and link state copied into ``connect`` as Nightscout's minimed plugin shows it
_CONNECT_FIELDS = (
    "sensorState",
    "calibStatus",
    "sensorDurationHours",
    "timeToNextCalibHours",
    "conduitInRange",
    "conduitMedicalDeviceInRange",
    "conduitSensorInRange",
    "medicalDeviceBatteryLevelPercent",
    "medicalDeviceFamily",
    "conduitBatteryStatus",
    "reservoirLevelPercent",
    "pumpCommunicationState",
    "gstCommunicationState",
    "medicalDeviceSuspended",
    "bgUnits",
)


def _scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, int, bool))


def _scalars(source: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {key: source[key] for key in keys if key in source and _scalar(source[key])}


def device_status(data: Mapping[str, Any], clock: PumpClock, device: str) -> DeviceStatus | None:
    """Pump, uploader and sensor state at the pump's last upload (true server time)."""
    created = epoch(data, "lastMedicalDeviceDataUpdateServerTime", "lastConduitUpdateServerDateTime")
    if created is None:
        return None
    payload: dict[str, Any] = {}
    family = str(data.get("medicalDeviceFamily") or "").upper()
    conduit = kept(data.get("conduitBatteryLevel"), what="conduitBatteryLevel")
    pump_battery = kept(
        data.get("medicalDeviceBatteryLevelPercent", data.get("pumpBatteryLevelPercent")),
        what="medicalDeviceBatteryLevelPercent",
    )
    uploader_battery = pump_battery if family == "GUARDIAN" else conduit
    if uploader_battery is not None:
        payload["uploader"] = {"battery": uploader_battery}
    if family != "GUARDIAN":  # a Guardian Connect CGM has no pump
        pump: dict[str, Any] = {}
        if pump_battery is not None:
            pump["battery"] = {"percent": pump_battery}
        reservoir = kept(
            data.get("reservoirRemainingUnits", data.get("reservoirAmount")), what="reservoirRemainingUnits"
        )
        if reservoir is not None:
            pump["reservoir"] = reservoir
        iob = _mapping(data.get("activeInsulin"), what="activeInsulin")
        if iob is not None:
            amount = kept(iob.get("amount"), what="activeInsulin amount")
            if amount is not None and amount >= 0:  # a negative amount means "unknown"
                when = iob.get("datetime")
                at = clock.to_utc(when, what="activeInsulin") if when else created
                pump["iob"] = {"timestamp": iso_from_ms(at), "bolusiob": amount, "iob": amount}
        pump_time = data.get("sMedicalDeviceTime")
        if isinstance(pump_time, str) and pump_time.strip():
            pump["clock"] = iso_from_ms(clock.to_utc(pump_time, what="sMedicalDeviceTime"))
        suspended = data.get("medicalDeviceSuspended")
        if isinstance(suspended, bool):
            pump["status"] = {"suspended": suspended, "timestamp": iso_from_ms(created)}
        if pump:
            payload["pump"] = pump
    connect = _scalars(data, _CONNECT_FIELDS)
    therapy = _mapping(data.get("therapyAlgorithmState"), what="therapyAlgorithmState")
    if therapy is not None:
        connect["therapyAlgorithmState"] = {k: v for k, v in therapy.items() if _scalar(v)}
    if connect:
        payload["connect"] = connect
    return DeviceStatus(device=device, date=created, payload=payload)
