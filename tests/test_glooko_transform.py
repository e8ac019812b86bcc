"""Glooko pages → records: local times labelled UTC, the four feeds, windows, and properties."""

from __future__ import annotations

import copy
import json
import zoneinfo
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connect.contract import LastKnown
from connect.errors import ProtocolError
from connect.records import iso_from_ms, to_nightscout
from sources.glooko.const import DAY_MS, FEEDS_BY_KEY, PAGE_LIMIT, SYNC_OVERLAP_MS
from sources.glooko.transform import Page, transform, utc_ms, wall_text, window

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
NOW = 1_750_000_000_000  # 2025-06-15T15:06:40Z
HOUR = 3_600_000


def page(key: str, items: list[Any] | Any, *, start: int = NOW - DAY_MS, end: int = NOW, now: int = NOW,
         limit: int = PAGE_LIMIT) -> Page:  # fmt: skip
    body = {key: items} if isinstance(items, list) else items
    return Page(feed=FEEDS_BY_KEY[key], start=start, end=end, now=now, limit=limit, body=body)


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


# --- time ---------------------------------------------------------------------------------------


def test_local_times_labelled_utc_are_read_in_the_zone() -> None:
    assert utc_ms("2023-06-15T12:07:30.000Z", BERLIN, what="t") == utc("2023-06-15T10:07:30Z")  # CEST
    assert utc_ms("2023-01-15T12:07:30.000Z", BERLIN, what="t") == utc("2023-01-15T11:07:30Z")  # CET
    assert utc_ms("2023-06-15T12:07:30.250+00:00", BERLIN, what="t") == utc("2023-06-15T10:07:30.250Z")
    # the legacy fixed offset (CONNECT_GLOOKO_TIMEZONE_OFFSET=-5)
    assert utc_ms("2023-06-15T12:07:30Z", timezone(timedelta(hours=-5)), what="t") == utc(
        "2023-06-15T17:07:30Z"
    )
    # the hour that happens twice: the first (summer) one
    assert utc_ms("2023-10-29T02:30:00.000Z", BERLIN, what="t") == utc("2023-10-29T00:30:00Z")
    assert wall_text(utc("2023-06-15T10:07:30.125Z"), BERLIN) == "2023-06-15T12:07:30.125Z"
    for bad in ("yesterday", "2023-02-30T10:00:00Z", 1686823650000, None):
        with pytest.raises(ProtocolError):
            utc_ms(bad, BERLIN, what="t")


# --- the feeds ------------------------------------------------------------------------------------


def test_normal_boluses() -> None:
    items = [
        {"pumpTimestamp": "2025-06-15T08:00:00.000Z", "pumpTimestampUtcOffset": "+00:00", "insulinDelivered": 4.5,
         "carbsInput": 45, "guid": "g1", "softDeleted": False},
        {"pumpTimestamp": "2025-06-15T09:00:00.000Z", "insulinDelivered": 1.2, "carbsInput": 0, "guid": "g2"},
        {"pumpTimestamp": "2025-06-15T09:00:00.000Z", "insulinDelivered": 9, "carbsInput": 0, "guid": "g2x",
         "softDeleted": True},
        {"pumpTimestamp": "2025-06-15T10:00:00.000Z", "insulinDelivered": 0, "carbsInput": 0},
    ]  # fmt: skip
    batch = transform(page("normalBoluses", items), BERLIN)
    got = [(iso_from_ms(t.date), t.event_type, t.insulin, t.carbs, dict(t.extra)) for t in batch.treatments]
    assert got == [
        ("2025-06-15T06:00:00.000Z", "Meal Bolus", 4.5, 45.0, {"glookoGuid": "g1"}),
        ("2025-06-15T07:00:00.000Z", "Correction Bolus", 1.2, None, {"glookoGuid": "g2"}),
    ]
    assert batch.covered == {"treatments": NOW} and batch.more is False
    doc = to_nightscout(batch.treatments[0])
    assert doc["created_at"] == "2025-06-15T06:00:00.000Z" and doc["glookoGuid"] == "g1"


def test_scheduled_basals_are_temp_basals_in_minutes() -> None:
    items = [{"pumpTimestamp": "2025-06-15T06:00:00.000Z", "startTime": 21600, "duration": 5400, "rate": 0.85,
              "segmentId": 3, "guid": "b1"}]  # fmt: skip
    (t,) = transform(page("scheduledBasals", items), BERLIN).treatments
    assert (t.event_type, t.rate, t.absolute, t.duration) == ("Temp Basal", 0.85, 0.85, 90.0)
    assert iso_from_ms(t.date) == "2025-06-15T04:00:00.000Z"


def test_foods_are_carb_corrections() -> None:
    items = [
        {"timestamp": "2025-06-15T13:10:00.000Z", "carbs": 35, "guid": "f1"},
        {"timestamp": "x", "carbs": 0},
    ]
    (t,) = transform(page("foods", items), BERLIN).treatments
    assert (t.event_type, t.carbs, iso_from_ms(t.date)) == (
        "Carb Correction",
        35.0,
        "2025-06-15T11:10:00.000Z",
    )


