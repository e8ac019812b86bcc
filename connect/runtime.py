"""The trio drivers that execute the machines: I/O at the edges, the charts in the middle.

Each source instance runs under one :class:`SourceRuntime`: a Poller machine, one shared
Session (driven by :class:`SessionDriver`) and one Cycle per loop (driven by
:class:`LoopDriver`), each frame of which is a Fetch machine. Coroutines bound by the
source's ``generate_driver`` do the vendor I/O; the store persists each frame in one
transaction. Time comes from trio's clock (so MockClock can run days in microseconds) and
epoch milliseconds from the injected ``clock``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
import trio

from connect.builder import LoopSpec, SessionSpec, SourcePlan
from connect.clock import wall_ms
from connect.contract import Grant, LastKnown
from connect.errors import (
    AuthRejected,
    ConfigError,
    ConnectError,
    ProtocolError,
    RequestRejected,
    SessionExpired,
    TransientError,
    Unreachable,
)
from connect.records import Batch
from connect.redact import describe_error
from machines import CycleMachine, FetchMachine, PollerMachine, SessionMachine
from machines.timing import (
    UNREACHED_RETRY_CAP_S,
    align_schedule,
    backoff,
    failed_login_delay,
    rejected_delay,
)
from store.aio import AsyncStore

Clock = Callable[[], int]
#: (collection, field → value filter) → epoch ms of the site's newest matching record, or None
GapFinder = Callable[[str, Mapping[str, str]], Awaitable[int | None]]
DAY_MS = 86_400_000

log = structlog.get_logger("connect.runtime")


class TransitionLog:
    """A machine listener that logs every transition (sync, as the sync engine requires)."""

    def __init__(self, machine: str, **context: str) -> None:
        self.machine = machine
        self.context = context

    def after_transition(self, event: str, source: Any, target: Any) -> None:
        if source.id != target.id:
            log.debug(
                "transition", machine=self.machine, trigger=event, before=source.id,
                after=target.id, **self.context,
            )  # fmt: skip


async def sleep_until_ms(clock: Clock, due_ms: int) -> None:
    """Sleep until the epoch-ms ``due_ms`` by the injected clock (one sleep, no polling)."""
    delay = (due_ms - clock()) / 1000.0
    if delay > 0:
        await trio.sleep(delay)


class SessionDriver:
    """Runs the Session machine: one login in flight per account, shared by every loop.

    Logins are paced on their own clock (``not_before``), apart from the frames that ask for
    them: a login that failed for a passing reason, or whose session the vendor refused before
    it delivered any data, waits :func:`machines.timing.failed_login_delay`; one that retrying
    cannot fix (refused credentials, a lockout, a setting or an action only a person can take)
    waits :func:`machines.timing.rejected_delay` in ``rejected``. A frame that asks in the
    meantime gets an error carrying the remaining wait as ``retry_after``, never a login.
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
        self.machine = SessionMachine(can_refresh=spec is not None and spec.refresh is not None)
        self.machine.add_listener(TransitionLog("session", source=source))
        self.value: Any = None
        self.expires_at: int | None = None
        self.refresh_at: int | None = None
        self.not_before: int = 0
        self._lock = trio.Lock()

    def _fresh(self, now: int) -> bool:
        return self.machine.usable and (self.expires_at is None or now < self.expires_at)

    def _current(self, now: int) -> bool:
        """The session may be handed out as it is (fresh, and no renewal due)."""
        return self._fresh(now) and (self.refresh_at is None or now < self.refresh_at)

    async def acquire(self, loop: str) -> Any:
        """The current session value, logging in (once, for every waiting loop) when needed."""
        if self.spec is None:
            return None
        if self._current(self.clock()):
            return self.value
        self.poller.send("session_required", loop=loop)
        async with self._lock:
            now = self.clock()
            if self._current(now):
                return self.value  # another loop logged in while this one waited
            if self.machine.current_state_value == "active":
                if self._fresh(now) and self.spec.refresh is not None:
                    if await self._refresh():
                        return self.value
                else:
                    # past its lifetime — or due for renewal without a way to refresh (a spec
                    # made without the builder, which refuses that): the session ends here, so
                    # the login below always starts from a state that allows one
                    self.machine.send("expire")
                    self.value = None
            return await self._login()

    async def _refresh(self) -> bool:
        assert self.spec is not None and self.spec.refresh is not None
        self.machine.send("refresh")
        try:
            grant = await self.spec.refresh(self.value)
        except ConnectError as error:
            if isinstance(error, (AuthRejected, ConfigError)):
                self._rejected(error)
                raise
            self.machine.send("fail", error=error)  # refreshing → expired: log in fully
            return False
        except trio.Cancelled:
            self.machine.send("expire")  # never leave a half-done refresh behind
            self.value = None
            raise
        self._accept(grant)
        self.machine.send("refreshed")
        return True

    def _waiting(self, state: str, wait: float) -> ConnectError:
        """What a frame is told while logins are paused: the cause, and how long is left."""
        last = self.machine.last_error
        # the cause's own words (redacted wherever the error is shown), so status says what to fix
        cause = (str(last) or type(last).__name__) if last is not None else "the last login did not work"
        text = f"{cause} (no login for {wait:.0f} s more)"
        if state == "rejected":
            if isinstance(last, ConfigError):
                return ConfigError(text, retry_after=wait)
            if isinstance(last, RequestRejected):
                return RequestRejected(text, retry_after=wait)
            return AuthRejected(text, retry_after=wait)
        if isinstance(last, Unreachable):
            return Unreachable(text, retry_after=wait)
        return TransientError(text, retry_after=wait)

    async def _login(self) -> Any:
        assert self.spec is not None
        state = self.machine.current_state_value
        now = self.clock()
        if state in ("rejected", "failed", "expired") and now < self.not_before:
            error = self._waiting(state, (self.not_before - now) / 1000.0)
            self.poller.send("session_error", error=error)
            raise error
        if state == "rejected":
            self.machine.send("retry")
        self.machine.send("session_required")
        try:
            authn = await self.spec.authenticate()
            self.machine.send("authenticated")
            grant = await self.spec.authorize(authn)
            self.machine.send("authorized")
        except ConnectError as exc:
            if exc.retryable:
                self._failed(exc)
            else:
                # refused credentials, a lockout, an app version the vendor no longer accepts,
                # terms only a person may accept, a patient that is not there: asking again
                # soon cannot help and may lock the account, so wait as for a wrong password
                self._rejected(exc)
            raise
        except trio.Cancelled:
            self._failed(None)
            raise
        except Exception as exc:  # a bug in a driver must not wedge the session
            wrapped = ProtocolError(f"login failed unexpectedly: {type(exc).__name__}")
            self._failed(wrapped)
            raise wrapped from None
        self._accept(grant)
        self.machine.send("session_resolved")
        self.poller.send("session_resolved")
        log.info("session established", logins=self.machine.logins)
        return self.value

    def _accept(self, grant: Any) -> None:
        assert self.spec is not None
        now = self.clock()
        lifetime: float | None = None
        if isinstance(grant, Grant):
            self.value, lifetime = grant.value, grant.expires_in
        else:
            self.value = grant
        if lifetime is None and self.spec.expire_after is not None:
            lifetime = self.spec.expire_after.total_seconds()
        # renew a little early so a request never carries a session that dies on the way
        self.expires_at = None if lifetime is None else now + int(lifetime * 1000 * 0.95)
        self.refresh_at = (
            None
            if self.spec.refresh_after is None
            else now + int(self.spec.refresh_after.total_seconds() * 1000)
        )
        self.not_before = 0

    def _rejected(self, error: ConnectError) -> None:
        self.machine.send("reject", error=error)
        wait = max(rejected_delay(self.machine.rejections), error.retry_after or 0.0)
        self.not_before = self.clock() + int(wait * 1000)
        self.value = None
        self.poller.send("session_error", error=error)
        log.warning("login rejected", error=describe_error(error), wait_s=round(wait))

    def _failed(self, error: ConnectError | None) -> None:
        if self.machine.current_state_value in ("authenticating", "authorizing"):
            self.machine.send("fail", error=error)
        retry_after = error.retry_after if error is not None else None
        reached = not isinstance(error, Unreachable)
        delay = failed_login_delay(self.machine.failures, rand=self.rng.random(), reached=reached)
        wait = max(delay, retry_after or 0.0)
        if self.machine.rejections:
            # the vendor refused these credentials (or locked the account) and has not accepted
            # them since: until it does, each attempt keeps the pace of a retry after a refusal,
            # or a passing 5xx right after a lockout would restart the count at one minute
            wait = max(wait, rejected_delay(self.machine.rejections))
        self.not_before = self.clock() + int(wait * 1000) if error is not None else 0
        self.value = None
        self.poller.send("session_error", error=error)
        if error is not None:
            log.warning("login failed", error=describe_error(error), wait_s=round(wait))

    def confirm(self, used: Any) -> None:
        """A fetch succeeded with ``used``: the session works, so its login was productive."""
        if used is self.value and self.machine.usable and not self.machine.proven:
            self.machine.send("confirm")

    def invalidate(self, used: Any, error: BaseException) -> None:
        """A fetch was told its session is dead: drop it, unless a newer one already replaced it.

        A session that dies before any fetch succeeded with it counts as an unproductive login
        (the machine adds a failure), and the next login waits as after a failed one: a vendor
        that accepts the password but refuses every session must not get a login per frame.
        """
        if used is not self.value:
            return
        if self.machine.current_state_value in ("active", "established", "refreshing"):
            proven = self.machine.proven
            self.machine.send("invalidate", error=error)
            self.value = None
            if proven:
                log.info("session invalidated", error=describe_error(error))
                return
            retry_after = getattr(error, "retry_after", None) or 0.0
            wait = max(failed_login_delay(self.machine.failures, rand=self.rng.random()), retry_after)
            self.not_before = self.clock() + int(wait * 1000)
            log.warning(
                "session refused before it delivered data", error=describe_error(error),
                wait_s=round(wait),
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
            "expires_at": self.expires_at,
            "not_before": self.not_before or None,
            "last_error": describe_error(m.last_error),
        }


