"""The alert rules (machines/alerts.py): tables of readings → decisions, and hypothesis over
generated glucose series — noise around the thresholds, gaps, backfills, restarts mid-episode."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machines.alerts import (
    GLUCOSE_KINDS,
    MIN_MS,
    AlertDecision,
    AlertMachine,
    BadState,
    ChangeEpisode,
    ClearAlert,
    RaiseAlert,
    Reading,
    Thresholds,
    in_units,
    site_thresholds,
    trend_level,
)

T0 = 1_700_000_000_000
T = Thresholds()
PROPS = settings(max_examples=80, deadline=None)


def feed(
    m: AlertMachine, sgvs: Sequence[int], *, start: int = T0, every: int = 5 * MIN_MS
) -> list[AlertDecision]:
    """Readings as they arrive live: each evaluated a minute after it was taken, then a tick."""
    out: list[AlertDecision] = []
    for i, sgv in enumerate(sgvs):
        date = start + i * every
        out += m.reading(Reading(date, sgv, "Flat"), date + MIN_MS)
        out += m.tick(date + MIN_MS)
    return out


def raises(ds: Sequence[AlertDecision], kind: str | None = None, *, first: bool = True) -> list[RaiseAlert]:
    return [
        d
        for d in ds
        if isinstance(d, RaiseAlert) and (kind is None or d.kind == kind) and (not first or d.repeat == 0)
    ]


def clears(ds: Sequence[AlertDecision], kind: str | None = None) -> list[ClearAlert]:
    return [d for d in ds if isinstance(d, ClearAlert) and (kind is None or d.kind == kind)]


def episodes(ds: Sequence[AlertDecision]) -> list[str]:
    return [d.started.kind for d in ds if isinstance(d, ChangeEpisode)]


# --- tables -----------------------------------------------------------------------------------


def test_a_low_is_raised_once_and_cleared_past_the_margin() -> None:
    m = AlertMachine()
    ds = feed(m, [100, 90, 79, 75, 78, 82, 84, 85, 90])
    assert [(d.kind, d.reading.sgv if d.reading else None) for d in raises(ds)] == [("low", 79)]
    # 82 and 84 are above 80 but within the 5 mg/dL margin: still low; 85 ends it
    assert [(d.kind, d.reading.sgv if d.reading else None) for d in clears(ds)] == [("low", 85)]
    assert episodes(ds) == ["normal", "low", "normal"]
    assert raises(ds)[0].threshold == 80


def test_urgent_thresholds_nest_inside_the_warnings() -> None:
    m = AlertMachine()
    ds = feed(m, [120, 70, 50, 52, 66, 90, 200, 270, 300, 250, 170])
    assert [d.kind for d in raises(ds)] == ["low", "urgent_low", "high", "urgent_high"]
    assert [d.kind for d in clears(ds)] == ["urgent_low", "low", "urgent_high", "high"]
    assert episodes(ds) == [
        "normal",
        "low",
        "urgent_low",
        "low",
        "normal",
        "high",
        "urgent_high",
        "high",
        "normal",
    ]


def test_an_alert_that_lasts_is_repeated_after_the_snooze() -> None:
    m = AlertMachine(Thresholds(repeat_ms=30 * MIN_MS))
    ds = feed(m, [70] * 20)  # 95 minutes low
    lows = raises(ds, "low", first=False)
    assert [d.repeat for d in lows] == [0, 1, 2, 3]
    assert [d.at - lows[0].at for d in lows] == [0, 30 * MIN_MS, 60 * MIN_MS, 90 * MIN_MS]
    assert {d.since for d in lows} == {lows[0].at}


def test_trend_alerts_from_arrows_with_hysteresis() -> None:
    m = AlertMachine()
    arrows = [
        "Flat",
        "SingleDown",
        "DoubleDown",
        "SingleDown",
        "DoubleDown",
        "FortyFiveDown",
        "DoubleUp",
        "Flat",
    ]
    ds: list[AlertDecision] = []
    for i, arrow in enumerate(arrows):
        date = T0 + i * 5 * MIN_MS
        ds += m.reading(Reading(date, 150, arrow), date)
    assert [(d.kind, d.reading.direction if d.reading else None) for d in raises(ds)] == [
        ("falling_fast", "DoubleDown"),
        ("rising_fast", "DoubleUp"),
    ]
    assert [(d.kind, d.reading.direction if d.reading else None) for d in clears(ds)] == [
        ("falling_fast", "FortyFiveDown"),
        ("rising_fast", "Flat"),
    ]


def test_trend_without_an_arrow_comes_from_the_change_per_minute() -> None:
    before = Reading(T0, 150)
    assert trend_level(Reading(T0 + 5 * MIN_MS, 134, None), before, T) == -2  # −3.2 /min
    assert trend_level(Reading(T0 + 5 * MIN_MS, 140, "NOT COMPUTABLE"), before, T) == -1
    assert trend_level(Reading(T0 + 5 * MIN_MS, 151, None), before, T) == 0
    assert trend_level(Reading(T0 + 5 * MIN_MS, 170, None), before, T) == 2
    assert trend_level(Reading(T0 + 30 * MIN_MS, 10, None), before, T) is None  # too far apart
    assert trend_level(Reading(T0 + 5 * MIN_MS, 10, "DoubleUp"), before, T) == 2  # the arrow wins


def test_stale_and_urgent_stale_on_the_clock_and_over_with_the_next_reading() -> None:
    m = AlertMachine()
    m.reading(Reading(T0, 120, "Flat"), T0)
    assert m.tick(T0) == []
    assert m.deadline(T0) == T0 + 15 * MIN_MS
    ds = m.tick(T0 + 15 * MIN_MS)
    assert [d.kind for d in raises(ds)] == ["stale"]
    assert episodes(ds) == ["stale"]
    assert [d.announce for d in ds if isinstance(d, ChangeEpisode)] == [True]
    assert m.deadline(T0 + 15 * MIN_MS) == T0 + 30 * MIN_MS
    ds = m.tick(T0 + 30 * MIN_MS)
    assert [d.kind for d in raises(ds)] == ["urgent_stale"]
    back = T0 + 40 * MIN_MS
    ds = m.reading(Reading(back, 110, "Flat"), back) + m.tick(back)
    assert episodes(ds) == ["normal"]
    assert sorted(d.kind for d in clears(ds)) == ["stale", "urgent_stale"]
    assert m.deadline(back) == back + 15 * MIN_MS


def test_history_never_raises_but_moves_the_episodes() -> None:
    m = AlertMachine()
    # a day-old backfill full of lows, evaluated now
    now = T0 + 2 * 86_400_000
    ds: list[AlertDecision] = []
    for i, sgv in enumerate([100, 60, 50, 60, 100, 250]):
        ds += m.reading(Reading(T0 + i * 5 * MIN_MS, sgv, "Flat"), now)
    assert raises(ds) == []
    assert episodes(ds) == ["normal", "low", "urgent_low", "low", "normal", "high"]
    assert not any(d.announce for d in ds if isinstance(d, ChangeEpisode))
    # the clock sees that the newest reading is two days old: that is news
    ds = m.tick(now)
    assert sorted(d.kind for d in raises(ds)) == ["stale", "urgent_stale"]


def test_a_backfill_whose_newest_reading_is_low_raises_once() -> None:
    m = AlertMachine()
    now = T0 + 3 * 3_600_000
    readings = [
        Reading(now - (35 - i) * 5 * MIN_MS, sgv, "Flat")
        for i, sgv in enumerate([60] * 10 + [120] * 20 + [60] * 6)
    ]
    ds: list[AlertDecision] = []
    for r in readings:
        ds += m.reading(r, now)
    ds += m.tick(now)
    # only the newest readings (within 15 minutes) may raise it: it is raised on the first of them
    assert [(d.kind, d.reading.date if d.reading else 0) for d in raises(ds)] == [("low", now - 15 * MIN_MS)]


def test_a_gap_in_history_is_a_silent_stale_episode() -> None:
    m = AlertMachine()
    now = T0 + 86_400_000
    ds = m.reading(Reading(T0, 120), now) + m.reading(Reading(T0 + 40 * MIN_MS, 125), now)
    assert episodes(ds) == ["normal", "stale", "normal"]
    changes = [d for d in ds if isinstance(d, ChangeEpisode)]
    assert (
        changes[1].started.start == T0
        and changes[2].ended is not None
        and changes[2].ended.end == T0 + 40 * MIN_MS
    )


def test_older_and_repeated_readings_change_nothing() -> None:
    m = AlertMachine()
    feed(m, [70, 70])
    state = m.to_state()
    assert m.reading(Reading(T0, 40, "Flat"), T0 + 10 * MIN_MS) == []
    assert m.reading(Reading(T0 - MIN_MS, 40, "Flat"), T0 + 10 * MIN_MS) == []
    assert m.reading(Reading(T0 + 20 * MIN_MS, 12, "Flat"), T0 + 20 * MIN_MS) == []  # an error code
    assert m.to_state() == state


def test_state_round_trips_and_bad_state_is_refused() -> None:
    m = AlertMachine()
    feed(m, [100, 70, 50])
    again = AlertMachine.from_state(json.loads(json.dumps(m.to_state())))
    assert again.to_state() == m.to_state()
    for bad in (
        {"v": 99},
        {"v": 1, "active": ["sideways"]},
        {"v": 1, "last": {"date": "x"}},
        {"v": 1, "episode": {"kind": "odd", "start": 1}},
    ):
        with pytest.raises(BadState):
            AlertMachine.from_state(bad)


def test_site_thresholds_follow_nightscouts_mmol_rule() -> None:
    assert site_thresholds(55, 80, 180, 260, "mg/dl") == (55, 80, 180, 260)
    assert site_thresholds(3.1, 4.4, 10, 14.4, "mmol") == (56, 79, 180, 259)
    # an old mmol site that kept its thresholds in mg/dL keeps them
    assert site_thresholds(55, 80, 180, 260, "mmol/L") == (55, 80, 180, 260)
    assert in_units(68, "mg/dl") == "68" and in_units(68, "mmol") == "3.8"
    assert Thresholds(urgent_low=90).problems() and not T.problems()


# --- properties ---------------------------------------------------------------------------------

THRESHOLD_OF = {"urgent_low": T.urgent_low, "low": T.low, "high": T.high, "urgent_high": T.urgent_high}


def reference_edges(sgvs: Sequence[int], kind: str) -> tuple[int, int]:
    """Rising and falling edges of one threshold's condition, computed the plain way."""
    th, h = THRESHOLD_OF[kind], T.hysteresis
    below = kind in ("urgent_low", "low")
    on = False
    ups = downs = 0
    for v in sgvs:
        enters = v < th if below else v > th
        holds = v < th + h if below else v > th - h
        now_on = enters or (on and holds)
        ups += now_on and not on
        downs += on and not now_on
        on = now_on
    return ups, downs


