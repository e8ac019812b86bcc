"""Delivery: one output pushing the store's records past its cursor to the remote side."""

from __future__ import annotations

import attrs
from statemachine import State

from machines.base import Machine
from machines.decisions import (
    DeliveryDecision,
    Fault,
    Idle,
    Read,
    SleepUntil,
    Stop,
    retry_after,
)
from machines.timing import Backoff

#: passing trouble (5xx, timeouts, a broker that went away): a second after one failure, since
#: an accepted chunk clears the count, a site that fails now and then costs about a request's
#: time per failure; a site that stays down is asked at most every five minutes
TRANSIENT = Backoff(base=1.0, cap=300.0)
#: refused credentials and settings that cannot work: nobody fixes a wrong secret in a minute,
#: and Nightscout delays every failed login anyway
PAUSED = Backoff(base=300.0, cap=3600.0)
#: a Retry-After longer than this is not believed
RETRY_AFTER_CAP_S = 3600.0
#: records refused one by one in a row before the output pauses: more likely a site (or a
#: proxy) that refuses every upload than that many bad records
REFUSED_IN_A_ROW = 10
#: ``once`` mode: passes tried in all, and the longest wait between two
ONCE_ATTEMPTS = 3
ONCE_MAX_WAIT_S = 60.0


@attrs.frozen(kw_only=True)
class DeliveryPolicy:
    """The two ladders an output climbs (tests and embedders may shorten them)."""

    transient: Backoff = TRANSIENT
    paused: Backoff = PAUSED


