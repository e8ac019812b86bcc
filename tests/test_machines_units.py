"""Every transition of the four machines, the events each state refuses, and their counters.

The tables below are the machines' contract with the runtime, written out by hand: a test
checks that the declared transitions match them exactly, so a change to a machine has to be
made here too, on purpose.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from statemachine import StateMachine
from statemachine.engines.sync import SyncEngine
from statemachine.exceptions import TransitionNotAllowed

from connect.errors import (
    AccountLocked,
    AuthRejected,
    ConfigError,
    OutputAuthError,
    RateLimited,
    RequestRejected,
    SessionExpired,
    TransientError,
)
from machines import (
    ALL_MACHINES,
    CycleMachine,
    DeliveryMachine,
    FetchMachine,
    LeaseMachine,
    PollerMachine,
    SessionMachine,
    SubscriptionMachine,
)

#: (event, source, target) for each machine, as the runtime relies on them
SESSION_TABLE: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("session_required", "inactive", "authenticating"),
        ("session_required", "expired", "authenticating"),
        ("session_required", "failed", "authenticating"),
        ("authenticated", "authenticating", "authorizing"),
        ("authorized", "authorizing", "established"),
        ("session_resolved", "established", "active"),
        ("refresh", "active", "refreshing"),  # guarded by can_refresh
        ("refreshed", "refreshing", "active"),
        ("expire", "active", "expired"),
        ("expire", "refreshing", "expired"),
        ("invalidate", "active", "expired"),
        ("invalidate", "established", "expired"),
        ("invalidate", "refreshing", "expired"),
        ("fail", "authenticating", "failed"),
        ("fail", "authorizing", "failed"),
        ("fail", "refreshing", "expired"),
        ("reject", "authenticating", "rejected"),
        ("reject", "authorizing", "rejected"),
        ("reject", "refreshing", "rejected"),
        ("retry", "rejected", "inactive"),
        ("confirm", "active", "active"),
        ("confirm", "refreshing", "refreshing"),
    }
)

FETCH_TABLE: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("start", "idle", "auth"),  # the first attempt waits for nothing
        ("start", "done", "auth"),  # the next frame on the same machine
        ("ready", "waiting", "auth"),  # a retry's wait is over
        ("session_ok", "auth", "determine_gaps"),
        ("gaps_known", "determine_gaps", "fetching"),
        ("fetched", "fetching", "persisting"),  # carries the frame's records
        ("persisted", "persisting", "done"),
        ("fail", "waiting", "error"),
        ("fail", "auth", "error"),
        ("fail", "determine_gaps", "error"),
        ("fail", "fetching", "error"),
        ("fail", "persisting", "error"),
        ("retry", "error", "waiting"),  # while can_retry
        ("retry", "error", "done"),  # unless can_retry
    }
)

CYCLE_TABLE: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("start", "init", "ready"),
        ("begin", "ready", "operating"),
        ("begin", "after", "operating"),
        ("begin", "init", "operating"),
        ("frame_done", "operating", "after"),
        ("next", "after", "ready"),
        ("stop", "init", "stopped"),
        ("stop", "ready", "stopped"),
        ("stop", "operating", "stopped"),
        ("stop", "after", "stopped"),
    }
)

DELIVERY_TABLE: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("wake", "idle", "reading"),
        ("chunk", "reading", "sending"),
        ("drained", "reading", "idle"),
        ("accepted", "sending", "reading"),
        ("split", "sending", "reading"),
        ("set_aside", "sending", "reading"),
        ("set_aside", "sending", "paused_refusals"),  # the tenth refused record in a row
        ("fail", "idle", "backoff"),
        ("fail", "idle", "paused_auth"),
        ("fail", "idle", "paused_config"),
        ("fail", "reading", "backoff"),
        ("fail", "reading", "paused_auth"),  # credentials refused
        ("fail", "reading", "paused_config"),  # the endpoint or a setting is wrong
        ("fail", "sending", "backoff"),
        ("fail", "sending", "paused_auth"),
        ("fail", "sending", "paused_config"),
        ("resume", "backoff", "reading"),
        ("resume", "paused_auth", "reading"),
        ("resume", "paused_config", "reading"),
        ("resume", "paused_refusals", "reading"),
    }
)

POLLER_TABLE: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("start", "idle", "running"),
        ("stop", "idle", "stopped"),
        ("stop", "running", "stopping"),
        ("finished", "stopping", "stopped"),
        ("session_required", "running", "running"),
        ("session_resolved", "running", "running"),
        ("session_error", "running", "running"),
    }
)


@dataclass(frozen=True)
class Spec:
    """How to build a machine and what to send with each event when walking it."""

    name: str
    make: Callable[[], StateMachine]
    table: frozenset[tuple[str, str, str]]
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: a different machine for rows whose guard needs it (event, source, target) -> factory
    make_for: dict[tuple[str, str, str], Callable[[], StateMachine]] = field(default_factory=dict)
    #: what to send with the event of one row, where its guard looks at the facts
    row_kwargs: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    def send_kwargs(self, row: tuple[str, str, str]) -> dict[str, Any]:
        return self.row_kwargs.get(row, self.kwargs.get(row[0], {}))

    @property
    def events(self) -> list[str]:
        return sorted({event for event, _, _ in self.table})

    @property
    def states(self) -> list[str]:
        return [state.id for state in self.make().states]


SPECS = [
    Spec(
        "session",
        lambda: SessionMachine(can_refresh=True),
        SESSION_TABLE,
        kwargs={
            "fail": {"error": TransientError("login timed out")},
            "reject": {"error": AuthRejected("bad password")},
            "invalidate": {"error": SessionExpired("session id not found")},
        },
    ),
    Spec(
        "fetch",
        lambda: FetchMachine(max_retries=2),
        FETCH_TABLE,
        kwargs={
            "fail": {"error": TransientError("HTTP 503")},
            "gaps_known": {"last_known": {"entries": 1_700_000_000_000}},
            "fetched": {"batch": ["a record"]},
        },
        # with no retries left, retry ends the frame
        make_for={("retry", "error", "done"): lambda: FetchMachine(max_retries=0)},
    ),
    Spec(
        "cycle",
        CycleMachine,
        CYCLE_TABLE,
        kwargs={"frame_done": {"ok": True, "error": None, "now_ms": 1_700_000_000_000}},
    ),
    Spec(
        "poller",
        lambda: PollerMachine(("entries", "treatments")),
        POLLER_TABLE,
        kwargs={
            "session_required": {"loop": "entries"},
            "session_error": {"error": TransientError("login failed")},
        },
    ),
]
SPECS.append(
    Spec(
        "delivery",
        # nine records refused in a row already: the next one set aside pauses the output
        lambda: _refused_nine(),
        DELIVERY_TABLE,
        kwargs={"fail": {"error": TransientError("HTTP 503")}, "split": {"size": 8}},
        make_for={("set_aside", "sending", "reading"): DeliveryMachine},
        row_kwargs={
            (event, source, "paused_auth"): {"error": OutputAuthError("HTTP 401")}
            for event, source in (("fail", "idle"), ("fail", "reading"), ("fail", "sending"))
        }
        | {
            (event, source, "paused_config"): {"error": ConfigError("HTTP 404")}
            for event, source in (("fail", "idle"), ("fail", "reading"), ("fail", "sending"))
        },
    )
)


SUBSCRIPTION_TABLE: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("connected", "connecting", "subscribing"),
        ("subscribed", "subscribing", "listening"),
        ("lost", "connecting", "backoff"),
        ("lost", "subscribing", "backoff"),
        ("lost", "listening", "backoff"),
        ("retry", "backoff", "connecting"),
        ("stop", "connecting", "stopped"),
        ("stop", "subscribing", "stopped"),
        ("stop", "listening", "stopped"),
        ("stop", "backoff", "stopped"),
    }
)
SPECS.append(
    Spec("subscription", SubscriptionMachine, SUBSCRIPTION_TABLE, kwargs={"lost": {"error": "broker gone"}})
)


def test_subscription_backs_off_on_the_one_policy_and_listening_clears_it() -> None:
    sm = SubscriptionMachine()
    waits = []
    for _ in range(4):
        sm.send("lost", error="refused")
        waits.append(sm.wait_s())
        sm.send("retry")
    assert waits == sorted(waits) and waits[0] == sm.policy.delay(1) and sm.last_error == "refused"
    sm.send("connected")
    sm.send("subscribed")
    assert sm.failures == 0 and sm.last_error is None
    sm.send("lost")
    assert sm.wait_s() == waits[0]


def _refused_nine() -> DeliveryMachine:
    sm = DeliveryMachine()
    sm.refused_in_a_row = 9
    return sm


SPEC_BY_NAME = {spec.name: spec for spec in SPECS}


Row = tuple[str, str, str]


def paths(spec: Spec) -> dict[str, list[Row]]:
    """The shortest path of rows from the initial state to each reachable state (BFS on the table)."""
    initial = spec.make().current_state_value
    found: dict[str, list[Row]] = {initial: []}
    queue = deque([initial])
    while queue:
        state = queue.popleft()
        for row in sorted(spec.table):
            _event, source, target = row
            # a row that needs another machine (a guard set differently) is not a way through
            if source == state and target not in found and row not in spec.make_for:
                found[target] = [*found[state], row]
                queue.append(target)
    return found


def walk(spec: Spec, sm: StateMachine, rows: list[Row] | list[str]) -> StateMachine:
    """Send each row's event (or each named event) with the facts the spec gives it."""
    for row in rows:
        if isinstance(row, str):
            sm.send(row, **spec.kwargs.get(row, {}))
        else:
            sm.send(row[0], **spec.send_kwargs(row))
    return sm


