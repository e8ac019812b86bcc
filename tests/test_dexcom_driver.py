"""The dexcomshare source under the real runtime, against the emulator, in virtual time.

Hours of five-minute readings run in a fraction of a second: trio's MockClock jumps whenever
every task sleeps, and the emulator publishes on the same :class:`VirtualClock` the runtime
uses. Properties hold for random fault schedules: nothing served is lost or stored twice,
bad credentials never turn into a login storm, and a locked account hears nothing from us.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import statistics
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connect.builder import Builder
from connect.clock import VirtualClock
from connect.logs import configure
from connect.records import Batch
from connect.redact import registered
from connect.runtime import SourceRuntime
from sources.dexcomshare import DexcomShareSettings, make
from store import AsyncStore, PersistResult, Store
from tests.emulators.dexcom import Account, Request, ShareEmulator, TimeoutTransport

START = 1_750_000_123_456
HOUR_MS = 3_600_000
MIN_MS = 60_000
PASSWORD = "publisher password 42"
LOOP = "DexcomShareEntries"


class RecordingStore(AsyncStore):
    """The store, noting when each reading first arrived (for the latency property)."""

    def __init__(self, store: Store, clock: Callable[[], int]) -> None:
        super().__init__(store)
        self.clock = clock
        self.arrived: dict[int, int] = {}

    async def persist_frame(self, source: str, loop: str, batch: Batch) -> PersistResult:
        result: PersistResult = await self.call(self.store.persist_frame, source, loop, batch)
        for entry in batch.entries:
            self.arrived.setdefault(entry.date, self.clock())
        return result


@attrs.define
class Run:
    clock: VirtualClock
    emulator: ShareEmulator
    account: Account
    store: Store
    astore: RecordingStore
    runtime: SourceRuntime
    #: epoch ms when the simulation stopped
    end_ms: int = 0

    def stored_dates(self) -> list[int]:
        return [int(d) for (d,) in self.store.conn.execute("SELECT date FROM entries ORDER BY date")]

    def at(self, offset_s: float) -> int:
        return START + int(offset_s * 1000)


def build_run(
    seed: int = 1,
    *,
    phase_ms: int = 0,
    history_h: float = 6.0,
    account_kw: dict[str, Any] | None = None,
    extra_loops: int = 0,
    **emulator_kw: Any,
) -> tuple[Run, httpx.AsyncClient]:
    clock = VirtualClock(START)
    emulator = ShareEmulator(now=clock, **emulator_kw)
    account = emulator.add_account(
        "publisher", PASSWORD, "us", first_reading_ms=START - int(history_h * HOUR_MS) + phase_ms, seed=seed,
        **(account_kw or {}),
    )  # fmt: skip
    client = httpx.AsyncClient(transport=TimeoutTransport(emulator, timeout_s=30))
    driver = make(DexcomShareSettings(share_account_name="publisher", share_password=PASSWORD), client)  # type: ignore[arg-type]
    driver.rng = random.Random(seed + 1)  # the read schedule's jitter, reproducible
    builder = Builder("dexcomshare")
    driver.generate_driver(builder)
    for n in range(extra_loops):
        # more loops on the same account and session (as a source with several feeds has)
        builder.register_loop(f"{LOOP}{n + 2}", fetch=driver.fetch, transform=driver.transform,
                              expected_interval=timedelta(minutes=5))  # fmt: skip
    store = Store(":memory:")
    astore = RecordingStore(store, clock)
    runtime = SourceRuntime(builder.build(), astore, clock=clock, backfill_days=1, rng=random.Random(seed))
    return Run(clock, emulator, account, store, astore, runtime), client


async def run_for(run: Run, client: httpx.AsyncClient, seconds: float) -> None:
    async with client:
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                await nursery.start(run.runtime.run)
    run.end_ms = run.clock()


def simulate(run: Run, client: httpx.AsyncClient, seconds: float) -> None:
    trio.run(run_for, run, client, seconds, clock=trio.testing.MockClock(autojump_threshold=0))


# --- invariants every run must keep -----------------------------------------------------------


def check_nothing_served_is_lost_or_doubled(run: Run) -> None:
    stored = run.stored_dates()
    assert len(stored) == len(set(stored)), "a reading was stored twice"
    (identifiers,) = run.store.conn.execute("SELECT count(DISTINCT identifier) FROM entries").fetchone()
    assert identifiers == len(stored)
    # each reading was written exactly once: the overlap the reads ask for rewrites nothing
    assert sum(loop.records_written for loop in run.runtime.loops) == len(stored)
    served = run.emulator.served(run.account)
    missing = served - set(stored)
    assert not missing, f"{len(missing)} served readings never reached the store"
    assert set(stored) <= set(run.account.published(run.end_ms)), "a reading nobody served was stored"


#: answers that refuse the credentials (or lock the account): what the driver must not hammer
REFUSALS = frozenset(
    {"AccountPasswordInvalid", "SSO_AuthenticatePasswordInvalid", "SSO_AuthenticateAccountNotFound",
     "SSO_InternalError", "InvalidArgument", "SSO_AuthenticateMaxAttemptsExceeed"}
)  # fmt: skip


def login_attempts(run: Run) -> list[Request]:
    """The requests that start a login: step 1, or step 2 when the account id was already known."""
    attempts: list[Request] = []
    previous: Request | None = None
    for r in run.emulator.requests:
        if r.endpoint == "authenticate":
            attempts.append(r)
        elif r.endpoint == "login" and not (
            previous is not None and previous.endpoint == "authenticate" and previous.status == 200
        ):
            attempts.append(r)
        if r.endpoint in ("authenticate", "login"):
            previous = r
    return attempts


def refused(run: Run) -> list[Request]:
    return [
        r for r in run.emulator.requests
        if r.endpoint in ("authenticate", "login")
        and (r.code in REFUSALS or r.fault in ("zero_uuid", "lockout", "lockout429"))
    ]  # fmt: skip


def check_no_login_storm(run: Run, per_hour: int = 3, any_hour: int = 14) -> None:
    """After a refused login, at most a few more credential checks in the following hour, as
    long as the credentials are refused.

    A credential check is an attempt the server judged: one that met no injected transport or
    server fault. Attempts the CDN or a broken server answered (a 500 page, a timeout) follow
    the ordinary, shorter login backoff, so they are bounded separately and more loosely. Once
    the server accepts the credentials again the refusal is over: later logins (a session the
    reads refuse, say) follow the ordinary pacing, bounded by ``any_hour`` below.
    """
    attempts = login_attempts(run)
    refusals = refused(run)
    checks = [r for r in attempts if r.fault is None or r in refusals]
    accepted = [r.time_ms for r in run.emulator.requests if r.endpoint == "login" and r.status == 200]
    for failure in refusals:
        until = min([failure.time_ms + HOUR_MS, *(t for t in accepted if t > failure.time_ms)])
        later = [r for r in checks if failure.time_ms < r.time_ms <= until]
        assert len(later) <= per_hour, f"{len(later)} credential checks within an hour of a refused login"
    for first in attempts:
        window = [r for r in attempts if first.time_ms <= r.time_ms < first.time_ms + HOUR_MS]
        assert len(window) <= any_hour, f"{len(window)} login attempts within one hour"
    # and never two logins of the account at the same time
    assert max(run.emulator.max_logins_in_flight.values(), default=0) <= 1


def check_silence_during_lockouts(run: Run) -> None:
    for notice in run.emulator.lockouts:
        during = [
            r for r in run.emulator.requests
            if r.account_id == notice.account_id and notice.told_ms < r.time_ms < notice.until_ms
        ]  # fmt: skip
        assert not during, f"{len(during)} requests while the account was locked"
    for notice in run.emulator.lockouts:
        # our own attempts while locked are answered with the lockout, never sent in a burst
        assert (
            sum(1 for n in run.emulator.lockouts if notice.told_ms <= n.told_ms < notice.told_ms + HOUR_MS)
            <= 2
        )


def check_complete_after_quiet(run: Run, until_ms: int) -> None:
    """Every reading published long enough before ``until_ms`` is in the store."""
    published = set(run.account.published(until_ms))
    missing = published - set(run.stored_dates())
    assert not missing, f"{len(missing)} published readings missing, newest {max(missing)}"


# --- healthy loop: latency and request budget -------------------------------------------------


@settings(
    max_examples=int(__import__("os").environ.get("DEXCOM_EXAMPLES", "4")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(seed=st.integers(0, 10_000), phase_s=st.integers(0, 299))
def test_healthy_loop_latency_and_request_budget(seed: int, phase_s: int) -> None:
    run, client = build_run(seed, phase_ms=phase_s * 1000)
    hours = 6
    simulate(run, client, hours * 3600 + 1)
    end = run.at(hours * 3600)
    check_nothing_served_is_lost_or_doubled(run)
    check_complete_after_quiet(run, end - MIN_MS)  # the newest may still be on its way
    # latency of every reading published after the first (backfill) frame
    delays = [
        run.astore.arrived[t] - run.account.visible_at((t - run.account.first_reading_ms) // 300_000)
        for t in run.account.published(end - 5 * MIN_MS)
        if t > START
    ]
    assert len(delays) >= hours * 12 - 2
    assert statistics.median(delays) <= 30_000, statistics.median(delays)
    assert max(delays) <= 60_000
    # at most 14 reads in any hour; one login for the whole run
    reads = [r.time_ms for r in run.emulator.requests if r.endpoint == "read"]
    for hour in range(hours):
        assert sum(1 for t in reads if run.at(hour * 3600) <= t < run.at((hour + 1) * 3600)) <= 14
    assert run.emulator.count("authenticate") == 1 and run.emulator.count("login") == 1
    status = run.runtime.status()
    assert status["session"]["state"] == "active"
    assert status["loops"][LOOP]["frames_failed"] == 0


# --- random fault schedules --------------------------------------------------------------------

READ_FAULTS = ["code", "http429", "ban", "hang", "timeout", "truncated", "nonjson", "html500"]
AUTH_FAULTS = ["code", "http429", "lockout429", "ban", "hang", "truncated", "nonjson", "html500", "zero_uuid"]
READ_CODES = ["SessionIdNotFound", "SessionNotValid", "InvalidArgument", "SSO_InternalError", "Unknown"]
AUTH_CODES = ["AccountPasswordInvalid", "SSO_AuthenticateMaxAttemptsExceeed", "InvalidArgument", "Unknown"]
FAULT_HOURS = 4
QUIET_HOURS = 8


@st.composite
def events(draw: st.DrawFn) -> tuple[Any, ...]:
    start = draw(st.integers(0, FAULT_HOURS * 3600))
    what = draw(st.sampled_from(["read", "read", "read", "auth", "expire", "password", "lock"]))
    if what in ("read", "auth"):
        kinds = READ_FAULTS if what == "read" else AUTH_FAULTS
        kind = draw(st.sampled_from(kinds))
        code = draw(st.sampled_from(READ_CODES if what == "read" else AUTH_CODES))
        retry_after = draw(st.sampled_from([None, 30, 600]))
        return (what, start, draw(st.integers(1, 45 * 60)), kind, code, retry_after)
    if what == "password":
        return (what, start, draw(st.integers(60, 2 * 3600)))
    if what == "lock":
        return (what, start, draw(st.integers(5 * 60, 25 * 60)))
    return (what, start)


def apply_schedule(run: Run, schedule: list[tuple[Any, ...]]) -> None:
    emulator, account = run.emulator, run.account
    for event in schedule:
        what, start = event[0], run.at(event[1])
        if what in ("read", "auth"):
            _, _, duration, kind, code, retry_after = event
            endpoints = ["read"] if what == "read" else ["authenticate", "login"]
            emulator.schedule(kind, start, start + duration * 1000, endpoint=endpoints, code=code,
                              retry_after=retry_after)  # fmt: skip
        elif what == "expire":
            emulator.expire_sessions(account, at_ms=start)
        elif what == "password":
            emulator.change_password(account, start, start + event[2] * 1000)
        elif what == "lock":
            emulator.lock(account, at_ms=start, duration_ms=event[2] * 1000)


@settings(
    max_examples=int(__import__("os").environ.get("DEXCOM_EXAMPLES", "8")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    schedule=st.lists(events(), max_size=6),
    seed=st.integers(0, 10_000),
    # the server's own session lifetime: a day, or much shorter than the driver assumes
    ttl_min=st.sampled_from([24 * 60, 130, 47]),
    # readings uploaded late (up to ten minutes) or never (signal loss), by index from the start
    late=st.dictionaries(st.integers(60, 72 + FAULT_HOURS * 12), st.integers(1, 10), max_size=4),
    missing=st.sets(st.integers(60, 72 + FAULT_HOURS * 12), max_size=4),
)
def test_random_fault_schedules_lose_nothing_and_never_storm(
    schedule: list[tuple[Any, ...]], seed: int, ttl_min: int, late: dict[int, int], missing: set[int]
) -> None:
    run, client = build_run(
        seed, session_ttl_ms=ttl_min * MIN_MS,
        account_kw={"late_ms": {i: m * MIN_MS for i, m in late.items()}, "missing": missing},
    )  # fmt: skip
    apply_schedule(run, schedule)
    total = (FAULT_HOURS + QUIET_HOURS) * 3600
    simulate(run, client, total)
    check_nothing_served_is_lost_or_doubled(run)
    check_no_login_storm(run)
    check_silence_during_lockouts(run)
    # after hours without faults, the store has caught up with everything published
    check_complete_after_quiet(run, run.at(total) - 15 * MIN_MS)
    # and the loop is healthy again: the last hours run at one read per reading
    status = run.runtime.status()
    assert status["session"]["state"] == "active", status["session"]
    last_hour = run.emulator.count("read", since=run.at(total - 3600))
    assert 11 <= last_hour <= 14, last_hour


# --- targeted scenarios ------------------------------------------------------------------------


def test_a_password_fixed_then_sessions_refused_is_paced_not_stormed() -> None:
    """The password is refused for two minutes, then accepted again while reads refuse every
    session for 45 minutes: one retry after the refusal's half hour, one login again at once when
    its fresh session is refused, then the ordinary pacing of sessions that never delivered
    (2, 4, 8 … minutes), and data again once reads work."""
    run, client = build_run()
    apply_schedule(run, [("password", 600, 120), ("read", 700, 2700, "code", "SessionIdNotFound", None)])
    simulate(run, client, 3 * 3600)
    logins = [r for r in run.emulator.requests if r.endpoint == "login"]
    refusal = next(r for r in logins if r.code == "AccountPasswordInvalid")
    after = [r for r in logins if r.time_ms > refusal.time_ms]
    # nothing until the refusal's half hour is over
    assert after[0].time_ms - refusal.time_ms >= 30 * MIN_MS * 0.99
    gaps = [b.time_ms - a.time_ms for a, b in itertools.pairwise(after[:6])]
    assert gaps[0] < 1000, gaps  # the first refused fresh session: logged in again at once, once
    assert all(g >= 96_000 for g in gaps[1:]) and gaps[1:] == sorted(gaps[1:]), gaps
    check_no_login_storm(run)
    check_nothing_served_is_lost_or_doubled(run)
    check_complete_after_quiet(run, run.at(3 * 3600) - 15 * MIN_MS)


def test_session_expiry_mid_stream_costs_one_login() -> None:
    run, client = build_run()
    for hour in (1, 2, 3):
        run.emulator.expire_sessions(run.account, at_ms=run.at(hour * 3600 + 100))
    simulate(run, client, 4 * 3600)
    check_nothing_served_is_lost_or_doubled(run)
    check_complete_after_quiet(run, run.at(4 * 3600) - 10 * MIN_MS)
    # the first login, then one per expiry: step 2 only, as the account id is known
    assert run.emulator.count("authenticate") == 1
    assert run.emulator.count("login") == 4
    failed = [r for r in run.emulator.requests if r.status == 500]
    assert [r.code for r in failed] == ["SessionIdNotFound"] * 3 and all(r.endpoint == "read" for r in failed)
    # each failed read is followed by exactly one login and then a read that succeeds
    endpoints = [(r.endpoint, r.status) for r in run.emulator.requests]
    for failure in failed:
        i = run.emulator.requests.index(failure)
        assert endpoints[i + 1 : i + 3] == [("login", 200), ("read", 200)]
        # promptly: the frame's own retry, not the next five-minute poll
        assert run.emulator.requests[i + 2].time_ms - failure.time_ms <= 10_000
    assert run.runtime.status()["loops"][LOOP]["frames_failed"] == 0  # retried within the frame


def test_wrong_password_for_a_day_is_a_handful_of_attempts() -> None:
    run, client = build_run()
    run.emulator.change_password(run.account, run.at(3600), run.at(25 * 3600))
    simulate(run, client, 32 * 3600)
    during = [r for r in login_attempts(run) if run.at(3600) <= r.time_ms < run.at(25 * 3600)]
    # 30 min, 1 h, 2 h, 4 h, then every 6 h: a handful a day, never a storm
    assert 3 <= len(during) <= 8, [(r.time_ms - START) / HOUR_MS for r in during]
    # refused every time (every third refusal locks the account as well)
    assert {r.code for r in during} <= {"AccountPasswordInvalid", "SSO_AuthenticateMaxAttemptsExceeed"}
    gaps = [b.time_ms - a.time_ms for a, b in zip(during, during[1:], strict=False)]
    assert gaps[0] >= 1800_000 and gaps == sorted(gaps), [g / 60_000 for g in gaps]  # long and growing
    assert max(gaps) <= 6 * HOUR_MS + 60_000
    check_no_login_storm(run, per_hour=1)
    check_silence_during_lockouts(run)
    check_nothing_served_is_lost_or_doubled(run)
    status = run.runtime.status()
    assert status["session"]["state"] == "active"  # it came back once the password was right
    # the day without a session is caught up from the server's 24-hour window
    stored = set(run.stored_dates())
    day = [t for t in run.account.published(run.at(32 * 3600) - 10 * MIN_MS) if t >= run.at(8 * 3600)]
    assert set(day) <= stored


def test_repeated_lockouts_wait_longer_each_time() -> None:
    # a server that locks the account at the first refused password, for half an hour
    run, client = build_run(lockout_after=1, lockout_ms=30 * MIN_MS)
    run.emulator.change_password(run.account, run.at(3600), run.at(12 * 3600))
    simulate(run, client, 16 * 3600)
    attempts = [r for r in login_attempts(run) if run.at(3600) <= r.time_ms < run.at(12 * 3600)]
    assert len(attempts) >= 3
    assert all(r.code == "SSO_AuthenticateMaxAttemptsExceeed" for r in attempts)
    gaps = [b.time_ms - a.time_ms for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps[0] >= 1800_000 and gaps == sorted(gaps), [g / 60_000 for g in gaps]
    assert gaps[-1] > gaps[0]
    check_silence_during_lockouts(run)
    check_no_login_storm(run, per_hour=1)
    check_nothing_served_is_lost_or_doubled(run)
    assert run.runtime.status()["session"]["state"] == "active"


def test_lockout_means_silence_until_it_is_over() -> None:
    run, client = build_run(lockout_ms=25 * MIN_MS)
    run.emulator.lock(run.account, at_ms=run.at(1800), duration_ms=25 * MIN_MS)
    simulate(run, client, 6 * 3600)
    assert len(run.emulator.lockouts) == 1
    notice = run.emulator.lockouts[0]
    check_silence_during_lockouts(run)
    after = [r for r in run.emulator.requests if r.time_ms > notice.told_ms]
    assert after and after[0].time_ms >= notice.told_ms + 30 * MIN_MS
    check_nothing_served_is_lost_or_doubled(run)
    check_complete_after_quiet(run, run.at(6 * 3600) - 10 * MIN_MS)


def test_rate_limit_retry_after_is_honoured() -> None:
    run, client = build_run()
    run.emulator.schedule("http429", run.at(3600), run.at(3600 + 1200), endpoint="read", retry_after=600)
    simulate(run, client, 3 * 3600)
    limited = [r for r in run.emulator.requests if r.status == 429]
    assert limited
    for first, second in zip(limited, limited[1:], strict=False):
        assert second.time_ms - first.time_ms >= 600_000
    check_nothing_served_is_lost_or_doubled(run)
    check_complete_after_quiet(run, run.at(3 * 3600) - 10 * MIN_MS)


# --- secrets -------------------------------------------------------------------------------------


def test_no_secret_reaches_logs_status_or_errors() -> None:
    out = io.StringIO()
    configure(fmt="json", level="debug", stream=out)
    try:
        run, client = build_run()
        em, account = run.emulator, run.account
        em.schedule("code", run.at(600), run.at(900), endpoint="read", code="SessionIdNotFound")
        em.schedule("code", run.at(1500), run.at(1600), endpoint="read", code="SessionNotValid")
        em.schedule("code", run.at(2000), run.at(2400), endpoint="login", code="InvalidArgument")
        em.change_password(account, run.at(3000), run.at(5000))
        em.schedule("truncated", run.at(9000), run.at(9300), endpoint="read")
        simulate(run, client, 4 * 3600)
        status = json.dumps(run.runtime.status())
        frame_error = run.runtime.loops[0].fetch.last_error if run.runtime.loops[0].fetch else None
        session_error = run.runtime.session.machine.last_error
    finally:
        configure(fmt="json", level="warning", stream=io.StringIO())
    logs = out.getvalue()
    sessions = list(em.issued)
    secrets = [PASSWORD, account.account_id, *sessions]
    assert len(sessions) >= 3
    # the driver registered every secret it saw, so any later slip is caught by redaction too
    assert set(secrets) <= registered()
    assert "SessionIdNotFound" in logs and "AccountPasswordInvalid" in logs  # the logs did see errors
    for text in (logs, status, str(frame_error), str(session_error)):
        for secret in secrets:
            assert secret not in text
        # nothing even needed redacting: the messages never carried a secret in the first place
        assert "[redacted]" not in text


# --- scheduling -----------------------------------------------------------------------------------


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), phase_s=st.integers(0, 299))
def test_each_poll_follows_the_newest_reading_by_one_interval_and_a_short_buffer(
    seed: int, phase_s: int
) -> None:
    run, client = build_run(seed, phase_ms=phase_s * 1000)
    simulate(run, client, 3 * 3600)
    reads = [r for r in run.emulator.requests if r.endpoint == "read"]
    assert all(r.status == 200 for r in reads)
    for before, after in zip(reads, reads[1:], strict=False):
        newest = max(before.served)
        # last reading + interval + buffer (15 s) + jitter (≤ 10 s)
        assert 315_000 <= after.time_ms - newest <= 325_000, (after.time_ms - newest) / 1000
        # and every poll finds the reading it was waiting for: no empty polls
        assert max(after.served) == newest + 300_000


def _frames(requests: list[Request], gap_ms: int = 20_000) -> list[list[Request]]:
    """Requests grouped into frames: a frame's retries follow within seconds, frames do not."""
    frames: list[list[Request]] = []
    for r in requests:
        if frames and r.time_ms - frames[-1][-1].time_ms < gap_ms:
            frames[-1].append(r)
        else:
            frames.append([r])
    return frames


