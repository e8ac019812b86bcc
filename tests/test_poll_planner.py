"""The Share read schedule: pure properties of PollPlanner, then the planner under the runtime.

The pure part replays a stream of readings (one every five minutes, each readable some delay
after its time) against the planner alone: thousands of polls in milliseconds. The second part
runs the real driver and runtime against the emulator in virtual time with uploads that lag
well behind the readings, where a fixed buffer would poll too early every time.
"""

from __future__ import annotations

import random
import statistics

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sources.schedule import CEILING_MS, FLOOR_MS, JITTER_MS, RECHECK_MS, PollPlanner
from tests.test_dexcom_driver import (
    MIN_MS,
    START,
    build_run,
    check_nothing_served_is_lost_or_doubled,
    simulate,
)

INTERVAL = 300_000


@attrs.define
class Replay:
    """What a stream of polls saw: when each reading was stored, and how many polls it took."""

    polls: list[int]
    stored_at: dict[int, int]
    lags: list[int]


def replay(
    delays: list[int], *, missing: frozenset[int] = frozenset(), seed: int = 0, phase: int = 0, start: int = 0
) -> Replay:
    """Reading ``k`` has the time ``phase + k·interval`` and is readable ``delays[k]`` ms later.

    The first read (a backfill: it teaches nothing) is made ``start`` ms after the first
    reading became readable, so the stream starts in any phase.
    """
    rng = random.Random(seed)
    planner = PollPlanner(interval_ms=INTERVAL)
    times = [phase + k * INTERVAL for k in range(len(delays))]
    polls: list[int] = []
    stored_at: dict[int, int] = {}
    lags: list[int] = []
    stored: int | None = None
    now = times[0] + delays[0] + start
    end = times[-1]
    while now < end:
        polls.append(now)
        last = min(len(times) - 1, (now - phase) // INTERVAL)
        visible = [
            times[k]
            for k in range(max(0, last - 8), last + 1)
            if k not in missing and times[k] + delays[k] <= now
        ]
        newest = max(visible) if visible else None
        # the answer holds the last few readings, as a read sized from the checkpoint does
        planner.observe(polled_at=now, before=stored, times=visible[-4:])
        for t in visible:
            stored_at.setdefault(t, now)
        if newest is not None:
            stored = newest if stored is None else max(stored, newest)
        lags.append(planner.lag_ms)
        due = planner.next_poll(stored, now, rng.random())
        # never in the past, never more than an interval (plus the lag and jitter) away
        assert now < due <= now + INTERVAL + CEILING_MS + JITTER_MS, (now, due)
        now = due
    return Replay(polls, stored_at, lags)


def latencies(run: Replay, delays: list[int], *, after: int = 0, phase: int = 0) -> list[int]:
    return [
        stored - (t + delays[(t - phase) // INTERVAL]) for t, stored in run.stored_at.items() if t >= after
    ]


@settings(max_examples=60, deadline=None)
@given(
    delay_s=st.integers(0, 200),
    spread_s=st.integers(0, 10),
    seed=st.integers(0, 1000),
    phase=st.integers(0, INTERVAL - 1),
    start=st.integers(0, 2 * INTERVAL),
)
def test_polls_learn_a_steady_upload_delay(
    delay_s: int, spread_s: int, seed: int, phase: int, start: int
) -> None:
    rng = random.Random(seed)
    delays = [(delay_s + rng.randint(0, spread_s)) * 1000 for _ in range(24 * 12)]
    run = replay(delays, seed=seed, phase=phase, start=start)
    # every reading is picked up
    assert len(run.stored_at) >= len(delays) - 2
    # after the first two hours the planner has learned the delay: one poll per reading or
    # little more, and readings stored within half a minute of becoming readable
    settled = phase + 24 * INTERVAL
    later = [p for p in run.polls if p >= settled]
    readings = (run.polls[-1] - settled) / INTERVAL
    assert len(later) <= readings * 14 / 12 + 2, (len(later), readings)
    waits = latencies(run, delays, after=settled, phase=phase)
    assert statistics.median(waits) <= 30_000, statistics.median(waits)
    assert all(FLOOR_MS <= lag <= CEILING_MS for lag in run.lags)


@settings(max_examples=40, deadline=None)
@given(
    gaps=st.lists(st.integers(10, 270), min_size=1, max_size=8),
    length=st.integers(1, 12),
    seed=st.integers(0, 1000),
    start=st.integers(0, 2 * INTERVAL),
)
def test_signal_loss_teaches_nothing_and_costs_one_recheck(
    gaps: list[int], length: int, seed: int, start: int
) -> None:
    """Missing readings are not late ones: the lag stays put and rechecks stay rare."""
    delays = [5_000] * (24 * 12)
    missing = frozenset(k for first in gaps for k in range(first, first + length))
    run = replay(delays, missing=missing, seed=seed, start=start)
    assert max(run.lags) == FLOOR_MS  # nothing was learned from readings that never came
    assert len(run.stored_at) >= len(delays) - len(missing) - 1
    # one poll per expected reading, plus at most one recheck for each stretch of missing ones
    expected = (run.polls[-1] - run.polls[0]) / INTERVAL + 1
    assert len(run.polls) <= expected + len(gaps) + 1


def test_a_delay_that_grows_is_followed_and_one_that_shrinks_is_too() -> None:
    delays = [5_000] * 60 + [90_000] * 60 + [10_000] * 240
    run = replay(delays, seed=3)
    first_slow = 60 * INTERVAL
    # one late reading costs a recheck and teaches the planner; a few readings later it is settled
    slow = latencies(run, delays, after=first_slow + 6 * INTERVAL)
    slow = [w for t, w in zip(sorted(run.stored_at), slow, strict=False) if t < 120 * INTERVAL]
    assert statistics.median(slow) <= 30_000
    assert max(run.lags) <= 90_000 + 2 * RECHECK_MS + JITTER_MS
    # the lag decays once uploads are quick again
    assert run.lags[-1] < 40_000


def test_the_first_read_and_a_stale_stream_still_poll_once_an_interval() -> None:
    planner = PollPlanner(interval_ms=INTERVAL)
    assert planner.next_poll(None, 1_000_000, 0.0) == 1_000_000 + INTERVAL + FLOOR_MS
    # no reading for hours (sensor change): the next poll is at most an interval away
    now = 50 * INTERVAL + 7
    due = planner.next_poll(0, now, 0.5)
    assert now < due <= now + INTERVAL + FLOOR_MS + JITTER_MS
    assert (due - FLOOR_MS - JITTER_MS // 2) % INTERVAL == 0  # still in the readings' phase


# --- under the runtime, against the emulator ----------------------------------------------------------


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(delay_s=st.sampled_from([5, 40, 75, 150]), seed=st.integers(0, 1000), phase_s=st.integers(0, 299))
def test_slow_uploads_keep_latency_low_and_requests_few(delay_s: int, seed: int, phase_s: int) -> None:
    hours = 6
    run, client = build_run(seed, phase_ms=phase_s * 1000, account_kw={"publish_delay_ms": delay_s * 1000})
    simulate(run, client, hours * 3600 + 1)
    check_nothing_served_is_lost_or_doubled(run)
    account = run.account
    settled = START + 3600 * 1000  # the first hour is for learning
    end = run.at(hours * 3600)
    delays = [
        run.astore.arrived[t] - account.visible_at((t - account.first_reading_ms) // INTERVAL)
        for t in account.published(end - 5 * MIN_MS)
        if t >= settled
    ]
    assert len(delays) >= (hours - 1) * 12 - 2
    assert statistics.median(delays) <= 30_000, statistics.median(delays)
    reads = [r.time_ms for r in run.emulator.requests if r.endpoint == "read"]
    for hour in range(1, hours):
        in_hour = sum(1 for t in reads if run.at(hour * 3600) <= t < run.at((hour + 1) * 3600))
        assert in_hour <= 14, (hour, in_hour)
    assert run.runtime.status()["loops"]["DexcomShareEntries"]["frames_failed"] == 0
