"""CareLink payload → records: the real 2015 payloads, zone inference, markers, and properties."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connect.contract import LastKnown
from connect.errors import ProtocolError
from connect.records import DIRECTIONS, iso_from_ms, to_nightscout
from sources.carelink.const import TREND_DIRECTIONS
from sources.carelink.transform import PumpClock, parse_local, transform
from tests.emulators.carelink import iso_local, old_local

FIXTURES = Path(__file__).parent / "fixtures" / "carelink"
LK = LastKnown(values={}, backfill_from=0, now=1_700_000_000_000)
HOUR = 3_600_000


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"minimed-connect-to-nightscout__sample_{name}.json").read_text())


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# --- the real payloads --------------------------------------------------------------------------


def test_missing_last_sgv_fixture() -> None:
    raw = load("missingLastSgv")
    batch = transform(raw, LK)
    entries = batch.entries
    # six slots, the last is a gap marker (sg 0, no time): five readings
    assert len(entries) == 5 == sum(1 for s in raw["sgs"] if s["sg"] != 0)
    assert [e.sgv for e in entries] == [70, 69, 68, 65, 66]
    # pump time "Oct 19, 2015 08:20:00" at its upload, which reached the server at 15:17:50Z:
    # the pump is on UTC-7 (PDT), its clock two minutes fast
    assert iso_from_ms(entries[0].date) == "2015-10-19T14:55:00.000Z"
    assert iso_from_ms(entries[-1].date) == "2015-10-19T15:15:00.000Z"
    assert all(b.date - a.date == 300_000 for a, b in zip(entries, entries[1:], strict=False))
    # lastSG is the 08:15 reading; its trend NONE means no arrow: Flat
    assert entries[-1].direction == "Flat" and entries[-1].trend == 4
    assert all(e.direction is None for e in entries[:-1])
    assert {e.device for e in entries} == {"connect-paradigm"}
    assert batch.treatments == ()
    (status,) = batch.devicestatus
    doc = to_nightscout(status)
    assert doc["created_at"] == iso_from_ms(1445267870381)
    assert doc["uploader"] == {"battery": 29}
    assert doc["pump"]["battery"] == {"percent": 75}
    assert doc["pump"]["reservoir"] == 60
    assert doc["pump"]["iob"] == {"timestamp": "2015-10-19T15:16:32.000Z", "bolusiob": 4.85, "iob": 4.85}
    assert doc["pump"]["clock"] == "2015-10-19T15:20:00.000Z"
    assert doc["pump"]["status"]["suspended"] is False
    assert doc["connect"]["sensorState"] == "NORMAL"
    assert doc["connect"]["calibStatus"] == "LESS_THAN_TWELVE_HRS"
    assert doc["connect"]["conduitInRange"] is True


def test_with_trend_fixture() -> None:
    raw = load("withTrend")
    batch = transform(raw, LK)
    entries = batch.entries
    # six readings in sgs (Oct 20) plus lastSG (Oct 21 13:46), which the trimmed sgs lack
    assert len(entries) == 7
    assert sum(1 for s in raw["sgs"] if s["sg"] != 0) == 6
    # pump "Oct 21, 2015 13:51:00" at its upload, which reached the server at 18:49:35Z: UTC-5 (CDT)
    assert iso_from_ms(entries[0].date) == "2015-10-20T18:21:00.000Z"
    assert entries[0].sgv == 191
    assert iso_from_ms(entries[-1].date) == "2015-10-21T18:46:00.000Z"
    assert entries[-1].sgv == 163
    assert entries[-1].direction == "SingleDown" and entries[-1].trend == 6
    assert [e for e in entries if e.direction] == [entries[-1]]
    (status,) = batch.devicestatus
    assert status.date == 1445453375436
    assert status.payload["pump"]["iob"]["bolusiob"] == 1.35


@pytest.mark.parametrize("name", ["missingLastSgv", "withTrend"])
def test_fixture_wrapped_in_patient_data_is_the_same(name: str) -> None:
    raw = load(name)
    assert transform({"patientData": raw}, LK) == transform(raw, LK)


@pytest.mark.parametrize("minutes", [11, 45, 120])
@pytest.mark.parametrize("name", ["missingLastSgv", "withTrend"])
def test_silent_pump_keeps_every_reading_where_it_was(name: str, minutes: int) -> None:
    """The pump stops uploading: CareLink answers the same upload with a later currentServerTime.

    In the real payloads ``sMedicalDeviceTime`` is the pump clock at its last upload (it equals
    ``lastSensorTSAsString``), so pairing it with the time of the answer would place every
    reading 30 minutes off, with new identifiers, after about 11 minutes of silence.
    """
    raw = load(name)
    assert raw["sMedicalDeviceTime"] == raw["lastSensorTSAsString"]
    fresh = transform(raw, LK)
    silent = copy.deepcopy(raw)
    silent["currentServerTime"] += minutes * 60_000
    later = transform(silent, LK)
    assert [(e.date, e.identifier) for e in later.entries] == [(e.date, e.identifier) for e in fresh.entries]
    assert later == fresh  # the device status too: same upload, same record


def test_the_upload_time_wins_over_the_time_of_the_answer() -> None:
    """The pump clock read at its upload is paired with the server time of that upload."""
    upload = utc("2025-03-01T06:35:40Z")
    doc = {
        "medicalDeviceFamily": "PARADIGM",
        "sMedicalDeviceTime": "Mar 01, 2025 12:05:00",  # India, UTC+5:30
        "lastMedicalDeviceDataUpdateServerTime": upload,
        "currentServerTime": upload + 3 * HOUR + 17 * 60_000,
        "sgs": [{"sg": 120, "datetime": "Mar 01, 2025 12:00:00", "kind": "SG"}],
    }
    assert PumpClock.of(doc).offset_ms == 5 * HOUR + 30 * 60_000
    (entry,) = transform(doc, LK).entries
    assert iso_from_ms(entry.date) == "2025-03-01T06:30:00.000Z"


@pytest.mark.parametrize("name", ["missingLastSgv", "withTrend"])
def test_fixture_transform_is_pure_and_idempotent(name: str) -> None:
    raw = load(name)
    before = copy.deepcopy(raw)
    first = transform(raw, LK)
    assert raw == before
    assert transform(raw, LK) == first
    ids = [r.identifier for c in ("entries", "treatments", "devicestatus") for r in first.records(c)]
    assert len(ids) == len(set(ids))


# --- time ---------------------------------------------------------------------------------------


def test_parse_local_formats() -> None:
    assert parse_local("Oct 19, 2015 08:15:00") == (utc("2015-10-19T08:15:00Z"), None)
    assert parse_local("2025-01-05T10:15:00.000Z") == (utc("2025-01-05T10:15:00Z"), 0)
    assert parse_local("2025-01-05T10:15:00.250-05:00") == (utc("2025-01-05T10:15:00.250Z"), -5 * HOUR)
    assert parse_local("2025-01-05T10:15:00+0530")[1] == 5 * HOUR + 30 * 60_000
    assert parse_local("2025-01-05T10:15:00")[1] is None
    for bad in ("Foo 19, 2015 08:15:00", "19/10/2015 08:15", "", "2015-02-30T10:00:00Z"):
        with pytest.raises(ProtocolError):
            parse_local(bad)


def test_7xxg_times_labelled_utc_are_placed_by_the_phone_clock() -> None:
    """ "…T10:15:00.000Z" is the local wall clock; the phone's clock pair reveals +02:00."""
    server = utc("2025-06-01T08:17:31Z")
    doc = {
        "medicalDeviceFamily": "NGP",
        "lastConduitDateTime": "2025-06-01T10:17:31.000Z",
        "lastConduitUpdateServerDateTime": server,
        "lastMedicalDeviceDataUpdateServerTime": server,
        "lastSGTrend": "UP_DOUBLE",
        "sgs": [
            {"sg": 101, "datetime": "2025-06-01T10:10:00.000Z", "sensorState": "NO_ERROR_MESSAGE"},
            {"sg": 0, "datetime": "2025-06-01T10:15:00.000Z", "sensorState": "NO_DATA_FROM_PUMP"},
        ],
        "lastSG": {"sg": 101, "datetime": "2025-06-01T10:10:00.000Z"},
    }
    (entry,) = transform({"patientData": doc}, LK).entries
    assert iso_from_ms(entry.date) == "2025-06-01T08:10:00.000Z"
    assert entry.direction == "DoubleUp"


