"""Session: logging in to a vendor and keeping the session alive, shared by every loop."""

from __future__ import annotations

from typing import Any

from statemachine import State, StateMachine


class SessionMachine(StateMachine):
    """inactive → authenticating → authorizing → established → active, and back.

    ``rejected`` is where a login that retrying cannot fix lands — refused credentials, an
    account lockout, a setting or a person's action the vendor requires: the runtime waits a
    long, growing delay there (:func:`machines.timing.rejected_delay`) before ``retry``, so a
    wrong password never turns into a login storm. ``failed`` is a transient login failure
    (5xx, timeout) that may be retried after :func:`machines.timing.failed_login_delay`.

    ``failures`` counts unproductive logins in a row, and only ``confirm`` (a fetch succeeded
    with the session) clears it: a login the vendor accepts but whose session it refuses at
    once (``invalidate`` before ``confirm``) is as unproductive as a failed one. Were the
    count cleared on entering ``active``, such a vendor would be asked to log in on every
    frame attempt.
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
    #: a fetch succeeded with the current session: it is proven, the failures are over
    confirm = active.to.itself(internal=True) | refreshing.to.itself(internal=True)

    def __init__(self, *, can_refresh: bool = False) -> None:
        self.can_refresh = can_refresh
        #: logins started (entries into ``authenticating``)
        self.logins = 0
        #: consecutive credential rejections; grows the wait in ``rejected``
        self.rejections = 0
        #: consecutive unproductive logins (failed, or refused before any data); grows the wait
        self.failures = 0
        #: a fetch has succeeded with the current session
        self.proven = False
        self.last_error: Any = None
        super().__init__()

    def on_enter_authenticating(self) -> None:
        self.logins += 1
        self.proven = False

    def on_enter_active(self) -> None:
        # the vendor accepted the credentials; whether the session works is for confirm to say
        self.rejections = 0
        self.last_error = None

    def on_refreshed(self) -> None:
        self.proven = False  # a new token, not yet used

    def on_confirm(self) -> None:
        self.proven = True
        self.failures = 0

    def on_fail(self, error: Any = None) -> None:
        self.failures += 1
        self.proven = False
        self.last_error = error

    def on_reject(self, error: Any = None) -> None:
        self.rejections += 1
        self.proven = False
        self.last_error = error

    def on_invalidate(self, error: Any = None) -> None:
        if not self.proven:
            self.failures += 1  # refused before it delivered anything: an unproductive login
        self.proven = False
        self.last_error = error

    def on_expire(self) -> None:
        self.proven = False

    @property
    def usable(self) -> bool:
        """A fetch may use the session now."""
        return self.current_state_value in ("active", "refreshing")