class DeliveryMachine(Machine):
    """idle → reading → sending → reading … → idle; failures → backoff or a pause.

    ``wake`` (a frame was persisted) starts a pass; ``chunk`` (records were read) → ``sending``;
    ``accepted`` goes back to ``reading`` and clears every failure count, so a site that fails
    now and then never makes the output wait as if it had failed for a long time. A refused
    chunk of several records is ``split`` (the chunk limit halves until the refused record is
    alone); a refused record alone is ``set_aside`` (kept in the store, counted), and
    :data:`REFUSED_IN_A_ROW` of them in a row pause the output (``paused_refusals``). ``fail``
    leads to ``backoff`` (on :data:`TRANSIENT`), ``paused_auth`` (credentials refused) or
    ``paused_config`` (the endpoint or a setting is wrong), both on :data:`PAUSED` (the ladders
    of its :class:`DeliveryPolicy`); ``resume``
    starts the next pass once ``retry_at`` has come. Wakes while waiting change nothing.

    In ``once`` mode a drained pass, a pause, or the :data:`ONCE_ATTEMPTS`-th failure stops it.
    """

    idle = State(initial=True)
    reading = State()
    sending = State()
    backoff = State()
    paused_auth = State()
    paused_config = State()
    paused_refusals = State()

    wake = idle.to(reading)
    chunk = reading.to(sending)
    drained = reading.to(idle)
    accepted = sending.to(reading)
    split = sending.to(reading)
    set_aside = sending.to(paused_refusals, cond="too_many_refused") | sending.to(reading)
    fail = (
        reading.to(paused_auth, cond="auth_refused")
        | reading.to(paused_config, cond="misconfigured")
        | reading.to(backoff)
        | sending.to(paused_auth, cond="auth_refused")
        | sending.to(paused_config, cond="misconfigured")
        | sending.to(backoff)
        | idle.to(paused_auth, cond="auth_refused")
        | idle.to(paused_config, cond="misconfigured")
        | idle.to(backoff)
    )
    resume = (
        backoff.to(reading)
        | paused_auth.to(reading)
        | paused_config.to(reading)
        | paused_refusals.to(reading)
    )

    def __init__(
        self,
        *,
        chunk_size: int = 500,
        once: bool = False,
        policy: DeliveryPolicy | None = None,
        attempts: int = ONCE_ATTEMPTS,
        max_wait_s: float = ONCE_MAX_WAIT_S,
    ) -> None:
        self.policy = policy or DeliveryPolicy()
        #: ``once`` mode: passes tried in all, and the longest wait between two
        self.attempts = max(1, attempts)
        self.max_wait_s = max_wait_s
        self.chunk_size = max(1, chunk_size)
        #: the most records the next chunk may hold (halved while a refused record is sought)
        self.limit = self.chunk_size
        self.once = once
        #: transient failures in a row, and credential or setting failures in a row
        self.failures = 0
        self.auth_failures = 0
        self.refused_in_a_row = 0
        #: records set aside since this machine started
        self.refused = 0
        self.accepted_chunks = 0
        self.last_error: Fault | None = None
        #: epoch ms of the next pass while backing off or paused
        self.retry_at: int | None = None
        #: ``once``: no more passes
        self.gave_up = False
        super().__init__()

    # --- decisions ------------------------------------------------------------------------------

    def next(self, now: int) -> DeliveryDecision:
        """What the output does now."""
        state = self.current_state_value
        if state == "idle":
            return Stop(ok=self.refused == 0) if self.once else Idle()
        if state in ("reading", "sending"):
            return Read(self.limit)
        if self.once and self.gave_up:
            return Stop(ok=False)
        if self.retry_at is not None and now < self.retry_at:
            return SleepUntil(self.retry_at)
        self.send("resume")
        return Read(self.limit)

    def failed(self, now: int, error: Fault, rand: float = 0.0) -> DeliveryDecision:
        """A pass failed with ``error``: back off or pause, and say until when."""
        self.send("fail", error=error)
        if self.current_state_value == "backoff":
            self.failures += 1
            wait = self.policy.transient.delay(self.failures, rand)
            self.gave_up = self.failures >= self.attempts
        else:
            self.auth_failures += 1
            wait = self.policy.paused.delay(self.auth_failures, rand)
            self.gave_up = True
        wait = max(wait, min(retry_after(error), RETRY_AFTER_CAP_S))
        if self.once:
            wait = min(wait, self.max_wait_s)
        self.retry_at = now + int(wait * 1000)
        return self.next(now)

    def refused_chunk(self, now: int, size: int, rand: float = 0.0) -> bool:
        """The remote side refused a chunk of ``size`` records for good.

        True: set that one record aside (then see whether the output paused); False: the chunk
        is split and its first half read again.
        """
        if size > 1:
            self.send("split", size=size)
            return False
        self.send("set_aside")
        if self.current_state_value == "paused_refusals":
            self.auth_failures += 1
            self.retry_at = now + int(self.policy.paused.delay(self.auth_failures, rand) * 1000)
            self.gave_up = True
        return True

    def woken(self) -> None:
        """A frame was persisted (or the safety interval passed): an idle output starts a pass;
        one backing off or paused keeps its wait."""
        if self.idle.is_active:
            self.send("wake")

    def sent(self) -> None:
        """Records read are on their way (an output that pipelines reports each chunk once)."""
        if self.reading.is_active:
            self.send("chunk")

    @property
    def limit_if_accepted(self) -> int:
        """The chunk limit once the chunk in flight is accepted (a split limit grows back): an
        output reading ahead reads the next chunk at this size."""
        return min(self.chunk_size, self.limit * 2)

    @property
    def paused(self) -> bool:
        return str(self.current_state_value).startswith("paused_")

    # --- guards and actions ---------------------------------------------------------------------

    def auth_refused(self, error: Fault | None = None) -> bool:
        return getattr(error, "kind", "") == "output_auth"

    def misconfigured(self, error: Fault | None = None) -> bool:
        return getattr(error, "kind", "") == "config"

    def too_many_refused(self) -> bool:
        return self.refused_in_a_row + 1 >= REFUSED_IN_A_ROW

    def on_fail(self, error: Fault | None = None) -> None:
        self.last_error = error

    def on_accepted(self) -> None:
        self.failures = 0
        self.auth_failures = 0
        self.refused_in_a_row = 0
        self.accepted_chunks += 1
        self.retry_at = None
        self.gave_up = False
        self.limit = self.limit_if_accepted

    def on_split(self, size: int = 2) -> None:
        self.limit = max(1, size // 2)

    def on_set_aside(self) -> None:
        self.refused_in_a_row += 1
        self.refused += 1

    def on_drained(self) -> None:
        # a pass that got to the end: whatever failed before is over
        self.failures = 0
        self.auth_failures = 0
        self.refused_in_a_row = 0
        self.retry_at = None
