"""Glooko pages → records: local times labelled UTC, the four feeds, paging helpers, and properties."""

from __future__ import annotations

import copy
import json
import zoneinfo
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connect.errors import ProtocolError
from connect.records import iso_from_ms, to_nightscout
from sources.glooko.const import DAY_MS, FEEDS_BY_KEY
from sources.glooko.transform import Frame, Page, newest_wall, transform, utc_ms, wall_ms, wall_text

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
NOW = 1_750_000_000_000  # 2025-06-15T15:06:40Z
HOUR = 3_600_000


def frame(
    key: str, items: list[Any] | Any, *, covered: dict[str, int] | None = None, more: bool = False
) -> Frame:
    """One page of ``key`` (a list of items, or a whole body) as a frame that looked up to now."""
    body = {key: items} if isinstance(items, list) else items
    feed = FEEDS_BY_KEY[key]
    marks = {feed.collection: NOW} if covered is None else covered
    return Frame(feed=feed, pages=(Page(feed=feed, body=body),), covered=marks, more=more)


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
    batch = transform(frame("normalBoluses", items), BERLIN)
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
    (t,) = transform(frame("scheduledBasals", items), BERLIN).treatments
    assert (t.event_type, t.rate, t.absolute, t.duration) == ("Temp Basal", 0.85, 0.85, 90.0)
    assert iso_from_ms(t.date) == "2025-06-15T04:00:00.000Z"


def test_foods_are_carb_corrections() -> None:
    items = [
        {"timestamp": "2025-06-15T13:10:00.000Z", "carbs": 35, "guid": "f1"},
        {"timestamp": "x", "carbs": 0},
    ]
    (t,) = transform(frame("foods", items), BERLIN).treatments
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
    (a,) = transform(frame("readings", camel), BERLIN).entries
    (b,) = transform(frame("readings", snake), BERLIN).entries
    assert (a.sgv, a.direction, iso_from_ms(a.date)) == (123, "FortyFiveUp", "2025-06-15T11:10:00.000Z")
    assert (b.sgv, b.direction, b.date) == (123, "Flat", a.date)
    assert transform(frame("readings", camel), BERLIN).covered == {"entries": NOW}


def test_a_frame_of_several_pages_counts_a_record_once() -> None:
    items = [
        {"timestamp": wall_text(NOW - 2 * HOUR + i * 300_000, BERLIN), "value": 100 + i} for i in range(6)
    ]
    feed = FEEDS_BY_KEY["readings"]
    # the next page starts at the newest time of the last one, so that record comes twice
    pages = (Page(feed=feed, body={"readings": items[:4]}), Page(feed=feed, body={"readings": items[3:]}))
    marks = {"entries": NOW, "entries:history": NOW - DAY_MS}
    batch = transform(Frame(feed=feed, pages=pages, covered=marks, more=True), BERLIN)
    assert [e.sgv for e in batch.entries] == [100, 101, 102, 103, 104, 105]
    assert batch.covered == marks and batch.more is True
    assert batch.newest()["entries"] == NOW


def test_paging_happens_in_the_local_wall_clock() -> None:
    summer = utc("2025-06-15T10:00:00Z")
    assert wall_ms(summer, BERLIN) == utc("2025-06-15T12:00:00Z")
    assert wall_ms(summer, timezone(timedelta(hours=-5))) == utc("2025-06-15T05:00:00Z")
    items = [{"pumpTimestamp": "2025-06-15T12:00:00.000Z", "insulinDelivered": 1},
             {"pumpTimestamp": "2025-06-15T13:30:00.000+02:00", "insulinDelivered": 1, "softDeleted": True},
             {"insulinDelivered": 1}]  # fmt: skip
    # soft-deleted items fill pages too; a stated offset is ignored, as Glooko's labels lie
    newest = newest_wall(Page(feed=FEEDS_BY_KEY["normalBoluses"], body={"normalBoluses": items}))
    assert newest == utc("2025-06-15T13:30:00Z")
    assert newest_wall(Page(feed=FEEDS_BY_KEY["foods"], body={"foods": []})) is None


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
    feed = FEEDS_BY_KEY[key]
    with pytest.raises(ProtocolError):
        transform(Frame(feed=feed, pages=(Page(feed=feed, body=body),)), BERLIN)


def test_not_a_frame() -> None:
    with pytest.raises(ProtocolError):
        transform({"readings": []}, BERLIN)
    readings, foods = FEEDS_BY_KEY["readings"], FEEDS_BY_KEY["foods"]
    with pytest.raises(ProtocolError):
        transform(Frame(feed=readings, pages=(Page(feed=foods, body={"foods": []}),)), BERLIN)


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
def feed_pages(draw: st.DrawFn) -> tuple[Frame, tzinfo, dict[tuple[int, str], Any]]:
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
    feed = FEEDS_BY_KEY[key]
    # the items split over pages as paging would: the next page repeats the newest time
    cut = draw(st.integers(0, len(items)))
    bodies = [items] if cut in (0, len(items)) else [items[:cut], items[max(0, cut - 1) :]]
    pages = tuple(Page(feed=feed, body={key: b}) for b in bodies)
    covered = {feed.collection: start + DAY_MS, feed.collection + ":history": start}
    return Frame(feed=feed, pages=pages, covered=covered, more=draw(st.booleans())), zone, truth


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
def test_transform_recovers_the_truth(case: tuple[Frame, tzinfo, dict[tuple[int, str], Any]]) -> None:
    pg, zone, truth = case
    before = copy.deepcopy([page.body for page in pg.pages])
    batch = transform(pg, zone)
    assert [page.body for page in pg.pages] == before
    assert _observed(batch) == truth
    assert transform(pg, zone) == batch
    records = [*batch.entries, *batch.treatments]
    assert len({r.identifier for r in records}) == len(records)
    assert batch.covered == pg.covered and batch.more == pg.more
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
def damaged_pages(draw: st.DrawFn) -> tuple[Frame, tzinfo]:
    pg, zone, _truth = draw(feed_pages())
    body = copy.deepcopy(pg.pages[0].body)
    items = body[pg.feed.key]
    if items and draw(st.booleans()):
        item = draw(st.sampled_from(items))
        item[draw(st.sampled_from(sorted(item)))] = draw(JSON)
    else:
        body = draw(st.one_of(JSON, st.fixed_dictionaries({pg.feed.key: JSON})))
    return attrs.evolve(pg, pages=(Page(feed=pg.feed, body=body), *pg.pages[1:])), zone


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_pages())
def test_transform_is_total(case: tuple[Frame, tzinfo]) -> None:
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
