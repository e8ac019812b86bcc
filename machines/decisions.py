"""What the machines tell the runtime to do next, and what they need to know of an error.

A machine method takes an event with its facts (``now``, the outcome, the error) and returns one
of these decisions; the trio driver performs it and reports the outcome as the next event. The
decisions carry deadlines as epoch milliseconds of the injected clock, never durations, so a
driver only ever sleeps *until* a time the machine named.
"""

from __future__ import annotations

from typing import Protocol

import attrs


class Fault(Protocol):
    """An error as the machines see it (``connect.errors.ConnectError`` has these attributes).

    ``kind`` is the error's short name: the machines single out ``unreachable`` (the request
    never reached the remote side), ``session_expired``, ``output_auth`` and ``config``.
    """

    retryable: bool
    retry_after: float | None
    kind: str


def retry_after(fault: Fault | None) -> float:
    """Seconds the remote side asked us to wait (0 when it did not say)."""
    value = getattr(fault, "retry_after", None)
    return float(value) if value else 0.0


def reached(fault: Fault | None) -> bool:
    """The failed request reached the remote side (it may count it against the account)."""
    return getattr(fault, "kind", "") != "unreachable"


# --- Session (asked through the Poller) --------------------------------------------------------


@attrs.frozen
class Use:
    """Use this session value for the request."""

    value: object


@attrs.frozen
class Login:
    """Log in now (authenticate, then authorize) and report the outcome."""


@attrs.frozen
class Refresh:
    """Renew this session through the source's refresh coroutine and report the outcome."""

    value: object


@attrs.frozen
class Join:
    """Another loop is logging in or refreshing: wait until the Poller releases the waiting loops."""


@attrs.frozen
class Wait:
    """No login before ``until``: the frame fails with ``cause``, retried after the wait.

    ``rejected`` says the credentials (or a setting) were refused, not a passing failure.
    """

    until: int
    cause: Fault | None
    rejected: bool


SessionDecision = Use | Login | Refresh | Join | Wait


# --- Fetch ------------------------------------------------------------------------------------


@attrs.frozen
class RetryAt:
    """Try the frame again at ``at``."""

    at: int


@attrs.frozen
class EndFrame:
    """The frame is over; ``ok`` says whether its batch was persisted."""

    ok: bool


FrameDecision = RetryAt | EndFrame


@attrs.frozen
class StartingPoints:
    """Where a frame starts, per collection the store holds no checkpoint for.

    ``values`` are the site's answers to gap analysis (absent: from the backfill horizon);
    ``held`` are collections that must not start until the site has answered (their records are
    left out of the frame) and ``cause`` is why the site has not answered.
    """

    values: dict[str, int]
    held: frozenset[str]
    cause: Fault | None = None


# --- Cycle ------------------------------------------------------------------------------------


@attrs.frozen
class NextFrame:
    """Start the next frame at ``at``."""

    at: int


@attrs.frozen
class Finish:
    """No more frames (``once``: nothing more to fetch, a frame failed, or the budget is spent)."""


CycleDecision = NextFrame | Finish


# --- Delivery ---------------------------------------------------------------------------------


@attrs.frozen
class Read:
    """Read the next chunk past the cursor, at most ``limit`` records, and send it."""

    limit: int


@attrs.frozen
class Idle:
    """Nothing pending: wait for a wake (a frame was persisted) or the safety interval."""


@attrs.frozen
class SleepUntil:
    """Backing off or paused: nothing is sent before ``until``."""

    until: int


@attrs.frozen
class Stop:
    """``once`` mode: delivery is over; ``ok`` says whether everything got through."""

    ok: bool


DeliveryDecision = Read | Idle | SleepUntil | Stop


# --- Lease ------------------------------------------------------------------------------------


@attrs.frozen
class RenewLeases:
    """Renew every lease this process holds (and say it is alive); report which are still held,
    how many accounts there are and how many processes are alive."""


@attrs.frozen
class ClaimLeases:
    """Take up to ``count`` free or lapsed leases, none of ``skip``; report the ones taken."""

    count: int
    skip: frozenset[str] = frozenset()


@attrs.frozen
class StopAccounts:
    """Stop these accounts' daemons; ``release``: then give their leases back at once (a
    surplus shed, a daemon that ended), else they are lost and the database lets them lapse."""

    names: frozenset[str]
    release: bool


@attrs.frozen
class WaitUntil:
    """Nothing to do before ``until``."""

    until: int


LeaseDecision = RenewLeases | ClaimLeases | StopAccounts | WaitUntil
