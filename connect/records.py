"""Nightscout's data model as frozen records, and their conversion to and from Nightscout JSON.

Times are UTC epoch milliseconds everywhere inside the daemon; vendor local times are converted
at the edge, in each source's transform. Every record carries a stable ``identifier`` (UUID v5,
as Nightscout API v3 computes it) so that every write anywhere is an idempotent upsert.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import attrs
import cattrs

#: Nightscout API v3's namespace: uuid5 over the 16 bytes of "NightscoutRocks!".
NIGHTSCOUT_NAMESPACE: Final = uuid.UUID(bytes=b"NightscoutRocks!")

Collection = Literal["entries", "treatments", "devicestatus", "profile"]
COLLECTIONS: Final[tuple[Collection, ...]] = ("entries", "treatments", "devicestatus", "profile")
#: what an output delivers past a cursor: a collection, or the events outbox
Stream = Literal["entries", "treatments", "devicestatus", "profile", "events"]
EVENTS: Final = "events"

#: Nightscout direction strings and their trend numbers (protocols/05 §5).
DIRECTIONS: Final[dict[str, int]] = {
    "NONE": 0,
    "TripleUp": 1,
    "DoubleUp": 1,
    "SingleUp": 2,
    "FortyFiveUp": 3,
    "Flat": 4,
    "FortyFiveDown": 5,
    "SingleDown": 6,
    "DoubleDown": 7,
    "TripleDown": 7,
    "NOT COMPUTABLE": 8,
    "RATE OUT OF RANGE": 9,
}
#: the arrow Nightscout draws for each direction (its dir2Char); anything else shows as "-"
ARROWS: Final[dict[str, str]] = {
    "NONE": "⇼",
    "TripleUp": "⤊",
    "DoubleUp": "⇈",
    "SingleUp": "↑",
    "FortyFiveUp": "↗",
    "Flat": "→",
    "FortyFiveDown": "↘",
    "SingleDown": "↓",
    "DoubleDown": "⇊",
    "TripleDown": "⤋",
    "NOT COMPUTABLE": "-",
    "RATE OUT OF RANGE": "⇕",
}
TREND_TO_DIRECTION: Final[dict[int, str]] = {
    0: "NONE",
    1: "DoubleUp",
    2: "SingleUp",
    3: "FortyFiveUp",
    4: "Flat",
    5: "FortyFiveDown",
    6: "SingleDown",
    7: "DoubleDown",
    8: "NOT COMPUTABLE",
    9: "RATE OUT OF RANGE",
}
ENTRY_TYPES: Final = frozenset({"sgv", "mbg", "cal"})
#: plausible range of a CGM value in mg/dL (39 is "LOW", 401 "HIGH" on most sensors)
SGV_RANGE: Final = (1, 1000)


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@functools.lru_cache(maxsize=4096)
def _iso_day(day: int) -> str:
    """``YYYY-MM-DDT`` of the UTC day ``day`` days after the epoch."""
    return (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")


def iso_from_ms(ms: int) -> str:
    """Nightscout's ISO form: UTC, millisecond precision, trailing ``Z``.

    Arithmetic on the epoch ms (the day's date is looked up once per day): a backfill formats
    tens of thousands of these."""
    day, rest = divmod(ms, 86_400_000)
    seconds, millis = divmod(rest, 1000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{_iso_day(day)}{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"


def ms_from_iso(text: str) -> int:
    """Parse an ISO-8601 time (``Z`` or an offset; naive means UTC) into epoch ms."""
    value = text.strip().replace(" ", "T", 1) if "T" not in text else text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(round(parsed.timestamp() * 1000))


@functools.lru_cache(maxsize=1 << 16)
def make_identifier(*parts: object) -> str:
    """UUID v5 over the parts joined by ``_`` (Nightscout v3: device_date[_eventType]).

    Cached: a record's identifier is asked for by the transform, the store and the outputs,
    and a backfill hashes tens of thousands of them."""
    return str(uuid.uuid5(NIGHTSCOUT_NAMESPACE, "_".join(str(p) for p in parts)))


def _check_date(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    # 2000-01-01 .. 2100-01-01: anything outside is a unit mistake (seconds, microseconds)
    if not 946_684_800_000 <= value <= 4_102_444_800_000:
        raise ValueError(f"{attribute.name} {value} is not an epoch-ms time")


def _check_direction(_inst: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and value not in DIRECTIONS:
        raise ValueError(f"{attribute.name} {value!r} is not a Nightscout direction")


@attrs.frozen(kw_only=True)
class Entry:
    """An ``entries`` document: a CGM reading (sgv), a meter reading (mbg) or a calibration."""

    type: str = attrs.field(validator=attrs.validators.in_(ENTRY_TYPES))
    date: int = attrs.field(validator=_check_date)
    device: str
    sgv: int | None = None
    direction: str | None = attrs.field(default=None, validator=_check_direction)
    #: Nightscout's trend number; derived from the direction when not given
    trend: int | None = attrs.field(
        default=attrs.Factory(lambda self: DIRECTIONS.get(self.direction or ""), takes_self=True)
    )
    noise: int | None = None
    mbg: int | None = None
    slope: float | None = None
    intercept: float | None = None
    scale: float | None = None
    filtered: float | None = None
    unfiltered: float | None = None
    rssi: int | None = None
    delta: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.type == "sgv":
            if self.sgv is None or not SGV_RANGE[0] <= self.sgv <= SGV_RANGE[1]:
                raise ValueError(f"sgv {self.sgv!r} out of range")
        if self.type == "mbg" and self.mbg is None:
            raise ValueError("an mbg entry needs mbg")

    @property
    def identifier(self) -> str:
        return make_identifier(self.device, self.date, self.type)

    @property
    def collection(self) -> Collection:
        return "entries"


@attrs.frozen(kw_only=True)
class Treatment:
    """A ``treatments`` document: boluses, carbs, temp basals, sensor starts, notes…"""

    event_type: str
    date: int = attrs.field(validator=_check_date)  # created_at
    device: str
    insulin: float | None = None
    carbs: float | None = None
    duration: float | None = None
    absolute: float | None = None
    rate: float | None = None
    percent: float | None = None
    glucose: float | None = None
    glucose_type: str | None = None
    units: str | None = None
    notes: str | None = None
    entered_by: str | None = None
    #: vendor fields Nightscout keeps as they are (e.g. ``pumpId``), JSON-safe values only
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def identifier(self) -> str:
        return make_identifier(self.device, self.date, self.event_type)

    @property
    def collection(self) -> Collection:
        return "treatments"


@attrs.frozen(kw_only=True)
class DeviceStatus:
    """A ``devicestatus`` document: pump, uploader and sensor state at one moment."""

    device: str
    date: int = attrs.field(validator=_check_date)  # created_at
    #: the sub-objects (``pump``, ``uploader``, ``connect`` …) as Nightscout JSON
    payload: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def identifier(self) -> str:
        return make_identifier(self.device, self.date)

    @property
    def collection(self) -> Collection:
        return "devicestatus"


@attrs.frozen(kw_only=True)
class Profile:
    """A ``profile`` document: therapy settings (basal, ratios, targets) from a moment on."""

    date: int = attrs.field(validator=_check_date)  # startDate / created_at
    device: str
    default_profile: str = "Default"
    units: str | None = None
    store: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def identifier(self) -> str:
        return make_identifier(self.device, self.date, "profile")

    @property
    def collection(self) -> Collection:
        return "profile"


Record = Entry | Treatment | DeviceStatus | Profile


@attrs.frozen(kw_only=True)
class Batch:
    """What one frame produced: records per collection, and how far the source got.

    ``covered`` is the time (epoch ms, per collection) up to which the source has looked,
    even when it found nothing there: a backfill walks forward through empty windows by it.
    ``more`` says that more data is available right now, so the next frame should not wait.
    """

    entries: tuple[Entry, ...] = ()
    treatments: tuple[Treatment, ...] = ()
    devicestatus: tuple[DeviceStatus, ...] = ()
    profile: tuple[Profile, ...] = ()
    covered: Mapping[str, int] = attrs.field(factory=dict)
    more: bool = False

    def records(self, collection: Collection) -> tuple[Record, ...]:
        return tuple(getattr(self, collection))

    def __len__(self) -> int:
        return len(self.entries) + len(self.treatments) + len(self.devicestatus) + len(self.profile)

    def newest(self) -> dict[str, int]:
        """The checkpoint this batch vouches for: newest record time or ``covered``, per collection."""
        out = dict(self.covered)
        for collection in COLLECTIONS:
            for record in self.records(collection):
                out[collection] = max(out.get(collection, record.date), record.date)
        return out

    @classmethod
    def of(
        cls, records: Iterable[Record], *, covered: Mapping[str, int] | None = None, more: bool = False
    ) -> Batch:
        """Group records by collection, dropping exact duplicates by identifier."""
        seen: dict[str, Record] = {}
        for record in records:
            seen[record.identifier] = record
        grouped: dict[str, list[Record]] = {c: [] for c in COLLECTIONS}
        for record in sorted(seen.values(), key=lambda r: r.date):
            grouped[record.collection].append(record)
        return cls(
            entries=tuple(grouped["entries"]),  # type: ignore[arg-type]
            treatments=tuple(grouped["treatments"]),  # type: ignore[arg-type]
            devicestatus=tuple(grouped["devicestatus"]),  # type: ignore[arg-type]
            profile=tuple(grouped["profile"]),  # type: ignore[arg-type]
            covered=dict(covered or {}),
            more=more,
        )


# --- Nightscout JSON ---------------------------------------------------------------------

converter = cattrs.Converter()

_TREATMENT_FIELDS: Final = {
    "insulin": "insulin",
    "carbs": "carbs",
    "duration": "duration",
    "absolute": "absolute",
    "rate": "rate",
    "percent": "percent",
    "glucose": "glucose",
    "glucose_type": "glucoseType",
    "units": "units",
    "notes": "notes",
    "entered_by": "enteredBy",
}


def _drop_none(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is not None}


_ENTRY_FIELDS: Final = tuple(field.name for field in attrs.fields(Entry))


def entry_doc(entry: Entry, iso: str, identifier: str) -> dict[str, Any]:
    """The Nightscout document of ``entry``, given its ISO time and identifier (the store
    computes both once per row)."""
    doc: dict[str, Any] = {}
    for name in _ENTRY_FIELDS:
        value = getattr(entry, name)
        if value is not None:
            doc[name] = value
    doc["dateString"] = iso
    doc["identifier"] = identifier
    return doc


def _unstructure_entry(entry: Entry) -> dict[str, Any]:
    return entry_doc(entry, iso_from_ms(entry.date), entry.identifier)


def _unstructure_treatment(t: Treatment) -> dict[str, Any]:
    doc: dict[str, Any] = dict(t.extra)
    doc["eventType"] = t.event_type
    doc["created_at"] = iso_from_ms(t.date)
    doc["date"] = t.date
    doc["device"] = t.device
    for attr, key in _TREATMENT_FIELDS.items():
        value = getattr(t, attr)
        if value is not None:
            doc[key] = value
    doc["identifier"] = t.identifier
    return doc


def _unstructure_devicestatus(d: DeviceStatus) -> dict[str, Any]:
    doc: dict[str, Any] = dict(d.payload)
    doc["device"] = d.device
    doc["created_at"] = iso_from_ms(d.date)
    doc["date"] = d.date
    doc["identifier"] = d.identifier
    return doc


def _unstructure_profile(p: Profile) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "defaultProfile": p.default_profile,
        "startDate": iso_from_ms(p.date),
        "created_at": iso_from_ms(p.date),
        "mills": p.date,
        "date": p.date,
        "device": p.device,
        "store": dict(p.store),
        "identifier": p.identifier,
    }
    if p.units is not None:
        doc["units"] = p.units
    return doc


converter.register_unstructure_hook(Entry, _unstructure_entry)
converter.register_unstructure_hook(Treatment, _unstructure_treatment)
converter.register_unstructure_hook(DeviceStatus, _unstructure_devicestatus)
converter.register_unstructure_hook(Profile, _unstructure_profile)


def _num(value: Any) -> float | None:
    """Nightscout stores numbers as strings now and then; read both."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    # a whole number stays one (carbs: 30 is served back as 30, not 30.0)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())
    return float(value)


def _int(value: Any) -> int | None:
    number = _num(value)
    return None if number is None else int(round(number))


def _doc_time(doc: Mapping[str, Any], *keys: str) -> int:
    """The first usable time among ``keys`` (epoch ms numbers or ISO strings)."""
    for key in keys:
        value = doc.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, str):
            if value.isdigit():
                return int(value)
            return ms_from_iso(value)
    raise ValueError(f"no time in any of {', '.join(keys)}")


