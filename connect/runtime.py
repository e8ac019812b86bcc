"""The trio drivers that execute the machines: I/O at the edges, the charts in the middle.

Each source instance runs under one :class:`SourceRuntime`: a Poller machine, one shared
Session (driven by :class:`SessionDriver`) and one Cycle per loop (driven by
:class:`LoopDriver`), each frame of which is a Fetch machine. Coroutines bound by the
source's ``generate_driver`` do the vendor I/O; the store persists each frame in one
transaction. Time comes from trio's clock (so MockClock can run days in microseconds) and
epoch milliseconds from the injected ``clock``.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import structlog
import trio

from connect.builder import LoopSpec, SessionSpec, SourcePlan
from connect.clock import jitter_rng, wall_ms
from connect.contract import Grant, LastKnown
from connect.errors import (
    AuthRejected,
    ConfigError,
    ConnectError,
    GapUnknown,
    ProtocolError,
    RequestRejected,
    SessionExpired,
    TransientError,
    Unreachable,
)
from connect.logs import debug_enabled
from connect.records import Batch
from connect.redact import describe_error
from machines import CycleMachine, FetchMachine, PollerMachine, SessionMachine
from machines.cycle import ONCE_FRAME_BUDGET
from machines.decisions import CycleDecision, EndFrame, Finish, Join, Refresh, Use, Wait
from store.aio import AsyncStore

Clock = Callable[[], int]
#: (collection, field → value filter) → epoch ms of the site's newest matching record, or None
GapFinder = Callable[[str, Mapping[str, str]], Awaitable[int | None]]
DAY_MS = 86_400_000

log = structlog.get_logger("connect.runtime")


class TransitionLog:
    """A machine listener that logs every transition (sync, as the sync engine requires).

    Attached only while debug lines are printed (:func:`listen`): a listener costs every
    transition a callback and every machine its share of the callback tables.
    """

    def __init__(self, machine: str, **context: str) -> None:
        self.machine = machine
        self.context = context

    def after_transition(self, event: str, source: Any, target: Any) -> None:
        if source.id != target.id:
            log.debug(
                "transition", machine=self.machine, trigger=event, before=source.id,
                after=target.id, **self.context,
            )  # fmt: skip


def listen(machine: Any, name: str, **context: str) -> None:
    """Log ``machine``'s transitions when debug logging is on."""
    if debug_enabled():
        machine.add_listener(TransitionLog(name, **context))


async def sleep_until_ms(clock: Clock, due_ms: int) -> None:
    """Sleep until the epoch-ms ``due_ms`` by the injected clock (one sleep, no polling)."""
    delay = (due_ms - clock()) / 1000.0
    if delay > 0:
        await trio.sleep(delay)


@functools.cache
def idle_session() -> SessionMachine:
    """The Session machine of every source without a login (it stays ``inactive``): building
    one per account costs as much as a frame's machine events."""
    return SessionMachine()


