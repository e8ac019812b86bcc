"""Delivery tasks: one per remote output, pushing everything past its cursor to the remote side.

The store is the journal. Each output keeps a cursor per collection (a store-wide ``seq``) and
moves it only after the remote side accepted the records (HTTP 200 from Nightscout, PUBACK from
the broker), so an output that is down loses nothing and catches up when it is back.

An output task sleeps until :meth:`Output.wake` is called (the runtime calls it after every
persisted frame) or a long safety interval passes; it never polls. Failures back off: transient
trouble on a capped exponential ladder, refused credentials on a much slower one, so a wrong
secret never turns into a request storm.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import attrs
import structlog
import trio

from connect.clock import wall_ms
from connect.errors import ConfigError, ConnectError, OutputAuthError, TransientError
from connect.records import Collection
from connect.redact import describe_error, redact
from machines.timing import backoff

if TYPE_CHECKING:
    import httpx

    from store.aio import AsyncStore

log = structlog.get_logger("outputs")

State = Literal["idle", "delivering", "backing_off", "auth_error", "error"]
Clock = Callable[[], int]


class Sequenced(Protocol):
    """A record read from the store for delivery: all the cursor needs is its ``seq``."""

    @property
    def seq(self) -> int: ...


#: wake up now and then even without a persisted frame: covers records written by other means
SAFETY_WAKE_S: Final = 900.0


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How long an output waits after failures (seconds).

    Transient trouble (5xx, timeouts, a broker that went away) climbs ``base`` → ``cap``; refused
    credentials and settings that cannot work climb ``auth_base`` → ``auth_cap``: nobody fixes a
    wrong secret in a minute, and Nightscout delays every failed login anyway.
    """

    base: float = 5.0
    cap: float = 300.0
    auth_base: float = 300.0
    auth_cap: float = 3600.0
    jitter: float = 0.2
    #: a Retry-After longer than this is not believed
    retry_after_cap: float = 3600.0


