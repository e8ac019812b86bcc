"""Hypothesis: generated LibreLinkUp graph payloads, valid and malformed.

Properties: the transform is pure and idempotent, its records are valid (sgv an int in range,
epoch-ms dates, known directions) with unique identifiers and only newer than last_known, and
any payload it cannot use is a ProtocolError — never another exception."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connect.contract import LastKnown
from connect.errors import ProtocolError
from connect.records import DIRECTIONS, SGV_RANGE, Batch, Entry, to_nightscout
from sources.linkup import direction_for, transform
from sources.linkup.const import OVERLAP_MS

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOW, HIGH = 946_684_800_000, 4_102_444_800_000
LIBRE_DIRECTIONS = {"SingleDown", "FortyFiveDown", "Flat", "FortyFiveUp", "SingleUp", "NOT COMPUTABLE"}

moments = st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2098, 12, 31)).map(
    lambda d: d.replace(microsecond=0, tzinfo=UTC)
)


@st.composite
def llu_time(draw: st.DrawFn, moment: datetime | None = None) -> str:
    """A moment in the service's format, with or without the zero padding some clients add."""
    m = draw(moments) if moment is None else moment
    pad = draw(st.booleans())
    hour = m.hour % 12 or 12
    half = "PM" if m.hour >= 12 else "AM"
    if pad:
        return f"{m.month:02d}/{m.day:02d}/{m.year} {hour:02d}:{m.minute:02d}:{m.second:02d} {half}"
    return f"{m.month}/{m.day}/{m.year} {hour}:{m.minute:02d}:{m.second:02d} {half}"


def ms_of(text: str) -> int:
    return int(datetime.strptime(text, "%m/%d/%Y %I:%M:%S %p").replace(tzinfo=UTC).timestamp() * 1000)


@st.composite
def glucose_item(draw: st.DrawFn, *, current: bool, near: datetime | None = None) -> dict[str, Any]:
    moment = None
    if near is not None:
        moment = near.fromtimestamp(near.timestamp() - draw(st.integers(0, 13 * 3600)), tz=UTC)
    stamp = draw(llu_time(moment))
    mgdl = draw(
        st.one_of(st.integers(20, 520), st.floats(20, 520, allow_nan=False).map(lambda v: round(v, 1)))
    )
    units = draw(st.sampled_from([0, 1]))
    item: dict[str, Any] = {
        "FactoryTimestamp": stamp,
        "Timestamp": draw(llu_time()),
        "type": 1 if current else 0,
        "ValueInMgPerDl": mgdl,
        "MeasurementColor": draw(st.integers(1, 4)),
        "GlucoseUnits": units,
        "Value": mgdl if units else round(mgdl / 18.0, 1),
        "isHigh": draw(st.booleans()),
        "isLow": draw(st.booleans()),
    }
    if current:
        item["TrendArrow"] = draw(st.integers(0, 5))
        item["TrendMessage"] = None
    if draw(st.integers(0, 20)) == 0:
        del item["ValueInMgPerDl"]  # an alarm marker: skipped, not an error
    return item


@st.composite
def graph_payload(draw: st.DrawFn) -> dict[str, Any]:
    anchor = draw(moments)
    history = draw(st.lists(glucose_item(current=False, near=anchor), max_size=40))
    current = draw(st.one_of(st.none(), glucose_item(current=True, near=anchor)))
    sensor = draw(
        st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {"deviceId": st.just(""), "sn": st.text(max_size=10), "a": st.integers(0, 4_000_000_000),
                 "w": st.integers(0, 120), "pt": st.integers(0, 6)}
            ),
        )
    )  # fmt: skip
    device = draw(
        st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {"did": st.text(max_size=8), "dtid": st.integers(40000, 41000), "v": st.text(max_size=6),
                 "ll": st.integers(40, 100), "hl": st.integers(120, 400), "u": st.integers(0, 4_000_000_000),
                 "alarms": st.booleans()}
            ),
        )
    )  # fmt: skip
    connection: dict[str, Any] = {
        "id": "53a2a8d5-3864-4519-af47-496becf9a17a",
        "patientId": "9dfd0d64-4863-4775-9438-712fa68787df",
        "sensor": sensor,
        "patientDevice": device,
        "glucoseMeasurement": current,
        "glucoseItem": current,
    }
    return {
        "status": 0,
        "data": {"connection": connection, "activeSensors": [], "graphData": history},
        "ticket": {"token": "t", "expires": 1, "duration": 1},
    }