def test_readings_in_both_shapes() -> None:
    camel = [{"timestamp": "2025-06-15T13:10:00.000Z", "value": 123, "trend": "FortyFiveUp", "guid": "r1"}]
    snake = [{"display_time": "2025-06-15T13:10:00.000Z", "bg_value": 12300, "trend": "FLAT", "guid": "r1",
              "soft_deleted": False},
             {"display_time": "2025-06-15T13:15:00.000Z", "bg_value": 12500, "soft_deleted": True}]  # fmt: skip
    (a,) = transform(page("readings", camel), BERLIN).entries
    (b,) = transform(page("readings", snake), BERLIN).entries
    assert (a.sgv, a.direction, iso_from_ms(a.date)) == (123, "FortyFiveUp", "2025-06-15T11:10:00.000Z")
    assert (b.sgv, b.direction, b.date) == (123, "Flat", a.date)
    assert transform(page("readings", camel), BERLIN).covered == {"entries": NOW}


def test_pages_say_how_far_they_looked() -> None:
    empty = transform(page("foods", [], start=NOW - 3 * DAY_MS, end=NOW - 2 * DAY_MS), BERLIN)
    assert empty.covered == {"treatments": NOW - 2 * DAY_MS} and empty.more is True
    items = [
        {"timestamp": wall_text(NOW - 2 * HOUR + i * 300_000, BERLIN), "value": 100 + i} for i in range(4)
    ]
    full = transform(page("readings", items, limit=4), BERLIN)
    assert full.more is True and full.covered == {"entries": NOW - 2 * HOUR + 3 * 300_000}
    assert len(full.entries) == 4


def test_window_live_backfill_and_first_start() -> None:
    lookback = 14
    first = LastKnown(values={}, backfill_from=NOW - 30 * DAY_MS, now=NOW)
    assert window(first, "entries", lookback_days=lookback) == (NOW - 14 * DAY_MS, NOW - 13 * DAY_MS)
    behind = LastKnown(values={"entries": NOW - 5 * DAY_MS}, backfill_from=0, now=NOW)
    assert window(behind, "entries", lookback_days=lookback) == (NOW - 5 * DAY_MS, NOW - 4 * DAY_MS)
    live = LastKnown(values={"entries": NOW - 60_000}, backfill_from=0, now=NOW)
    assert window(live, "entries", lookback_days=lookback) == (NOW - SYNC_OVERLAP_MS, NOW)


@pytest.mark.parametrize(
    ("key", "body"),
    [
        ("readings", None), ("readings", []), ("readings", {"readings": {}}), ("readings", {"other": []}),
        ("readings", {"readings": [1]}),
        ("readings", {"readings": [{"timestamp": "2025-06-15T13:10:00Z", "value": "high"}]}),
        ("readings", {"readings": [{"timestamp": "2025-06-15T13:10:00Z", "value": -4}]}),
        ("readings", {"readings": [{"timestamp": "2025-06-15T13:10:00Z", "value": 5_000_000}]}),
        ("readings", {"readings": [{"timestamp": 1750000000, "value": 100}]}),
        ("normalBoluses", {"normalBoluses": [{"pumpTimestamp": "2025-06-15T13:10:00Z", "insulinDelivered": True}]}),
        ("scheduledBasals", {"scheduledBasals": [{"pumpTimestamp": "2025-06-15T13:10:00Z", "rate": 1}]}),
        ("foods", {"foods": [{"timestamp": "1999-06-15T13:10:00Z", "carbs": 10}]}),
    ],
)  # fmt: skip
def test_malformed_pages_are_protocol_errors(key: str, body: Any) -> None:
    with pytest.raises(ProtocolError):
        transform(Page(feed=FEEDS_BY_KEY[key], start=NOW - DAY_MS, end=NOW, now=NOW, body=body), BERLIN)


def test_not_a_page() -> None:
    with pytest.raises(ProtocolError):
        transform({"readings": []}, BERLIN)


# --- properties -------------------------------------------------------------------------------------

ZONES: list[tzinfo] = [
    zoneinfo.ZoneInfo(name)
    for name in (
        "Europe/Berlin",
        "America/New_York",
        "Australia/Adelaide",
        "Asia/Kolkata",
        "UTC",
        "Pacific/Auckland",
    )
] + [timezone(timedelta(hours=-3)), timezone(timedelta(hours=9, minutes=30))]


