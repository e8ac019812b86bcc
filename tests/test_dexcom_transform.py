"""Property tests of the Share payload transform: pure, idempotent, total, typed failures."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connect.contract import LastKnown
from connect.errors import ProtocolError
from connect.records import DIRECTIONS, SGV_RANGE, Batch, to_nightscout
from sources.dexcomshare.const import NS_DIRECTIONS, SHARE_TRENDS
from sources.dexcomshare.payload import parse_share_date, transform

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MIN_MS, MAX_MS = 946_684_800_000, 4_102_444_800_000
NOW = 1_750_000_000_000
LK = LastKnown(values={}, backfill_from=NOW - 86_400_000, now=NOW)

times = st.integers(min_value=MIN_MS, max_value=MAX_MS)
offsets = st.sampled_from(["", "-0400", "+0100", "+0000", "-0700", "+0930"])


@st.composite
def share_dates(draw: st.DrawFn, ms: int | None = None) -> str:
    value = draw(times) if ms is None else ms
    text = f"Date({value}{draw(offsets)})"
    return f"/{text}/" if draw(st.booleans()) else text


trends = st.one_of(
    st.sampled_from(SHARE_TRENDS),
    st.sampled_from(NS_DIRECTIONS),
    st.integers(min_value=0, max_value=9),
    st.integers(min_value=-5, max_value=50),  # unknown numbers → NONE
    st.text(max_size=12),  # unknown names → NONE, as the bridges do
    st.none(),
)


@st.composite
def readings(draw: st.DrawFn) -> dict[str, Any]:
    t = draw(times)
    reading: dict[str, Any] = {
        "WT": draw(share_dates(t)),
        "ST": draw(share_dates(t)),
        "DT": draw(share_dates(t)),
        "Value": draw(st.integers(min_value=SGV_RANGE[0], max_value=SGV_RANGE[1])),
    }
    trend = draw(trends)
    if trend is not None or draw(st.booleans()):
        reading["Trend"] = trend
    return reading


valid_payloads = st.lists(readings(), max_size=30)

# --- corruptions: each turns a valid payload into one the protocol does not allow ----------


def _not_a_date(draw: st.DrawFn) -> Any:
    return draw(
        st.one_of(
            st.integers(),
            st.floats(allow_nan=False),
            st.sampled_from(["", "Date()", "Date(abc)", "2025-04-19T16:43:33Z", "Date(12-34)", "(123)"]),
            st.text(max_size=20).filter(lambda s: "Date(" not in s),
            st.lists(st.integers(), max_size=2),
        )
    )


@st.composite
def malformed_payloads(draw: st.DrawFn) -> Any:
    payload = draw(st.lists(readings(), min_size=1, max_size=10))
    victim = payload[draw(st.integers(min_value=0, max_value=len(payload) - 1))]
    how = draw(st.sampled_from(["top", "item", "date", "no-date", "value", "trend", "range"]))
    if how == "top":
        return draw(st.one_of(st.none(), st.integers(), st.text(), st.dictionaries(st.text(), st.integers())))
    if how == "item":
        payload[payload.index(victim)] = draw(
            st.one_of(st.none(), st.integers(), st.text(), st.lists(st.none()))
        )
    elif how == "date":
        victim["WT"] = _not_a_date(draw)
    elif how == "no-date":
        for key in ("WT", "ST", "DT"):
            victim.pop(key, None)
    elif how == "value":
        victim["Value"] = draw(
            st.one_of(
                st.none(), st.booleans(), st.text().filter(lambda s: not s.strip().isdigit()),
                st.floats(allow_nan=True).filter(lambda f: not (f == f and float(f).is_integer())),
                st.lists(st.integers(), max_size=2),
            )
        )  # fmt: skip
    elif how == "trend":
        victim["Trend"] = draw(st.one_of(st.booleans(), st.floats(), st.lists(st.integers(), max_size=2)))
    else:  # a time no epoch-ms clock produces (seconds, or before 2000)
        victim["WT"] = f"Date({draw(st.integers(min_value=0, max_value=MIN_MS - 1))})"
    return payload


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=15,
)


def check_batch(batch: Batch, payload: list[dict[str, Any]]) -> None:
    identifiers = [e.identifier for e in batch.entries]
    assert len(identifiers) == len(set(identifiers))
    assert [e.date for e in batch.entries] == sorted(e.date for e in batch.entries)
    for entry in batch.entries:
        assert entry.type == "sgv" and entry.device == "share2"
        assert isinstance(entry.sgv, int) and not isinstance(entry.sgv, bool)
        assert SGV_RANGE[0] <= entry.sgv <= SGV_RANGE[1]
        assert isinstance(entry.date, int) and MIN_MS <= entry.date <= MAX_MS
        assert entry.direction in DIRECTIONS and entry.trend == DIRECTIONS[entry.direction]
    # every reading's time is kept (same-time duplicates collapse into one)
    assert {e.date for e in batch.entries} == {parse_share_date(r["WT"]) for r in payload}


@SETTINGS
@given(valid_payloads)
def test_valid_payloads_give_valid_unique_records(payload: list[dict[str, Any]]) -> None:
    check_batch(transform(payload, LK), payload)


@SETTINGS
@given(valid_payloads, st.integers(min_value=MIN_MS, max_value=MAX_MS))
def test_transform_is_pure_and_idempotent(payload: list[dict[str, Any]], other_now: int) -> None:
    before = copy.deepcopy(payload)
    first = transform(payload, LK)
    assert payload == before  # the input is not touched
    assert transform(payload, LK) == first  # same input, same output
    # nothing depends on the clock or the checkpoint
    assert (
        transform(payload, LastKnown(values={"entries": other_now}, backfill_from=0, now=other_now)) == first
    )
    # fetching overlapping windows again changes nothing: duplicates collapse to the same records
    assert transform(payload + payload, LK) == first
    # and the Nightscout documents of a batch are the same whichever frame produced them
    assert [to_nightscout(e) for e in transform(copy.deepcopy(payload), LK).entries] == [
        to_nightscout(e) for e in first.entries
    ]


@SETTINGS
@given(malformed_payloads())
def test_malformed_payloads_raise_protocol_error_only(payload: Any) -> None:
    try:
        transform(payload, LK)
    except ProtocolError:
        return
    raise AssertionError(f"accepted a malformed payload: {payload!r}")


@SETTINGS
@given(json_values)
def test_any_json_is_a_batch_or_a_protocol_error(value: Any) -> None:
    try:
        batch = transform(value, LK)
    except ProtocolError:
        return
    assert isinstance(batch, Batch)


def test_trend_numbers_and_names_map_to_the_same_directions() -> None:
    for number, (share_name, ns_name) in enumerate(zip(SHARE_TRENDS, NS_DIRECTIONS, strict=True)):
        for trend in (number, share_name, ns_name, share_name.upper(), str(number)):
            (entry,) = transform([{"WT": "Date(1745081013817)", "Value": 100, "Trend": trend}], LK).entries
            assert entry.direction == ns_name and entry.trend == number, trend
    (entry,) = transform([{"WT": "Date(1745081013817)", "Value": 100, "Trend": "Sideways"}], LK).entries
    assert entry.direction == "NONE"


def test_all_timestamp_forms_parse_to_the_same_ms() -> None:
    for text in ("Date(1426292016000)", "Date(1426292016000-0700)", "/Date(1426292016000-0700)/",
                 "/Date(1426292016000)/", " Date(1426292016000+0100) "):  # fmt: skip
        assert parse_share_date(text) == 1_426_292_016_000


def test_readings_without_a_glucose_value_are_skipped_not_fatal() -> None:
    payload = [
        {"WT": "Date(1745081013817)", "Value": 0, "Trend": "None"},
        {"WT": "Date(1745080713817)", "Value": 99, "Trend": 4},
    ]
    assert [e.sgv for e in transform(payload, LK).entries] == [99]


@SETTINGS
@given(valid_payloads, st.data())
def test_a_time_sent_twice_keeps_the_first_version(
    payload: list[dict[str, Any]], data: st.DataObject
) -> None:
    """The answer is newest first: of two readings with one time, the first is the server's current one."""
    if not payload:
        return
    original = data.draw(st.sampled_from(payload))
    changed = {**original, "Value": data.draw(st.integers(SGV_RANGE[0], SGV_RANGE[1])), "Trend": "DoubleUp"}
    first = transform([*payload, changed], LK)  # the change comes after: it loses
    assert first == transform(payload, LK)
    second = transform([changed, *payload], LK)  # the change comes first: it wins
    (entry,) = [e for e in second.entries if e.date == parse_share_date(original["WT"])]
    assert entry.sgv == changed["Value"] and entry.direction == "DoubleUp"
    assert len(second.entries) == len(first.entries)


@SETTINGS
@given(st.integers(0, 9), st.sampled_from(["{}", " {} ", "0{}"]))
def test_trend_numbers_sent_as_text_are_numbers(number: int, form: str) -> None:
    (entry,) = transform(
        [{"WT": "Date(1745081013817)", "Value": 100, "Trend": form.format(number)}], LK
    ).entries
    assert entry.trend == number and entry.direction == NS_DIRECTIONS[number]