def test_half_hour_zone_of_the_pump_without_an_upload_time() -> None:
    """India is UTC+5:30; rounding to whole hours (as minimed-connect did) would be 30 min off.

    Without ``lastMedicalDeviceDataUpdateServerTime`` the time of the answer is the last resort.
    """
    now = utc("2025-03-01T06:33:12Z")
    doc = {
        "medicalDeviceFamily": "GUARDIAN",
        "sMedicalDeviceTime": "Mar 01, 2025 12:05:00",
        "currentServerTime": now,
        "sgs": [{"sg": 120, "datetime": "Mar 01, 2025 12:00:00", "kind": "SG"}],
    }
    (entry,) = transform(doc, LK).entries
    assert iso_from_ms(entry.date) == "2025-03-01T06:30:00.000Z"
    assert transform(doc, LK).devicestatus == ()  # no upload time: no device status


def test_stated_offset_counts_only_without_a_clock_pair() -> None:
    doc = {"medicalDeviceFamily": "NGP", "sgs": [{"sg": 99, "datetime": "2025-01-05T10:15:00.000-05:00"}]}
    (entry,) = transform(doc, LK).entries
    assert iso_from_ms(entry.date) == "2025-01-05T15:15:00.000Z"
    naive = {"medicalDeviceFamily": "NGP", "sgs": [{"sg": 99, "datetime": "Jan 05, 2025 10:15:00"}]}
    with pytest.raises(ProtocolError, match="no zone"):
        transform(naive, LK)