class Output(abc.ABC):
    """What the runtime sees of an output: ``run``, ``wake``, ``status``, ``deliver_until_idle``."""

    def __init__(
        self,
        name: str,
        astore: AsyncStore,
        *,
        clock: Clock = wall_ms,
        rng: random.Random | None = None,
        policy: RetryPolicy | None = None,
        safety_wake_s: float = SAFETY_WAKE_S,
    ) -> None:
        self.name = name
        self.astore = astore
        self.clock = clock
        self.rng = rng or random.Random()
        self.policy = policy or RetryPolicy()
        self.safety_wake_s = safety_wake_s
        self._wakeup = trio.Event()
        #: one delivery pass at a time (``run`` and ``deliver_until_idle`` may overlap)
        self._lock = trio.Lock()
        self._state: State = "idle"
        self._failures = 0
        self._auth_failures = 0
        self._delivered = 0
        self._last_success: int | None = None
        self._last_error: str | None = None
        self._last_error_at: int | None = None
        self._retry_at: int | None = None
        self._lag: int | None = None
        self._rejected = 0

    # --- what the runtime calls -------------------------------------------------------------

    def wake(self) -> None:
        """A frame was persisted: deliver it (a no-op while backing off; the wait is kept)."""
        self._wakeup.set()

    @property
    def state(self) -> State:
        return self._state

    @abc.abstractmethod
    def target(self) -> str:
        """Where this output delivers to, without credentials."""

    def status(self) -> dict[str, Any]:
        """A snapshot for the status API and logs (no secrets)."""
        snapshot = {
            "name": self.name,
            "target": self.target(),
            "state": self._state,
            "lag": self._lag,
            "rejected": self._rejected,
            "delivered": self._delivered,
            "failures": self._failures + self._auth_failures,
            "last_success": self._last_success,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at,
            "retry_at": self._retry_at,
        }
        result: dict[str, Any] = redact(snapshot)
        return result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver forever: after every wake, everything past the cursor; back off on failure."""
        await self.refresh()
        task_status.started()
        while True:
            try:
                await self._serve()
            except Exception as exc:
                delay = self._failed(_typed(exc, self.name))
                await self.refresh()  # the pass may have moved the cursor before it failed
                await self._sleep_backing_off(delay)

    async def deliver_until_idle(self, *, attempts: int = 3, max_wait: float = 60.0) -> bool:
        """Deliver what is pending now (``once`` mode); True when all of it got through.

        Transient failures are retried ``attempts`` times in all, waiting at most ``max_wait``
        seconds between tries; refused credentials end at once. Records the remote side refused
        for good count as not delivered. With nothing pending the remote side is not contacted,
        and the state (say, an error met during gap analysis) stays as it is.
        """
        await self.refresh()
        if self._lag == 0:
            return True
        rejected_before = self._rejected
        for attempt in range(1, attempts + 1):
            try:
                await self._deliver_once()
            except Exception as exc:
                exc = _typed(exc, self.name)
                delay = self._failed(exc)
                if isinstance(exc, (OutputAuthError, ConfigError)) or attempt == attempts:
                    await self.refresh()
                    return False
                await trio.sleep(min(delay, max_wait))
                continue
            self._succeeded()
            await self.refresh()
            return self._lag == 0 and self._rejected == rejected_before
        return False  # pragma: no cover - the loop always returns

    async def refresh(self) -> None:
        """Re-read lag and rejected count from the store (for status)."""
        self._lag = int(await self.astore.lag(self.name))
        self._rejected = int(await self.astore.rejected_count(self.name))

    # --- what an output implements --------------------------------------------------------------

    @abc.abstractmethod
    async def _serve(self) -> None:
        """Deliver after every wake until something fails (then raise a ConnectError)."""

    @abc.abstractmethod
    async def _deliver_once(self) -> None:
        """One complete pass over everything pending, opening and closing what it needs."""

    # --- helpers shared by outputs --------------------------------------------------------------

    async def _idle(self) -> None:
        """Wait for the next wake (or the safety interval). Call after swapping in a fresh event."""
        self._succeeded()
        await self.refresh()
        with trio.move_on_after(self.safety_wake_s):
            await self._wakeup.wait()

    def _new_pass(self) -> None:
        # swap before delivering: a frame persisted during the pass sets the new event
        self._wakeup = trio.Event()
        self._state = "delivering"

    async def _accepted(self, collection: Collection, chunk: Sequence[Sequenced]) -> None:
        """The remote side took ``chunk``: move the cursor past it."""
        await self.astore.advance(self.name, collection, chunk[-1].seq)
        self._delivered += len(chunk)
        self._last_success = self.clock()
        log.debug("delivered", output=self.name, collection=collection, records=len(chunk))

    async def _set_aside(
        self, collection: Collection, chunk: Sequence[Sequenced], status: int, error: str
    ) -> None:
        """The remote side refused ``chunk`` for good: keep it, count it, move past it."""
        await self.astore.set_aside(
            self.name, collection, chunk[0].seq, chunk[-1].seq, len(chunk), status, error
        )
        self._rejected = int(await self.astore.rejected_count(self.name))
        self._last_error = error
        self._last_error_at = self.clock()
        log.warning(
            "records rejected", output=self.name, collection=collection, records=len(chunk),
            first_seq=chunk[0].seq, last_seq=chunk[-1].seq, status=status, error=error,
        )  # fmt: skip

    def _noted(self, exc: ConnectError) -> None:
        """A failure outside delivery (gap analysis): shown in status, no backoff of its own."""
        self._last_error = describe_error(exc)
        self._last_error_at = self.clock()
        if isinstance(exc, OutputAuthError) and self._state == "idle":
            self._state = "auth_error"

    def _succeeded(self) -> None:
        self._failures = 0
        self._auth_failures = 0
        self._retry_at = None
        self._state = "idle"

    def _failed(self, exc: ConnectError) -> float:
        """Record a failure; the seconds to wait before the next try."""
        policy = self.policy
        rand = self.rng.random()
        if isinstance(exc, (OutputAuthError, ConfigError)):
            self._auth_failures += 1
            self._state = "auth_error" if isinstance(exc, OutputAuthError) else "error"
            delay = backoff(
                self._auth_failures,
                base=policy.auth_base,
                cap=policy.auth_cap,
                jitter=policy.jitter,
                rand=rand,
            )
        else:
            self._failures += 1
            self._state = "backing_off"
            delay = backoff(self._failures, base=policy.base, cap=policy.cap, jitter=policy.jitter, rand=rand)
        if exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, policy.retry_after_cap))
        now = self.clock()
        self._last_error = describe_error(exc)
        self._last_error_at = now
        self._retry_at = now + int(delay * 1000)
        log.warning(
            "delivery failed", output=self.name, error=self._last_error, state=self._state,
            retry_in_s=round(delay, 1),
        )  # fmt: skip
        return delay

    async def _sleep_backing_off(self, delay: float) -> None:
        """Sleep out a backoff; wakes meanwhile only refresh the lag shown in status."""
        deadline = trio.current_time() + delay
        while trio.current_time() < deadline:
            self._wakeup = trio.Event()
            with trio.move_on_at(deadline):
                await self._wakeup.wait()
                await self.refresh()
        # a frame persisted during the wait is delivered by the next pass anyway
        self._wakeup = trio.Event()


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


def build_outputs(
    settings: Any,
    astore: AsyncStore,
    client: httpx.AsyncClient,
    *,
    clock: Clock = wall_ms,
    rng: random.Random | None = None,
) -> list[Output]:
    """The outputs a settings instance enables (an :class:`outputs.settings.OutputSettings`,
    or any composed model that has its fields)."""
    from outputs.mqtt import MqttOutput
    from outputs.nightscout import NightscoutOutput

    outputs: list[Output] = []
    if getattr(settings, "nightscout_endpoint", None):
        outputs.append(NightscoutOutput.from_settings(settings, astore, client, clock=clock, rng=rng))
    if getattr(settings, "mqtt_url", None) is not None:
        outputs.append(MqttOutput.from_settings(settings, astore, clock=clock, rng=rng))
    return outputs


__all__ = ["SAFETY_WAKE_S", "Output", "RetryPolicy", "Sequenced", "State", "build_outputs"]
