"""The linkup source under the real runtime, against the emulator, in virtual time.

A healthy loop stores each reading within seconds of its publication with about one request per
reading; a wrong password never becomes a login storm; a lockout is waited out in silence; and
under random schedules of faults (5xx, 429, ban pages, timeouts, truncated and HTML bodies,
lockouts, token revocations, region moves, terms steps, password changes) every reading served
ends up in the store exactly once — history points that reach the graph after a newer current
reading included — nothing else does, and no secret reaches the status or the logs."""

from __future__ import annotations

import json
import random
import statistics
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import structlog
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st

from connect.builder import Builder
from connect.clock import VirtualClock
from connect.records import Batch, iso_from_ms
from connect.runtime import SourceRuntime
from sources.linkup import LinkUpSettings, make
from store import AsyncStore, PersistResult, Store
from tests.emulators.linkup import Account, LinkUpEmulator, Patient

START = 1_750_000_000_000
HOUR = 3_600_000
PASSWORD = "rt-Passw0rd-xyz"
#: a phase that puts the newest current reading at START three minutes after a history point
STREAMING_PHASE_MS = 170_000
EMAIL = "follower@example.com"


class TimedStore(AsyncStore):
    """The real AsyncStore, noting when each entry was first persisted (virtual epoch ms), how
    many entry rows the frames wrote, and how many frames carried each treatment and status."""

    def __init__(self, store: Store, clock: Callable[[], int]) -> None:
        super().__init__(store)
        self.clock = clock
        self.stored_at: dict[int, int] = {}
        #: entry rows inserted or changed, summed over frames (an identical rewrite counts 0)
        self.entries_written = 0
        #: identifier → the frames that carried it, for treatments and devicestatus
        self.carried: Counter[str] = Counter()

    async def persist_frame(self, source: str, loop: str, batch: Batch) -> PersistResult:
        result = await self.call(self.store.persist_frame, source, loop, batch)
        now = self.clock()
        for entry in batch.entries:
            self.stored_at.setdefault(entry.date, now)
        self.entries_written += result.written.get("entries", 0)
        self.carried.update(t.identifier for t in batch.treatments)
        self.carried.update(d.identifier for d in batch.devicestatus)
        return result


@attrs.define
class Run:
    emulator: LinkUpEmulator
    account: Account
    store: Store
    timed: TimedStore
    runtime: SourceRuntime
    end_ms: int
    logs: list[dict[str, Any]]

    @property
    def patient(self) -> Patient:
        return self.account.patients[0]

    def entries(self) -> list[tuple[int, int, str | None]]:
        rows = self.store.conn.execute("SELECT date, sgv, direction FROM entries ORDER BY date").fetchall()
        return [(int(d), int(v), s) for d, v, s in rows]

    def requests(self, kind: str | None = None) -> list[int]:
        return [r.time_ms for r in self.emulator.requests if kind is None or r.kind == kind]


async def simulate(
    hours: float,
    *,
    password: str = PASSWORD,
    events: Callable[[LinkUpEmulator, Account, VirtualClock], Awaitable[None]] | None = None,
    emulator_kw: dict[str, Any] | None = None,
    account_kw: dict[str, Any] | None = None,
    settings_kw: dict[str, Any] | None = None,
    seed: int = 1,
    phase_ms: int | None = None,
    setup: Callable[[LinkUpEmulator, Account], None] | None = None,
) -> Run:
    clock = VirtualClock(START)
    emulator = LinkUpEmulator(now=clock, **(emulator_kw or {}))
    account = emulator.add_account(EMAIL, PASSWORD, region="eu", **(account_kw or {}))
    if phase_ms is not None:
        account.patients[0].phase_ms = phase_ms
    if setup is not None:
        setup(emulator, account)
    store = Store(":memory:")
    timed = TimedStore(store, clock)
    source_settings = LinkUpSettings(link_up_username=EMAIL, link_up_password=password, **(settings_kw or {}))

    async def ticker() -> None:
        # a task that wakes every few virtual seconds: while a store call runs in its worker
        # thread, MockClock's autojump may only skip ahead to this, not to the end of the run
        while True:
            await trio.sleep(5)

    with structlog.testing.capture_logs() as logs:
        async with emulator.client() as http:
            builder = Builder("linkup")
            make(source_settings, http).generate_driver(builder)
            runtime = SourceRuntime(
                builder.build(), timed, clock=clock, backfill_days=1, rng=random.Random(seed)
            )
            with trio.move_on_after(hours * 3600):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ticker)
                    if events is not None:
                        nursery.start_soon(events, emulator, account, clock)
                    await nursery.start(runtime.run)
    return Run(emulator, account, store, timed, runtime, clock(), list(logs))