def declared(machine: type[StateMachine]) -> set[tuple[str, str, str]]:
    return {
        (str(event), transition.source.id, target.id)
        for state in machine.states
        for transition in state.transitions
        for event in transition.events
        for target in transition.targets
    }


# ---------------------------------------------------------------------------------------------
# The tables are the machines


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_declared_transitions_match_the_table(spec: Spec) -> None:
    assert declared(type(spec.make())) == set(spec.table)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_state_is_reachable(spec: Spec) -> None:
    # a state only a guard set differently leads to is reached by its own machine (make_for)
    assert set(paths(spec)) | {target for _, _, target in spec.make_for} == set(spec.states)


TRANSITIONS = [
    pytest.param(spec, row, id=f"{spec.name}:{row[1]}-{row[0]}->{row[2]}")
    for spec in SPECS
    for row in sorted(spec.table)
]


@pytest.mark.parametrize(("spec", "row"), TRANSITIONS)
def test_transition(spec: Spec, row: tuple[str, str, str]) -> None:
    event, source, target = row
    sm = spec.make_for.get(row, spec.make)()
    walk(spec, sm, paths(spec)[source])
    assert sm.current_state_value == source
    sm.send(event, **spec.send_kwargs(row))
    assert sm.current_state_value == target


REFUSALS = [pytest.param(spec, state, id=f"{spec.name}:{state}") for spec in SPECS for state in paths(spec)]


