"""Lease: which accounts this process runs, when it renews their leases, when it lets them go.

The leases themselves live in the database (``store/fleet.py``): a row per account naming its
holder and an expiry set by the database's own clock. This machine holds the policy around them;
the trio driver (``connect/fleet.py``) runs the SQL and starts and stops the accounts' daemons.

Times are the driver's monotonic milliseconds (the database's clock decides expiry; this
process only needs to measure how long ago it sent a renewal). A renewal sent at ``sent``
commits an expiry of at least ``sent + lease`` by the database's clock, so the process may run
the account until ``sent + lease`` and no longer; it stops it earlier, at ``sent + valid``
(three quarters of the lease), so the daemon has stopped before any other process can take the
lapsed lease over.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import attrs
from statemachine import State

from machines.base import Machine
from machines.decisions import (
    ClaimLeases,
    Fault,
    LeaseDecision,
    RenewLeases,
    StopAccounts,
    WaitUntil,
)
from machines.timing import Backoff

#: a renewal or a claim that failed (the database unreachable, a timeout): a second, doubling;
#: the renewal ladder is further capped at the renewal interval, so a lease is retried several
#: times before it is lost
DATABASE_RETRY = Backoff(base=1.0, cap=60.0)
#: the longest a new process waits before its first claim (see :attr:`LeasePolicy.settle_ms`)
SETTLE_MS = 2_000
#: an account whose daemon would not start or ended by an error: its lease is given back, and
#: this process leaves it to the others for a while (another host may be able to run it)
ACCOUNT_COOLDOWN = Backoff(base=10.0, cap=900.0)


@attrs.frozen(kw_only=True)
class LeasePolicy:
    """The numbers of the lease policy (``CONNECT_FLEET_LEASE_SECONDS``,
    ``CONNECT_FLEET_MAX_ACCOUNTS``)."""

    lease_ms: int = 60_000
    #: the most accounts this process runs (None: its fair share alone decides)
    max_accounts: int | None = None
    retry: Backoff = DATABASE_RETRY
    cooldown: Backoff = ACCOUNT_COOLDOWN

    @property
    def renew_every_ms(self) -> int:
        """Renewals at a third of the lease: two may fail before the lease is in danger."""
        return max(1, self.lease_ms // 3)

    @property
    def settle_ms(self) -> int:
        """Between a process's first renewal and its first claim: processes started together
        (a deployment of several replicas) see each other before taking their shares, instead of
        the first taking everything and handing most of it on (a login more per account)."""
        return min(self.renew_every_ms, SETTLE_MS)

    @property
    def valid_ms(self) -> int:
        """How long after a renewal was sent the account may still run: a quarter of the lease
        is left for its daemon to stop before the database lets another process take it."""
        return self.lease_ms - self.lease_ms // 4


def fair_share(accounts: int, holders: int, cap: int | None = None, caps: Sequence[int | None] = ()) -> int:
    """How many accounts one of ``holders`` live processes runs: ``ceil(accounts / holders)``
    (every account finds a process), never more than ``cap``.

    ``caps``: every live process's own cap (None: none), when known. A process capped below the
    even share takes its cap, and the others share what it leaves, so mixed caps leave no
    account unrun while any process has room."""
    limits = list(caps) if caps else [cap] * max(1, holders)
    left, remaining = len(limits), accounts
    for limit in sorted(c for c in limits if c is not None):
        if left > 1 and limit < math.ceil(remaining / left):
            remaining -= max(0, limit)
            left -= 1
        else:
            break
    share = math.ceil(max(0, remaining) / left)
    return share if cap is None else min(share, max(0, cap))


class LeaseMachine(Machine):
    """idle → renewing / claiming / stopping → idle; ``close`` ends it from anywhere.

    ``next(now)`` answers from ``idle``, in this order: stop the accounts whose leases are lost
    (not renewed in time, or taken over in the database) or whose daemons ended; renew when the
    renewal is due; give back the accounts beyond the fair share; claim free leases up to the
    share; else wait until the first of these falls due. The driver performs the decision and
    reports its outcome (``renewed`` / ``claimed`` / ``failed`` / ``stopped``: the events
    ``renew_ok``, ``claim_ok``, ``fail``, ``stop_ok``), which returns the machine to ``idle``.
    """

    idle = State(initial=True)
    renewing = State()
    claiming = State()
    stopping = State()
    closed = State(final=True)

    renew = idle.to(renewing)
    renew_ok = renewing.to(idle)
    claim = idle.to(claiming)
    claim_ok = claiming.to(idle)
    fail = renewing.to(idle) | claiming.to(idle)
    stop = idle.to(stopping)
    stop_ok = stopping.to(idle)
    close = idle.to(closed) | renewing.to(closed) | claiming.to(closed) | stopping.to(closed)

    def __init__(self, policy: LeasePolicy | None = None) -> None:
        self.policy = policy or LeasePolicy()
        #: account → until when (driver ms) it may run without another renewal
        self.valid_until: dict[str, int] = {}
        #: accounts to give back without running them: daemons that ended, leases the database
        #: says this process holds but it never started (a claim whose answer was lost)
        self.to_release: set[str] = set()
        #: account → until when this process does not claim it again
        self.cooling: dict[str, int] = {}
        self._ends: dict[str, int] = {}
        #: what the last renewal said: accounts in the fleet and processes alive (None: not yet)
        self.accounts: int | None = None
        self.holders = 1
        #: every live process's cap, when the renewal said (None: uncapped)
        self.caps: tuple[int | None, ...] = ()
        self.renew_at = -(2**62)  # due from the start, whatever the clock reads
        self.claim_at = 0
        #: database failures in a row, and renewals that failed in a row
        self.failures = 0
        self.renew_failures = 0
        self.last_error: Fault | None = None
        self._pending: LeaseDecision | None = None
        super().__init__()

    # --- what this process holds ------------------------------------------------------------------

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self.valid_until)

    @property
    def target(self) -> int:
        """How many accounts this process should run now (0 before the first renewal)."""
        if self.accounts is None:
            return 0
        return fair_share(self.accounts, self.holders, self.policy.max_accounts, self.caps)

    @property
    def deadline(self) -> int | None:
        """The first moment a held account must have stopped (None: none held): a driver bounds
        every database call by it, so a hanging call cannot keep an account past its lease."""
        return min(self.valid_until.values(), default=None)

    # --- decisions --------------------------------------------------------------------------------

    def next(self, now: int) -> LeaseDecision:
        """What the driver does now."""
        if not self.idle.is_active:
            if self._pending is None:  # closed
                return StopAccounts(frozenset(), release=True)
            return self._pending
        lost = frozenset(name for name, until in self.valid_until.items() if until <= now)
        if lost:
            return self._stopping(StopAccounts(lost, release=False))
        if self.to_release:
            return self._stopping(StopAccounts(frozenset(self.to_release), release=True))
        if now >= self.renew_at:
            self._pending = RenewLeases()
            self.send("renew")
            return self._pending
        surplus = len(self.valid_until) - self.target
        if surplus > 0:
            # the last names go: every process sheds the same end, so shed accounts are not
            # handed back and forth between two of them
            return self._stopping(StopAccounts(frozenset(sorted(self.valid_until)[-surplus:]), release=True))
        # nothing new is taken while renewals fail: the counts are old, and whatever is taken
        # could not be kept
        want = 0 if self.renew_failures else self.target - len(self.valid_until)
        if want > 0 and now >= self.claim_at:
            self.cooling = {name: until for name, until in self.cooling.items() if until > now}
            self._pending = ClaimLeases(want, skip=frozenset(self.cooling))
            self.send("claim")
            return self._pending
        wake = [self.renew_at, *self.valid_until.values()]
        if want > 0:
            wake.append(self.claim_at)
        return WaitUntil(min(wake))

    def _stopping(self, decision: StopAccounts) -> StopAccounts:
        for name in decision.names:
            self.valid_until.pop(name, None)
            self.to_release.discard(name)
        self._pending = decision
        self.send("stop")
        return decision

    # --- outcomes ---------------------------------------------------------------------------------

    def renewed(
        self,
        sent: int,
        now: int,
        held: Collection[str],
        accounts: int,
        holders: int,
        caps: Sequence[int | None] = (),
    ) -> None:
        """The renewal sent at ``sent`` committed: ``held`` are the leases still this process's,
        ``accounts`` and ``holders`` what the fleet counts now, ``caps`` each live process's
        cap (see :func:`fair_share`)."""
        self.send("renew_ok")
        self.failures = 0
        self.renew_failures = 0
        self.last_error = None
        still = set(held)
        for name in list(self.valid_until):
            if name in still:
                self.valid_until[name] = max(self.valid_until[name], sent + self.policy.valid_ms)
            else:
                # lapsed and taken over, or removed: not ours any more, stop it now
                self.valid_until[name] = now
        self.to_release |= still - set(self.valid_until)
        first = self.accounts is None
        self.accounts = max(0, accounts)
        self.holders = max(1, holders)
        self.caps = tuple(caps)
        if first:
            # renewed again, for fresh counts, before anything is claimed
            self.renew_at = sent + self.policy.settle_ms
            self.claim_at = self.renew_at
        else:
            self.renew_at = sent + self.policy.renew_every_ms
            self.claim_at = now  # fresh counts: a share not yet reached is claimed at once

    def claimed(self, sent: int, now: int, names: Collection[str]) -> None:
        """The claim sent at ``sent`` committed with these leases taken (each to be started)."""
        self.send("claim_ok")
        self.failures = 0
        self.last_error = None
        for name in names:
            self.valid_until[name] = sent + self.policy.valid_ms
        # fewer than asked: the others hold the rest; the next renewal brings fresh counts
        self.claim_at = self.renew_at

    def failed(self, now: int, error: Fault | None = None, rand: float = 0.0) -> None:
        """The renewal or the claim in flight failed (or ran out of time): try again after a
        backoff; held leases run out at their own time if no renewal gets through."""
        renewing = self.renewing.is_active
        self.send("fail")
        self.failures += 1
        self.last_error = error
        if renewing:
            self.renew_failures += 1
            wait = self.policy.retry.capped(self.policy.renew_every_ms / 1000).delay(self.failures, rand)
            self.renew_at = now + int(wait * 1000)
        else:
            self.claim_at = now + int(self.policy.retry.delay(self.failures, rand) * 1000)

    def stopped(self) -> None:
        """The accounts of the last :class:`StopAccounts` have stopped (and been released)."""
        self.send("stop_ok")

    def ended(self, name: str, now: int, rand: float = 0.0) -> None:
        """This account's daemon would not start or ended by an error: its lease is given back
        at the next step, and it is not claimed again for a while (another process may run it)."""
        if name not in self.valid_until:
            return
        self.valid_until.pop(name)
        self.to_release.add(name)
        self._ends[name] = self._ends.get(name, 0) + 1
        self.cooling[name] = now + int(self.policy.cooldown.delay(self._ends[name], rand) * 1000)

    def shutdown(self) -> StopAccounts:
        """The process stops: every account stops and every lease is given back."""
        names = frozenset(self.valid_until) | frozenset(self.to_release)
        self.valid_until.clear()
        self.to_release.clear()
        self._pending = None
        if not self.closed.is_active:
            self.send("close")
        return StopAccounts(names, release=True)

    def after_transition(self, event: str, source: State, target: State) -> None:
        if target.id == "idle":
            self._pending = None