class SessionDriver:
    """Executes the Session machine's decisions for every loop, through the Poller (the bus).

    A loop asks :meth:`acquire`; the machines answer use / log in / refresh / join / wait, and
    this driver performs exactly that: the login or refresh I/O (one in flight, as the Session
    machine allows), a wait on the Poller's release, or the error a paused session means for
    the frame. Pacing (``not_before``), expiry and renewal are the machine's; none is computed
    here.
    """

    def __init__(
        self,
        spec: SessionSpec | None,
        poller: PollerMachine,
        *,
        clock: Clock,
        rng: random.Random,
        source: str,
    ) -> None:
        self.spec = spec
        self.poller = poller
        self.clock = clock
        self.rng = rng
        if spec is None and poller.session is None:
            # nothing to log in to: the machine only answers status, and one idle machine
            # answers it for every such source of the process (nothing is ever sent to it)
            self.machine = idle_session()
        else:
            self.machine = poller.session or SessionMachine()
            listen(self.machine, "session", source=source)
        #: loops waiting for the Poller to release them, each with the event that wakes it
        self._released: dict[str, trio.Event] = {}

    @property
    def value(self) -> Any:
        return self.machine.value

    async def acquire(self, loop: str) -> Any:
        """The session value for ``loop``, logging in or refreshing when the machine says so."""
        while True:
            decision = self.poller.acquire(loop, self.clock())
            if isinstance(decision, Use):
                return decision.value
            if isinstance(decision, Join):
                event = self._released.setdefault(loop, trio.Event())
                await event.wait()
                continue
            if isinstance(decision, Wait):
                raise paused_error(decision, self.clock())
            if isinstance(decision, Refresh):
                if await self._refresh(decision.value):
                    return self.machine.value
                continue
            return await self._login()

    def _release(self, loops: list[str]) -> None:
        for loop in loops:
            event = self._released.pop(loop, None)
            if event is not None:
                event.set()

    async def _login(self) -> Any:
        assert self.spec is not None
        try:
            authn = await self.spec.authenticate()
            self.machine.send("authenticated")
            grant = await self.spec.authorize(authn)
        except ConnectError as exc:
            self._login_failed(exc)
            raise
        except trio.Cancelled:
            self._login_failed(None)  # nothing held against the account; the next one logs in
            raise
        except Exception as exc:  # a bug in a driver must not wedge the session
            wrapped = ProtocolError(f"login failed unexpectedly: {type(exc).__name__}")
            self._login_failed(wrapped)
            raise wrapped from None
        value, lifetime = unpack_grant(grant)
        self.machine.logged_in(self.clock(), value, lifetime)
        self._release(self.poller.resolved())
        log.info("session established", logins=self.machine.logins)
        return value

    def _login_failed(self, error: ConnectError | None) -> None:
        wait = self.machine.login_failed(self.clock(), error, self.rng.random())
        self._release(self.poller.errored(error))
        if error is not None:
            log.warning(
                "login rejected" if wait.rejected else "login failed", error=describe_error(error),
                wait_s=round((wait.until - self.clock()) / 1000),
            )  # fmt: skip

    async def _refresh(self, value: Any) -> bool:
        """Renew through the source's refresh; False when the machine now wants a login."""
        assert self.spec is not None and self.spec.refresh is not None
        try:
            grant = await self.spec.refresh(value)
        except ConnectError as error:
            wait = self.machine.refresh_failed(self.clock(), error)
            self._release(self.poller.errored(error))
            if wait is not None:
                log.warning("login rejected", error=describe_error(error))
                raise
            return False
        except trio.Cancelled:
            self.machine.refresh_failed(self.clock(), None)  # never leave a half-done refresh
            self._release(self.poller.errored(None))
            raise
        new_value, lifetime = unpack_grant(grant)
        self.machine.refreshed_to(self.clock(), new_value, lifetime)
        self._release(self.poller.resolved())
        return True

    def confirm(self, used: Any) -> None:
        """A fetch succeeded with ``used``: the session works, so its login was productive."""
        if self.spec is not None:
            self.machine.confirm_with(used)

    def invalidate(self, used: Any, error: ConnectError) -> None:
        """A fetch was told ``used`` is dead: the machine drops it and paces the next login."""
        if self.spec is None:
            return  # no session to drop
        was_proven = used is self.machine.value and self.machine.proven
        at_once = self.machine.invalidate_with(used, error, self.clock(), self.rng.random())
        if was_proven:
            log.info("session invalidated", error=describe_error(error))
        elif not at_once:
            log.warning(
                "session refused before it delivered data", error=describe_error(error),
                wait_s=round((self.machine.not_before - self.clock()) / 1000),
            )  # fmt: skip

    def status(self) -> dict[str, Any]:
        m = self.machine
        return {
            "state": m.current_state_value if self.spec is not None else "none",
            "logins": m.logins,
            "rejections": m.rejections,
            "failures": m.failures,
            # the current session has served data (a login alone proves little: some vendors
            # take the password and then refuse every read)
            "proven": m.proven,
            "expires_at": m.expires_at,
            "not_before": m.not_before or None,
            "last_error": describe_error(m.last_error),
        }


def unpack_grant(grant: Any) -> tuple[Any, float | None]:
    """What authorize or refresh returned: the session value and, when the vendor said, its
    lifetime in seconds."""
    if isinstance(grant, Grant):
        return grant.value, grant.expires_in
    return grant, None


def paused_error(decision: Wait, now: int) -> ConnectError:
    """What a frame is told while logins are paused: the cause, and how long is left.

    The cause's own words (redacted wherever the error is shown), so status says what to fix;
    the class follows the cause, so the frame ends or retries as it would have on the cause.
    """
    wait = max(0.0, (decision.until - now) / 1000.0)
    last = decision.cause
    cause = (str(last) or type(last).__name__) if last is not None else "the last login did not work"
    text = f"{cause} (no login for {wait:.0f} s more)"
    if decision.rejected:
        if isinstance(last, ConfigError):
            return ConfigError(text, retry_after=wait)
        if isinstance(last, RequestRejected):
            return RequestRejected(text, retry_after=wait)
        return AuthRejected(text, retry_after=wait)
    if isinstance(last, Unreachable):
        return Unreachable(text, retry_after=wait)
    return TransientError(text, retry_after=wait)


