"""What each machine decides, driven alone: no trio, no I/O, only events with their facts.

Tables of (state, event with facts) → (next state, decision), then hypothesis rule-based runs
with the invariants the daemon promises: never two logins in flight, never a login before
``not_before``, at most two logins per frame for refused fresh sessions, and a delivery that
never waits after an accepted chunk as if it had failed.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from connect.errors import (
    AuthRejected,
    ConfigError,
    OutputAuthError,
    RateLimited,
    SessionExpired,
    TransientError,
    Unreachable,
)
from machines import CycleMachine, DeliveryMachine, FetchMachine, PollerMachine, SessionMachine
from machines.cycle import ONCE_FRAME_BUDGET
from machines.decisions import (
    EndFrame,
    Finish,
    Idle,
    Join,
    Login,
    NextFrame,
    Read,
    Refresh,
    RetryAt,
    SleepUntil,
    Stop,
    Use,
    Wait,
)
from machines.delivery import REFUSED_IN_A_ROW
from machines.timing import Backoff

T = 1_700_000_000_000
S = 1000  # ms per second


def logged_in(sm: SessionMachine, now: int = T, value: object = "s1", lifetime: float | None = None) -> None:
    assert sm.request(now) == Login()
    sm.send("authenticated")
    assert sm.logged_in(now, value, lifetime) == Use(value)


# --- Session ---------------------------------------------------------------------------------------


def test_session_first_request_logs_in_and_everyone_else_joins() -> None:
    sm = SessionMachine()
    assert sm.request(T) == Login()
    assert sm.current_state_value == "authenticating"
    assert sm.request(T) == Join()  # one login in flight, whoever asks
    sm.send("authenticated")
    assert sm.request(T) == Join()
    assert sm.logged_in(T, "s1", None) == Use("s1")
    assert sm.request(T + 1) == Use("s1")


@pytest.mark.parametrize(
    ("error", "state", "wait_s"),
    [
        (TransientError("HTTP 503"), "failed", 60),  # a minute after the first failed login
        (Unreachable("no route"), "failed", 60),
        (TransientError("busy", retry_after=600), "failed", 600),  # the vendor's word wins
        (AuthRejected("bad password"), "rejected", 1800),  # half an hour after a refusal
        (AuthRejected("locked", retry_after=7200), "rejected", 7200),
        (ConfigError("app version refused"), "rejected", 1800),
    ],
)
def test_session_login_failure_decides_the_wait(error: Any, state: str, wait_s: int) -> None:
    sm = SessionMachine()
    sm.request(T)
    decision = sm.login_failed(T, error, rand=0.0)
    assert sm.current_state_value == state
    assert decision == Wait(T + wait_s * S, error, rejected=state == "rejected")
    # asked before the wait is over: told to wait, never a login
    assert sm.request(T + wait_s * S - 1) == decision
    assert sm.request(T + wait_s * S) == Login()


def test_session_expiry_and_renewal_are_the_machines_deadlines() -> None:
    sm = SessionMachine(expire_after_s=100)
    logged_in(sm)
    assert sm.expires_at == T + 95 * S  # renewed a little early
    assert sm.request(T + 94 * S) == Use("s1")
    assert sm.request(T + 95 * S) == Login()  # expired: a new login, no wait
    sm2 = SessionMachine(can_refresh=True, refresh_after_s=60, expire_after_s=3600)
    logged_in(sm2)
    assert sm2.request(T + 60 * S) == Refresh("s1")
    assert sm2.request(T + 60 * S) == Join()  # the refresh is in flight
    assert sm2.refreshed_to(T + 61 * S, "s2") == Use("s2")
    assert sm2.request(T + 62 * S) == Use("s2")
    sm3 = SessionMachine(refresh_after_s=60)  # due for renewal with no refresh: a login
    logged_in(sm3)
    assert sm3.request(T + 60 * S) == Login()


def test_session_a_refused_fresh_session_logs_in_again_once_at_once_then_waits() -> None:
    sm = SessionMachine()
    logged_in(sm, value="s1")
    assert sm.invalidate_with("s1", SessionExpired("SessionIdNotFound"), T + S) is True
    assert sm.request(T + S) == Login()  # at once
    sm.send("authenticated")
    sm.logged_in(T + S, "s2")
    assert sm.invalidate_with("s2", SessionExpired("SessionIdNotFound"), T + 2 * S, rand=0.0) is False
    decision = sm.request(T + 2 * S)
    assert isinstance(decision, Wait) and decision.until == T + 2 * S + 120 * S  # two unproductive logins
    # a session that served data and then died is replaced at once, and resets the rule
    sm.send("session_required")
    sm.send("authenticated")
    sm.logged_in(decision.until, "s3")
    sm.confirm_with("s3")
    assert sm.invalidate_with("s3", SessionExpired("gone"), decision.until + S) is True
    assert sm.request(decision.until + S) == Login()


def test_session_a_stale_value_does_not_invalidate_its_replacement() -> None:
    sm = SessionMachine()
    logged_in(sm, value="new")
    assert sm.invalidate_with("old", SessionExpired("gone"), T) is True
    assert sm.request(T) == Use("new")


def test_session_refused_refresh_waits_as_a_refused_login() -> None:
    sm = SessionMachine(can_refresh=True, refresh_after_s=10)
    logged_in(sm)
    assert sm.request(T + 10 * S) == Refresh("s1")
    decision = sm.refresh_failed(T + 10 * S, AuthRejected("token revoked"))
    assert isinstance(decision, Wait) and decision.rejected and sm.current_state_value == "rejected"
    sm2 = SessionMachine(can_refresh=True, refresh_after_s=10)
    logged_in(sm2)
    sm2.request(T + 10 * S)
    assert sm2.refresh_failed(T + 10 * S, TransientError("HTTP 502")) is None
    assert sm2.request(T + 10 * S) == Login()  # a full login, at once


# --- Poller -------------------------------------------------------------------------------------


def test_poller_keeps_joiners_and_releases_them_all_on_resolution_or_error() -> None:
    poller = PollerMachine(("a", "b", "c"), session=SessionMachine())
    poller.send("start")
    assert poller.acquire("a", T) == Login()
    assert poller.acquire("b", T) == Join()
    assert poller.acquire("c", T) == Join()
    poller.session.send("authenticated")  # type: ignore[union-attr]
    poller.session.logged_in(T, "s", None)  # type: ignore[union-attr]
    assert poller.resolved() == ["a", "b", "c"]
    assert poller.waiting == []
    assert poller.acquire("b", T) == Use("s")
    assert PollerMachine(("a",)).acquire("a", T) == Use(None)  # no session to log in to


# --- Fetch -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "attempts", "decision"),
    [
        (TransientError("HTTP 503"), 1, RetryAt(T + 2 * S)),  # the frame backoff's first rung
        (TransientError("HTTP 503"), 2, RetryAt(T + 4 * S)),
        (RateLimited("slow down", retry_after=30), 2, RetryAt(T + 30 * S)),
        (SessionExpired("dead"), 2, RetryAt(T)),  # the Session machine paces the login
        (TransientError("HTTP 503"), 3, EndFrame(ok=False)),  # attempts spent
        (AuthRejected("bad password"), 1, EndFrame(ok=False)),  # a retry cannot fix it
    ],
)
def test_fetch_decides_retry_or_end(error: Any, attempts: int, decision: Any) -> None:
    fm = FetchMachine(max_retries=2, backoff=Backoff(base=2.0, cap=60.0, jitter=0.0))
    fm.begin()
    for _ in range(attempts - 1):
        fm.send("fail", error=TransientError("x"))
        fm.send("retry")
    assert fm.attempts == attempts
    assert fm.failed(T, error) == decision


def test_fetch_starts_again_not_rebuilt() -> None:
    fm = FetchMachine(max_retries=0)
    fm.begin()
    assert fm.failed(T, TransientError("x")) == EndFrame(ok=False)
    fm.begin()
    assert (fm.current_state_value, fm.attempts, fm.last_error) == ("auth", 1, None)


def test_fetch_gap_analysis_that_failed_holds_undeduplicated_collections_and_is_asked_again() -> None:
    fm = FetchMachine()
    missing = ["entries", "devicestatus", "profile"]
    assert fm.gaps_to_ask(T, missing) == missing
    error = OutputAuthError("HTTP 401")
    for collection in missing:
        fm.gap_failed(collection, T, error, rand=0.0)
    points = fm.starting_points(missing)
    assert points.values == {} and points.held == {"devicestatus", "profile"} and points.cause is error
    assert fm.gaps_to_ask(T + 29 * S, missing) == []  # backing off
    assert fm.gaps_to_ask(T + 30 * S, missing) == missing  # asked again on a later frame
    fm.gap_answered("devicestatus", T - 3600 * S)
    fm.gap_answered("profile", None)  # the site has none: from the backfill horizon
    points = fm.starting_points(missing)
    assert points.values == {"devicestatus": T - 3600 * S} and points.held == frozenset()
    assert fm.gaps_to_ask(T + 10_000 * S, missing) == ["entries"]  # answers are kept


# --- Cycle -----------------------------------------------------------------------------------


def test_cycle_decides_when_the_next_frame_starts() -> None:
    cm = CycleMachine(backoff=Backoff(base=30.0, cap=1800.0, jitter=0.0), interval_ms=300 * S)
    cm.begin_frame()
    assert cm.ended(T, True, more=True) == NextFrame(T)  # a backfill: at once
    cm.begin_frame()
    assert cm.ended(T, True, source_due=T + 77 * S) == NextFrame(T + 77 * S)
    cm.begin_frame()
    assert cm.ended(T, True, newest=T - 60 * S) == NextFrame(T + 240 * S + 15 * S)
    cm.begin_frame()
    assert cm.ended(T, False, error=TransientError("x")) == NextFrame(T + 30 * S)
    assert cm.current_state_value == "ready"
    cm.begin_frame()
    assert cm.ended(T, False, error=TransientError("x")) == NextFrame(T + 60 * S)
    cm.begin_frame()
    assert cm.ended(T, False, error=RateLimited("x", retry_after=3600)) == NextFrame(T + 3600 * S)
    for _ in range(10):
        cm.begin_frame()
        decision = cm.ended(T, False, error=Unreachable("no network"))
    assert decision == NextFrame(T + 300 * S)  # the network, not the vendor: five minutes at most


def test_cycle_once_runs_while_more_within_its_budget() -> None:
    cm = CycleMachine(once=True, budget=3)
    cm.begin_frame()
    assert cm.ended(T, True, more=True) == NextFrame(T)
    cm.begin_frame()
    assert cm.ended(T, True, more=False) == Finish()
    cm2 = CycleMachine(once=True, budget=2)
    cm2.begin_frame()
    assert cm2.ended(T, True, more=True) == NextFrame(T)
    cm2.begin_frame()
    assert cm2.ended(T, True, more=True) == Finish()  # the budget is spent
    cm3 = CycleMachine(once=True)
    cm3.begin_frame()
    assert cm3.ended(T, False, error=TransientError("x")) == Finish()
    assert ONCE_FRAME_BUDGET >= 365 + 2  # a year of one-day windows fits


# --- Delivery --------------------------------------------------------------------------------


def test_delivery_decides_send_backoff_pause() -> None:
    dm = DeliveryMachine(chunk_size=100)
    assert dm.next(T) == Idle()
    dm.send("wake")
    assert dm.next(T) == Read(100)
    dm.send("chunk")
    assert dm.failed(T, TransientError("HTTP 503"), rand=0.0) == SleepUntil(T + 1 * S)
    assert dm.next(T + 1 * S) == Read(100)
    dm.send("chunk")
    assert dm.failed(T, TransientError("HTTP 503"), rand=0.0) == SleepUntil(T + 2 * S)  # growing
    dm.next(T + 5 * S)
    dm.send("chunk")
    assert dm.failed(T, TransientError("HTTP 503"), rand=0.0) == SleepUntil(T + 4 * S)
    dm.next(T + 5 * S)
    dm.send("chunk")
    dm.send("accepted")  # one chunk got through: the count starts over
    dm.send("chunk")
    assert dm.failed(T, TransientError("HTTP 503"), rand=0.0) == SleepUntil(T + 1 * S)
    dm.next(T + 5 * S)
    dm.send("chunk")
    assert dm.failed(T, OutputAuthError("HTTP 401"), rand=0.0) == SleepUntil(T + 300 * S)
    assert dm.current_state_value == "paused_auth"
    assert dm.next(T + 299 * S) == SleepUntil(T + 300 * S)
    assert dm.next(T + 300 * S) == Read(100)
    dm.send("chunk")
    assert dm.failed(T, ConfigError("HTTP 404"), rand=0.0) == SleepUntil(T + 600 * S)
    assert dm.current_state_value == "paused_config"


def test_delivery_splits_refused_chunks_and_pauses_after_a_run_of_refusals() -> None:
    dm = DeliveryMachine(chunk_size=8)
    dm.send("wake")
    dm.send("chunk")
    assert dm.refused_chunk(T, 8) is False and dm.limit == 4
    dm.send("chunk")
    assert dm.refused_chunk(T, 4) is False and dm.limit == 2
    dm.send("chunk")
    assert dm.refused_chunk(T, 2) is False and dm.limit == 1
    for n in range(1, REFUSED_IN_A_ROW + 1):
        dm.send("chunk")
        assert dm.refused_chunk(T, 1) is True
        assert dm.paused is (n == REFUSED_IN_A_ROW)
    assert dm.current_state_value == "paused_refusals"
    assert dm.next(T) == SleepUntil(T + dm.policy.paused.delay(1) * S)


def test_delivery_once_stops() -> None:
    dm = DeliveryMachine(once=True, attempts=2, max_wait_s=10)
    dm.send("wake")
    assert dm.failed(T, TransientError("busy", retry_after=600)) == SleepUntil(T + 10 * S)
    dm.next(T + 10 * S)
    assert dm.failed(T + 10 * S, TransientError("busy")) == Stop(ok=False)
    dm2 = DeliveryMachine(once=True)
    dm2.send("wake")
    assert dm2.failed(T, OutputAuthError("HTTP 401")) == Stop(ok=False)
    dm3 = DeliveryMachine(once=True)
    dm3.send("wake")
    dm3.send("drained")
    assert dm3.next(T) == Stop(ok=True)


# --- invariants, under random events ------------------------------------------------------------------

RULES = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)
login_errors = st.sampled_from(
    [TransientError("HTTP 503"), Unreachable("no route"), AuthRejected("bad password"), None]
)


class SessionInvariants(RuleBasedStateMachine):
    """Loops ask for the session at random times; logins succeed or fail; fetches confirm or
    refuse sessions. The machine must never allow two logins at once or one too early."""

    @initialize()
    def make(self) -> None:
        self.poller = PollerMachine(("a", "b"), session=SessionMachine(expire_after_s=600))
        self.poller.send("start")
        self.sm = self.poller.session
        assert self.sm is not None
        self.now = T
        self.in_flight: str | None = None  # the loop performing the login
        #: logins allowed at once after a fresh session was refused, since the last proven one
        self.free_relogins = 0

    @rule(seconds=st.integers(0, 900))
    def time_passes(self, seconds: int) -> None:
        self.now += seconds * S

    @rule(loop=st.sampled_from(["a", "b"]))
    def ask(self, loop: str) -> None:
        assert self.sm is not None
        before = self.sm.not_before
        decision = self.poller.acquire(loop, self.now)
        if isinstance(decision, Login):
            assert self.in_flight is None, "two logins in flight"
            assert self.now >= before, "a login before not_before"
            self.in_flight = loop
        elif isinstance(decision, Join):
            assert self.in_flight is not None
        elif isinstance(decision, Wait):
            assert decision.until > self.now

    @precondition(lambda self: self.in_flight is not None)
    @rule(error=login_errors)
    def login_ends(self, error: Any) -> None:
        assert self.sm is not None
        if error is None:
            self.sm.send("authenticated")
            self.sm.logged_in(self.now, object(), None)
            self.poller.resolved()
        else:
            self.sm.login_failed(self.now, error)
            self.poller.errored(error)
        self.in_flight = None

    @precondition(lambda self: self.sm is not None and self.sm.usable)
    @rule(works=st.booleans())
    def fetch(self, works: bool) -> None:
        assert self.sm is not None
        if works:
            self.sm.confirm_with(self.sm.value)
            self.free_relogins = 0
        else:
            fresh = not self.sm.proven
            at_once = self.sm.invalidate_with(self.sm.value, SessionExpired("dead"), self.now)
            if fresh and at_once:
                self.free_relogins += 1
            # refused fresh sessions buy one login at once, then every login waits: at most
            # two logins for a frame whose sessions are refused
            assert self.free_relogins <= 1
            if fresh and not at_once:
                assert self.sm.not_before > self.now


TestSessionInvariants = SessionInvariants.TestCase
TestSessionInvariants.settings = RULES


class DeliveryInvariants(RuleBasedStateMachine):
    """Chunks are accepted, refused or fail at random: an accepted chunk always clears the
    failures, so the wait after the next failure is the first rung again."""

    @initialize()
    def make(self) -> None:
        self.dm = DeliveryMachine(chunk_size=50)
        self.now = T

    @rule(seconds=st.integers(0, 4000))
    def time_passes(self, seconds: int) -> None:
        self.now += seconds * S

    @rule()
    def step(self) -> None:
        decision = self.dm.next(self.now)
        if isinstance(decision, Idle):
            self.dm.send("wake")
        elif isinstance(decision, Read):
            assert 1 <= decision.limit <= 50
            if self.dm.current_state_value == "reading":
                self.dm.send("chunk")

    @precondition(lambda self: self.dm.current_state_value == "sending")
    @rule(outcome=st.sampled_from(["accepted", "refused", "503", "401"]), size=st.integers(1, 50))
    def outcome(self, outcome: str, size: int) -> None:
        if outcome == "accepted":
            self.dm.send("accepted")
            assert (self.dm.failures, self.dm.auth_failures, self.dm.retry_at) == (0, 0, None)
            self.dm.send("chunk")
            decision = self.dm.failed(self.now, TransientError("HTTP 503"), rand=0.0)
            # after an accepted chunk a failure waits the first rung, never more
            assert decision == SleepUntil(self.now + int(self.dm.policy.transient.delay(1) * S))
        elif outcome == "refused":
            self.dm.refused_chunk(self.now, size)
        elif outcome == "503":
            self.dm.failed(self.now, TransientError("HTTP 503"))
        else:
            self.dm.failed(self.now, OutputAuthError("HTTP 401"))

    @precondition(lambda self: self.dm.current_state_value == "reading")
    @rule()
    def drained(self) -> None:
        self.dm.send("drained")

    @invariant()
    def waits_are_bounded(self) -> None:
        if hasattr(self, "dm") and self.dm.retry_at is not None:
            assert self.dm.retry_at - self.now <= 3600 * S


TestDeliveryInvariants = DeliveryInvariants.TestCase
TestDeliveryInvariants.settings = RULES


# --- THEORY.md stays true to the code -------------------------------------------------------------


@pytest.mark.parametrize("title", ["Session", "Poller", "Fetch", "Cycle", "Delivery", "Lease"])
def test_theory_shows_each_machine_as_its_current_table(title: str) -> None:
    from pathlib import Path

    from connect.diagram import TITLES, table

    theory = (Path(__file__).resolve().parent.parent / "THEORY.md").read_text(encoding="utf-8")
    (machine,) = [cls for name, cls in TITLES if name == title]
    assert table(machine) in theory, f"THEORY.md's {title} table differs from the machine"
