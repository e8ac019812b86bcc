"""Random event sequences against each machine, checked against a reference model.

Each rule-based machine sends any event (allowed or not) with random arguments, predicts the
outcome from the transition tables in ``test_machines_units`` plus the counter rules, and
compares. Refused events must raise TransitionNotAllowed and change nothing.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import event as note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from statemachine import StateMachine
from statemachine.exceptions import TransitionNotAllowed

from connect.errors import AccountLocked, AuthRejected, RateLimited, RequestRejected, TransientError
from machines import CycleMachine, FetchMachine, PollerMachine, SessionMachine
from tests.test_machines_units import CYCLE_TABLE, FETCH_TABLE, POLLER_TABLE, SESSION_TABLE

RULES_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

errors = st.one_of(
    st.none(),
    st.builds(TransientError, st.just("HTTP 503")),
    st.builds(RateLimited, st.just("429"), retry_after=st.one_of(st.none(), st.floats(0, 3600))),
    st.builds(AuthRejected, st.just("bad password")),
    st.builds(AccountLocked, st.just("locked"), retry_after=st.floats(0, 86400)),
    st.builds(RequestRejected, st.just("HTTP 400")),
)


def targets(table: frozenset[tuple[str, str, str]], event: str, state: str) -> list[str]:
    return sorted(target for ev, source, target in table if ev == event and source == state)


def events_of(table: frozenset[tuple[str, str, str]]) -> list[str]:
    return sorted({event for event, _, _ in table})


def pick(
    table: frozenset[tuple[str, str, str]], state: str, event: str, choice: int, forward: frozenset[str]
) -> str:
    """Trade the drawn event for one the state allows most of the time, preferring the way
    forward, so walks reach the deep states instead of ending early or bouncing off refusals.

    A quarter of the steps keep the drawn event, allowed or not.
    """
    mode, index = choice % 4, choice // 4
    allowed = sorted({ev for ev, source, _ in table if source == state})
    ahead = [ev for ev in allowed if ev in forward]
    if mode == 0 or not allowed:
        return event
    if mode == 1 or not ahead:
        return allowed[index % len(allowed)]
    return ahead[index % len(ahead)]


#: rule argument shared by every machine: how to trade the drawn event (see ``pick``)
choose = {"choice": st.integers(0, 255)}


SESSION_FORWARD = frozenset(
    {
        "session_required",
        "authenticated",
        "authorized",
        "session_resolved",
        "refresh",
        "refreshed",
        "retry",
        "confirm",
    }
)
FETCH_FORWARD = frozenset({"start", "ready", "session_ok", "gaps_known", "fetched", "persisted", "retry"})
CYCLE_FORWARD = frozenset({"start", "begin", "frame_done", "next"})
POLLER_FORWARD = frozenset({"start", "session_required", "session_resolved", "session_error", "finished"})


class MachineRules(RuleBasedStateMachine):
    """Shared checks: the state is declared, and a refused event changes nothing."""

    sm: StateMachine

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def refused(self, event: str, **kwargs: Any) -> None:
        before = (self.sm.current_state_value, self.snapshot())
        try:
            self.sm.send(event, **kwargs)
        except TransitionNotAllowed:
            pass
        else:
            raise AssertionError(f"{event} was allowed in {before[0]}")
        assert (self.sm.current_state_value, self.snapshot()) == before

    @invariant()
    def state_is_declared(self) -> None:
        if hasattr(self, "sm"):
            note(f"{type(self.sm).__name__} reached {self.sm.current_state_value}")
            ids = {state.id for state in self.sm.states}
            assert self.sm.current_state_value in ids
            assert {state.id for state in self.sm.configuration} == {self.sm.current_state_value}


# ---------------------------------------------------------------------------------------------


class SessionRules(MachineRules):
    @initialize(can_refresh=st.booleans())
    def make(self, can_refresh: bool) -> None:
        self.sm = SessionMachine(can_refresh=can_refresh)
        self.can_refresh = can_refresh
        self.state = "inactive"
        self.entries_authenticating = 0
        self.rejections = 0
        self.failures = 0
        self.proven = False

    def snapshot(self) -> dict[str, Any]:
        sm = self.sm
        return {
            "logins": sm.logins,
            "rej": sm.rejections,
            "fail": sm.failures,
            "err": sm.last_error,
            "proven": sm.proven,
        }

    @rule(event=st.sampled_from([*events_of(SESSION_TABLE), "unknown"]), error=errors, **choose)
    def send(self, event: str, error: Any, choice: int) -> None:
        event = pick(SESSION_TABLE, self.state, event, choice, SESSION_FORWARD)
        kwargs = {"error": error} if event in ("fail", "reject", "invalidate") else {}
        expected = targets(SESSION_TABLE, event, self.state)
        if event == "refresh" and not self.can_refresh:
            expected = []
        if not expected:
            self.refused(event, **kwargs)
            return
        self.sm.send(event, **kwargs)
        (target,) = expected
        if target == "authenticating":
            self.entries_authenticating += 1
        if event == "reject":
            self.rejections += 1
        if event == "fail" or (event == "invalidate" and not self.proven):
            self.failures += 1  # a failed login, or a session refused before any data
        if event == "confirm":  # a fetch worked with the session: the logins paid off
            self.failures = 0
        if target == "active" and event != "confirm":  # a login or a refresh was accepted
            self.rejections = 0
        # only a fetch proves a session; a new one (a login, a refresh) starts unproven
        still_proven = self.proven and target in ("active", "refreshing") and event != "refreshed"
        self.proven = event == "confirm" or still_proven
        if event in ("fail", "reject", "invalidate"):
            assert self.sm.last_error is error
        if target == "active" and event != "confirm":
            assert self.sm.last_error is None
        self.state = target
        assert self.sm.current_state_value == target

    @invariant()
    def counters(self) -> None:
        if not hasattr(self, "sm"):
            return
        sm = self.sm
        assert min(sm.logins, sm.rejections, sm.failures) >= 0
        assert sm.logins == self.entries_authenticating
        assert sm.rejections == self.rejections
        assert sm.failures == self.failures
        assert sm.usable is (sm.current_state_value in ("active", "refreshing"))
        assert sm.proven is self.proven
        assert not sm.proven or sm.usable
        # active means the last login or refresh was accepted: no rejection is owed any more,
        # and once a fetch proved the session, no failure either
        if sm.current_state_value == "active":
            assert sm.rejections == 0
        if sm.proven:
            assert sm.failures == 0
        if sm.current_state_value == "rejected":
            assert sm.rejections >= 1


TestSessionRules = SessionRules.TestCase
TestSessionRules.settings = RULES_SETTINGS


# ---------------------------------------------------------------------------------------------


class FetchRules(MachineRules):
    @initialize(max_retries=st.integers(0, 4))
    def make(self, max_retries: int) -> None:
        self.sm = FetchMachine(max_retries=max_retries)
        self.max_retries = max_retries
        self.state = "idle"
        self.attempts = 0
        self.error: Any = None
        self.succeeded = False

    def snapshot(self) -> dict[str, Any]:
        sm = self.sm
        return {"attempts": sm.attempts, "ok": sm.ok, "err": sm.last_error, "batch": sm.batch}

    @rule(
        event=st.sampled_from([*events_of(FETCH_TABLE), "unknown"]),
        error=st.one_of(errors, st.builds(lambda: type("Opaque", (), {"retryable": False})())),
        batch=st.integers(),
        last_known=st.dictionaries(st.sampled_from(["entries", "treatments"]), st.integers(0, 2**42)),
        **choose,
    )
    def send(self, event: str, error: Any, batch: int, last_known: dict[str, int], choice: int) -> None:
        event = pick(FETCH_TABLE, self.state, event, choice, FETCH_FORWARD)
        kwargs: dict[str, Any] = {
            "fail": {"error": error},
            "fetched": {"batch": batch},
            "gaps_known": {"last_known": last_known},
        }.get(event, {})
        expected = targets(FETCH_TABLE, event, self.state)
        if event == "retry" and expected:
            retryable = getattr(self.error, "retryable", True)
            expected = ["waiting" if retryable and self.attempts <= self.max_retries else "done"]
        if not expected:
            self.refused(event, **kwargs)
            return
        self.sm.send(event, **kwargs)
        (target,) = expected
        if event == "start":
            # a new frame on the same machine: nothing of the last one is left, and its first
            # attempt begins
            self.attempts = 1
            self.succeeded = False
            self.error = None
        if target == "waiting":
            self.attempts += 1
        if event == "fail":
            self.error = error
        if event == "persisted":
            self.succeeded = True
        if event == "fetched":
            assert self.sm.batch == batch
        if event == "gaps_known":
            assert self.sm.last_known == last_known
        self.state = target
        assert self.sm.current_state_value == target

    @invariant()
    def counters(self) -> None:
        if not hasattr(self, "sm"):
            return
        sm = self.sm
        assert 0 <= sm.attempts <= self.max_retries + 1
        assert sm.attempts == self.attempts
        assert sm.ok is self.succeeded
        assert not sm.is_terminated  # long-lived: started again, never rebuilt
        if sm.current_state_value not in ("idle",):
            assert sm.attempts >= 1
        if sm.ok:
            assert sm.last_error is None
        else:
            assert sm.last_error is self.error


TestFetchRules = FetchRules.TestCase
TestFetchRules.settings = RULES_SETTINGS


# ---------------------------------------------------------------------------------------------


class CycleRules(MachineRules):
    @initialize()
    def make(self) -> None:
        self.sm = CycleMachine()
        self.state = "init"
        self.ok = self.failed = self.missing = 0
        self.now = 0

    def snapshot(self) -> dict[str, Any]:
        sm = self.sm
        return {
            "ok": sm.frames_ok,
            "failed": sm.frames_failed,
            "missing": sm.frames_missing,
            "last_success": sm.last_success_ms,
            "retry_after": sm.retry_after,
            "err": sm.last_error,
        }

    @rule(
        event=st.sampled_from([*events_of(CYCLE_TABLE), "unknown"]), ok=st.booleans(), error=errors, **choose
    )
    def send(self, event: str, ok: bool, error: Any, choice: int) -> None:
        event = pick(CYCLE_TABLE, self.state, event, choice, CYCLE_FORWARD)
        self.now += 1
        kwargs: dict[str, Any] = (
            {"ok": ok, "error": None if ok else error, "now_ms": self.now} if event == "frame_done" else {}
        )
        expected = targets(CYCLE_TABLE, event, self.state)
        if not expected:
            self.refused(event, **kwargs)
            return
        self.sm.send(event, **kwargs)
        (target,) = expected
        if event == "frame_done":
            if ok:
                self.ok += 1
                self.missing = 0
                assert self.sm.last_success_ms == self.now
                assert self.sm.retry_after is None
            else:
                self.failed += 1
                self.missing += 1
                assert self.sm.last_error is error
                assert self.sm.retry_after == getattr(error, "retry_after", None)
        self.state = target
        assert self.sm.current_state_value == target

    @invariant()
    def counters(self) -> None:
        if not hasattr(self, "sm"):
            return
        sm = self.sm
        assert min(sm.frames_ok, sm.frames_failed, sm.frames_missing) >= 0
        assert sm.frames_missing <= sm.frames_failed
        assert (sm.frames_ok, sm.frames_failed, sm.frames_missing) == (self.ok, self.failed, self.missing)
        assert sm.is_terminated is (sm.current_state_value == "stopped")


TestCycleRules = CycleRules.TestCase
TestCycleRules.settings = RULES_SETTINGS


# ---------------------------------------------------------------------------------------------

LOOPS = ("entries", "treatments", "devicestatus")


class PollerRules(MachineRules):
    @initialize()
    def make(self) -> None:
        self.sm = PollerMachine(LOOPS)
        self.state = "idle"
        self.waiting: list[str] = []
        self.released: list[str] = []
        self.errors = 0
        #: every loop that asked since the last release, in order, with repeats
        self.asked: list[str] = []

    def snapshot(self) -> dict[str, Any]:
        sm = self.sm
        return {
            "waiting": list(sm.waiting),
            "released": list(sm.released),
            "errors": sm.session_errors,
            "err": sm.last_error,
        }

    @rule(
        event=st.sampled_from([*events_of(POLLER_TABLE), "unknown"]),
        loop=st.sampled_from(LOOPS),
        error=errors,
        **choose,
    )
    def send(self, event: str, loop: str, error: Any, choice: int) -> None:
        event = pick(POLLER_TABLE, self.state, event, choice, POLLER_FORWARD)
        kwargs: dict[str, Any] = {"session_required": {"loop": loop}, "session_error": {"error": error}}.get(
            event, {}
        )
        expected = targets(POLLER_TABLE, event, self.state)
        if not expected:
            self.refused(event, **kwargs)
            return
        self.sm.send(event, **kwargs)
        (target,) = expected
        if event == "session_required":
            self.asked.append(loop)
            if loop not in self.waiting:
                self.waiting.append(loop)
        elif event in ("session_resolved", "session_error"):
            # each loop that asked is released exactly once, in the order of its first request
            assert self.sm.released == list(dict.fromkeys(self.asked))
            self.released, self.waiting, self.asked = self.waiting, [], []
            if event == "session_error":
                self.errors += 1
                assert self.sm.last_error is error
        self.state = target
        assert self.sm.current_state_value == target

    @invariant()
    def routing(self) -> None:
        if not hasattr(self, "sm"):
            return
        sm = self.sm
        assert len(sm.waiting) == len(set(sm.waiting))
        assert len(sm.released) == len(set(sm.released))
        assert set(sm.waiting) <= set(LOOPS)
        assert sm.waiting == self.waiting
        assert sm.released == self.released
        assert sm.session_errors == self.errors >= 0
        if sm.current_state_value != "running":
            # only a running poller takes requests; the ones it held stay until it resolves
            assert sm.current_state_value != "idle" or sm.waiting == []


TestPollerRules = PollerRules.TestCase
TestPollerRules.settings = RULES_SETTINGS