class LoopDriver:
    """Executes one loop's Cycle machine and its Fetch machine (both live as long as the loop)."""

    def __init__(self, runtime: SourceRuntime, spec: LoopSpec) -> None:
        self.runtime = runtime
        self.spec = spec
        self.cycle = CycleMachine(
            backoff=spec.cycle_backoff,
            interval_ms=int(spec.expected_interval.total_seconds() * 1000),
        )
        listen(self.cycle, "cycle", source=runtime.key, loop=spec.name)
        self.fetch = FetchMachine(max_retries=spec.frame_retries, backoff=spec.frame_backoff)
        listen(self.fetch, "fetch", source=runtime.key, loop=spec.name)
        self.records_written = 0
        self.last_batch: Batch | None = None
        #: the loop's checkpoints as the last persisted frame left them
        self.checkpoint: dict[str, int] = {}

    @property
    def clock(self) -> Clock:
        return self.runtime.clock

    @property
    def next_due(self) -> int | None:
        return self.cycle.next_due

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Frames until the Cycle machine says finish (``once``) or the scope is cancelled."""
        task_status.started()
        try:
            while True:
                decision = await self.step()
                if isinstance(decision, Finish):
                    return
                await sleep_until_ms(self.clock, decision.at)
        finally:
            self.cycle.halt()

    async def step(self) -> CycleDecision:
        """One frame, and the Cycle machine's answer to when the next one starts."""
        self.cycle.begin_frame()
        ok = await self.frame()
        return await self._ended(ok)

    async def _ended(self, ok: bool) -> CycleDecision:
        """The frame's facts for the Cycle machine, which decides when the next one starts."""
        now = self.clock()
        rand = self.runtime.rng.random()
        if not ok:
            return self.cycle.ended(now, False, error=self.fetch.last_error, rand=rand)
        more = self.last_batch is not None and self.last_batch.more
        if more or self.cycle.once:
            return self.cycle.ended(now, True, more=more, rand=rand)
        # what the frame's own transaction left (no store read outside the frame: a store
        # failing now must fail a frame, not the loop)
        values = dict(self.checkpoint)
        source_due = None
        if self.spec.align_schedule is not None:
            last_known = LastKnown(values=values, backfill_from=self.runtime.backfill_from(now), now=now)
            source_due = self.spec.align_schedule(last_known, now)
        newest = max((values[c] for c in self.spec.collections if c in values), default=None)
        return self.cycle.ended(now, True, newest=newest, source_due=source_due, rand=rand)

    async def frame(self) -> bool:
        """One frame through the Fetch machine; True when the frame's batch was persisted."""
        rt = self.runtime
        fm = self.fetch
        fm.begin()
        while True:
            session: Any = None
            error: ConnectError
            try:
                session = await rt.session.acquire(self.spec.name)
                fm.session_ok()
                last_known, held = await self._last_known()
                fm.gaps_known(last_known=dict(last_known.values))
                raw = await self.spec.fetch(session, last_known)
                rt.session.confirm(session)  # the vendor honoured it: that login was worth it
                batch = without(self.spec.transform(raw, last_known), held)
                fm.fetched(batch=batch)
                result = await rt.store.persist_frame(rt.key, self.spec.name, batch)
                fm.persisted()
                self.last_batch = batch
                self.checkpoint = dict(result.checkpoint)
                self.records_written += result.total
                log.info(
                    "frame stored", source=rt.key, loop=self.spec.name, records=len(batch),
                    written=result.total, more=batch.more,
                )  # fmt: skip
                rt.persisted()
                return True
            except SessionExpired as exc:
                rt.session.invalidate(session, exc)
                error = exc
            except ConnectError as exc:
                error = exc
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                # a driver bug or a payload it did not expect: a typed error, never a crash
                error = ProtocolError(f"{self.spec.name}: unexpected {type(exc).__name__} in driver")
            log.warning(
                "frame attempt failed", source=rt.key, loop=self.spec.name, attempt=fm.attempts,
                error=describe_error(error),
            )  # fmt: skip
            decision = fm.failed(self.clock(), error, rt.rng.random())
            if isinstance(decision, EndFrame):
                return decision.ok
            await sleep_until_ms(self.clock, decision.at)
            fm.ready()  # the wait is over: the next attempt

    async def _last_known(self) -> tuple[LastKnown, frozenset[str]]:
        """Where this frame starts, and the collections it must leave out (see Fetch)."""
        rt = self.runtime
        fm = self.fetch
        now = self.clock()
        values = await rt.store.checkpoints(rt.key, self.spec.name)
        missing = [c for c in self.spec.collections if c not in values] if rt.gap_finder else []
        for collection in fm.gaps_to_ask(now, missing):
            assert rt.gap_finder is not None
            try:
                newest = await rt.gap_finder(collection, dict(self.spec.site_filter))
            except ConnectError as exc:
                fm.gap_failed(collection, now, exc, rt.rng.random())
                log.warning(
                    "gap analysis failed; asked again later", source=rt.key, loop=self.spec.name,
                    collection=collection, error=describe_error(exc),
                )  # fmt: skip
            else:
                fm.gap_answered(collection, newest)
        points = fm.starting_points(missing)
        values.update(points.values)
        if points.held and points.held.issuperset(self.spec.collections):
            held = ", ".join(sorted(points.held))
            raise GapUnknown(
                f"waiting for the Nightscout site to say where its {held} stand "
                f"({describe_error(points.cause)})"
            )
        for collection in points.held:
            values[collection] = now  # left out of this frame: nothing to read back for it
        return LastKnown(values=values, backfill_from=rt.backfill_from(now), now=now), points.held

    def status(self) -> dict[str, Any]:
        c = self.cycle
        return {
            "state": c.current_state_value,
            "fetch_state": self.fetch.current_state_value,
            "attempts": self.fetch.attempts,
            "frames_ok": c.frames_ok,
            "frames_failed": c.frames_failed,
            "frames_missing": c.frames_missing,
            "records_written": self.records_written,
            "last_success": c.last_success_ms,
            "next_due": c.next_due,
            "last_error": describe_error(c.last_error),
        }