@st.composite
def feed_pages(draw: st.DrawFn) -> tuple[Page, tzinfo, dict[tuple[int, str], Any]]:
    """A page built from known truth: (page, zone, (UTC time, kind) → value)."""
    zone = draw(st.sampled_from(ZONES))
    key = draw(st.sampled_from(sorted(FEEDS_BY_KEY)))
    start = draw(st.integers(1_500_000_000, 1_900_000_000)) * 1000
    times = sorted(draw(st.sets(st.integers(0, 86_399), max_size=25)))
    truth: dict[tuple[int, str], Any] = {}
    items: list[dict[str, Any]] = []
    for offset in times:
        t = start + offset * 1000
        wall = wall_text(t, zone)
        if utc_ms(wall, zone, what="t") != t:
            continue  # the repeated autumn hour: such a wall time is ambiguous on the wire too
        if key == "readings":
            sgv = draw(st.integers(40, 400))
            if draw(st.booleans()):
                items.append({"display_time": wall, "bg_value": sgv * 100})  # mg/dL × 100
            else:
                items.append({"timestamp": wall, "value": sgv})
            truth[(t, "sgv")] = sgv
        elif key == "normalBoluses":
            insulin = draw(st.integers(1, 200)) / 20
            carbs = draw(st.sampled_from([0, 0, 15, 40]))
            items.append({"pumpTimestamp": wall, "insulinDelivered": insulin, "carbsInput": carbs})
            truth[(t, "Meal Bolus" if carbs else "Correction Bolus")] = (insulin, carbs or None)
        elif key == "scheduledBasals":
            rate, seconds = draw(st.integers(0, 60)) / 20, draw(st.integers(60, 86_400))
            items.append({"pumpTimestamp": wall, "rate": rate, "duration": seconds})
            truth[(t, "Temp Basal")] = (rate, round(seconds / 60, 3))
        else:
            carbs = draw(st.integers(1, 150))
            items.append({"timestamp": wall, "carbs": carbs})
            truth[(t, "Carb Correction")] = carbs
        if draw(st.integers(0, 9)) == 0:  # a soft-deleted twin with other values
            twin = dict(items[-1], softDeleted=True)
            items.append(twin)
    end = start + DAY_MS
    now = end + draw(st.integers(0, 2 * DAY_MS))
    return Page(feed=FEEDS_BY_KEY[key], start=start, end=end, now=now, body={key: items}), zone, truth


def _observed(batch: Any) -> dict[tuple[int, str], Any]:
    out: dict[tuple[int, str], Any] = {}
    for e in batch.entries:
        out[(e.date, "sgv")] = e.sgv
    for t in batch.treatments:
        if t.event_type in ("Meal Bolus", "Correction Bolus"):
            out[(t.date, t.event_type)] = (t.insulin, t.carbs)
        elif t.event_type == "Temp Basal":
            out[(t.date, t.event_type)] = (t.rate, t.duration)
        else:
            out[(t.date, t.event_type)] = t.carbs
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feed_pages())
def test_transform_recovers_the_truth(case: tuple[Page, tzinfo, dict[tuple[int, str], Any]]) -> None:
    pg, zone, truth = case
    before = copy.deepcopy(pg.body)
    batch = transform(pg, zone)
    assert pg.body == before
    assert _observed(batch) == truth
    assert transform(pg, zone) == batch
    records = [*batch.entries, *batch.treatments]
    assert len({r.identifier for r in records}) == len(records)
    assert batch.covered == {pg.feed.collection: pg.end} and batch.more == (pg.end < pg.now)
    for record in records:
        json.dumps(to_nightscout(record), allow_nan=False)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def damaged_pages(draw: st.DrawFn) -> tuple[Page, tzinfo]:
    pg, zone, _truth = draw(feed_pages())
    body = copy.deepcopy(pg.body)
    items = body[pg.feed.key]
    if items and draw(st.booleans()):
        item = draw(st.sampled_from(items))
        item[draw(st.sampled_from(sorted(item)))] = draw(JSON)
    else:
        body = draw(st.one_of(JSON, st.fixed_dictionaries({pg.feed.key: JSON})))
    return Page(feed=pg.feed, start=pg.start, end=pg.end, now=pg.now, body=body), zone


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_pages())
def test_transform_is_total(case: tuple[Page, tzinfo]) -> None:
    pg, zone = case
    try:
        batch = transform(pg, zone)
    except ProtocolError as error:
        assert str(error)
        return
    records = [*batch.entries, *batch.treatments]
    for record in records:
        json.dumps(to_nightscout(record), allow_nan=False)
    assert transform(pg, zone) == batch


def test_zone_round_trip_outside_the_repeated_hour() -> None:
    """Every hour of a year survives UTC → Glooko wall clock → UTC, but the autumn's repeated one."""
    start = utc("2024-01-01T00:00:00Z")
    repeated = 0
    for hours in range(24 * 366):
        t = start + hours * HOUR
        if datetime.fromtimestamp(t / 1000, tz=UTC).astimezone(BERLIN).fold:
            repeated += 1
            assert utc_ms(wall_text(t, BERLIN), BERLIN, what="t") == t - HOUR
        else:
            assert utc_ms(wall_text(t, BERLIN), BERLIN, what="t") == t
    assert repeated == 1
