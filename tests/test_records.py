"""Records: validation, stable identifiers, Nightscout JSON both ways."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connect.records import (
    DIRECTIONS,
    Batch,
    DeviceStatus,
    Entry,
    Profile,
    Treatment,
    from_nightscout,
    iso_from_ms,
    make_identifier,
    ms_from_iso,
    to_nightscout,
)

dates = st.integers(min_value=946_684_800_000, max_value=4_102_444_800_000)
entries = st.builds(
    Entry,
    type=st.just("sgv"),
    date=dates,
    device=st.text(min_size=1, max_size=20),
    sgv=st.integers(min_value=1, max_value=1000),
    direction=st.sampled_from(sorted(DIRECTIONS)) | st.none(),
)


@given(entries)
@settings(max_examples=200, deadline=None)
def test_entry_round_trips_through_nightscout_json(entry: Entry) -> None:
    doc = to_nightscout(entry)
    assert doc["dateString"] == iso_from_ms(entry.date)
    assert ms_from_iso(doc["dateString"]) == entry.date
    assert doc["identifier"] == entry.identifier
    assert from_nightscout("entries", doc) == entry


@given(dates)
def test_iso_round_trip(ms: int) -> None:
    assert ms_from_iso(iso_from_ms(ms)) == ms
    assert iso_from_ms(ms).endswith("Z")


def test_identifier_is_nightscout_v3_uuid5() -> None:
    # uuid5(namespace = bytes of "NightscoutRocks!", name = device_date_type)
    assert make_identifier("dev", 1, "sgv") == make_identifier("dev", 1, "sgv")
    e1 = Entry(type="sgv", date=1_700_000_000_000, device="a", sgv=100)
    e2 = Entry(type="sgv", date=1_700_000_000_000, device="a", sgv=101)
    e3 = Entry(type="mbg", date=1_700_000_000_000, device="a", mbg=101)
    assert e1.identifier == e2.identifier  # same reading, corrected value: one record
    assert e1.identifier != e3.identifier  # an mbg at the same time is another record


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"type": "sgv", "date": 1_700_000_000_000, "device": "d", "sgv": None}, "sgv"),
        ({"type": "sgv", "date": 1_700_000_000, "device": "d", "sgv": 100}, "epoch-ms"),
        (
            {"type": "sgv", "date": 1_700_000_000_000, "device": "d", "sgv": 100, "direction": "Up"},
            "direction",
        ),
        ({"type": "xyz", "date": 1_700_000_000_000, "device": "d", "sgv": 100}, "type"),
    ],
)
def test_invalid_entries_are_refused(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Entry(**kwargs)  # type: ignore[arg-type]


def test_nightscout_documents_with_string_numbers_parse() -> None:
    entry = from_nightscout(
        "entries", {"type": "sgv", "sgv": "120", "date": 1_700_000_000_000, "device": "x"}
    )
    assert isinstance(entry, Entry) and entry.sgv == 120
    treatment = from_nightscout(
        "treatments",
        {"eventType": "Meal Bolus", "created_at": "2024-01-18T08:00:00.000Z", "insulin": "2.5", "pumpId": 7},
    )
    assert isinstance(treatment, Treatment) and treatment.insulin == 2.5 and treatment.extra == {"pumpId": 7}
    assert to_nightscout(treatment)["pumpId"] == 7


def test_devicestatus_and_profile_round_trip() -> None:
    ds = DeviceStatus(device="pump", date=1_700_000_000_000, payload={"pump": {"reservoir": 100}})
    assert from_nightscout("devicestatus", to_nightscout(ds)) == ds
    prof = Profile(date=1_700_000_000_000, device="ns", store={"Default": {"dia": "4"}}, units="mg/dl")
    assert from_nightscout("profile", to_nightscout(prof)) == prof


def test_batch_groups_sorts_dedupes_and_vouches_for_newest() -> None:
    a = Entry(type="sgv", date=1_700_000_600_000, device="d", sgv=100)
    b = Entry(type="sgv", date=1_700_000_300_000, device="d", sgv=110)
    t = Treatment(event_type="Note", date=1_700_000_000_000, device="d", notes="hi")
    batch = Batch.of([a, b, a, t], covered={"entries": 1_700_000_900_000})
    assert batch.entries == (b, a)
    assert len(batch) == 3
    assert batch.newest() == {"entries": 1_700_000_900_000, "treatments": 1_700_000_000_000}


@pytest.mark.parametrize(
    ("header", "expected"),
    [("120", 120.0), ("-5", 0.0), ("nan", None), ("inf", None), ("-inf", None), ("soon", None), ("", None)],
)
def test_retry_after_header_is_read_and_nonsense_ignored(header: str, expected: float | None) -> None:
    from connect.httpkit import retry_after_seconds

    response = httpx.Response(429, headers={"retry-after": header} if header else {})
    assert retry_after_seconds(response) == expected


def test_retry_after_as_an_http_date() -> None:
    from connect.httpkit import retry_after_seconds

    response = httpx.Response(503, headers={"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"})
    now = 1_792_567_650.0  # 30 seconds before that date
    assert retry_after_seconds(response, now=now) == pytest.approx(30.0)


def test_identifiers_and_times_are_pinned() -> None:
    # a changed identifier would deliver every record again: these must never move
    entry = Entry(type="sgv", date=1_700_000_000_000, device="xDrip-DexcomG6", sgv=120, direction="Flat")
    treatment = Treatment(event_type="Meal Bolus", date=1_700_000_000_000, device="pump", carbs=30.0)
    assert entry.identifier == "6aa9aca1-40fa-57fe-b237-c0a983100d88"
    assert treatment.identifier == "0f831bce-10ba-59c2-8334-33423209cfa8"
    assert iso_from_ms(1_700_000_000_000) == "2023-11-14T22:13:20.000Z"
    assert iso_from_ms(951_782_400_123) == "2000-02-29T00:00:00.123Z"  # a leap day
    assert iso_from_ms(-1) == "1969-12-31T23:59:59.999Z"


@given(st.integers(min_value=-(10**12), max_value=4_200_000_000_000))
def test_iso_times_match_the_calendar(ms: int) -> None:
    from datetime import UTC, datetime

    calendar = datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
    assert iso_from_ms(ms) == f"{calendar}{ms % 1000:03d}Z"