def _structure_entry(doc: Mapping[str, Any], _cls: object) -> Entry:
    direction = doc.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        direction = "NOT COMPUTABLE"
    return Entry(
        type=str(doc.get("type") or "sgv"),
        date=_doc_time(doc, "date", "dateString", "sysTime"),
        device=str(doc.get("device") or "unknown"),
        sgv=_int(doc.get("sgv")),
        direction=direction,
        **({} if _int(doc.get("trend")) is None else {"trend": _int(doc.get("trend"))}),
        noise=_int(doc.get("noise")),
        mbg=_int(doc.get("mbg")),
        slope=_num(doc.get("slope")),
        intercept=_num(doc.get("intercept")),
        scale=_num(doc.get("scale")),
        filtered=_num(doc.get("filtered")),
        unfiltered=_num(doc.get("unfiltered")),
        rssi=_int(doc.get("rssi")),
        delta=_num(doc.get("delta")),
    )


_SERVER_FIELDS: Final = frozenset(
    {"_id", "identifier", "utcOffset", "srvModified", "srvCreated", "subject", "mills", "sysTime"}
)


def _structure_treatment(doc: Mapping[str, Any], _cls: object) -> Treatment:
    known = {"eventType", "created_at", "date", "device", *_TREATMENT_FIELDS.values()}
    values: dict[str, Any] = {}
    for attr, key in _TREATMENT_FIELDS.items():
        raw = doc.get(key)
        if attr in {"glucose_type", "units", "notes", "entered_by"}:
            values[attr] = None if raw is None else str(raw)
        else:
            values[attr] = _num(raw)
    return Treatment(
        event_type=str(doc.get("eventType") or "Note"),
        date=_doc_time(doc, "created_at", "date", "timestamp"),
        device=str(doc.get("device") or doc.get("enteredBy") or "unknown"),
        extra={k: v for k, v in doc.items() if k not in known and k not in _SERVER_FIELDS},
        **values,
    )