def around(threshold: float) -> st.SearchStrategy[list[int]]:
    """Series that wander across ``threshold``: runs far below, far above, and noise near it."""
    near = st.integers(int(threshold) - 8, int(threshold) + 8)
    far = st.sampled_from([40, 60, 100, 150, 200, 280, 350])
    return st.lists(st.one_of(near, far, near), min_size=1, max_size=80)


series = st.sampled_from(list(THRESHOLD_OF.values())).flatmap(around)


@PROPS
@given(sgvs=series)
def test_each_crossing_raises_exactly_one_alert_and_one_clear(sgvs: list[int]) -> None:
    ds = feed(AlertMachine(), sgvs)
    for kind in GLUCOSE_KINDS:
        ups, downs = reference_edges(sgvs, kind)
        assert len(raises(ds, kind)) == ups, kind
        assert len(clears(ds, kind)) == downs, kind
        # raised and cleared alternate, starting with a raise
        seq = [
            type(d).__name__
            for d in ds
            if isinstance(d, (RaiseAlert, ClearAlert))
            and d.kind == kind
            and not (isinstance(d, RaiseAlert) and d.repeat)
        ]
        assert seq == ["RaiseAlert", "ClearAlert"] * downs + ["RaiseAlert"] * (ups - downs)


@PROPS
@given(
    threshold=st.sampled_from(list(THRESHOLD_OF.items())),
    noise=st.lists(st.integers(-4, 4), min_size=1, max_size=60),
)
def test_noise_within_the_hysteresis_never_flaps(threshold: tuple[str, float], noise: list[int]) -> None:
    kind, th = threshold
    # once across the threshold, readings jitter by less than the margin around it
    start = int(th) - 1 if kind in ("urgent_low", "low") else int(th) + 1
    edge = int(th) if kind in ("urgent_low", "low") else int(th) + 1
    sgvs = [start] + [edge + n if kind in ("urgent_low", "low") else edge + n - 1 for n in noise]
    ds = feed(AlertMachine(), sgvs)
    assert len(raises(ds, kind)) == 1
    assert clears(ds, kind) == []