class LoopDriver:
    """Runs one loop's Cycle machine and a Fetch machine per frame."""

    def __init__(self, runtime: SourceRuntime, spec: LoopSpec) -> None:
        self.runtime = runtime
        self.spec = spec
        self.cycle = CycleMachine()
        self.cycle.add_listener(TransitionLog("cycle", source=runtime.key, loop=spec.name))
        self.fetch: FetchMachine | None = None
        self.next_due: int | None = None
        self.records_written = 0
        self.last_batch: Batch | None = None
        #: the site's answer to gap analysis, per collection (None: start from the backfill)
        self._gap_answers: dict[str, int | None] = {}

    @property
    def clock(self) -> Clock:
        return self.runtime.clock

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Frames forever: ready (backoff) → operating (one frame) → after (until the next reading)."""
        self.cycle.send("start")
        task_status.started()
        try:
            while True:
                await self._wait_ready()
                self.cycle.send("begin")
                ok = await self.frame()
                self.cycle.send(
                    "frame_done", ok=ok, error=None if ok else self._frame_error(), now_ms=self.clock()
                )
                await self._wait_after(ok)
                self.cycle.send("next")
        finally:
            if self.cycle.current_state_value != "stopped":
                self.cycle.send("stop")

    def _frame_error(self) -> Any:
        return None if self.fetch is None else self.fetch.last_error

    async def _wait_ready(self) -> None:
        missing = self.cycle.frames_missing
        b = self.spec.cycle_backoff
        cap = b.cap
        if isinstance(self._frame_error(), Unreachable):
            # the network is down, not the vendor: nobody to spare, and the data should flow
            # again within minutes of the network coming back
            cap = min(cap, UNREACHED_RETRY_CAP_S)
        delay = backoff(missing, base=b.base, cap=cap, jitter=b.jitter, rand=self.runtime.rng.random())
        delay = max(delay, self.cycle.retry_after or 0.0)
        self.next_due = self.clock() + int(delay * 1000)
        await sleep_until_ms(self.clock, self.next_due)

    async def _wait_after(self, ok: bool) -> None:
        now = self.clock()
        if not ok:
            self.next_due = now  # ready applies the backoff
        elif self.last_batch is not None and self.last_batch.more:
            self.next_due = now  # backfill: more is available right now
        else:
            self.next_due = await self._aligned(now)
        await sleep_until_ms(self.clock, self.next_due)

    async def _aligned(self, now: int) -> int:
        values = await self.runtime.store.checkpoints(self.runtime.key, self.spec.name)
        last_known = LastKnown(values=values, backfill_from=self.runtime.backfill_from(now), now=now)
        if self.spec.align_schedule is not None:
            return self.spec.align_schedule(last_known, now)
        newest = max((values[c] for c in self.spec.collections if c in values), default=None)
        interval = int(self.spec.expected_interval.total_seconds() * 1000)
        due = align_schedule(newest, now, interval_ms=interval, rand=self.runtime.rng.random())
        # a source that stopped publishing (sensor change) is still asked once per interval
        return min(due, now + interval + 25_000)

    async def frame(self) -> bool:
        """One Fetch machine from start to done; True when the frame's batch was persisted."""
        rt = self.runtime
        fm = FetchMachine(max_retries=self.spec.frame_retries)
        fm.add_listener(TransitionLog("fetch", source=rt.key, loop=self.spec.name))
        self.fetch = fm
        fm.send("start")
        while True:
            session: Any = None
            try:
                if fm.attempts > 1:
                    await self._retry_wait(fm)
                fm.send("ready")
                session = await rt.session.acquire(self.spec.name)
                fm.send("session_ok")
                last_known = await self._last_known()
                fm.send("gaps_known", last_known=dict(last_known.values))
                raw = await self.spec.fetch(session, last_known)
                rt.session.confirm(session)  # the vendor honoured it: that login was worth it
                fm.send("fetched")
                batch = self.spec.transform(raw, last_known)
                fm.send("transformed", batch=batch)
                result = await rt.store.persist_frame(rt.key, self.spec.name, batch)
                fm.send("persisted")
                fm.send("finish")
                self.last_batch = batch
                self.records_written += result.total
                log.info(
                    "frame stored", source=rt.key, loop=self.spec.name, records=len(batch),
                    written=result.total, more=batch.more,
                )  # fmt: skip
                rt.persisted()
                return True
            except SessionExpired as error:
                rt.session.invalidate(session, error)
                fm.send("fail", error=error)
            except ConnectError as error:
                fm.send("fail", error=error)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
                # a driver bug or a payload it did not expect: a typed error, never a crash
                wrapped = ProtocolError(f"{self.spec.name}: unexpected {type(error).__name__} in driver")
                fm.send("fail", error=wrapped)
            log.warning(
                "frame attempt failed", source=rt.key, loop=self.spec.name, attempt=fm.attempts,
                error=describe_error(fm.last_error),
            )  # fmt: skip
            fm.send("retry")
            if fm.current_state_value == "done":
                return False

    async def _retry_wait(self, fm: FetchMachine) -> None:
        b = self.spec.frame_backoff
        delay = backoff(
            fm.attempts - 1, base=b.base, cap=b.cap, jitter=b.jitter, rand=self.runtime.rng.random()
        )
        retry_after = getattr(fm.last_error, "retry_after", None) or 0.0
        await trio.sleep(max(delay, retry_after))

    async def _last_known(self) -> LastKnown:
        rt = self.runtime
        now = self.clock()
        values = await rt.store.checkpoints(rt.key, self.spec.name)
        for collection in self.spec.collections:
            if collection not in values and rt.gap_finder is not None:
                newest = await self._site_newest(collection, now)
                if newest is not None:
                    values[collection] = newest
        return LastKnown(values=values, backfill_from=rt.backfill_from(now), now=now)

    async def _site_newest(self, collection: str, now: int) -> int | None:
        """Where the Nightscout site stands for what this loop writes, asked once per process.

        The answer is kept: a collection a source seldom fills (treatments from a CGM-only
        account) would otherwise cost one request to the site per frame — one failed
        authentication each, when the secret is wrong.
        """
        if collection in self._gap_answers:
            return self._gap_answers[collection]
        rt = self.runtime
        assert rt.gap_finder is not None
        try:
            newest = await rt.gap_finder(collection, dict(self.spec.site_filter))
        except ConnectError as error:
            # The site cannot say where it stands (down, or refusing our secret). Waiting for it
            # would lose whatever the vendor forgets meanwhile, so readings and treatments
            # start from the backfill (the site's upserts make resends harmless); devicestatus
            # and profile, which a site never deduplicates, start now rather than risk doubling
            # an existing site's history.
            newest = None if collection in ("entries", "treatments") else now
            log.warning(
                "gap analysis failed; starting without it",
                source=rt.key, loop=self.spec.name, collection=collection,
                error=describe_error(error), from_ms=newest,
            )  # fmt: skip
        self._gap_answers[collection] = newest
        return newest

    def status(self) -> dict[str, Any]:
        c = self.cycle
        return {
            "state": c.current_state_value,
            "fetch_state": None if self.fetch is None else self.fetch.current_state_value,
            "attempts": 0 if self.fetch is None else self.fetch.attempts,
            "frames_ok": c.frames_ok,
            "frames_failed": c.frames_failed,
            "frames_missing": c.frames_missing,
            "records_written": self.records_written,
            "last_success": c.last_success_ms,
            "next_due": self.next_due,
            "last_error": describe_error(c.last_error),
        }


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
        self.rng = rng or random.Random()
        #: the name this source's rows and checkpoints carry in the store
        self.key = plan.source if not account else f"{plan.source}:{account}"
        self.gap_finder = gap_finder
        self.on_persist = on_persist
        self.poller = PollerMachine(tuple(loop.name for loop in plan.loops))
        self.poller.add_listener(TransitionLog("poller", source=self.key))
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
        finally:
            self._stopped()

    async def run_once(self) -> bool:
        """One frame per loop (cron mode); True when every frame succeeded."""
        self.poller.send("start")
        results: dict[str, bool] = {}
        try:
            async with trio.open_nursery() as nursery:
                for loop in self.loops:

                    async def one(loop: LoopDriver = loop) -> None:
                        loop.cycle.send("start")
                        loop.cycle.send("begin")
                        ok = await loop.frame()
                        loop.cycle.send("frame_done", ok=ok, error=loop._frame_error(), now_ms=self.clock())
                        results[loop.spec.name] = ok

                    nursery.start_soon(one)
        finally:
            self._stopped()
        return all(results.values()) and len(results) == len(self.loops)

    def _stopped(self) -> None:
        for loop in self.loops:
            if loop.cycle.current_state_value != "stopped":
                loop.cycle.send("stop")
        state = self.poller.current_state_value
        if state in ("running", "idle"):
            self.poller.send("stop")
        if self.poller.current_state_value == "stopping":
            self.poller.send("finished")

    def status(self) -> dict[str, Any]:
        return {
            "source": self.key,
            "poller": self.poller.current_state_value,
            "session": self.session.status(),
            "loops": {loop.spec.name: loop.status() for loop in self.loops},
        }