def secrets(run: Run) -> list[str]:
    return [PASSWORD, run.account.user_id, run.account.account_id, *run.emulator.tickets] + [
        p.patient_id for p in run.account.patients
    ]


def check_invariants(run: Run) -> None:
    """What must hold after any schedule of faults."""
    entries = run.entries()
    dates = [d for d, _, _ in entries]
    served = run.emulator.served_times(run.patient)
    currents = run.emulator.served_current_times(run.patient)
    # every reading served is in the store, with the value the sensor read — the history
    # points the graph gained after a newer current reading was stored among them
    missing = sorted(set(served) - set(dates))
    assert not missing, f"{len(missing)} served readings missing, first {missing[:3]}"
    # nothing stored twice (not even under another time), nothing invented
    assert len(dates) == len(set(dates))
    assert set(dates) <= set(served), "a reading nobody served was stored"
    # a minute apart at least (a history point may carry an extra second)
    assert all(b - a >= 59_000 for a, b in zip(dates, dates[1:], strict=False))
    if dates:
        # history points run unbroken up to the newest one stored (after it, the graph may not
        # hold them yet when the newest stored reading is a current one between them)
        history = set(run.patient.times(dates[0] - 1, dates[-1]))
        reach = max(history & set(dates), default=dates[0])
        assert {t for t in history if t <= reach} <= set(dates), "the stored series has a hole"
        assert set(dates) - history <= currents, "an invented reading"
    for date, sgv, _ in entries:
        assert sgv == run.patient.value(date)
    # each reading was written once: the overlap rewrites what it must, and changes nothing —
    # a reading stored as the current one keeps its arrow when its history point comes later
    assert run.timed.entries_written == len(dates), "a stored reading was written again, changed"
    arrows = {date: direction for date, _, direction in entries}
    assert all(arrows[t] not in (None, "NOT COMPUTABLE") for t in currents), "an arrow was lost"
    # silence during every lockout the service announced
    for request in run.emulator.requests:
        if request.lockout_s:
            quiet_until = request.time_ms + request.lockout_s * 1000
            during = [r for r in run.emulator.requests if request.time_ms < r.time_ms < quiet_until]
            assert not during, f"{len(during)} requests during a lockout"
    # never a login storm: after a refused login (bad password, lockout) at most three more
    # logins the service judged (a fault the CDN answered is paced by the shorter backoff; a
    # login answered with a region redirect is one logical login with the one that follows it,
    # so an account the service moves twice costs two, not four)
    judged = [
        r for r in run.emulator.requests
        if r.kind == "login" and (r.fault is None or r.refused) and not r.redirected
    ]  # fmt: skip
    for refusal in (r for r in run.emulator.requests if r.refused):
        later = [r for r in judged if refusal.time_ms < r.time_ms <= refusal.time_ms + HOUR]
        assert len(later) <= 3, f"{len(later)} logins within an hour of a refused one"
    logins = run.requests("login")
    for i, t in enumerate(logins):
        assert sum(1 for u in logins[i:] if u < t + HOUR) <= 12, "login storm"
    # and one login of the account at a time
    assert max(run.emulator.max_logins_in_flight.values(), default=0) <= 1
    # no secret in status or logs
    text = json.dumps(run.runtime.status(), default=str) + json.dumps(run.logs, default=str)
    for secret in secrets(run):
        assert secret not in text, "a secret reached the status or the logs"


# --- the healthy loop ------------------------------------------------------------------------------