@pytest.mark.parametrize(("spec", "state"), REFUSALS)
def test_events_not_allowed_raise(spec: Spec, state: str) -> None:
    allowed = {event for event, source, _ in spec.table if source == state}
    refused = [event for event in spec.events if event not in allowed]
    for event in refused:
        sm = walk(spec, spec.make(), paths(spec)[state])
        with pytest.raises(TransitionNotAllowed):
            sm.send(event, **spec.kwargs.get(event, {}))
        assert sm.current_state_value == state, event
    # an event nobody declared is refused too (the strict class)
    sm = walk(spec, spec.make(), paths(spec)[state])
    with pytest.raises(TransitionNotAllowed):
        sm.send("no_such_event")


ENDING = [spec for spec in SPECS if spec.name in ("cycle", "poller")]


@pytest.mark.parametrize("spec", ENDING, ids=lambda s: s.name)
def test_final_states_refuse_everything(spec: Spec) -> None:
    machine = type(spec.make())
    finals = [state.id for state in machine.final_states]
    assert finals, "Cycle and Poller end somewhere"
    for final in finals:
        sm = walk(spec, spec.make(), paths(spec)[final])
        assert sm.is_terminated
        for event in spec.events:
            with pytest.raises(TransitionNotAllowed):
                sm.send(event, **spec.kwargs.get(event, {}))
            assert sm.current_state_value == final


