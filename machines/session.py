"""Session: logging in to a vendor and keeping the session alive, shared by every loop."""

from __future__ import annotations

from statemachine import State

from machines.base import Machine
from machines.decisions import (
    Fault,
    Join,
    Login,
    Refresh,
    SessionDecision,
    Use,
    Wait,
    reached,
    retry_after,
)
from machines.timing import LOGIN, REJECTED, UNREACHED_RETRY_CAP_S

#: a session is renewed this early (a share of its lifetime) so no request carries one that dies
#: on the way
LIFETIME_MARGIN = 0.95


class SessionMachine(Machine):
    """inactive → authenticating → authorizing → established → active, and back.

    It decides, through :meth:`request`, what a loop that needs the session does: use it, log
    in, refresh it, join a login already in flight, or wait until ``not_before``. Only one login
    or refresh is ever in flight: while one is, every other caller is told to :class:`Join`.

    ``rejected`` is where a login that retrying cannot fix lands — refused credentials, an
    account lockout, a setting or a person's action the vendor requires: no login before a long,
    growing wait (:data:`machines.timing.REJECTED`), so a wrong password never turns into a login
    storm. ``failed`` is a passing login failure (5xx, timeout), retried on the slower
    :data:`machines.timing.LOGIN` ladder (five minutes at most when the vendor was never reached).

    ``failures`` counts unproductive logins in a row, and only ``confirm`` (a fetch succeeded
    with the session) clears it: a login whose session the vendor refuses at once (``invalidate``
    before ``confirm``) is as unproductive as a failed one. The first such refusal after a proven
    session logs in again at once (a stale session, as Dexcom hands out now and then); a second
    refusal in a row waits, so a vendor that refuses every session never gets a login storm.
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

    def __init__(
        self,
        *,
        can_refresh: bool = False,
        refresh_after_s: float | None = None,
        expire_after_s: float | None = None,
    ) -> None:
        self.can_refresh = can_refresh
        self.refresh_after_s = refresh_after_s
        self.expire_after_s = expire_after_s
        #: logins started (entries into ``authenticating``)
        self.logins = 0
        #: consecutive credential rejections; grows the wait in ``rejected``
        self.rejections = 0
        #: consecutive unproductive logins (failed, or refused before any data); grows the wait
        self.failures = 0
        #: sessions fresh from a login refused in a row before serving data
        self.refused_fresh = 0
        #: a fetch has succeeded with the current session
        self.proven = False
        self.last_error: Fault | None = None
        #: the session value loops use (whatever the source's authorize returned)
        self.value: object = None
        #: epoch ms: the session is not used from then on (None: it does not expire)
        self.expires_at: int | None = None
        #: epoch ms: renew the session through refresh from then on
        self.refresh_at: int | None = None
        #: epoch ms: no login before then
        self.not_before = 0
        super().__init__()

    # --- decisions ------------------------------------------------------------------------------

    def request(self, now: int) -> SessionDecision:
        """A loop needs the session at ``now``: what it does next."""
        state = self.current_state_value
        if state in ("authenticating", "authorizing", "established", "refreshing"):
            return Join()
        if state == "active":
            if self.expires_at is not None and now >= self.expires_at:
                self.send("expire")
            elif self.refresh_at is not None and now >= self.refresh_at:
                if self.can_refresh:
                    self.send("refresh")
                    return Refresh(self.value)
                # due for renewal with no way to refresh: the session ends and a login follows
                self.send("expire")
            else:
                return Use(self.value)
        if now < self.not_before:
            return Wait(self.not_before, self.last_error, rejected=self.current_state_value == "rejected")
        if self.current_state_value == "rejected":
            self.send("retry")
        self.send("session_required")
        return Login()

    def logged_in(self, now: int, value: object, lifetime_s: float | None = None) -> Use:
        """authorize returned ``value`` (a session living ``lifetime_s`` when the vendor said)."""
        self.send("authorized")
        self._grant(now, value, lifetime_s)
        self.send("session_resolved")
        return Use(value)

    def login_failed(self, now: int, error: Fault | None, rand: float = 0.0) -> Wait:
        """The login raised ``error`` (None: it was cancelled, nothing to hold against it)."""
        self.value = None
        if error is None:
            self.send("fail", error=None)
            self.not_before = 0
            return Wait(now, None, rejected=False)
        if error.retryable:
            self.send("fail", error=error)
            ladder = LOGIN if reached(error) else LOGIN.capped(UNREACHED_RETRY_CAP_S)
            wait = max(ladder.delay(self.failures, rand), retry_after(error))
            if self.rejections:
                # the vendor refused these credentials (or locked the account) and has not
                # accepted them since: until it does, keep the pace of a retry after a refusal,
                # or a passing 5xx right after a lockout would restart the count at a minute
                wait = max(wait, REJECTED.delay(self.rejections))
        else:
            # refused credentials, a lockout, an app version the vendor no longer accepts, terms
            # only a person may accept: asking again soon cannot help and may lock the account
            self.send("reject", error=error)
            wait = max(REJECTED.delay(self.rejections), retry_after(error))
        self.not_before = now + int(wait * 1000)
        return Wait(self.not_before, error, rejected=self.current_state_value == "rejected")

    def refreshed_to(self, now: int, value: object, lifetime_s: float | None = None) -> Use:
        """refresh returned a new session ``value``."""
        self.send("refreshed")
        self._grant(now, value, lifetime_s)
        self.proven = False  # a new token, not yet used
        return Use(value)

    def refresh_failed(self, now: int, error: Fault | None) -> Wait | None:
        """refresh raised ``error`` (None: cancelled). A refused refresh waits as a refused
        login (the :class:`Wait` returned); any other failure ends the session, and the next
        :meth:`request` logs in fully."""
        self.value = None
        if error is not None and not error.retryable:
            self.send("reject", error=error)
            wait = max(REJECTED.delay(self.rejections), retry_after(error))
            self.not_before = now + int(wait * 1000)
            return Wait(self.not_before, error, rejected=True)
        if error is None:
            self.send("expire")
        else:
            self.send("fail", error=error)
        return None

    def confirm_with(self, used: object) -> None:
        """A fetch succeeded with ``used``: the session works, so its login was productive."""
        if used is self.value and self.usable and not self.proven:
            self.send("confirm")

    def invalidate_with(self, used: object, error: Fault, now: int, rand: float = 0.0) -> bool:
        """A fetch was told ``used`` is dead. Drops it unless a newer session replaced it.

        Returns True when the next login may follow at once: the session had served data (it
        simply ended), or it is the first session in a row refused before serving any.
        """
        if used is not self.value or self.current_state_value not in ("active", "established", "refreshing"):
            return now >= self.not_before
        proven = self.proven
        self.send("invalidate", error=error)
        self.value = None
        if proven:
            self.refused_fresh = 0
            self.not_before = 0
            return True
        self.refused_fresh += 1
        if self.refused_fresh == 1:
            self.not_before = 0  # one login again at once: a stale first session is common
            return True
        wait = max(LOGIN.delay(self.failures, rand), retry_after(error))
        self.not_before = now + int(wait * 1000)
        return False

    def _grant(self, now: int, value: object, lifetime_s: float | None) -> None:
        self.value = value
        lifetime = lifetime_s if lifetime_s is not None else self.expire_after_s
        self.expires_at = None if lifetime is None else now + int(lifetime * 1000 * LIFETIME_MARGIN)
        self.refresh_at = None if self.refresh_after_s is None else now + int(self.refresh_after_s * 1000)
        self.not_before = 0

    # --- actions --------------------------------------------------------------------------------

    def on_enter_authenticating(self) -> None:
        self.logins += 1
        self.proven = False

    def on_enter_active(self) -> None:
        # the vendor accepted the credentials; whether the session works is for confirm to say
        self.rejections = 0
        self.last_error = None

    def on_refreshed(self) -> None:
        self.proven = False

    def on_confirm(self) -> None:
        self.proven = True
        self.failures = 0
        self.refused_fresh = 0

    def on_fail(self, error: Fault | None = None) -> None:
        self.failures += 1
        self.proven = False
        self.last_error = error

    def on_reject(self, error: Fault | None = None) -> None:
        self.rejections += 1
        self.proven = False
        self.last_error = error

    def on_invalidate(self, error: Fault | None = None) -> None:
        if not self.proven:
            self.failures += 1  # refused before it delivered anything: an unproductive login
        self.proven = False
        self.last_error = error

    def on_expire(self) -> None:
        self.proven = False
        self.value = None

    @property
    def usable(self) -> bool:
        """A fetch may use the session now."""
        return self.current_state_value in ("active", "refreshing")

    @property
    def in_flight(self) -> bool:
        """A login or a refresh is under way."""
        return self.current_state_value in ("authenticating", "authorizing", "established", "refreshing")
