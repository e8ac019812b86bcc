"""Session: logging in to a vendor and keeping the session alive, shared by every loop."""

from __future__ import annotations

from typing import Any

from statemachine import State, StateMachine


class SessionMachine(StateMachine):
    """inactive → authenticating → authorizing → established → active, and back.

    ``rejected`` is where a credentials failure or an account lockout lands: the runtime waits
    a long, growing delay there (:func:`machines.timing.rejected_delay`) before ``retry``, so a
    wrong password never turns into a login storm. ``failed`` is a transient login failure
    (5xx, timeout) that may be retried after the ordinary backoff.
    """

    inactive = State(initial=True)
    authenticating = State()
    authorizing = State()
    established = State()
    active = State()
    refreshing = State()
    expired = State()
    failed = State()
    rejected = State()

    session_required = inactive.to(authenticating) | expired.to(authenticating) | failed.to(authenticating)
    authenticated = authenticating.to(authorizing)
    authorized = authorizing.to(established)
    session_resolved = established.to(active)
    refresh = active.to(refreshing, cond="can_refresh")
    refreshed = refreshing.to(active)
    expire = active.to(expired) | refreshing.to(expired)
    invalidate = active.to(expired) | established.to(expired) | refreshing.to(expired)
    fail = authenticating.to(failed) | authorizing.to(failed) | refreshing.to(expired)
    reject = authenticating.to(rejected) | authorizing.to(rejected) | refreshing.to(rejected)
    retry = rejected.to(inactive)

    def __init__(self, *, can_refresh: bool = False) -> None:
        self.can_refresh = can_refresh
        #: logins started (entries into ``authenticating``)
        self.logins = 0
        #: consecutive credential rejections; grows the wait in ``rejected``
        self.rejections = 0
        #: consecutive transient login failures; grows the ordinary backoff
        self.failures = 0
        self.last_error: Any = None
        super().__init__()

    def on_enter_authenticating(self) -> None:
        self.logins += 1

    def on_enter_active(self) -> None:
        self.rejections = 0
        self.failures = 0
        self.last_error = None

    def on_fail(self, error: Any = None) -> None:
        self.failures += 1
        self.last_error = error

    def on_reject(self, error: Any = None) -> None:
        self.rejections += 1
        self.last_error = error

    def on_invalidate(self, error: Any = None) -> None:
        self.last_error = error

    @property
    def usable(self) -> bool:
        """A fetch may use the session now."""
        return self.current_state_value in ("active", "refreshing")
