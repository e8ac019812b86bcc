"""Delivery tasks: one per remote output, pushing everything past its cursor to the remote side.

The store is the journal. Each output keeps a cursor per collection (a store-wide ``seq``) and
moves it only after the remote side accepted the records (HTTP 200 from Nightscout, PUBACK from
the broker), so an output that is down loses nothing and catches up when it is back.

An output task sleeps until :meth:`Output.wake` is called (the runtime calls it after every
persisted frame) or a long safety interval passes; it never polls. Its Delivery machine decides
the rest: transient trouble backs off on a capped exponential ladder, refused credentials pause
on a much slower one (a wrong secret never turns into a request storm), and every accepted
chunk clears the failures.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog
import trio

from connect.clock import jitter_rng, wall_ms
from connect.errors import ConnectError, StoreError, TransientError
from connect.records import COLLECTIONS, EVENTS, Stream
from connect.redact import describe_error, redact
from machines import DeliveryMachine
from machines.decisions import Idle, SleepUntil, Stop
from machines.delivery import ONCE_ATTEMPTS, ONCE_MAX_WAIT_S, DeliveryPolicy

if TYPE_CHECKING:
    from store.abc import WriterStore
    from store.aio import AsyncStore

log = structlog.get_logger("outputs")

Clock = Callable[[], int]


class Sequenced(Protocol):
    """A record read from the store for delivery: all the cursor needs is its ``seq``."""

    @property
    def seq(self) -> int: ...


#: wake up now and then even without a persisted frame: covers records written by other means
SAFETY_WAKE_S: Final = 900.0


class Paused(Exception):
    """The Delivery machine paused the output in the middle of a pass (too many refusals)."""


class Output(abc.ABC):
    """What the runtime sees of an output: ``run``, ``wake``, ``status``, ``deliver_until_idle``.

    An output executes its :class:`machines.DeliveryMachine`: it reads and sends what the
    machine asks for, reports each chunk's outcome as the next event, and sleeps until the time
    the machine names. How long to back off, when to pause, when a refused chunk is split or a
    record set aside: the machine decides all of it.
    """

    #: what this output delivers past its cursors: the collections, the events outbox, or both
    streams: tuple[Stream, ...] = COLLECTIONS

    def __init__(
        self,
        name: str,
        astore: AsyncStore,
        *,
        clock: Clock = wall_ms,
        rng: random.Random | None = None,
        chunk_size: int = 500,
        policy: DeliveryPolicy | None = None,
        safety_wake_s: float = SAFETY_WAKE_S,
    ) -> None:
        self.name = name
        self.astore = astore
        self.clock = clock
        self.rng = rng or jitter_rng()
        self.chunk_size = chunk_size
        self.safety_wake_s = safety_wake_s
        self.policy = policy
        self.machine = DeliveryMachine(chunk_size=chunk_size, policy=policy)
        self._wakeup = trio.Event()
        #: one delivery pass at a time (``run`` and ``deliver_until_idle`` may overlap)
        self._lock = trio.Lock()
        self._delivered = 0
        self._last_success: int | None = None
        self._last_error: str | None = None
        self._last_error_at: int | None = None
        self._lag: int | None = None
        self._rejected = 0
        self._streams_noted = False

    # --- what the runtime calls -------------------------------------------------------------

    def wake(self) -> None:
        """A frame was persisted: deliver it (a no-op while backing off; the wait is kept)."""
        self._wakeup.set()

    @property
    def state(self) -> str:
        return str(self.machine.current_state_value)

    @abc.abstractmethod
    def target(self) -> str:
        """Where this output delivers to, without credentials."""

    def status(self) -> dict[str, Any]:
        """A snapshot for the status API and logs (no secrets)."""
        m = self.machine
        snapshot = {
            "name": self.name,
            "target": self.target(),
            "state": self.state,
            "lag": self._lag,
            "rejected": self._rejected,
            "delivered": self._delivered,
            "failures": m.failures + m.auth_failures,
            "last_success": self._last_success,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at,
            "retry_at": m.retry_at,
        }
        result: dict[str, Any] = redact(snapshot)
        return result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver forever, as the Delivery machine decides."""
        await self.refresh()
        task_status.started()
        self.machine.send("wake")  # whatever is pending from before the start goes out first
        while True:
            decision = self.machine.next(self.clock())
            if isinstance(decision, SleepUntil):
                await self._sleep_backing_off(decision.until)
                continue
            if isinstance(decision, Idle):  # pragma: no cover - a pass ends in _idle
                await self._idle()
                continue
            try:
                await self._serve()
            except Paused:
                await self.refresh()
            except Exception as exc:
                self._failed(_typed(exc, self.name))
                await self.refresh()  # the pass may have moved the cursor before it failed

    async def deliver_until_idle(
        self, *, attempts: int = ONCE_ATTEMPTS, max_wait: float = ONCE_MAX_WAIT_S
    ) -> bool:
        """Deliver what is pending now (``once`` mode); True when all of it got through.

        The Delivery machine runs in its ``once`` mode: passing failures are retried
        ``attempts`` times in all, at most ``max_wait`` seconds apart; refused credentials end
        at once. Records the remote side refused
        for good count as not delivered. With nothing pending the remote side is not contacted,
        and the state (say, an error met during gap analysis) stays as it is.
        """
        if not await self.refresh():
            return False
        if self._lag == 0:
            return True
        machine = self.machine = DeliveryMachine(
            chunk_size=self.chunk_size, once=True, policy=self.policy, attempts=attempts, max_wait_s=max_wait
        )
        machine.send("wake")
        while True:
            decision = machine.next(self.clock())
            if isinstance(decision, Stop):
                refreshed = await self.refresh()
                return decision.ok and refreshed and self._lag == 0
            if isinstance(decision, SleepUntil):
                await trio.sleep(max(0.0, (decision.until - self.clock()) / 1000.0))
                continue
            try:
                await self._deliver_once()
            except Paused:
                pass
            except Exception as exc:
                self._failed(_typed(exc, self.name))

    async def probe(self) -> tuple[bool, str]:
        """Try the far side as delivery would, writing nothing (``check``): whether this output
        can deliver, and one line saying so (no credentials in it)."""
        return True, "not tried"

    async def refresh(self) -> bool:
        """Re-read lag and rejected count from the store (for status); False (the last numbers
        kept) while the store cannot be read, which its own status shows."""
        try:
            if not self._streams_noted and EVENTS in self.streams:
                # an output of the events outbox: the store's readers (status, metrics) learn
                # from its cursors what it delivers, before it has delivered anything
                await self.astore.ensure_cursors(self.name, self.streams)
            self._streams_noted = True
            lag, rejected = await self.astore.call(_counts, self.astore.store, self.name, self.streams)
            self._lag, self._rejected = int(lag), int(rejected)
        except StoreError:
            return False
        return True

    # --- what an output implements --------------------------------------------------------------

    async def _serve(self) -> None:
        """Deliver after every wake until something fails (then raise a ConnectError).

        As here for an output with no connection to keep between passes (HTTP); one that holds
        a connection (MQTT) overrides it."""
        while True:
            async with self._lock:
                await self._deliver_pending()
            await self._idle()

    async def _deliver_once(self) -> None:
        """One complete pass over everything pending, opening and closing what it needs."""
        async with self._lock:
            await self._deliver_pending()
        self.machine.send("drained")

    async def _deliver_pending(self) -> None:
        """Everything past the cursors, chunk by chunk (what :meth:`_serve` and
        :meth:`_deliver_once` run by default)."""
        raise NotImplementedError

    # --- helpers shared by outputs: each reports an outcome to the machine --------------------

    async def _idle(self) -> None:
        """The pass got to the end: wait for the next wake (or the safety interval)."""
        self.machine.send("drained")
        await self.refresh()
        with trio.move_on_after(self.safety_wake_s):
            await self._wakeup.wait()
        self._new_pass()

    def _new_pass(self) -> None:
        # swap before delivering: a frame persisted during the pass sets the new event
        self._wakeup = trio.Event()
        self.machine.woken()

    def _sending(self) -> None:
        """Records were read: a chunk is on its way (one at a time, as the machine sees it)."""
        self.machine.sent()

    async def _accepted(
        self, collection: Stream, chunk: Sequence[Sequenced], *, advanced: bool = False
    ) -> None:
        """The remote side took ``chunk``: move the cursor past it (``advanced``: the caller
        already did, in the store call that read the next chunk)."""
        if not advanced:
            await self.astore.advance(self.name, collection, chunk[-1].seq)
        self._sending()  # an output that sends as it reads reports both at once
        self.machine.send("accepted")
        self._delivered += len(chunk)
        self._last_success = self.clock()
        log.debug("delivered", output=self.name, collection=collection, records=len(chunk))

    async def _refused(self, collection: Stream, chunk: Sequence[Sequenced], status: int, error: str) -> None:
        """The remote side refused ``chunk`` for good: the machine splits it, or the record
        (alone) is kept, counted, and passed over; raises :class:`Paused` when the refusals
        in a row pause the output."""
        self._last_error = error
        self._last_error_at = self.clock()
        if not self.machine.refused_chunk(self.clock(), len(chunk), self.rng.random()):
            return
        await self.astore.set_aside(
            self.name, collection, chunk[0].seq, chunk[-1].seq, len(chunk), status, error
        )
        self._rejected = int(await self.astore.rejected_count(self.name))
        log.warning(
            "records rejected", output=self.name, collection=collection, records=len(chunk),
            first_seq=chunk[0].seq, last_seq=chunk[-1].seq, status=status, error=error,
        )  # fmt: skip
        if self.machine.paused:
            self._last_error = (
                f"{self.target()} refused {self.machine.refused_in_a_row} {collection} records in a row "
                f"(last: {error}); uploads paused"
            )
            log.warning("delivery paused", output=self.name, error=self._last_error)
            raise Paused(self._last_error)

    def _noted(self, exc: ConnectError) -> None:
        """A failure outside delivery (gap analysis): shown in status, no backoff of its own."""
        self._last_error = describe_error(exc)
        self._last_error_at = self.clock()

    def _failed(self, exc: ConnectError) -> None:
        """Report a failed pass; the machine says how long to wait."""
        self.machine.failed(self.clock(), exc, self.rng.random())
        now = self.clock()
        self._last_error = describe_error(exc)
        self._last_error_at = now
        retry_at = self.machine.retry_at
        log.warning(
            "delivery failed", output=self.name, error=self._last_error, state=self.state,
            retry_in_s=None if retry_at is None else round((retry_at - now) / 1000, 1),
        )  # fmt: skip

    async def _sleep_backing_off(self, until: int) -> None:
        """Sleep out a backoff; wakes meanwhile only refresh the lag shown in status."""
        deadline = trio.current_time() + max(0.0, (until - self.clock()) / 1000.0)
        while trio.current_time() < deadline:
            self._wakeup = trio.Event()
            with trio.move_on_at(deadline):
                await self._wakeup.wait()
                await self.refresh()
        # a frame persisted during the wait is delivered by the next pass anyway
        self._wakeup = trio.Event()


def _counts(store: WriterStore, output: str, streams: tuple[Stream, ...]) -> tuple[int, int]:
    """What ``output`` has not delivered yet (its lag) and the records it set aside, in one
    store call: one trip to the store's thread per refresh, not three."""
    lag = 0
    if any(stream != EVENTS for stream in streams):
        lag += store.lag(output)
    if EVENTS in streams:
        lag += store.events_lag(output)
    return lag, store.rejected_count(output)


def _typed(exc: Exception, name: str) -> ConnectError:
    """``exc`` as an error of our tree.

    A library raising what we did not foresee must not take every source and output of the
    daemon down with it: it is shown in status and retried like a 5xx. Only its type is shown,
    since its message may quote a URL with credentials in it.
    """
    if isinstance(exc, ConnectError):
        return exc
    log.error("unexpected error in output", output=name, error_type=type(exc).__name__)
    return TransientError(f"{name}: unexpected {type(exc).__name__}")


__all__ = ["SAFETY_WAKE_S", "Output", "Paused", "Sequenced"]