async def test_healthy_loop_latency_and_request_rate(autojump_clock: trio.abc.Clock) -> None:
    run = await simulate(8)
    check_invariants(run)
    served = run.emulator.served_times(run.patient)
    stored_at = run.timed.stored_at
    # readings published while the loop ran (the first frame's 12 h backfill is history)
    live = [t for t in served if run.emulator.available_at(t) > START + 600_000]
    assert len(live) >= 8 * 12 - 3
    delays = [stored_at[t] - run.emulator.available_at(t) for t in live]
    assert all(d >= 0 for d in delays)
    assert statistics.median(delays) <= 30_000, statistics.median(delays)
    assert max(delays) <= 60_000
    graph = run.requests("graph")
    assert len(graph) <= 14 * 8, len(graph)
    for i, t in enumerate(graph):
        assert sum(1 for u in graph[i:] if u < t + HOUR) <= 14
    assert len(run.requests("login")) == 1 and len(run.requests("connections")) == 1
    # the first frame brought the 12 h history; the current reading came with its arrow
    entries = run.entries()
    assert entries[0][0] <= START - 11 * HOUR
    assert entries[-1][2] not in (None, "NOT COMPUTABLE")
    status = run.runtime.status()
    assert status["session"]["state"] == "active"
    assert status["loops"]["LibreLinkUp"]["frames_failed"] == 0


def settled_latencies(run: Run, after_ms: int) -> list[int]:
    """How long each reading published after ``after_ms`` waited between visible and stored."""
    served = run.emulator.served_times(run.patient)
    return [
        run.timed.stored_at[t] - run.emulator.available_at(t)
        for t in served
        if run.emulator.available_at(t) > after_ms
    ]


def graph_requests_per_hour(run: Run) -> list[int]:
    graph = run.requests("graph")
    hours = (run.end_ms - START) // HOUR
    return [sum(1 for t in graph if START + h * HOUR <= t < START + (h + 1) * HOUR) for h in range(hours)]


# A phone that uploads late: each reading reaches LibreLinkUp 30-120 s after its time. Polling
# at a fixed buffer after the reading's time then finds only the one before, and every reading
# waits a whole interval (or costs a second request); the schedule has to learn the delay.
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    delay_s=st.integers(30, 120),
    spread_s=st.integers(0, 10),
    phase_s=st.integers(0, 299),
    seed=st.integers(0, 2**16),
)
@example(delay_s=100, spread_s=0, phase_s=50, seed=1)
@example(delay_s=45, spread_s=5, phase_s=200, seed=2)
def test_slow_uploader_keeps_latency_low_and_requests_few(
    delay_s: int, spread_s: int, phase_s: int, seed: int
) -> None:
    hours = 6

    async def main() -> Run:
        return await simulate(
            hours,
            emulator_kw={"publish_delay_ms": delay_s * 1000, "publish_spread_ms": spread_s * 1000},
            phase_ms=phase_s * 1000,
            seed=seed,
        )

    run = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    check_invariants(run)
    waits = settled_latencies(run, START + HOUR)  # the first hour is for learning the delay
    assert len(waits) >= (hours - 1) * 12 - 2
    assert all(w >= 0 for w in waits)
    assert statistics.median(waits) <= 30_000, sorted(waits)
    per_hour = graph_requests_per_hour(run)
    assert all(n <= 14 for n in per_hour[1:]), per_hour
    assert sum(per_hour) <= 14 * hours, per_hour
    assert run.runtime.status()["loops"]["LibreLinkUp"]["frames_failed"] == 0


