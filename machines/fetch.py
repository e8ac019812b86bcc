"""Fetch: one frame of one loop, from waiting for its turn to done."""

from __future__ import annotations

from typing import Any

from statemachine import State, StateMachine


class FetchMachine(StateMachine):
    """idle → waiting → auth → determine_gaps → fetching → transforming → persisting → success → done.

    Any step may ``fail``; from ``error`` the ``retry`` event goes back to ``waiting`` while
    attempts remain and the error is one a retry can fix, and otherwise ends the frame in
    ``done`` with ``ok`` false. Attempts count tries, so ``max_retries=2`` allows three.
    """

    idle = State(initial=True)
    waiting = State()
    auth = State()
    determine_gaps = State()
    fetching = State()
    transforming = State()
    persisting = State()
    success = State()
    error = State()
    done = State(final=True)

    start = idle.to(waiting)
    ready = waiting.to(auth)
    session_ok = auth.to(determine_gaps)
    gaps_known = determine_gaps.to(fetching)
    fetched = fetching.to(transforming)
    transformed = transforming.to(persisting)
    persisted = persisting.to(success)
    finish = success.to(done)
    fail = (
        waiting.to(error)
        | auth.to(error)
        | determine_gaps.to(error)
        | fetching.to(error)
        | transforming.to(error)
        | persisting.to(error)
    )
    retry = error.to(waiting, cond="can_retry") | error.to(done, unless="can_retry")

    def __init__(self, *, max_retries: int = 2) -> None:
        self.max_retries = max_retries
        self.attempts = 0
        self.last_error: Any = None
        #: the per-collection checkpoint this frame starts from
        self.last_known: dict[str, int] = {}
        self.batch: Any = None
        self.ok = False
        super().__init__()

    def on_enter_waiting(self) -> None:
        self.attempts += 1

    def on_gaps_known(self, last_known: dict[str, int] | None = None) -> None:
        self.last_known = dict(last_known or {})

    def on_transformed(self, batch: Any = None) -> None:
        self.batch = batch

    def on_enter_success(self) -> None:
        self.ok = True
        self.last_error = None

    def on_fail(self, error: Any = None) -> None:
        self.last_error = error

    def can_retry(self) -> bool:
        """Attempts remain, and the error is not one that retrying cannot fix."""
        retryable = bool(getattr(self.last_error, "retryable", True))
        return retryable and self.attempts <= self.max_retries