@pytest.mark.parametrize("machine", [SessionMachine, FetchMachine, DeliveryMachine])
def test_long_lived_machines_have_no_final_state(machine: type[StateMachine]) -> None:
    """A session and a delivery live as long as the daemon, a Fetch as long as its loop (started
    again for every frame, never rebuilt); only Cycle and Poller end."""
    assert machine.final_states == []


# ---------------------------------------------------------------------------------------------
# Engine and diagrams


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_machines_run_on_the_sync_engine(spec: Spec) -> None:
    sm = spec.make()
    assert isinstance(sm._engine, SyncEngine)
    assert type(sm._engine).__name__ == "SyncEngine"


def test_all_machines_are_exported_and_strict() -> None:
    assert set(ALL_MACHINES) == {
        SessionMachine,
        FetchMachine,
        CycleMachine,
        PollerMachine,
        DeliveryMachine,
        SubscriptionMachine,
        LeaseMachine,
    }
    for machine in ALL_MACHINES:
        assert issubclass(machine, StateMachine)
        assert machine.allow_event_without_transition is False
        # exceptions in callbacks must reach the runtime, not become error events
        assert machine.catch_errors_as_events is False


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("fmt", ["mermaid", "md", "dot"])
def test_diagrams_render(spec: Spec, fmt: str) -> None:
    sm = spec.make()
    for subject in (sm, type(sm)):
        text = format(subject, fmt)
        assert text.strip()
        for state in sm.states:
            # the markdown table names states by their title ("Determine gaps"), the graphs by id
            assert (state.name if fmt == "md" else state.id) in text, (fmt, state.id)
    assert f"{sm:mermaid}".startswith("stateDiagram")
    assert f"{sm:dot}".startswith("digraph")


# ---------------------------------------------------------------------------------------------
# Session


def active_session(**kwargs: Any) -> SessionMachine:
    sm = SessionMachine(**kwargs)
    for event in ("session_required", "authenticated", "authorized", "session_resolved"):
        sm.send(event)
    return sm


def test_session_refresh_needs_can_refresh() -> None:
    sm = active_session()
    with pytest.raises(TransitionNotAllowed):
        sm.refresh()
    assert sm.current_state_value == "active"
    sm = active_session(can_refresh=True)
    sm.refresh()
    assert sm.current_state_value == "refreshing"
    assert sm.usable
    sm.refreshed()
    assert sm.current_state_value == "active"


def test_session_counts_logins() -> None:
    sm = SessionMachine()
    assert sm.logins == 0
    sm.session_required()
    assert sm.logins == 1
    sm.authenticated()
    sm.authorized()
    sm.session_resolved()
    assert sm.logins == 1
    sm.expire()
    sm.session_required()
    assert sm.logins == 2
    sm.fail(error=TransientError("503"))
    sm.session_required()
    assert sm.logins == 3
    sm.reject(error=AuthRejected("bad password"))
    sm.retry()
    assert sm.logins == 3  # going back to inactive is not a login
    sm.session_required()
    assert sm.logins == 4


def test_session_refresh_is_not_a_login() -> None:
    sm = active_session(can_refresh=True)
    sm.refresh()
    sm.refreshed()
    sm.refresh()
    sm.fail(error=TransientError("refresh failed"))
    assert sm.current_state_value == "expired"
    assert sm.logins == 1


def test_session_rejections_grow_and_reset_on_active() -> None:
    sm = SessionMachine()
    errors = [AuthRejected("bad password"), AccountLocked("locked", retry_after=3600)]
    for count, error in enumerate(errors, start=1):
        sm.session_required()
        sm.reject(error=error)
        assert sm.current_state_value == "rejected"
        assert sm.rejections == count
        assert sm.last_error is error
        assert not sm.usable
        sm.retry()
        assert sm.current_state_value == "inactive"
        assert sm.rejections == count  # the wait keeps growing until a login succeeds
    sm.session_required()
    sm.authenticated()
    sm.reject(error=AuthRejected("authorize refused"))
    assert sm.rejections == 3
    sm.retry()
    sm.session_required()
    sm.authenticated()
    sm.authorized()
    assert sm.rejections == 3
    sm.session_resolved()
    assert (sm.rejections, sm.failures, sm.last_error) == (0, 0, None)


