"""Properties of the timing math: backoff, the wait after rejected credentials, alignment."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from machines.timing import align_schedule, backoff, failed_login_delay, rejected_delay

PROPS = settings(max_examples=100, deadline=None)

failures = st.integers(min_value=0, max_value=10_000)
rands = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
jitters = st.floats(min_value=0.0, max_value=1.0)
bases = st.floats(min_value=0.001, max_value=3600.0)
caps = st.floats(min_value=0.0, max_value=86_400.0)

DAY_MS = 86_400_000
# epoch ms from 2001 to 2100: the daemon's real range, with room around it
nows = st.integers(min_value=1_000_000_000_000, max_value=4_100_000_000_000)
intervals = st.integers(min_value=1, max_value=DAY_MS)
buffers = st.integers(min_value=0, max_value=600_000)
jitter_ms = st.integers(min_value=0, max_value=600_000)


# ---------------------------------------------------------------------------------------------
# backoff


@PROPS
@given(base=bases, cap=caps, jitter=jitters, rand=rands, failures=st.integers(-5, 0))
def test_backoff_is_zero_without_failures(
    base: float, cap: float, jitter: float, rand: float, failures: int
) -> None:
    assert backoff(failures, base=base, cap=cap, jitter=jitter, rand=rand) == 0.0


@PROPS
@given(failures=failures, base=bases, cap=caps, jitter=jitters, rand=rands)
def test_backoff_never_exceeds_the_cap(
    failures: int, base: float, cap: float, jitter: float, rand: float
) -> None:
    delay = backoff(failures, base=base, cap=cap, jitter=jitter, rand=rand)
    assert 0.0 <= delay <= cap


@PROPS
@given(failures=failures, base=bases, cap=caps, jitter=jitters, rand=rands)
def test_backoff_is_non_decreasing_in_failures(
    failures: int, base: float, cap: float, jitter: float, rand: float
) -> None:
    now = backoff(failures, base=base, cap=cap, jitter=jitter, rand=rand)
    after = backoff(failures + 1, base=base, cap=cap, jitter=jitter, rand=rand)
    assert after >= now


@PROPS
@given(failures=st.integers(1, 10_000), base=bases, cap=caps, jitter=jitters, rand=rands)
def test_backoff_jitter_only_shortens_by_at_most_its_fraction(
    failures: int, base: float, cap: float, jitter: float, rand: float
) -> None:
    plain = backoff(failures, base=base, cap=cap, jitter=jitter, rand=0.0)
    jittered = backoff(failures, base=base, cap=cap, jitter=jitter, rand=rand)
    assert plain == min(cap, base * 2.0 ** min(failures - 1, 62))
    assert plain * (1.0 - jitter) <= jittered <= plain


@PROPS
@given(failures=st.integers(1, 30), rand=rands)
def test_backoff_defaults_double_from_five_seconds(failures: int, rand: float) -> None:
    plain = backoff(failures)
    assert plain == min(900.0, 5.0 * 2 ** (failures - 1))
    assert 0.8 * plain <= backoff(failures, rand=rand) <= plain


@PROPS
@given(failures=st.integers(min_value=63, max_value=10**30), base=bases, cap=caps, jitter=jitters, rand=rands)
@example(failures=10**30, base=3600.0, cap=86_400.0, jitter=0.0, rand=0.0)
@example(failures=2**64 + 1, base=0.001, cap=0.0, jitter=1.0, rand=0.999)
def test_backoff_never_overflows(failures: int, base: float, cap: float, jitter: float, rand: float) -> None:
    delay = backoff(failures, base=base, cap=cap, jitter=jitter, rand=rand)
    assert math.isfinite(delay)
    # past 2**62 times the base every cap has long been reached: the same wait as at 63
    assert delay == backoff(63, base=base, cap=cap, jitter=jitter, rand=rand)
    assert 0.0 <= delay <= cap


def test_backoff_known_values() -> None:
    assert [backoff(n) for n in range(0, 9)] == [0, 5, 10, 20, 40, 80, 160, 320, 640]
    assert backoff(9) == 900.0
    assert backoff(3, rand=0.5) == 20 * 0.9
    assert backoff(10**9, cap=60.0) == 60.0


# ---------------------------------------------------------------------------------------------
# rejected_delay

HALF_HOUR = 30 * 60.0
SIX_HOURS = 6 * 3600.0


@PROPS
@given(rejections=st.integers(min_value=-3, max_value=10**6))
def test_rejected_delay_is_between_half_an_hour_and_six_hours(rejections: int) -> None:
    assert HALF_HOUR <= rejected_delay(rejections) <= SIX_HOURS


@PROPS
@given(rejections=st.integers(min_value=0, max_value=10**6))
def test_rejected_delay_grows_until_the_cap(rejections: int) -> None:
    now, after = rejected_delay(rejections), rejected_delay(rejections + 1)
    assert after >= now
    if now < SIX_HOURS and rejections >= 1:
        assert after > now


def test_rejected_delay_known_values() -> None:
    assert [rejected_delay(n) for n in range(0, 7)] == [
        1800,
        1800,
        3600,
        7200,
        14_400,
        21_600,
        21_600,
    ]
    assert rejected_delay(10**12) == SIX_HOURS


# ---------------------------------------------------------------------------------------------
# failed_login_delay

MINUTE = 60.0


@PROPS
@given(failures=st.integers(min_value=1, max_value=10**6), rand=rands)
def test_failed_login_delay_is_between_most_of_a_minute_and_half_an_hour(failures: int, rand: float) -> None:
    assert 0.8 * MINUTE <= failed_login_delay(failures, rand=rand) <= HALF_HOUR


@PROPS
@given(rands=st.lists(rands, min_size=40, max_size=40))
def test_failed_logins_in_a_row_stay_a_handful_an_hour(rands: list[float]) -> None:
    """However the jitter falls, a login that keeps failing is tried at most 7 times in any hour."""
    times = [0.0]
    for failures, rand in enumerate(rands, start=1):
        times.append(times[-1] + failed_login_delay(failures, rand=rand))
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + 3600) <= 7
    # and once the cap is reached, at most three an hour
    late = [t for t in times if t >= 6 * 3600]
    for i, t in enumerate(late):
        assert sum(1 for u in late[i:] if u < t + 3600) <= 3


def test_failed_login_delay_known_values() -> None:
    assert [failed_login_delay(n) for n in range(0, 8)] == [0, 60, 120, 240, 480, 960, 1800, 1800]
    # logins the vendor never saw (the network was down) stop growing at five minutes
    assert [failed_login_delay(n, reached=False) for n in range(0, 6)] == [0, 60, 120, 240, 300, 300]


@PROPS
@given(failures=st.integers(min_value=1, max_value=10**6), rand=rands)
def test_unreached_logins_never_wait_longer_than_seen_ones(failures: int, rand: float) -> None:
    unseen = failed_login_delay(failures, rand=rand, reached=False)
    assert 0.8 * MINUTE <= unseen <= min(5 * MINUTE, failed_login_delay(failures, rand=rand))


# ---------------------------------------------------------------------------------------------
# align_schedule


@PROPS
@given(
    now=nows,
    behind=st.integers(min_value=-DAY_MS, max_value=60 * DAY_MS),
    interval=intervals,
    buffer=buffers,
    jitter=jitter_ms,
    rand=rands,
)
@example(now=1_700_000_000_000, behind=0, interval=300_000, buffer=15_000, jitter=10_000, rand=0.0)
@example(now=1_700_000_000_000, behind=15_000, interval=300_000, buffer=15_000, jitter=0, rand=0.0)
@example(now=1_700_000_000_000, behind=315_000, interval=300_000, buffer=15_000, jitter=0, rand=0.0)
@example(now=1_700_000_000_000, behind=1, interval=1, buffer=0, jitter=0, rand=0.0)
def test_align_schedule(now: int, behind: int, interval: int, buffer: int, jitter: int, rand: float) -> None:
    last_known = now - behind
    due = align_schedule(last_known, now, interval_ms=interval, buffer_ms=buffer, jitter_ms=jitter, rand=rand)
    extra = buffer + int(jitter * rand)
    assert isinstance(due, int)
    assert due > now
    # in phase with the last reading: a whole number of intervals after it, plus the extra
    assert (due - extra - last_known) % interval == 0
    assert due - extra > last_known
    if last_known <= now:
        assert due <= now + interval + buffer + jitter
    # the first expected reading that has not been given up on: one interval earlier was
    # either the last reading itself or already too long ago to wait for
    assert due - interval <= max(now, last_known + extra)


@PROPS
@given(now=nows, interval=st.integers(-DAY_MS, DAY_MS), buffer=buffers, jitter=jitter_ms, rand=rands)
def test_align_schedule_without_a_last_reading_waits_one_interval(
    now: int, interval: int, buffer: int, jitter: int, rand: float
) -> None:
    due = align_schedule(None, now, interval_ms=interval, buffer_ms=buffer, jitter_ms=jitter, rand=rand)
    assert due == now + max(interval, 0) + buffer + int(jitter * rand)
    assert due >= now + buffer


@PROPS
@given(now=nows, behind=st.integers(0, 60 * DAY_MS), interval=intervals, buffer=buffers, jitter=jitter_ms)
def test_align_schedule_jitter_only_delays(
    now: int, behind: int, interval: int, buffer: int, jitter: int
) -> None:
    kwargs = {"interval_ms": interval, "buffer_ms": buffer, "jitter_ms": jitter}
    plain = align_schedule(now - behind, now, **kwargs, rand=0.0)
    assert plain == align_schedule(now - behind, now, interval_ms=interval, buffer_ms=buffer, jitter_ms=0)
    late = align_schedule(now - behind, now, **kwargs, rand=0.999)
    assert late > now
    assert (late - buffer - int(jitter * 0.999) - (now - behind)) % interval == 0


@pytest.mark.parametrize(
    ("last_known", "now", "expected"),
    [
        # a reading just arrived: wait for the next one plus the buffer
        (0, 0, 300_000 + 15_000),
        (0, 60_000, 300_000 + 15_000),
        # the next reading is due within the buffer: still wait for it
        (0, 310_000, 300_000 + 15_000),
        # it is more than the buffer late: aim at the one after
        (0, 316_000, 600_000 + 15_000),
        # an hour of silence: the next slot in phase
        (0, 3_616_000, 3_900_000 + 15_000),
        # a reading stamped in the future (clock skew): one interval after it
        (100_000, 0, 400_000 + 15_000),
    ],
)
def test_align_schedule_known_values(last_known: int, now: int, expected: int) -> None:
    assert (
        align_schedule(last_known, now, interval_ms=300_000, buffer_ms=15_000, jitter_ms=10_000) == expected
    )