def test_persistent_server_errors_back_off_to_the_cap_and_then_catch_up() -> None:
    run, client = build_run()
    start, end = run.at(3600), run.at(4 * 3600)
    run.emulator.schedule("html500", start, end, endpoint="read")
    simulate(run, client, 7 * 3600)
    failed = [r for r in run.emulator.requests if r.endpoint == "read" and start <= r.time_ms < end]
    assert all(r.status == 500 for r in failed)
    frames = _frames(failed)
    assert all(len(f) == 3 for f in frames)  # each frame tries three times, then gives up
    for k, (a, b) in enumerate(zip(frames, frames[1:], strict=False), start=1):
        nominal = min(1800.0, 30.0 * 2 ** (k - 1)) * 1000
        gap = b[0].time_ms - a[-1].time_ms
        assert 0.8 * nominal <= gap <= nominal + 1000, (k, gap / 1000)
    assert len(frames) <= 13  # three hours at a 30-minute cap: about a dozen frames, not hundreds
    # the first read after the outage succeeds within one capped backoff and fetches the gap
    first_ok = next(r for r in run.emulator.requests if r.endpoint == "read" and r.time_ms >= end)
    assert first_ok.status == 200 and first_ok.time_ms - end <= 1800_000
    assert len(first_ok.served) >= 1 and min(first_ok.served) < start
    check_nothing_served_is_lost_or_doubled(run)
    check_complete_after_quiet(run, run.at(7 * 3600) - 10 * MIN_MS)
    assert run.emulator.count("login") == 1  # a server error is no reason to log in again