async def test_uploads_late_by_a_varying_delay_wait_less_than_an_interval(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Each reading visible anywhere from 30 to 120 s after its time, independently.

    One poll per reading can only come after the slowest of them, so a reading waits about
    the difference (half of the 90 s spread on the median), never a whole interval as a rule.
    """
    run = await simulate(6, emulator_kw={"publish_delay_ms": 30_000, "publish_spread_ms": 90_000})
    check_invariants(run)
    delays = [run.emulator.available_at(t) - t for t in run.emulator.served_times(run.patient)]
    assert min(delays) < 50_000 and max(delays) > 100_000  # the spread really is wide
    waits = sorted(settled_latencies(run, START + HOUR))
    assert len(waits) >= 5 * 12 - 2
    assert statistics.median(waits) <= 60_000, waits
    assert waits[int(len(waits) * 0.9)] <= 120_000, waits
    per_hour = graph_requests_per_hour(run)
    assert all(n <= 14 for n in per_hour[1:]), per_hour


async def test_short_tokens_are_renewed_before_they_expire(autojump_clock: trio.abc.Clock) -> None:
    run = await simulate(5, account_kw={"token_duration_ms": HOUR})
    check_invariants(run)
    assert 5 <= len(run.requests("login")) <= 7
    assert all(r.status == 200 for r in run.emulator.requests), "a request carried an expired token"


async def test_sensor_info_records(autojump_clock: trio.abc.Clock) -> None:
    run = await simulate(1, settings_kw={"link_up_sensor_info": True})
    check_invariants(run)
    assert run.store.count("treatments") == 0  # the sensor started long before the backfill window
    assert run.store.count("devicestatus") >= 10
    newest = run.store.conn.execute("SELECT max(date) FROM devicestatus").fetchone()[0]
    assert newest == run.entries()[-1][0]


async def test_sensor_starts_arrive_once(autojump_clock: trio.abc.Clock) -> None:
    """A sensor started three hours ago, and its successor two hours into the run (an hour's
    warm-up without readings): each start is one Sensor Start, each devicestatus comes once."""
    first_s = (START - 3 * HOUR) // 1000
    second_ms = START + 2 * HOUR

    def sensors(emu: LinkUpEmulator, account: Account) -> None:
        account.patients[0].sensor_start_s = first_s
        account.patients[0].new_sensor(second_ms)

    run = await simulate(5, settings_kw={"link_up_sensor_info": True}, setup=sensors)
    check_invariants(run)
    starts = run.store.conn.execute(
        "SELECT date, json FROM treatments WHERE event_type = 'Sensor Start' ORDER BY date"
    ).fetchall()
    assert [d for d, _ in starts] == [first_s * 1000, second_ms]
    assert run.store.count("treatments") == 2
    # no frame carried a start or a status another frame had carried
    assert run.timed.carried and max(run.timed.carried.values()) == 1
    statuses = run.store.conn.execute("SELECT date, json FROM devicestatus ORDER BY date").fetchall()
    dates = [d for d, _ in statuses]
    assert len(dates) == len(set(dates)) and set(dates) <= {d for d, _, _ in run.entries()}
    assert dates[-1] == run.entries()[-1][0]
    # the status tells which sensor was in use when the reading was taken
    for date, doc in statuses:
        started = json.loads(doc)["librelinkup"]["sensor"]["startedAt"]
        expected = first_s * 1000 if date < second_ms else second_ms
        assert started == iso_from_ms(expected), (date, started)
    # the warm-up hour has no readings; the readings resume after it
    assert not [d for d in dates if second_ms <= d < second_ms + HOUR]
    assert any(d >= second_ms + HOUR for d in dates)


async def test_current_readings_between_history_points_lose_no_history(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A sensor that streams a reading a minute (Libre 3): the current measurement lies between
    the five-minute history points, which reach the graph minutes after it. Each poll stores a
    current reading newer than the history points still to come; none of those may be lost."""

    def streaming(emu: LinkUpEmulator, account: Account) -> None:
        account.patients[0].current_interval_ms = 60_000

    # the first current reading falls three minutes after a history point; polls follow it
    run = await simulate(4, setup=streaming, phase_ms=STREAMING_PHASE_MS)
    check_invariants(run)
    history = set(run.patient.times(START - 11 * HOUR, run.end_ms - 20 * 60_000))
    currents = run.emulator.served_current_times(run.patient)
    between = currents - history
    assert len(between) >= 10, "the current readings were not off the history grid"
    stored = {d for d, _, _ in run.entries()}
    assert history <= stored
    # the ones between the history points keep their arrows; the history points have none
    arrows = {d: direction for d, _, direction in run.entries()}
    assert all(arrows[t] is not None for t in between)
    assert all(arrows[t] is None for t in history - currents)
    assert run.runtime.status()["loops"]["LibreLinkUp"]["frames_failed"] == 0


# --- credentials -------------------------------------------------------------------------------------


async def test_bad_password_never_storms(autojump_clock: trio.abc.Clock) -> None:
    run = await simulate(6, password="not-the-password")
    logins = run.requests("login")
    assert 2 <= len(logins) <= 5
    for i, t in enumerate(logins):
        assert sum(1 for u in logins[i:] if u < t + HOUR) <= 3
    assert run.requests("graph") == [] and run.account.locked_until == 0
    status = run.runtime.status()
    assert status["session"]["state"] == "rejected"
    assert "CONNECT_LINK_UP_PASSWORD" in status["session"]["last_error"]
    text = json.dumps(status) + json.dumps(run.logs, default=str)
    assert "not-the-password" not in text and PASSWORD not in text


async def test_a_password_change_is_waited_out_without_a_storm(autojump_clock: trio.abc.Clock) -> None:
    """The holder changes the password for 90 minutes (the tokens die with it), then back.

    The refused logins park the session: at most three logins in the hour after each refusal,
    never two at once; once the old password works again the loop comes back, and the graph's
    12 hours fill the hole.
    """
    change = START + 30 * 60_000

    def password_change(emu: LinkUpEmulator, account: Account) -> None:
        emu.change_password(account, change, change + 90 * 60_000)

    run = await simulate(5, setup=password_change)
    check_invariants(run)
    refusals = [r for r in run.emulator.requests if r.refused]
    assert refusals and all(change <= r.time_ms < change + 90 * 60_000 for r in refusals)
    assert 2 <= len(refusals) <= 3, login_log(run)
    assert run.account.locked_until == 0
    stored = {d for d, _, _ in run.entries()}
    assert set(run.patient.times(change, run.end_ms - 20 * 60_000)) <= stored
    assert run.runtime.status()["session"]["state"] == "active"


async def test_lockout_is_waited_out_in_silence(autojump_clock: trio.abc.Clock) -> None:
    async def lock_then_revoke(emu: LinkUpEmulator, account: Account, clock: VirtualClock) -> None:
        await trio.sleep(1800)
        emu.inject("lock", on="login")
        emu.expire_tokens()

    run = await simulate(5, events=lock_then_revoke, emulator_kw={"lock_seconds": 3000})
    check_invariants(run)
    locks = [r for r in run.emulator.requests if r.lockout_s]
    assert len(locks) == 1
    after = [r.time_ms for r in run.emulator.requests if r.time_ms > locks[0].time_ms]
    assert after and after[0] >= locks[0].time_ms + 3_000_000
    assert run.runtime.status()["session"]["state"] == "active"  # and it came back


async def test_terms_step_blocks_until_accepted_or_is_accepted(autojump_clock: trio.abc.Clock) -> None:
    async def new_terms(emu: LinkUpEmulator, account: Account, clock: VirtualClock) -> None:
        await trio.sleep(1800)
        account.steps.append("tou")
        emu.expire_tokens()

    blocked = await simulate(3, events=new_terms)
    check_invariants(blocked)
    status = blocked.runtime.status()
    assert status["session"]["state"] == "rejected"
    assert "CONNECT_LINK_UP_AUTO_ACCEPT_TERMS" in status["session"]["last_error"]
    assert len(blocked.requests("login")) <= 5

    accepted = await simulate(3, events=new_terms, settings_kw={"link_up_auto_accept_terms": True})
    check_invariants(accepted)
    assert accepted.account.steps == [] and len(accepted.requests("step")) == 1
    assert accepted.runtime.status()["session"]["state"] == "active"


# --- random fault schedules -----------------------------------------------------------------------------

WINDOW_KINDS = ("http500", "html502", "http429", "ban", "timeout", "truncated", "nonjson", "lock")
TARGETS = ("graph", "login", "connections", None)
EVENT_KINDS = ("expire", "move", "step")


@st.composite
def schedules(draw: st.DrawFn) -> dict[str, Any]:
    windows = draw(
        st.lists(
            st.tuples(
                st.sampled_from(WINDOW_KINDS), st.sampled_from(TARGETS),
                st.integers(0, 180), st.integers(1, 45),
            ),
            max_size=4,
        )
    )  # fmt: skip
    events = draw(st.lists(st.tuples(st.sampled_from(EVENT_KINDS), st.integers(1, 180)), max_size=3))
    # the holder changes the password, and changes it back (or the user updates it) later
    passwords = draw(st.lists(st.tuples(st.integers(1, 150), st.integers(10, 90)), max_size=1))
    return {
        "windows": windows,
        "events": sorted(events, key=lambda e: e[1]),
        "passwords": passwords,
        "streaming": draw(st.booleans()),
        "publish_delay_ms": draw(st.integers(0, 15_000)),
        "auto_accept": draw(st.booleans()),
        "sensor_info": draw(st.booleans()),
        "token_ms": draw(st.sampled_from([15_552_000_000, 2 * HOUR, 7 * HOUR])),
        "seed": draw(st.integers(0, 2**16)),
    }


HOURS = 7


def play(schedule: dict[str, Any]) -> Run:
    async def events(emu: LinkUpEmulator, account: Account, clock: VirtualClock) -> None:
        for kind, minute in schedule["events"]:
            await trio.sleep(max(0.0, (START + minute * 60_000 - clock()) / 1000))
            if kind == "move":
                emu.move_account(account, "eu2" if account.region != "eu2" else "de")
            elif kind == "step":
                account.steps.append("tou")
                # the account holder accepts in the app half an hour later
                emu_steps = account.steps

                async def accept_later(steps: list[str] = emu_steps) -> None:
                    await trio.sleep(1800)
                    steps.clear()

                trio.lowlevel.spawn_system_task(accept_later)
            emu.expire_tokens()

    async def main() -> Run:
        def install(emu: LinkUpEmulator, account: Account) -> None:
            for kind, target, start_min, minutes in schedule["windows"]:
                emu.schedule(
                    kind, START + start_min * 60_000, START + (start_min + minutes) * 60_000, on=target,
                    retry_after=120, status=random.Random(start_min).choice([403, 430]), after_s=30.0,
                )  # fmt: skip
            for start_min, minutes in schedule.get("passwords", []):
                start = START + start_min * 60_000
                emu.change_password(account, start, start + minutes * 60_000)
            if schedule.get("streaming"):
                account.patients[0].current_interval_ms = 60_000
                account.patients[0].phase_ms = STREAMING_PHASE_MS

        async def events_and_faults(emu: LinkUpEmulator, account: Account, clock: VirtualClock) -> None:
            install(emu, account)
            await events(emu, account, clock)

        return await simulate(
            HOURS,
            events=events_and_faults,
            emulator_kw={"publish_delay_ms": schedule["publish_delay_ms"]},
            account_kw={"token_duration_ms": schedule["token_ms"]},
            settings_kw={
                "link_up_auto_accept_terms": schedule["auto_accept"],
                "link_up_sensor_info": schedule["sensor_info"],
            },
            seed=schedule["seed"],
        )

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def login_log(run: Run) -> list[str]:
    """The login conversation, one line per request (minutes into the run), for failure notes."""
    return [
        f"{(r.time_ms - START) / 60_000:.1f} {r.kind} {r.region} {r.status} {r.fault or ''}"
        + (" refused" if r.refused else "")
        for r in run.emulator.requests
        if r.kind in ("login", "step", "connections")
    ]


def quiet_schedule(**changes: Any) -> dict[str, Any]:
    schedule: dict[str, Any] = {
        "windows": [], "events": [], "publish_delay_ms": 10_000, "auto_accept": False,
        "sensor_info": False, "token_ms": 15_552_000_000, "seed": 1, "passwords": [], "streaming": False,
    }  # fmt: skip
    schedule.update(changes)
    return schedule


# Each example is seven hours of virtual time (about a second of real time), so shrinking a
# failure would take minutes: the phases leave it out, and the note below says what happened.
@settings(
    max_examples=10,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(schedule=schedules())
# the schedule that found the login storm: connections failing (429, then 5xx-like) for 45
# minutes while the account moves region; each frame attempt logged in again after 5 s
@example(schedule=quiet_schedule(windows=[("http429", "connections", 10, 45)], events=[("move", 12)]))
@example(schedule=quiet_schedule(windows=[("http500", "login", 0, 45), ("timeout", "connections", 40, 45)]))
# a refused login, then the account moved twice within five minutes: each move costs a login
# and its redirect, which together are one login
@example(
    schedule=quiet_schedule(passwords=[(60, 5)], events=[("move", 118), ("move", 123)], seed=3)
)
# the password changed for an hour and a half, with login faults and a token revocation around it
@example(
    schedule=quiet_schedule(
        passwords=[(20, 90)], windows=[("http500", "login", 60, 20)], events=[("expire", 30)], streaming=True
    )
)
def test_random_fault_schedules_lose_nothing_and_duplicate_nothing(schedule: dict[str, Any]) -> None:
    run = play(schedule)
    note("\n".join(login_log(run)))
    check_invariants(run)
    # faults end within the first four hours; the loop is back well before the end
    stored = run.entries()
    assert stored and stored[-1][0] >= run.end_ms - 90 * 60_000, "the loop did not recover"
    # and the 12 h graph filled every gap: the stored series runs unbroken to the end (but for
    # the history points the graph may not hold yet)
    recent_end = run.end_ms - run.emulator.graph_lag_ms - 10 * 60_000
    assert set(run.patient.times(stored[0][0] - 1, recent_end)) <= {d for d, _, _ in stored}


# --- logins the vendor must never see in a burst ------------------------------------------------------


async def test_a_login_outage_costs_a_handful_of_logins(autojump_clock: trio.abc.Clock) -> None:
    """The connections call fails for 45 minutes right after a region move (a redirect login).

    Each attempt is a full login (the redirect only once), and attempts are paced a minute
    apart, doubling: at most seven logical logins in the hour, plus the one redirect.
    """

    async def outage(emu: LinkUpEmulator, account: Account, clock: VirtualClock) -> None:
        emu.schedule("http500", START + 10 * 60_000, START + 55 * 60_000, on="connections")
        await trio.sleep(12 * 60)
        emu.move_account(account, "eu2")
        emu.expire_tokens()

    run = await simulate(4, events=outage)
    check_invariants(run)
    logins = run.requests("login")
    redirects = sum(
        1 for r in run.emulator.requests if r.kind == "login" and r.region == "eu" and r.time_ms > START
    )
    assert redirects == 1
    for i, t in enumerate(logins):
        assert sum(1 for u in logins[i:] if u < t + HOUR) <= 8, login_log(run)
    assert run.runtime.status()["session"]["state"] == "active"


async def test_a_session_refused_on_every_graph_is_not_a_login_per_frame(
    autojump_clock: trio.abc.Clock,
) -> None:
    """For 45 minutes every graph call kills every token (HTTP 401): logins succeed, sessions die.

    A session that never delivered a graph counts as a failed login, so the next one waits.
    """

    async def refuse(emu: LinkUpEmulator, account: Account, clock: VirtualClock) -> None:
        emu.schedule("expire", START + 10 * 60_000, START + 55 * 60_000, on="graph")

    run = await simulate(4, events=refuse)
    check_invariants(run)
    logins = run.requests("login")
    for i, t in enumerate(logins):
        assert sum(1 for u in logins[i:] if u < t + HOUR) <= 7, login_log(run)
    assert 3 <= len(logins) <= 9
    status = run.runtime.status()
    assert status["session"]["state"] == "active" and status["session"]["failures"] == 0


async def test_an_outdated_app_version_waits_for_a_person(autojump_clock: trio.abc.Clock) -> None:
    """Status 920 at login is a setting to change, not a passing fault: the session is rejected."""
    run = await simulate(6, emulator_kw={"minimum_version": "9.0.0"})
    logins = run.requests("login")
    assert 2 <= len(logins) <= 4, login_log(run)  # after an hour, then 2 h, 4 h
    for i, t in enumerate(logins):
        assert sum(1 for u in logins[i:] if u < t + HOUR) <= 1
    status = run.runtime.status()
    assert status["session"]["state"] == "rejected"
    assert "CONNECT_LINK_UP_VERSION=9.0.0" in status["session"]["last_error"]
    assert "CONNECT_LINK_UP_VERSION" in status["loops"]["LibreLinkUp"]["last_error"]
    assert run.requests("graph") == [] and run.entries() == []
