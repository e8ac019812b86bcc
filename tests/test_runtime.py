"""The trio drivers in virtual time: scheduling, backoff, shared sessions, Retry-After."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta
from typing import Any

import pytest
import trio

from connect.builder import Builder
from connect.clock import VirtualClock
from connect.contract import Backoff, LastKnown
from connect.errors import AuthRejected, RateLimited, SessionExpired, TransientError
from connect.records import Batch, Entry
from connect.runtime import SourceRuntime
from store import AsyncStore, Store

START = 1_750_000_000_000
FIVE_MIN = 300_000


class FakeVendor:
    """A vendor publishing a reading every five minutes; failures scripted per test."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.logins = 0
        self.fetches: list[int] = []
        self.sessions = 0
        self.fail_fetch: list[Exception] = []
        self.expire_session = False
        self.reject_login = False
        self.current_session = 0

    def readings(self, after: int, until: int) -> list[int]:
        first = (after // FIVE_MIN + 1) * FIVE_MIN
        return list(range(first, until + 1, FIVE_MIN))

    async def authenticate(self) -> str:
        await trio.lowlevel.checkpoint()
        self.logins += 1
        if self.reject_login:
            raise AuthRejected("bad password")
        return "account"

    async def authorize(self, account: str) -> int:
        await trio.sleep(1)  # a login takes a moment, so concurrent loops overlap
        self.sessions += 1
        self.current_session = self.sessions
        return self.sessions

    async def fetch(self, session: Any, last_known: LastKnown) -> list[int]:
        await trio.lowlevel.checkpoint()
        self.fetches.append(self.clock())
        if self.expire_session and session != self.current_session + 100:
            # every session before the "renewal" is dead: loops must log in again, once
            if session == 1:
                raise SessionExpired("SessionIdNotFound")
        if self.fail_fetch:
            raise self.fail_fetch.pop(0)
        return self.readings(last_known.get("entries"), self.clock())

    def transform(self, raw: list[int], last_known: LastKnown) -> Batch:
        return Batch.of(Entry(type="sgv", date=t, sgv=100 + (t // FIVE_MIN) % 50, device="fake") for t in raw)


def build(vendor: FakeVendor, *, loops: int = 1, session: bool = False, retries: int = 2) -> Builder:
    builder = Builder("fake")
    if session:
        builder.support_session(authenticate=vendor.authenticate, authorize=vendor.authorize)
    for i in range(loops):
        builder.register_loop(
            f"Loop{i}",
            fetch=vendor.fetch,
            transform=vendor.transform,
            expected_interval=timedelta(minutes=5),
            frame_retries=retries,
            frame_backoff=Backoff(base=2.0, cap=60.0, jitter=0.0),
            cycle_backoff=Backoff(base=30.0, cap=1800.0, jitter=0.0),
        )
    return builder


async def run_for(rt: SourceRuntime, seconds: float) -> None:
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)


def runtime(vendor: FakeVendor, builder: Builder, store: Store, **kw: Any) -> SourceRuntime:
    return SourceRuntime(
        builder.build(), AsyncStore(store), clock=vendor.clock, backfill_days=1, rng=random.Random(7), **kw
    )


async def test_a_day_of_five_minute_frames_without_drift(autojump_clock: trio.abc.Clock) -> None:
    clock = VirtualClock(START)
    vendor = FakeVendor(clock)
    store = Store(":memory:")
    rt = runtime(vendor, build(vendor), store)
    await run_for(rt, 86_400 + 1)
    loop = rt.loops[0]
    # one backfill frame, then one frame per reading for the day: 288 (+1 backfill)
    assert loop.cycle.frames_ok == 289
    assert loop.cycle.frames_failed == 0
    # no drift: every live poll happens a fixed offset after the reading it fetches
    offsets = {t % FIVE_MIN for t in vendor.fetches[1:]}
    assert max(offsets) - min(offsets) <= 10_000  # within the jitter window
    assert all(15_000 <= o <= 25_000 for o in offsets)
    assert store.count("entries") == 288 * 2


async def test_backoff_grows_over_failed_frames_and_resets_on_success(autojump_clock: trio.abc.Clock) -> None:
    clock = VirtualClock(START)
    vendor = FakeVendor(clock)
    # 4 failing frames (each with 3 attempts), then success
    vendor.fail_fetch = [TransientError("HTTP 503") for _ in range(12)]
    store = Store(":memory:")
    rt = runtime(vendor, build(vendor), store)
    await run_for(rt, 3 * 3600)
    frame_starts = vendor.fetches[0:12:3]
    gaps = [b - a for a, b in itertools.pairwise(frame_starts)]
    assert gaps == sorted(gaps) and gaps[0] < gaps[-1], gaps
    loop = rt.loops[0]
    assert loop.cycle.frames_failed == 4
    assert loop.cycle.frames_missing == 0  # reset by the success
    assert loop.cycle.frames_ok >= 2
    # after the success the loop is back on the five-minute schedule
    assert 0 < vendor.fetches[-1] - vendor.fetches[-2] <= FIVE_MIN + 25_000


async def test_one_expired_session_is_reestablished_once_for_all_loops(
    autojump_clock: trio.abc.Clock,
) -> None:
    clock = VirtualClock(START)
    vendor = FakeVendor(clock)
    store = Store(":memory:")
    rt = runtime(vendor, build(vendor, loops=3, session=True), store)
    logins_before: list[int] = []

    async def expire_later() -> None:
        await trio.sleep(60)
        logins_before.append(vendor.logins)
        vendor.expire_session = True  # session 1 is now dead for every loop

    with trio.move_on_after(20 * 60):
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            nursery.start_soon(expire_later)
    assert logins_before == [1]
    assert vendor.logins == 2, "every loop saw the expiry; one login must serve them all"
    assert rt.session.machine.current_state_value == "active"
    assert all(loop.cycle.frames_failed == 0 for loop in rt.loops)


async def test_retry_after_is_honoured(autojump_clock: trio.abc.Clock) -> None:
    clock = VirtualClock(START)
    vendor = FakeVendor(clock)
    vendor.fail_fetch = [RateLimited("HTTP 429", retry_after=600)]
    store = Store(":memory:")
    rt = runtime(vendor, build(vendor, retries=0), store)
    await run_for(rt, 3600)
    assert vendor.fetches[1] - vendor.fetches[0] >= 600_000


async def test_rejected_credentials_never_storm(autojump_clock: trio.abc.Clock) -> None:
    clock = VirtualClock(START)
    vendor = FakeVendor(clock)
    vendor.reject_login = True
    store = Store(":memory:")
    rt = runtime(vendor, build(vendor, loops=2, session=True), store)
    await run_for(rt, 6 * 3600)
    assert vendor.logins <= 5, vendor.logins  # 30 min, 1 h, 2 h … never a storm
    assert rt.session.machine.current_state_value == "rejected"
    status = rt.status()
    assert status["session"]["last_error"].startswith("AuthRejected")
    assert store.count("entries") == 0


async def test_a_driver_bug_becomes_a_typed_error(autojump_clock: trio.abc.Clock) -> None:
    clock = VirtualClock(START)
    vendor = FakeVendor(clock)

    def broken(raw: Any, last_known: LastKnown) -> Batch:
        raise KeyError("Value")

    builder = Builder("fake")
    builder.register_loop("Broken", fetch=vendor.fetch, transform=broken, frame_retries=0)
    rt = runtime(vendor, builder, Store(":memory:"))
    assert await rt.run_once() is False
    assert rt.status()["loops"]["Broken"]["last_error"].startswith("ProtocolError")


@pytest.mark.parametrize("failures", [0, 1])
async def test_run_once_reports_failure(autojump_clock: trio.abc.Clock, failures: int) -> None:
    clock = VirtualClock(START)
    vendor = FakeVendor(clock)
    vendor.fail_fetch = [TransientError("HTTP 500")] * failures
    rt = runtime(vendor, build(vendor, retries=0), Store(":memory:"))
    assert await rt.run_once() is (failures == 0)