def test_a_lockout_that_arrives_as_a_rate_limit_means_silence() -> None:
    run, client = build_run()
    run.emulator.expire_sessions(run.account, at_ms=run.at(3600))
    run.emulator.schedule("lockout429", run.at(3600), run.at(3660), endpoint="login", retry_after=60)
    simulate(run, client, 5 * 3600)
    (notice,) = run.emulator.lockouts
    assert notice.told_ms >= run.at(3600)
    check_silence_during_lockouts(run)
    after = [r for r in run.emulator.requests if r.time_ms > notice.told_ms]
    # the 60 s the limiter asked for is not enough for a lockout: at least half an hour
    assert after and after[0].time_ms - notice.told_ms >= 1800_000
    check_nothing_served_is_lost_or_doubled(run)
    check_complete_after_quiet(run, run.at(5 * 3600) - 10 * MIN_MS)


# --- sessions -----------------------------------------------------------------------------------------


def test_sessions_that_end_sooner_than_expected_cost_one_login_each() -> None:
    run, client = build_run(session_ttl_ms=100 * MIN_MS)
    simulate(run, client, 8 * 3600)
    requests = run.emulator.requests
    not_valid = [i for i, r in enumerate(requests) if r.code == "SessionNotValid"]
    assert len(not_valid) >= 4
    for i in not_valid:
        assert requests[i].endpoint == "read"
        assert [(r.endpoint, r.status) for r in requests[i + 1 : i + 3]] == [("login", 200), ("read", 200)]
    assert run.emulator.count("authenticate") == 1
    assert run.emulator.count("login") == 1 + len(not_valid)
    assert run.runtime.status()["loops"][LOOP]["frames_failed"] == 0
    check_nothing_served_is_lost_or_doubled(run)
    check_complete_after_quiet(run, run.at(8 * 3600) - 10 * MIN_MS)