def _structure_devicestatus(doc: Mapping[str, Any], _cls: object) -> DeviceStatus:
    return DeviceStatus(
        device=str(doc.get("device") or "unknown"),
        date=_doc_time(doc, "created_at", "date", "mills"),
        payload={
            k: v
            for k, v in doc.items()
            if k not in {"device", "created_at", "date"} and k not in _SERVER_FIELDS
        },
    )


def _structure_profile(doc: Mapping[str, Any], _cls: object) -> Profile:
    store = doc.get("store")
    return Profile(
        date=_doc_time(doc, "mills", "startDate", "created_at", "date"),
        device=str(doc.get("device") or "unknown"),
        default_profile=str(doc.get("defaultProfile") or "Default"),
        units=None if doc.get("units") is None else str(doc.get("units")),
        store=dict(store) if isinstance(store, Mapping) else {},
    )


converter.register_structure_hook(Entry, _structure_entry)
converter.register_structure_hook(Treatment, _structure_treatment)
converter.register_structure_hook(DeviceStatus, _structure_devicestatus)
converter.register_structure_hook(Profile, _structure_profile)

RECORD_TYPES: Final[dict[Collection, type[Record]]] = {
    "entries": Entry,
    "treatments": Treatment,
    "devicestatus": DeviceStatus,
    "profile": Profile,
}


def to_nightscout(record: Record) -> dict[str, Any]:
    """The Nightscout JSON document for a record (what we upload and what the API serves)."""
    doc: dict[str, Any] = converter.unstructure(record)
    return doc


def from_nightscout(collection: Collection, doc: Mapping[str, Any]) -> Record:
    """Read a Nightscout document; raises ``ValueError`` (or ``TypeError``) when it is unusable."""
    record: Record = converter.structure(doc, RECORD_TYPES[collection])
    return record
