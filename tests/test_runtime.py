"""The trio drivers in virtual time: scheduling, backoff, shared sessions, Retry-After."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import attrs
import pytest
import trio

from connect.builder import Builder, SessionSpec
from connect.clock import VirtualClock
from connect.contract import Backoff, Grant, LastKnown
from connect.errors import (
    AccountLocked,
    AuthRejected,
    ConfigError,
    ConnectError,
    RateLimited,
    RequestRejected,
    SessionExpired,
    StepRequired,
    TransientError,
    Unreachable,
)
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
        #: an error authenticate / authorize raises while the callable returns one
        self.authenticate_error: Callable[[], Exception | None] = lambda: None
        self.authorize_error: Callable[[], Exception | None] = lambda: None
        #: while true, every fetch is told its session is dead (a vendor that takes the password
        #: but refuses every session, e.g. a token valid in another region only)
        self.refuse_sessions: Callable[[Any], bool] = lambda session: False
        self.login_times: list[int] = []

    def readings(self, after: int, until: int) -> list[int]:
        first = (after // FIVE_MIN + 1) * FIVE_MIN
        return list(range(first, until + 1, FIVE_MIN))

    async def authenticate(self) -> str:
        await trio.lowlevel.checkpoint()
        self.logins += 1
        self.login_times.append(self.clock())
        if self.reject_login:
            raise AuthRejected("bad password")
        if (error := self.authenticate_error()) is not None:
            raise error
        return "account"

    async def authorize(self, account: str) -> int:
        await trio.sleep(1)  # a login takes a moment, so concurrent loops overlap
        if (error := self.authorize_error()) is not None:
            raise error
        self.sessions += 1
        self.current_session = self.sessions
        return self.sessions

    async def fetch(self, session: Any, last_known: LastKnown) -> list[int]:
        await trio.lowlevel.checkpoint()
        self.fetches.append(self.clock())
        if self.refuse_sessions(session):
            raise SessionExpired("HTTP 401")
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


# --- login pacing ----------------------------------------------------------------------------------

HOUR_MS = 3_600_000


def most_in_an_hour(times: list[int]) -> int:
    return max((sum(1 for u in times[i:] if u < t + HOUR_MS) for i, t in enumerate(times)), default=0)


async def test_a_failing_login_is_retried_on_its_own_slow_clock(autojump_clock: trio.abc.Clock) -> None:
    """A login that fails for a passing reason is not retried at the pace of frame retries.

    Every frame attempt asks for the session; were the login's own wait shorter than the gaps
    between attempts (it was 5 s, doubling), a 45-minute outage of the vendor's login would see
    a dozen logins. The wait starts at a minute and doubles to half an hour.
    """
    clock = VirtualClock(START)
    vendor = FakeVendor(clock)
    outage_end = START + 45 * 60_000
    vendor.authorize_error = lambda: TransientError("HTTP 500") if clock() < outage_end else None
    store = Store(":memory:")
    rt = runtime(vendor, build(vendor, loops=2, session=True), store)
    await run_for(rt, 3 * 3600)
    during = [t for t in vendor.login_times if t < outage_end]
    assert 4 <= len(during) <= 6, [(t - START) // 1000 for t in during]  # 0, 1, 3, 7, 15, 31 min
    assert all(b - a >= 48_000 for a, b in itertools.pairwise(during))
    assert most_in_an_hour(vendor.login_times) <= 7
    # back within half an hour of the outage's end, and data flows again
    assert vendor.login_times[len(during)] <= outage_end + 30 * 60_000
    assert rt.session.machine.current_state_value == "active"
    assert rt.status()["session"]["failures"] == 0
    assert all(loop.cycle.frames_ok >= 10 for loop in rt.loops)


async def test_after_a_long_network_outage_the_first_login_is_minutes_late_not_half_an_hour(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Logins that never reached the vendor (no network) wait at most five minutes each.

    Nobody counted them, so they cannot lock the account; pacing them like logins the vendor
    saw would leave the data up to half an hour behind once the network is back.
    """
    clock = VirtualClock(START)
    vendor = FakeVendor(clock)
    outage_end = START + 6 * HOUR_MS + 7 * 60_000
    vendor.authenticate_error = lambda: Unreachable("ConnectError") if clock() < outage_end else None
    store = Store(":memory:")
    rt = runtime(vendor, build(vendor, loops=2, session=True), store)
    await run_for(rt, 8 * 3600)
    during = [t for t in vendor.login_times if t < outage_end]
    # 1, 2, 4 minutes, then every four to five: about a dozen unseen attempts an hour, no burst
    assert all(b - a >= 48_000 for a, b in itertools.pairwise(during))
    assert most_in_an_hour(during) <= 16
    first_after = vendor.login_times[len(during)]
    assert first_after <= outage_end + 5 * 60_000, (first_after - outage_end) / 1000
    assert rt.session.machine.current_state_value == "active"
    assert all(loop.cycle.frames_ok >= 10 for loop in rt.loops)