def test_clocks_more_than_fourteen_hours_apart_are_refused() -> None:
    doc = {
        "medicalDeviceFamily": "PARADIGM",
        "sMedicalDeviceTime": "Oct 19, 2015 08:20:00",
        "currentServerTime": utc("2015-10-21T08:20:00Z"),
        "sgs": [],
    }
    with pytest.raises(ProtocolError, match="14 hours"):
        transform(doc, LK)


def test_guardian_has_no_pump_block_and_uploader_is_the_transmitter() -> None:
    raw = load("missingLastSgv")
    raw["medicalDeviceFamily"] = "GUARDIAN"
    (status,) = transform(raw, LK).devicestatus
    assert "pump" not in status.payload
    assert status.payload["uploader"] == {"battery": 75}
    assert {e.device for e in transform(raw, LK).entries} == {"connect-guardian"}


def test_negative_active_insulin_means_unknown() -> None:
    raw = load("missingLastSgv")
    raw["activeInsulin"]["amount"] = -1.0
    (status,) = transform(raw, LK).devicestatus
    assert "iob" not in status.payload["pump"]


def test_trend_without_last_sg_needs_a_reading_in_the_last_slot() -> None:
    raw = load("missingLastSgv")
    del raw["lastSG"]
    assert all(e.direction is None for e in transform(raw, LK).entries)  # the last slot is a gap
    raw["sgs"] = raw["sgs"][:-1]
    raw["lastSGTrend"] = "SIDEWAYS"  # unknown values are accepted
    assert transform(raw, LK).entries[-1].direction == "NOT COMPUTABLE"


def test_markers_become_treatments() -> None:
    server = utc("2025-06-01T12:00:00Z")
    doc = {
        "medicalDeviceFamily": "NGP",
        "lastConduitDateTime": "2025-06-01T14:00:00.000Z",
        "lastConduitUpdateServerDateTime": server,
        "sgs": [],
        "markers": [
            {"type": "MEAL", "index": 10, "dateTime": "2025-06-01T08:00:00.000Z", "amount": 45},
            {"type": "INSULIN", "index": 10, "dateTime": "2025-06-01T08:00:00.000Z", "bolusType": "FAST",
             "deliveredFastAmount": 4.5, "programmedFastAmount": 4.5, "activationType": "RECOMMENDED"},
            {"type": "INSULIN", "index": 20, "dateTime": "2025-06-01T09:00:00.000Z",
             "deliveredFastAmount": 0.3, "deliveredExtendedAmount": 0.2, "activationType": "AUTOCORRECTION"},
            {"type": "MEAL", "index": 30, "dateTime": "2025-06-01T10:00:00.000Z", "amount": 15},
            {"type": "BG_READING", "index": 40, "dateTime": "2025-06-01T11:00:00.000Z", "value": 131},
            {"type": "TIME_CHANGE", "index": 41, "dateTime": "2025-06-01T11:05:00.000Z"},
            {"type": "INSULIN", "index": 42},  # no time yet: skipped
        ],
    }  # fmt: skip
    batch = transform(doc, LK)
    got = {(iso_from_ms(t.date), t.event_type): (t.insulin, t.carbs, t.glucose) for t in batch.treatments}
    assert got == {
        ("2025-06-01T06:00:00.000Z", "Meal Bolus"): (4.5, 45.0, None),
        ("2025-06-01T07:00:00.000Z", "Correction Bolus"): (0.5, None, None),
        ("2025-06-01T08:00:00.000Z", "Carb Correction"): (None, 15.0, None),
        ("2025-06-01T09:00:00.000Z", "BG Check"): (None, None, 131.0),
    }
    check = next(t for t in batch.treatments if t.event_type == "BG Check")
    assert check.glucose_type == "Finger"