def test_session_failures_grow_and_reset_only_when_a_fetch_confirms() -> None:
    sm = SessionMachine()
    for count in range(1, 4):
        sm.session_required()
        if count % 2:
            sm.fail(error=TransientError(f"timeout {count}"))
        else:
            sm.authenticated()
            sm.fail(error=TransientError(f"timeout {count}"))
        assert sm.current_state_value == "failed"
        assert sm.failures == count
        assert str(sm.last_error) == f"timeout {count}"
    assert sm.rejections == 0
    sm.session_required()
    sm.authenticated()
    sm.authorized()
    sm.session_resolved()
    # the vendor took the password, but whether the session works only a fetch can tell
    assert (sm.failures, sm.rejections, sm.last_error, sm.proven) == (3, 0, None, False)
    sm.confirm()
    assert (sm.current_state_value, sm.failures, sm.proven) == ("active", 0, True)
    # a failed refresh falls back to a full login and counts as a failure
    sm = active_session(can_refresh=True)
    sm.refresh()
    sm.fail(error=TransientError("refresh 502"))
    assert (sm.current_state_value, sm.failures) == ("expired", 1)
    sm.session_required()
    sm.authenticated()
    sm.authorized()
    sm.session_resolved()
    assert sm.failures == 1
    sm.confirm()
    assert sm.failures == 0


def test_session_refused_before_any_data_is_an_unproductive_login() -> None:
    sm = active_session()
    error = SessionExpired("HTTP 401")
    sm.invalidate(error=error)  # never confirmed: the login bought nothing
    assert (sm.current_state_value, sm.failures, sm.last_error) == ("expired", 1, error)
    for _ in range(2):
        sm.session_required()
        sm.authenticated()
        sm.authorized()
        sm.session_resolved()
        sm.invalidate(error=error)
    assert sm.failures == 3
    # a session that delivered data and then died (a token revoked, a lifetime over) is not
    sm.session_required()
    sm.authenticated()
    sm.authorized()
    sm.session_resolved()
    sm.confirm()
    sm.invalidate(error=error)
    assert (sm.failures, sm.proven) == (0, False)
    # a refreshed session is a new one: it is proven again by its own first fetch
    sm = active_session(can_refresh=True)
    sm.confirm()
    sm.refresh()
    sm.refreshed()
    assert not sm.proven
    sm.invalidate(error=error)
    assert sm.failures == 1


def test_session_refresh_rejected_lands_in_rejected() -> None:
    sm = active_session(can_refresh=True)
    sm.refresh()
    error = AuthRejected("refresh token revoked")
    sm.reject(error=error)
    assert (sm.current_state_value, sm.rejections, sm.last_error) == ("rejected", 1, error)


@pytest.mark.parametrize("state", ["established", "active", "refreshing"])
def test_session_invalidate_records_the_error(state: str) -> None:
    spec = SPEC_BY_NAME["session"]
    sm = walk(spec, spec.make(), paths(spec)[state])
    error = SessionExpired("SessionIdNotFound")
    sm.invalidate(error=error)
    assert sm.current_state_value == "expired"
    assert sm.last_error is error
    assert not sm.usable


def test_session_usable_only_when_active_or_refreshing() -> None:
    spec = SPEC_BY_NAME["session"]
    for state, path in paths(spec).items():
        sm = walk(spec, spec.make(), path)
        assert sm.usable is (state in ("active", "refreshing")), state


# ---------------------------------------------------------------------------------------------
# Fetch


HAPPY = ["start", "session_ok", "gaps_known", "fetched", "persisted"]


def test_fetch_happy_path_carries_its_data() -> None:
    spec = SPEC_BY_NAME["fetch"]
    sm = FetchMachine()
    assert (sm.attempts, sm.ok, sm.batch, sm.last_known) == (0, False, None, {})
    walk(spec, sm, HAPPY[:3])
    assert sm.last_known == {"entries": 1_700_000_000_000}
    walk(spec, sm, HAPPY[3:4])
    assert sm.batch == ["a record"]
    assert not sm.ok
    walk(spec, sm, HAPPY[4:])
    assert sm.current_state_value == "done"
    assert sm.ok
    assert sm.attempts == 1
    assert sm.last_error is None


