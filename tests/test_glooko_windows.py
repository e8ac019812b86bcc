"""Which windows a Glooko feed reads: recent first, history after, and late syncs re-read.

The planner is pure, so whole lives of a loop (days of frames, downtimes, cron runs) are
simulated here against records that reach Glooko late, with the store's rule for checkpoints
(each keeps the largest value it was given).
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from connect.contract import LastKnown
from sources.glooko.const import (
    DAY_MS,
    HOUR_MS,
    LIVE_FRESH_MS,
    PAGE_MS,
    RESYNC_EVERY_MS,
    SYNC_OVERLAP_MS,
)
from sources.glooko.windows import Plan, plan

NOW = 1_750_000_000_000
MINUTE = 60_000
LATE = 36 * HOUR_MS
C = "treatments"


def lk(now: int, marks: Mapping[str, int] | None = None) -> LastKnown:
    # backfill_from as CONNECT_BACKFILL_DAYS=1 would set it: the Glooko look-back wins over it
    return LastKnown(values=dict(marks or {}), backfill_from=now - DAY_MS, now=now)


def planned(last: LastKnown, *, lookback_days: int = 14, late_ms: int = LATE) -> Plan:
    return plan(last, C, lookback_days=lookback_days, late_ms=late_ms)


def test_a_first_start_reads_the_recent_hours_first_then_history() -> None:
    first = planned(lk(NOW))
    floor = NOW - 14 * DAY_MS
    # history's first day, then the late-sync horizon up to now: today is in the first frame
    assert first.windows == ((floor, floor + PAGE_MS), (NOW - LATE, NOW))
    assert first.covered == {
        C: NOW, "treatments:resync": NOW, "treatments:history": floor + PAGE_MS,
        "treatments:history_end": NOW - LATE,
    }  # fmt: skip
    assert first.more is True


def test_the_glooko_look_back_wins_over_the_backfill_days() -> None:
    """CONNECT_BACKFILL_DAYS=1 (``lk``'s backfill_from) does not cap a 3-day look-back, nor does
    a 30-day one stretch it."""
    for backfill_days in (1, 30):
        last = LastKnown(values={}, backfill_from=NOW - backfill_days * DAY_MS, now=NOW)
        assert planned(last, lookback_days=3).windows[0] == (NOW - 3 * DAY_MS, NOW - 2 * DAY_MS)
    # a look-back shorter than the horizon: one read, nothing left for history
    short = planned(lk(NOW), lookback_days=1)
    assert short.windows == ((NOW - DAY_MS, NOW),) and short.more is False


def test_history_walks_forward_beside_the_live_reads() -> None:
    floor = NOW - 14 * DAY_MS
    marks = {"treatments": NOW, "treatments:resync": NOW, "treatments:history": floor + 5 * DAY_MS,
             "treatments:history_end": NOW - LATE}  # fmt: skip
    # back to back (the runtime does not wait while ``more``): the live read is not repeated
    soon = planned(lk(NOW + 2_000, marks))
    assert soon.windows == ((floor + 5 * DAY_MS, floor + 6 * DAY_MS),) and soon.more is True
    assert C not in soon.covered
    # a cron run five minutes later reads now as well
    later = planned(lk(NOW + 5 * MINUTE, marks))
    assert later.windows == (
        (floor + 5 * DAY_MS, floor + 6 * DAY_MS),
        (NOW + 5 * MINUTE - SYNC_OVERLAP_MS, NOW + 5 * MINUTE),
    )
    # the last day of history stops at the horizon of the first frame
    marks["treatments:history"] = NOW - LATE - 3 * HOUR_MS
    last = planned(lk(NOW + 5 * MINUTE, marks))
    assert last.windows[0] == (NOW - LATE - 3 * HOUR_MS, NOW - LATE) and last.more is False
    # done: live reads only
    marks["treatments:history"] = NOW - LATE
    assert len(planned(lk(NOW + 5 * MINUTE, marks)).windows) == 1


def test_live_reads_overlap_and_re_read_the_horizon_once_an_hour() -> None:
    marks = {"treatments": NOW - 5 * MINUTE, "treatments:resync": NOW - 20 * MINUTE}
    live = planned(lk(NOW, marks))
    assert live.windows == ((NOW - SYNC_OVERLAP_MS, NOW),) and live.covered == {C: NOW}
    marks["treatments:resync"] = NOW - RESYNC_EVERY_MS
    wide = planned(lk(NOW, marks))
    assert wide.windows == ((NOW - 5 * MINUTE - LATE, NOW),)
    assert wide.covered == {C: NOW, "treatments:resync": NOW} and wide.more is False
    # a clock set back does not put the next re-read off until it catches up
    marks["treatments:resync"] = NOW + DAY_MS
    assert planned(lk(NOW, marks)).windows == ((NOW - 5 * MINUTE - LATE, NOW),)
    # a loop stored before these marks existed re-reads at once and has no history to read
    old = planned(lk(NOW, {C: NOW - 5 * MINUTE}))
    assert old.windows == ((NOW - 5 * MINUTE - LATE, NOW),)
    # a checkpoint hours old (a stopped daemon) is read from, not from the overlap
    assert planned(lk(NOW, {C: NOW - 10 * HOUR_MS, "treatments:resync": NOW - MINUTE})).windows == (
        (NOW - 10 * HOUR_MS, NOW),
    )
    # records dated in the future (a pump clock set wrong) do not hide the present
    ahead = planned(lk(NOW, {C: NOW + DAY_MS, "treatments:resync": NOW - MINUTE}))
    assert ahead.windows == ((NOW - SYNC_OVERLAP_MS, NOW),)


def test_a_gap_longer_than_the_horizon_reads_now_first() -> None:
    stopped = NOW - 4 * DAY_MS
    gap = planned(lk(NOW, {C: stopped, "treatments:resync": stopped}))
    assert gap.windows == ((stopped - LATE, stopped - LATE + PAGE_MS), (NOW - LATE, NOW))
    assert gap.covered["treatments:history_end"] == NOW - LATE and gap.more is True
    # a history still pending is kept, and stretched over the gap
    pending = planned(
        lk(
            NOW,
            {C: stopped, "treatments:history": NOW - 10 * DAY_MS, "treatments:history_end": stopped - LATE},
        )
    )
    assert pending.windows[0] == (NOW - 10 * DAY_MS, NOW - 9 * DAY_MS)
    assert pending.covered["treatments:history_end"] == NOW - LATE


# --- a loop's life, simulated ------------------------------------------------------------------------


class Life:
    """One feed's loop over time: the store's checkpoints (largest wins) and what was read."""

    def __init__(self, *, lookback_days: int, late_ms: int) -> None:
        self.marks: dict[str, int] = {}
        self.lookback_days = lookback_days
        self.late_ms = late_ms
        self.windows: list[tuple[int, int, int]] = []  # (now, start, end)

    def frame(self, now: int) -> Plan:
        p = plan(LastKnown(values=dict(self.marks), backfill_from=now - 30 * DAY_MS, now=now), C,
                 lookback_days=self.lookback_days, late_ms=self.late_ms)  # fmt: skip
        assert p.windows, "a frame that reads nothing"
        assert len(p.windows) <= 2
        for start, end in p.windows:
            assert start < end <= now
            assert end - start <= max(PAGE_MS, 2 * self.late_ms)
            self.windows.append((now, start, end))
        for key, value in p.covered.items():
            self.marks[key] = max(self.marks.get(key, value), value)
        return p

    def read(self, t: int, arrival: int) -> bool:
        """Whether a record that happened at ``t`` and reached Glooko at ``arrival`` was read."""
        return any(now >= arrival and start <= t < end for now, start, end in self.windows)


def run(life: Life, now: int, steps: list[int], *, cron: bool) -> int:
    """Frames at ``now`` and after each step; the runtime (not cron) goes on at once while ``more``."""
    for step in [0, *steps]:
        now += step
        while life.frame(now).more and not cron:
            now += 2_000
    return now


@st.composite
def lives(draw: st.DrawFn) -> tuple[list[int], bool, list[tuple[int, int]], int]:
    cron = draw(st.booleans())
    normal = st.sampled_from(
        [5 * MINUTE, 15 * MINUTE, HOUR_MS] if cron else [5 * MINUTE, 5 * MINUTE + 20_000]
    )
    # now and then the daemon is stopped: minutes, hours, or days
    pause = st.integers(1, 60 * 72).map(lambda m: m * MINUTE)
    steps = draw(st.lists(st.one_of(normal, normal, normal, pause), min_size=5, max_size=60))
    late = draw(st.sampled_from([24, 36, 48])) * HOUR_MS
    span = sum(steps)
    # records from before the first start to the end, reaching Glooko up to (horizon − an hour) late
    records = draw(st.lists(
        st.tuples(st.integers(-3 * DAY_MS, span), st.integers(0, late - RESYNC_EVERY_MS)), min_size=1, max_size=40,
    ))  # fmt: skip
    return steps, cron, [(NOW + t, NOW + t + lag) for t, lag in records], late


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lives())
def test_every_record_synced_within_the_horizon_is_read(
    case: tuple[list[int], bool, list[tuple[int, int]], int],
) -> None:
    steps, cron, records, late = case
    note(f"cron={cron} late_h={late // HOUR_MS}")
    life = Life(lookback_days=7, late_ms=late)
    end = run(life, NOW, steps, cron=cron)
    # let the loop settle: a horizon re-read, and whatever history remains
    settle = run(life, end, [5 * MINUTE] * (RESYNC_EVERY_MS // (5 * MINUTE) + 1), cron=cron)
    while life.frame(settle).more:
        settle += 5 * MINUTE
    # the look-back bounds history: what is older than it on the first start, or by the time a
    # pending history would reach it (cron runs far apart), is not asked for
    floor = max(NOW, settle) - 7 * DAY_MS
    lost = [(t - NOW, a - t) for t, a in records if a <= end and t >= floor and not life.read(t, a)]
    assert not lost, f"records lost (t from start, lateness): {lost[:5]}"


def test_a_day_late_sync_is_read_where_six_hours_of_overlap_lost_it() -> None:
    """A pump that uploads once a day, at 06:00: every record is read, with one live request a frame."""
    life = Life(lookback_days=2, late_ms=LATE)
    end = run(life, NOW, [5 * MINUTE] * (3 * 24 * 12), cron=False)
    upload = 6 * HOUR_MS
    boluses = [NOW + k * 2 * HOUR_MS + 17 * MINUTE for k in range(3 * 12)]
    arrivals = [t + (upload - t) % DAY_MS for t in boluses]
    assert all(life.read(t, a) for t, a in zip(boluses, arrivals, strict=True) if a <= end - HOUR_MS)
    frames = {now for now, _s, _e in life.windows}
    assert len(life.windows) <= len(frames) + 2  # history: two extra requests for two days
    wide = [1 for _n, start, end in life.windows if end - start > SYNC_OVERLAP_MS + 10 * MINUTE]
    assert len(wide) <= 3 * 24 + 3  # the horizon is re-read about once an hour


def test_history_frames_back_to_back_skip_the_repeated_live_read() -> None:
    life = Life(lookback_days=10, late_ms=LATE)
    run(life, NOW, [], cron=False)
    # eight and a half days of history in nine frames, and one live read: the first frame's
    assert len(life.windows) == 10
    assert [e for _n, _s, e in life.windows if e > NOW - LIVE_FRESH_MS] == [NOW]
