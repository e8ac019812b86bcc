"""The dexcomshare source under the real runtime, against the emulator, in virtual time.

Hours of five-minute readings run in a fraction of a second: trio's MockClock jumps whenever
every task sleeps, and the emulator publishes on the same :class:`VirtualClock` the runtime
uses. Properties hold for random fault schedules: nothing served is lost or stored twice,
bad credentials never turn into a login storm, and a locked account hears nothing from us.
"""

from __future__ import annotations

import io
import json
import random
import statistics
from collections.abc import Callable
from typing import Any

import attrs
import httpx
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
from tests.emulators.dexcom import Account, ShareEmulator, TimeoutTransport

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

    def stored_dates(self) -> list[int]:
        return [int(d) for (d,) in self.store.conn.execute("SELECT date FROM entries ORDER BY date")]

    def at(self, offset_s: float) -> int:
        return START + int(offset_s * 1000)


def build_run(
    seed: int = 1, *, phase_ms: int = 0, history_h: float = 6.0, **emulator_kw: Any
) -> tuple[Run, httpx.AsyncClient]:
    clock = VirtualClock(START)
    emulator = ShareEmulator(now=clock, **emulator_kw)
    account = emulator.add_account(
        "publisher", PASSWORD, "us", first_reading_ms=START - int(history_h * HOUR_MS) + phase_ms, seed=seed
    )
    client = httpx.AsyncClient(transport=TimeoutTransport(emulator, timeout_s=30))
    driver = make(DexcomShareSettings(share_account_name="publisher", share_password=PASSWORD), client)  # type: ignore[arg-type]
    builder = Builder("dexcomshare")
    driver.generate_driver(builder)
    store = Store(":memory:")
    astore = RecordingStore(store, clock)
    runtime = SourceRuntime(builder.build(), astore, clock=clock, backfill_days=1, rng=random.Random(seed))
    return Run(clock, emulator, account, store, astore, runtime), client


async def run_for(run: Run, client: httpx.AsyncClient, seconds: float) -> None:
    async with client:
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                await nursery.start(run.runtime.run)


def simulate(run: Run, client: httpx.AsyncClient, seconds: float) -> None:
    trio.run(run_for, run, client, seconds, clock=trio.testing.MockClock(autojump_threshold=0))


# --- invariants every run must keep -----------------------------------------------------------


def check_nothing_served_is_lost_or_doubled(run: Run) -> None:
    stored = run.stored_dates()
    assert len(stored) == len(set(stored)), "a reading was stored twice"
    (identifiers,) = run.store.conn.execute("SELECT count(DISTINCT identifier) FROM entries").fetchone()
    assert identifiers == len(stored)
    missing = run.emulator.served(run.account) - set(stored)
    assert not missing, f"{len(missing)} served readings never reached the store"


def check_no_login_storm(run: Run, per_hour: int = 3) -> None:
    """After a refused login, at most a few more login attempts in the following hour."""
    logins = [r for r in run.emulator.requests if r.endpoint in ("authenticate", "login")]
    refused = [r for r in logins if r.status == 500 and r.endpoint == "authenticate"]
    for failure in refused:
        later = [
            r
            for r in logins
            if r.endpoint == "authenticate" and failure.time_ms < r.time_ms <= failure.time_ms + HOUR_MS
        ]
        assert len(later) <= per_hour, f"{len(later)} logins within an hour of a refused one"


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
AUTH_FAULTS = ["code", "http429", "hang", "truncated", "nonjson", "html500", "zero_uuid"]
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
    max_examples=int(__import__("os").environ.get("DEXCOM_EXAMPLES", "12")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(schedule=st.lists(events(), max_size=6), seed=st.integers(0, 10_000))
def test_random_fault_schedules_lose_nothing_and_never_storm(
    schedule: list[tuple[Any, ...]], seed: int
) -> None:
    run, client = build_run(seed)
    apply_schedule(run, schedule)
    total = (FAULT_HOURS + QUIET_HOURS) * 3600
    simulate(run, client, total)
    check_nothing_served_is_lost_or_doubled(run)
    check_no_login_storm(run)
    check_silence_during_lockouts(run)
    # after hours without faults, the store has caught up with everything published
    check_complete_after_quiet(run, run.at(total) - 15 * MIN_MS)
    # and the loop is healthy again
    status = run.runtime.status()
    assert status["session"]["state"] == "active", status["session"]


# --- targeted scenarios ------------------------------------------------------------------------


def test_session_expiry_mid_stream_costs_one_login() -> None:
    run, client = build_run()
    for hour in (1, 2, 3):
        run.emulator.expire_sessions(run.account, at_ms=run.at(hour * 3600 + 100))
    simulate(run, client, 4 * 3600)
    check_nothing_served_is_lost_or_doubled(run)
    check_complete_after_quiet(run, run.at(4 * 3600) - 10 * MIN_MS)
    assert run.emulator.count("authenticate") == 4  # the first login and one per expiry
    failed = [r for r in run.emulator.requests if r.status == 500]
    assert len(failed) == 3 and all(r.endpoint == "read" for r in failed)
    assert run.runtime.status()["loops"][LOOP]["frames_failed"] == 0  # retried within the frame


def test_wrong_password_for_a_day_is_a_handful_of_attempts() -> None:
    run, client = build_run()
    run.emulator.change_password(run.account, run.at(3600), run.at(25 * 3600))
    simulate(run, client, 32 * 3600)
    logins = [r for r in run.emulator.requests if r.endpoint == "authenticate"]
    during = [r for r in logins if run.at(3600) <= r.time_ms < run.at(25 * 3600)]
    # 30 min, 1 h, 2 h, 4 h, then every 6 h: a handful a day, never a storm
    assert 3 <= len(during) <= 8, [(r.time_ms - START) / HOUR_MS for r in during]
    check_no_login_storm(run, per_hour=1)
    check_silence_during_lockouts(run)
    check_nothing_served_is_lost_or_doubled(run)
    status = run.runtime.status()
    assert status["session"]["state"] == "active"  # it came back once the password was right
    # the day without a session is caught up from the server's 24-hour window
    stored = set(run.stored_dates())
    day = [t for t in run.account.published(run.at(32 * 3600) - 10 * MIN_MS) if t >= run.at(8 * 3600)]
    assert set(day) <= stored


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