def test_fetch_last_known_is_a_copy() -> None:
    sm = FetchMachine()
    checkpoints = {"entries": 1}
    for event in ("start", "session_ok"):
        sm.send(event)
    sm.gaps_known(last_known=checkpoints)
    checkpoints["entries"] = 2
    assert sm.last_known == {"entries": 1}


@pytest.mark.parametrize("max_retries", [0, 1, 2, 5])
def test_fetch_retries_until_attempts_run_out(max_retries: int) -> None:
    sm = FetchMachine(max_retries=max_retries)
    sm.start()
    for attempt in range(1, max_retries + 2):
        assert sm.attempts == attempt
        if attempt > 1:
            sm.ready()
        sm.fail(error=TransientError(f"HTTP 503 #{attempt}"))
        assert sm.current_state_value == "error"
        assert sm.can_retry() is (attempt <= max_retries)
        sm.retry()
    assert sm.current_state_value == "done"
    assert sm.attempts == max_retries + 1
    assert not sm.ok
    assert str(sm.last_error) == f"HTTP 503 #{max_retries + 1}"


@pytest.mark.parametrize(
    "error",
    [
        AuthRejected("bad password"),
        AccountLocked("locked", retry_after=1800),
        RequestRejected("HTTP 400"),
        ConfigError("no server"),
        type("Plain", (), {"retryable": False})(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_fetch_non_retryable_error_skips_retries(error: Any) -> None:
    sm = FetchMachine(max_retries=3)
    sm.start()
    sm.fail(error=error)
    assert not sm.can_retry()
    sm.retry()
    assert sm.current_state_value == "done"
    assert sm.attempts == 1
    assert not sm.ok
    assert sm.last_error is error


@pytest.mark.parametrize(
    "error",
    [
        TransientError("503"),
        RateLimited("429", retry_after=60),
        SessionExpired("SessionIdNotFound"),
        ValueError("an error outside the tree"),
        None,
    ],
    ids=lambda e: type(e).__name__,
)
def test_fetch_retryable_errors_retry(error: Any) -> None:
    sm = FetchMachine(max_retries=1)
    sm.start()
    sm.fail(error=error)
    assert sm.can_retry()
    sm.retry()
    assert sm.current_state_value == "waiting"
    assert sm.attempts == 2


def test_fetch_success_after_a_retry_is_ok_and_clears_the_error() -> None:
    spec = SPEC_BY_NAME["fetch"]
    sm = FetchMachine(max_retries=1)
    walk(spec, sm, HAPPY[:4])
    sm.fail(error=TransientError("the store refused the frame"))
    sm.retry()
    walk(spec, sm, ["ready", *HAPPY[1:]])
    assert sm.current_state_value == "done"
    assert sm.ok
    assert sm.attempts == 2
    assert sm.last_error is None


# ---------------------------------------------------------------------------------------------
# Cycle


class Limited(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__("limited")
        self.retry_after = retry_after


def run_frame(sm: CycleMachine, **kwargs: Any) -> None:
    if sm.current_state_value == "after":
        sm.next()
    if sm.current_state_value == "init":
        sm.start()
    sm.begin()
    sm.send("frame_done", **kwargs)
    assert sm.current_state_value == "after"


def test_cycle_counts_frames() -> None:
    sm = CycleMachine()
    assert (sm.frames_ok, sm.frames_failed, sm.frames_missing) == (0, 0, 0)
    run_frame(sm, ok=True, now_ms=1000)
    assert (sm.frames_ok, sm.frames_failed, sm.frames_missing, sm.last_success_ms) == (1, 0, 0, 1000)
    for n in range(1, 4):
        run_frame(sm, ok=False, error=TransientError(f"503 #{n}"), now_ms=1000 + n)
        # one failed frame is one missing frame, however many retries it made inside
        assert (sm.frames_ok, sm.frames_failed, sm.frames_missing) == (1, n, n)
        assert str(sm.last_error) == f"503 #{n}"
        assert sm.last_success_ms == 1000
    run_frame(sm, ok=True, now_ms=5000)
    assert (sm.frames_ok, sm.frames_failed, sm.frames_missing, sm.last_success_ms) == (2, 3, 0, 5000)


def test_cycle_frame_done_defaults_to_a_failure() -> None:
    sm = CycleMachine()
    run_frame(sm)
    assert (sm.frames_ok, sm.frames_failed, sm.frames_missing) == (0, 1, 1)


def test_cycle_retry_after_comes_from_the_error() -> None:
    sm = CycleMachine()
    run_frame(sm, ok=False, error=RateLimited("429", retry_after=120))
    assert sm.retry_after == 120
    run_frame(sm, ok=False, error=Limited(7.5))
    assert sm.retry_after == 7.5
    run_frame(sm, ok=False, error=TransientError("no header"))
    assert sm.retry_after is None
    run_frame(sm, ok=False, error=ValueError("no attribute"))
    assert sm.retry_after is None
    run_frame(sm, ok=False, error=AccountLocked("locked", retry_after=1800))
    assert sm.retry_after == 1800
    run_frame(sm, ok=True, now_ms=1)
    assert sm.retry_after is None


@pytest.mark.parametrize("state", ["init", "ready", "operating", "after"])
def test_cycle_stop_keeps_counters(state: str) -> None:
    sm = CycleMachine()
    run_frame(sm, ok=False, error=TransientError("503"))
    run_frame(sm, ok=True, now_ms=9)
    run_frame(sm, ok=False, error=TransientError("503"))
    sm.next()
    if state in ("operating", "after"):
        sm.begin()
    if state == "after":
        sm.send("frame_done", ok=True, now_ms=10)
    if state == "init":
        sm = CycleMachine()
    assert sm.current_state_value == state
    before = (sm.frames_ok, sm.frames_failed, sm.frames_missing)
    sm.stop()
    assert sm.current_state_value == "stopped"
    assert sm.is_terminated
    assert (sm.frames_ok, sm.frames_failed, sm.frames_missing) == before


# ---------------------------------------------------------------------------------------------
# Poller


def running_poller(*loops: str) -> PollerMachine:
    sm = PollerMachine(loops)
    sm.start()
    return sm


def test_poller_keeps_its_loops() -> None:
    assert PollerMachine(("entries", "treatments")).loops == ("entries", "treatments")


def test_poller_releases_waiting_loops_at_once_in_order_once_each() -> None:
    sm = running_poller("entries", "treatments", "profile")
    for loop in ("treatments", "entries", "treatments", "profile", "entries"):
        sm.session_required(loop=loop)
    assert sm.waiting == ["treatments", "entries", "profile"]
    assert sm.current_state_value == "running"
    sm.session_resolved()
    assert sm.released == ["treatments", "entries", "profile"]
    assert sm.waiting == []
    # nothing waits now: the next resolution releases nobody
    sm.session_resolved()
    assert sm.released == []
    assert sm.session_errors == 0


def test_poller_session_error_releases_and_counts() -> None:
    sm = running_poller("entries", "treatments")
    sm.session_required(loop="entries")
    error = AuthRejected("bad password")
    sm.session_error(error=error)
    assert (sm.released, sm.waiting) == (["entries"], [])
    assert (sm.session_errors, sm.last_error) == (1, error)
    sm.session_required(loop="treatments")
    sm.session_required(loop="entries")
    sm.session_error(error=TransientError("503"))
    assert (sm.released, sm.waiting, sm.session_errors) == (["treatments", "entries"], [], 2)
    sm.session_resolved()
    assert sm.released == []


def test_poller_session_events_need_it_running() -> None:
    for path in ([], ["stop"], ["start", "stop"], ["start", "stop", "finished"]):
        sm = PollerMachine(("entries",))
        for event in path:
            sm.send(event)
        for event, kwargs in (
            ("session_required", {"loop": "entries"}),
            ("session_resolved", {}),
            ("session_error", {"error": TransientError("x")}),
        ):
            with pytest.raises(TransitionNotAllowed):
                sm.send(event, **kwargs)
        assert sm.waiting == []
        assert sm.session_errors == 0