async def test_a_session_refused_before_any_data_does_not_buy_a_login_per_frame(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The vendor takes the password, then refuses the session on every fetch, for an hour.

    A login whose session never delivered anything was as useless as a failed one: the next
    login waits as after a failure, instead of following at once on every frame attempt.
    """
    clock = VirtualClock(START)
    vendor = FakeVendor(clock)
    dead: set[Any] = set()
    vendor.refuse_sessions = lambda session: clock() < START + HOUR_MS or session in dead
    logins_then: list[int] = []

    async def revoke_later() -> None:
        await trio.sleep(2.5 * 3600)
        logins_then.append(vendor.logins)
        dead.add(vendor.current_session)  # a proven session dies (a password change, say)

    store = Store(":memory:")
    rt = runtime(vendor, build(vendor, session=True), store)
    with trio.move_on_after(4 * 3600):
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            nursery.start_soon(revoke_later)
    first_hour = [t for t in vendor.login_times if t < START + HOUR_MS]
    assert len(first_hour) <= 7, [(t - START) // 1000 for t in first_hour]
    assert most_in_an_hour(vendor.login_times) <= 7
    # a session that did deliver data and then died is replaced at once: one login, no frame lost
    assert vendor.logins == logins_then[0] + 1
    assert rt.loops[0].cycle.frames_missing == 0
    assert rt.session.machine.current_state_value == "active"
    assert rt.session.machine.failures == 0  # proven by the first fetch that worked
    assert store.count("entries") > 0


async def test_a_refused_login_keeps_its_slow_pace_through_later_transient_failures(
    autojump_clock: trio.abc.Clock,
) -> None:
    """After a lockout, a 5xx from the login must not restart the count at one minute."""
    clock = VirtualClock(START)
    vendor = FakeVendor(clock)
    errors: list[Exception] = [AccountLocked("locked", retry_after=600)]
    errors += [TransientError("HTTP 502")] * 5

    def authenticate_error() -> Exception | None:
        return errors.pop(0) if errors else None

    vendor.authenticate_error = authenticate_error
    store = Store(":memory:")
    rt = runtime(vendor, build(vendor, session=True), store)
    await run_for(rt, 6 * 3600)
    first = vendor.login_times[0]
    assert sum(1 for t in vendor.login_times if first < t <= first + HOUR_MS) <= 3
    assert most_in_an_hour(vendor.login_times) <= 3
    assert rt.session.machine.current_state_value == "active"


@pytest.mark.parametrize("step", ["authenticate", "authorize"])
@pytest.mark.parametrize(
    "error",
    [
        ConfigError(
            "the service requires app version 4.16.0 or newer; set CONNECT_FAKE_VERSION", retry_after=3600
        ),
        ConfigError("CONNECT_FAKE_PATIENT_ID matches none of the 2 patients this account follows"),
        StepRequired("the account holder must accept the new terms of use in the app"),
        RequestRejected("HTTP 400 RequiredHeaderMissing"),
    ],
    ids=["version", "patient", "terms", "request"],
)
async def test_a_login_retrying_cannot_fix_waits_like_a_wrong_password(
    autojump_clock: trio.abc.Clock, step: str, error: ConnectError
) -> None:
    clock = VirtualClock(START)
    vendor = FakeVendor(clock)
    if step == "authenticate":
        vendor.authenticate_error = lambda: error
    else:
        vendor.authorize_error = lambda: error
    store = Store(":memory:")
    rt = runtime(vendor, build(vendor, loops=2, session=True), store)
    await run_for(rt, 6 * 3600)
    assert 2 <= vendor.logins <= 4, vendor.logins  # 30 min (or the vendor's hour), 1 h, 2 h …
    assert most_in_an_hour(vendor.login_times) <= 2
    status = rt.status()
    assert status["session"]["state"] == "rejected"
    assert status["session"]["last_error"] == f"{type(error).__name__}: {error}"
    for loop in status["loops"].values():
        # every frame says what a person must fix, and how long until the next try
        assert str(error) in loop["last_error"] and "no login for" in loop["last_error"]
    assert store.count("entries") == 0


# --- renewal ---------------------------------------------------------------------------------------


def test_the_builder_refuses_refresh_after_without_a_refresh() -> None:
    vendor = FakeVendor(VirtualClock(START))
    builder = Builder("fake")
    with pytest.raises(ConfigError, match="refresh_after.*needs a refresh coroutine"):
        builder.support_session(
            authenticate=vendor.authenticate, authorize=vendor.authorize, refresh_after=timedelta(minutes=20)
        )
    with pytest.raises(ConfigError, match="expire_after.*positive"):
        builder.support_session(
            authenticate=vendor.authenticate, authorize=vendor.authorize, expire_after=timedelta(0)
        )


async def test_a_session_due_for_renewal_without_a_refresh_expires_and_logs_in_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A plan made without the builder: renewal due, nothing to refresh with. The session ends
    (``expire``) before the new login, which therefore never starts from ``active``."""
    clock = VirtualClock(START)
    vendor = FakeVendor(clock)
    plan = attrs.evolve(
        build(vendor).build(),
        session=SessionSpec(
            authenticate=vendor.authenticate, authorize=vendor.authorize, refresh_after=timedelta(minutes=20)
        ),
    )
    rt = SourceRuntime(
        plan, AsyncStore(Store(":memory:")), clock=clock, backfill_days=1, rng=random.Random(7)
    )
    await run_for(rt, 2 * 3600)
    assert 6 <= vendor.logins <= 7, vendor.logins  # one per 20 min, when the next frame asks
    assert all(b - a >= 20 * 60_000 for a, b in itertools.pairwise(vendor.login_times))
    assert rt.loops[0].cycle.frames_failed == 0
    assert rt.session.machine.current_state_value == "active"


async def test_refresh_after_renews_through_refresh_not_a_login(autojump_clock: trio.abc.Clock) -> None:
    clock = VirtualClock(START)
    vendor = FakeVendor(clock)
    refreshes: list[int] = []

    async def refresh(value: Any) -> Grant:
        await trio.lowlevel.checkpoint()
        refreshes.append(clock())
        return Grant(value=value, expires_in=3600)

    builder = Builder("fake")
    builder.support_session(
        authenticate=vendor.authenticate, authorize=vendor.authorize, refresh=refresh,
        refresh_after=timedelta(minutes=20),
    )  # fmt: skip
    builder.register_loop("Loop0", fetch=vendor.fetch, transform=vendor.transform)
    rt = runtime(vendor, builder, Store(":memory:"))
    await run_for(rt, 2 * 3600)
    assert vendor.logins == 1
    assert 5 <= len(refreshes) <= 6
    assert rt.loops[0].cycle.frames_failed == 0


# --- gap analysis on an empty store ----------------------------------------------------------------


def _recording_plan(seen: list[LastKnown], site_filter: dict[str, str] | None = None) -> Builder:
    async def fetch(session: Any, last_known: LastKnown) -> None:
        seen.append(last_known)

    builder = Builder("fake")
    builder.register_loop(
        "Everything",
        fetch=fetch,
        transform=lambda raw, last_known: Batch.of([]),
        collections=("entries", "treatments", "devicestatus"),
        expected_interval=timedelta(minutes=5),
        site_filter=site_filter,
    )
    return builder


async def test_an_empty_store_starts_where_the_site_already_is(autojump_clock: trio.abc.Clock) -> None:
    clock = VirtualClock(START)
    asked: list[tuple[str, dict[str, str]]] = []

    async def site_newest(collection: str, match: Mapping[str, str]) -> int | None:
        asked.append((collection, dict(match)))
        return {"entries": START - 3_600_000, "treatments": None}.get(collection, START - 60_000)

    seen: list[LastKnown] = []
    rt = SourceRuntime(
        _recording_plan(seen, {"device": "fake-cgm"}).build(), AsyncStore(Store(":memory:")),
        clock=clock, backfill_days=2, gap_finder=site_newest,
    )  # fmt: skip
    await run_for(rt, 16 * 60)
    # each question names the loop's own records, so other uploaders' do not count
    assert sorted(asked) == [(c, {"device": "fake-cgm"}) for c in ("devicestatus", "entries", "treatments")]
    lk = seen[0]
    assert lk.get("entries") == START - 3_600_000
    assert lk.get("treatments") == START - 2 * 86_400_000  # the site has none: the backfill
    assert lk.get("devicestatus") == START - 60_000
    # the frames bring nothing, so no checkpoint exists; the site is asked once, not per frame
    assert len(seen) >= 3 and len(asked) == 3
    assert all(later.get("entries") == START - 3_600_000 for later in seen)


async def test_a_site_that_cannot_answer_does_not_hold_the_store_back(autojump_clock: trio.abc.Clock) -> None:
    clock = VirtualClock(START)
    calls = [0]

    async def site_down(collection: str, match: Mapping[str, str]) -> int | None:
        calls[0] += 1
        raise TransientError("Nightscout: connection refused")

    seen: list[LastKnown] = []
    rt = SourceRuntime(
        _recording_plan(seen).build(), AsyncStore(Store(":memory:")), clock=clock, backfill_days=2,
        gap_finder=site_down,
    )  # fmt: skip
    await run_for(rt, 16 * 60)
    # the frames run: the vendor's data must not wait for the site
    lk = seen[0]
    # readings and treatments: the whole backfill (the site's upserts absorb any overlap)
    assert lk.get("entries") == lk.get("treatments") == START - 2 * 86_400_000
    # devicestatus is never deduplicated by a site: held out of the frame until the site answers
    assert lk.get("devicestatus") == START
    # the site is asked again on later frames (once per frame at most), not given up on for good
    assert len(seen) >= 3 and 3 < calls[0] <= 3 * len(seen)
    assert rt.loops[0].fetch.gap_failures["devicestatus"] == calls[0] // 3