@pytest.mark.parametrize(
    "raw",
    [
        None, [], "text", 12, {}, {"patientData": []}, {"patientData": None},
        {"sgs": {}}, {"sgs": [1, 2]}, {"sgs": [{"sg": "120", "datetime": "Oct 19, 2015 08:15:00"}]},
        {"sgs": [{"sg": -5, "datetime": "Oct 19, 2015 08:15:00"}], "sMedicalDeviceTime": "Oct 19, 2015 08:20:00",
         "currentServerTime": 1445268224137},
        {"sgs": [{"sg": 1200, "datetime": "Oct 19, 2015 08:15:00"}], "sMedicalDeviceTime": "Oct 19, 2015 08:20:00",
         "currentServerTime": 1445268224137},
        {"sgs": [{"sg": 99.5, "datetime": "2025-01-01T00:00:00Z"}]},
        {"sgs": [{"sg": 99, "datetime": 1445268224137}]},
        {"medicalDeviceFamily": 7, "sgs": []},
        {"sgs": [], "currentServerTime": "soon", "sMedicalDeviceTime": "Oct 19, 2015 08:20:00"},
        {"sgs": [{"sg": 99, "datetime": "1999-01-01T00:00:00Z"}]},
        {"sgs": [], "lastSGTrend": 4},
        {"sgs": [], "markers": [{"type": "MEAL", "dateTime": "2025-01-01T00:00:00Z", "amount": -3}]},
        {"sgs": [], "lastMedicalDeviceDataUpdateServerTime": 1445268224137, "activeInsulin": 3},
    ],
)  # fmt: skip
def test_malformed_payloads_are_protocol_errors(raw: Any) -> None:
    with pytest.raises(ProtocolError):
        transform(raw, LK)


# --- properties -----------------------------------------------------------------------------------