gaps = st.lists(
    st.tuples(st.sampled_from([5, 5, 5, 5, 10, 20, 45, 120]), st.integers(30, 420)), min_size=1, max_size=60
)


def run(
    m: AlertMachine, steps: Sequence[tuple[int, int]], *, lag_min: int, start: int = T0
) -> list[AlertDecision]:
    """Readings ``gap`` minutes apart, each evaluated ``lag_min`` minutes after it was taken,
    with the ticks a live daemon would make in between (at the machine's deadlines)."""
    out: list[AlertDecision] = []
    date = start
    for gap, sgv in steps:
        date += gap * MIN_MS
        now = date + lag_min * MIN_MS
        # the timer: every deadline before this reading arrives
        while True:
            due = m.deadline(now)
            if due is None or due >= now:
                break
            out += m.tick(due)
        out += m.reading(Reading(date, sgv), now)
        out += m.tick(now)
        assert m.deadline(now) is None or m.deadline(now) > now  # no busy loop
    return out


@PROPS
@given(steps=gaps, lag=st.sampled_from([0, 1, 14, 16, 60]))
def test_nothing_older_than_the_age_limit_raises(steps: list[tuple[int, int]], lag: int) -> None:
    ds = run(AlertMachine(), steps, lag_min=lag)
    for d in raises(ds, first=False):
        if d.kind in ("stale", "urgent_stale"):
            continue
        assert d.reading is not None and d.at - d.reading.date <= T.max_age_ms
    if lag > 15:
        assert [d for d in raises(ds) if d.kind not in ("stale", "urgent_stale")] == []