def without(batch: Batch, held: frozenset[str]) -> Batch:
    """``batch`` without the records (and progress) of the ``held`` collections."""
    if not held:
        return batch
    changes: dict[str, Any] = {c: () for c in held}
    changes["covered"] = {c: t for c, t in batch.covered.items() if c not in held}
    return attrs.evolve(batch, **changes)


class SourceRuntime:
    """One source instance (one account): a Poller owning its Session and Cycles."""

    def __init__(
        self,
        plan: SourcePlan,
        store: AsyncStore,
        *,
        clock: Clock = wall_ms,
        backfill_days: float = 30.0,
        rng: random.Random | None = None,
        account: str | None = None,
        gap_finder: GapFinder | None = None,
        on_persist: Callable[[], None] | None = None,
    ) -> None:
        self.plan = plan
        self.store = store
        self.clock = clock
        self.backfill_days = backfill_days
        self.rng = rng or jitter_rng()
        #: the name this source's rows and checkpoints carry in the store
        self.key = plan.source if not account else f"{plan.source}:{account}"
        self.gap_finder = gap_finder
        self.on_persist = on_persist
        session = plan.session
        self.poller = PollerMachine(
            tuple(loop.name for loop in plan.loops),
            session=None
            if session is None
            else SessionMachine(
                can_refresh=session.refresh is not None,
                refresh_after_s=None
                if session.refresh_after is None
                else session.refresh_after.total_seconds(),
                expire_after_s=None if session.expire_after is None else session.expire_after.total_seconds(),
            ),
        )
        listen(self.poller, "poller", source=self.key)
        self.session = SessionDriver(plan.session, self.poller, clock=clock, rng=self.rng, source=self.key)
        self.loops = [LoopDriver(self, spec) for spec in plan.loops]

    def backfill_from(self, now: int) -> int:
        return now - int(math.ceil(self.backfill_days * DAY_MS))

    def persisted(self) -> None:
        if self.on_persist is not None:
            self.on_persist()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Every loop, forever, until the surrounding scope is cancelled."""
        self.poller.send("start")
        try:
            async with trio.open_nursery() as nursery:
                for loop in self.loops:
                    await nursery.start(loop.run)
                task_status.started()
                if not self.loops:
                    # ``none``: no loop, and the poller stays running while the daemon does
                    await trio.sleep_forever()
        finally:
            self._stopped()

    async def run_once(self, *, budget: int = ONCE_FRAME_BUDGET) -> bool:
        """Cron mode: frames per loop until none says ``more`` (at most ``budget`` frames a
        loop), so one run completes any backfill; True when every frame succeeded."""
        self.poller.send("start")
        try:
            async with trio.open_nursery() as nursery:
                for loop in self.loops:
                    loop.cycle.once = True
                    loop.cycle.budget = budget
                    nursery.start_soon(loop.run)
        finally:
            self._stopped()
        return all(loop.cycle.frames_failed == 0 and loop.cycle.frames_ok > 0 for loop in self.loops)

    def _stopped(self) -> None:
        for loop in self.loops:
            loop.cycle.halt()
        self.poller.shut_down()

    def status(self) -> dict[str, Any]:
        return {
            "source": self.key,
            "poller": self.poller.current_state_value,
            "session": self.session.status(),
            "loops": {loop.spec.name: loop.status() for loop in self.loops},
        }