GENERATIONS = st.sampled_from(["legacy", "7xxG"])
TRENDS = st.sampled_from(
    ["NONE", "UP", "UP_DOUBLE", "UP_TRIPLE", "DOWN", "DOWN_DOUBLE", "DOWN_TRIPLE", "FLAT"]
)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[dict[str, Any], dict[int, int], int | None, str | None]:
    """A payload built from known truth: (document, UTC time → mg/dL, trend time, direction)."""
    generation = draw(GENERATIONS)
    step = 30 * 60_000 if generation == "legacy" else 15 * 60_000
    offset = (
        draw(st.integers(-24, 28)) * step if generation == "legacy" else draw(st.integers(-48, 56)) * step
    )
    offset = max(-12 * HOUR, min(14 * HOUR, offset))
    first = draw(st.integers(1_500_000_000, 1_900_000_000)) * 1000 // 300_000 * 300_000
    count = draw(st.integers(0, 30))
    gaps = draw(st.sets(st.integers(0, max(count - 1, 0)), max_size=count))
    values = draw(st.lists(st.integers(40, 400), min_size=count, max_size=count))
    # the pump's last upload reached CareLink after its newest reading; the answer comes any
    # time later (a pump out of range uploads nothing for hours, and its clocks stay put)
    upload = first + count * 300_000 + draw(st.integers(0, 299_000))
    now = upload + draw(st.sampled_from([0, 30_000, 11 * 60_000, 45 * 60_000, 2 * HOUR, 9 * HOUR]))
    # the pump's clock is set by hand: a few minutes off; the phone's is exact
    drift = draw(st.integers(-9 * 60_000, 9 * 60_000)) if generation == "legacy" else 0
    local = (
        (lambda ms: old_local(ms + offset)) if generation == "legacy" else (lambda ms: iso_local(ms + offset))
    )
    sgs = []
    truth: dict[int, int] = {}
    for k in range(count):
        t = first + k * 300_000
        sg = 0 if k in gaps else values[k]
        if sg:
            truth[t] = sg
        sgs.append({"sg": sg, "datetime": local(t), "kind": "SG", "version": 1})
    if generation == "legacy" and draw(st.booleans()):
        sgs.append({"kind": "SG", "sg": 0, "version": 1})
    trend = draw(TRENDS)
    doc: dict[str, Any] = {
        "medicalDeviceFamily": draw(st.sampled_from(["PARADIGM", "NGP", "GUARDIAN"])),
        "currentServerTime": now,
        # the pump's clock (whole minutes) and the server's, both at the upload
        "sMedicalDeviceTime": old_local(upload - upload % 60_000 + offset + drift),
        "lastMedicalDeviceDataUpdateServerTime": upload,
        "lastSGTrend": trend,
        "sgs": sgs,
    }
    if generation == "7xxG":
        doc["lastConduitDateTime"] = iso_local(upload + offset)
        doc["lastConduitUpdateServerDateTime"] = upload
        del doc["sMedicalDeviceTime"]
    newest = max(truth) if truth else None
    if newest is not None and draw(st.booleans()):
        doc["lastSG"] = {"sg": truth[newest], "datetime": local(newest), "kind": "SG"}
    elif "lastSG" not in doc and sgs and sgs[-1]["sg"] == 0:
        newest = None  # a trailing gap: no current trend
    wrapped = {"patientData": doc} if draw(st.booleans()) else doc
    return wrapped, truth, newest, TREND_DIRECTIONS[trend]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads())
def test_transform_recovers_the_truth(
    case: tuple[dict[str, Any], dict[int, int], int | None, str | None],
) -> None:
    raw, truth, newest, direction = case
    before = copy.deepcopy(raw)
    batch = transform(raw, LK)
    assert raw == before  # pure: the input is untouched
    assert {e.date: e.sgv for e in batch.entries} == truth
    tagged = {e.date: e.direction for e in batch.entries if e.direction is not None}
    assert tagged == ({newest: direction} if newest is not None else {})
    assert transform(raw, LK) == batch  # idempotent
    records = [*batch.entries, *batch.treatments, *batch.devicestatus]
    assert len({r.identifier for r in records}) == len(records)
    for record in records:
        doc = to_nightscout(record)
        assert doc["identifier"] == record.identifier
        assert doc.get("direction", "Flat") in DIRECTIONS


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**15), 10**15)
    | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def damaged(draw: st.DrawFn) -> Any:
    """A real-looking payload with one part replaced by arbitrary JSON."""
    raw, _truth, _newest, _direction = draw(payloads())
    doc = raw.get("patientData", raw)
    target: Any = doc
    keys = sorted(doc)
    key = draw(st.sampled_from(keys))
    if isinstance(doc[key], list) and doc[key] and draw(st.booleans()):
        target, key = doc[key], draw(st.integers(0, len(doc[key]) - 1))
        if isinstance(target[key], dict) and draw(st.booleans()):
            target, key = target[key], draw(st.sampled_from(sorted(target[key])))
    target[key] = draw(JSON)
    return raw


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(damaged(), JSON))
def test_transform_is_total(raw: Any) -> None:
    """Any payload either transforms into valid records or is a ProtocolError; nothing else escapes."""
    try:
        batch = transform(raw, LK)
    except ProtocolError as error:
        assert str(error)
        return
    records = [*batch.entries, *batch.treatments, *batch.devicestatus]
    assert len({r.identifier for r in records}) == len(records)
    for record in records:
        json.dumps(to_nightscout(record), allow_nan=False)
    assert transform(raw, LK) == batch


def test_pump_clock_of_fixture() -> None:
    assert PumpClock.of(load("missingLastSgv")).offset_ms == -7 * HOUR
    assert PumpClock.of(load("withTrend")).offset_ms == -5 * HOUR
    assert PumpClock.of({}).offset_ms is None