@PROPS
@given(steps=gaps, cut=st.integers(0, 60))
def test_state_survives_a_restart_mid_episode(steps: list[tuple[int, int]], cut: int) -> None:
    whole = run(AlertMachine(), steps, lag_min=1)
    cut = min(cut, len(steps))
    first = AlertMachine()
    before = run(first, steps[:cut], lag_min=1)
    restored = AlertMachine.from_state(json.loads(json.dumps(first.to_state())))
    start = T0 + sum(g for g, _ in steps[:cut]) * MIN_MS
    after = run(restored, steps[cut:], lag_min=1, start=start)
    assert before + after == whole


@PROPS
@given(steps=gaps)
def test_alerts_alternate_and_episodes_chain(steps: list[tuple[int, int]]) -> None:
    ds = run(AlertMachine(), steps, lag_min=1)
    open_kinds: set[str] = set()
    for d in ds:
        if isinstance(d, RaiseAlert):
            assert (d.repeat == 0) == (d.kind not in open_kinds)
            open_kinds.add(d.kind)
        elif isinstance(d, ClearAlert):
            assert d.kind in open_kinds
            open_kinds.discard(d.kind)
    changes = [d for d in ds if isinstance(d, ChangeEpisode)]
    for a, b in zip(changes, changes[1:], strict=False):
        assert b.ended is not None and b.ended.kind == a.started.kind and b.ended.start == a.started.start
        assert a.started.kind != b.started.kind