@st.composite
def last_known(draw: st.DrawFn, payload: dict[str, Any]) -> LastKnown:
    """A checkpoint somewhere around the payload's readings, and a 'now' after them."""
    stamps = [i["FactoryTimestamp"] for i in payload["data"]["graphData"]]
    current = payload["data"]["connection"]["glucoseMeasurement"]
    if current is not None:
        stamps.append(current["FactoryTimestamp"])
    times = sorted(ms_of(s) for s in stamps) or [1_700_000_000_000]
    now = times[-1] + draw(st.integers(-20 * 60_000, 3_600_000))
    values: dict[str, int] = {}
    if draw(st.booleans()):
        values["entries"] = draw(st.sampled_from(times)) + draw(st.integers(-1, 1))
    if draw(st.booleans()):
        values["treatments"] = draw(st.integers(LOW, HIGH))
    return LastKnown(
        values=values, backfill_from=times[0] - draw(st.integers(-3_600_000, 86_400_000)), now=now
    )


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += paths(value, (*prefix, index))
    return out


junk = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=30),
    st.sampled_from(["13/45/2022 1:00:00 PM", "2/29/2023 1:00:00 AM", "1/1/2022 0:00:00 AM", "NaN", "1e999",
                     "5/21/2022 1:38:50", "5/21/1999 1:38:50 PM"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)  # fmt: skip


@st.composite
def malformed_payload(draw: st.DrawFn) -> Any:
    payload = draw(graph_payload())
    for _ in range(draw(st.integers(1, 3))):
        # the whole payload as junk is json_values' job; here the damage is somewhere inside
        path = draw(st.sampled_from(paths(payload)[1:]))
        parent = payload
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(junk)
    return payload


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def check_batch(batch: Batch, lk: LastKnown) -> None:
    assert isinstance(batch, Batch)
    identifiers = [
        r.identifier for c in ("entries", "treatments", "devicestatus", "profile") for r in batch.records(c)
    ]  # type: ignore[arg-type]
    assert len(identifiers) == len(set(identifiers))
    for entry in batch.entries:
        assert isinstance(entry, Entry) and entry.type == "sgv"
        assert isinstance(entry.sgv, int) and SGV_RANGE[0] <= entry.sgv <= SGV_RANGE[1]
        assert isinstance(entry.date, int) and LOW <= entry.date <= HIGH
        # new readings, and late history points of the overlap before the checkpoint
        assert entry.date > min(lk.get("entries"), max(lk.get("entries") - OVERLAP_MS, lk.backfill_from))
        assert entry.direction is None or entry.direction in LIBRE_DIRECTIONS
        json.dumps(to_nightscout(entry))
    dates = [e.date for e in batch.entries]
    assert dates == sorted(dates) and len(dates) == len(set(dates))
    for record in (*batch.treatments, *batch.devicestatus):
        assert LOW <= record.date <= HIGH
        json.dumps(to_nightscout(record), allow_nan=False)


@SETTINGS
@given(data=st.data(), payload=graph_payload(), sensor_info=st.booleans())
def test_valid_payloads_transform_purely_and_idempotently(
    data: st.DataObject, payload: dict[str, Any], sensor_info: bool
) -> None:
    lk = data.draw(last_known(payload))
    before = copy.deepcopy(payload)
    batch = transform(payload, lk, sensor_info=sensor_info)
    assert payload == before  # pure: the payload is not touched
    assert transform(payload, lk, sensor_info=sensor_info) == batch  # deterministic
    check_batch(batch, lk)
    # exactly the usable readings newer than last_known (one per moment, current wins), and
    # history points of the half hour before a stored checkpoint, but for the one at it
    current = payload["data"]["connection"]["glucoseMeasurement"]
    items = [*payload["data"]["graphData"], *([current] if current else [])]
    after = lk.get("entries")
    expected: dict[int, Any] = {}
    for item in items:
        value = item.get("ValueInMgPerDl")
        t = ms_of(item["FactoryTimestamp"])
        if value is None or not 1 <= round(value) <= 1000 or t > lk.now + 15 * 60_000:
            continue
        floor = min(after, max(after - OVERLAP_MS, lk.backfill_from))
        late = lk.has("entries") and floor < t < after
        # a late history point, or the current reading of the same moment (with its arrow)
        if after < t or (late and (item is not current or t in expected)):
            expected[t] = item
    assert [e.date for e in batch.entries] == sorted(expected)
    for entry in batch.entries:
        item = expected[entry.date]
        assert entry.sgv == int(round(item["ValueInMgPerDl"]))
        if item is current:
            assert entry.direction == direction_for(item["TrendArrow"])
    if not sensor_info:
        assert batch.treatments == () and batch.devicestatus == ()
    # idempotent: from the checkpoint this batch vouches for, nothing is new; what the overlap
    # writes again is what the batch wrote (an upsert that changes nothing), or a history point
    # from before the batch's own checkpoint (one the store held already)
    values = dict(lk.values)
    for key, value in batch.newest().items():
        values[key] = max(value, values.get(key, value))  # as the store keeps them: never back
    advanced = LastKnown(values=values, backfill_from=lk.backfill_from, now=lk.now)
    again = transform(payload, advanced, sensor_info=sensor_info)
    assert again.treatments == () and again.devicestatus == ()
    written = {e.date: e for e in batch.entries}
    # with the current readings remembered, none is rewritten without its arrow
    recent = {e.date: e for e in batch.entries if e.direction is not None}
    for rerun in (again, transform(payload, advanced, sensor_info=sensor_info, recent=recent)):
        for entry in rerun.entries:
            assert written.get(entry.date, entry) == entry
            assert entry.date in written or (lk.has("entries") and entry.date <= lk.get("entries"))


@SETTINGS
@given(payload=st.one_of(malformed_payload(), json_values), sensor_info=st.booleans())
def test_malformed_payloads_are_protocol_errors_or_valid_batches(payload: Any, sensor_info: bool) -> None:
    lk = LastKnown(values={}, backfill_from=LOW, now=HIGH - 3_600_000)
    before = copy.deepcopy(payload)
    try:
        batch = transform(payload, lk, sensor_info=sensor_info)
    except ProtocolError as error:
        assert error.retryable and str(error)
        return
    finally:
        assert repr(payload) == repr(before)
    check_batch(batch, lk)


@SETTINGS
@given(value=json_values)
def test_any_trend_arrow_gives_a_known_direction(value: Any) -> None:
    assert direction_for(value) in DIRECTIONS


def test_malformed_shapes_are_caught() -> None:
    lk = LastKnown(values={}, backfill_from=LOW, now=HIGH - 3_600_000)
    good = {"FactoryTimestamp": "5/21/2022 1:38:50 PM", "ValueInMgPerDl": 91}
    for payload in (
        None, [], "x", {"data": []}, {"data": {"graphData": {}}}, {"data": {"graphData": ["x"]}},
        {"data": {"graphData": [{**good, "ValueInMgPerDl": "91"}]}},
        {"data": {"graphData": [{**good, "ValueInMgPerDl": float("nan")}]}},
        {"data": {"graphData": [{**good, "ValueInMgPerDl": True}]}},
        {"data": {"graphData": [{**good, "FactoryTimestamp": None}]}},
        {"data": {"connection": [], "graphData": []}},
        {"data": {"connection": {"glucoseMeasurement": 5}, "graphData": []}},
    ):  # fmt: skip
        try:
            transform(payload, lk)
        except ProtocolError:
            continue
        raise AssertionError(f"accepted {payload!r}")
    # skipped, not errors: an alarm marker without a value, and a value no sensor reports
    fine = {"data": {"graphData": [{"FactoryTimestamp": good["FactoryTimestamp"], "alarmType": 1},
                                   {**good, "ValueInMgPerDl": 0}, good]}}  # fmt: skip
    assert [e.sgv for e in transform(fine, lk).entries] == [91]