@pytest.mark.parametrize("code", ["SessionNotValid", "SessionIdNotFound", "InvalidArgument"])
def test_a_server_that_refuses_every_session_gets_one_login_per_frame(code: str) -> None:
    run, client = build_run()
    start, end = run.at(3600), run.at(3 * 3600)
    run.emulator.schedule("code", start, end, endpoint="read", code=code)
    simulate(run, client, 5 * 3600)
    during = [r for r in run.emulator.requests if start <= r.time_ms < end]
    logins = [r for r in during if r.endpoint == "login"]
    # the used session dies: one login and one retry; that fresh session refused: one login
    # again at once and one retry; from then on every login waits, and is followed by one read
    assert [r.endpoint for r in during[:5]] == ["read", "login", "read", "login", "read"]
    at = {id(r): i for i, r in enumerate(during)}
    for a, b in itertools.pairwise(logins):
        between = [r for r in during[at[id(a)] : at[id(b)]] if r.endpoint == "read"]
        assert len(between) == 1, "two logins without a read between them"
    for a, b in itertools.pairwise(logins[1:]):
        assert b.time_ms - a.time_ms >= 24_000  # paced, never a burst
    assert len(logins) <= 12, len(logins)
    assert run.emulator.count("authenticate") == 1
    check_no_login_storm(run)
    check_nothing_served_is_lost_or_doubled(run)
    check_complete_after_quiet(run, run.at(5 * 3600) - 10 * MIN_MS)
    assert run.runtime.status()["session"]["state"] == "active"


def test_loops_sharing_one_account_never_log_in_twice_at_once() -> None:
    run, client = build_run(extra_loops=2)
    run.emulator.inject("hang", endpoint="authenticate")  # the first login hangs until it times out
    for hour in (1, 2):
        run.emulator.expire_sessions(run.account, at_ms=run.at(hour * 3600 + 100))
    simulate(run, client, 3 * 3600)
    assert run.emulator.max_logins_in_flight == {run.account.account_id: 1}
    # the hung login, its retry, and one login per expiry however many loops saw it
    assert run.emulator.count("authenticate") == 2
    assert run.emulator.count("login") == 3
    check_nothing_served_is_lost_or_doubled(run)
    check_complete_after_quiet(run, run.at(3 * 3600) - 10 * MIN_MS)
    assert all(loop.cycle.frames_ok > 30 for loop in run.runtime.loops)
