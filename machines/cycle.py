"""Cycle: one loop's endless round of frames, with backoff after failures."""

from __future__ import annotations

from statemachine import State

from machines.base import Machine
from machines.decisions import CycleDecision, Fault, Finish, NextFrame, reached, retry_after
from machines.timing import UNREACHED_RETRY_CAP_S, Backoff, align_schedule

#: frames one ``once`` run may take while the source says ``more``: a 365-day backfill in
#: one-day windows fits, a source that never stops saying more does not run for ever
ONCE_FRAME_BUDGET = 1000
#: a source that stopped publishing (a sensor change) is still asked once per interval plus this
STALE_SOURCE_SLACK_MS = 25_000


class CycleMachine(Machine):
    """init → ready → operating → after → operating …; ``stop`` from anywhere → stopped.

    :meth:`ended` decides when the next frame starts (``next_due``): at once while the
    source says ``more`` (a backfill), at the next expected reading after a success (``after``
    holds that wait), or after ``backoff(frames_missing)`` and any Retry-After after a failure
    (``ready`` holds that wait; five minutes at most when the vendor was never reached). One
    failed frame adds one to ``frames_missing`` however many retries it made; a success resets
    it. In ``once`` mode the answer is :class:`Finish` unless the source says ``more`` and the
    frame budget allows another.
    """

    init = State(initial=True)
    ready = State()
    operating = State()
    after = State()
    stopped = State(final=True)

    start = init.to(ready)
    # a frame begins wherever the cycle waits: ``after`` holds the wait after a success and
    # ``ready`` the backoff after a failure, so neither needs an event of its own to end
    begin = ready.to(operating) | after.to(operating) | init.to(operating)
    frame_done = operating.to(after)
    next = after.to(ready)
    stop = init.to(stopped) | ready.to(stopped) | operating.to(stopped) | after.to(stopped)

    def __init__(
        self,
        *,
        backoff: Backoff | None = None,
        interval_ms: int = 300_000,
        once: bool = False,
        budget: int = ONCE_FRAME_BUDGET,
    ) -> None:
        self.backoff = backoff or Backoff(base=30.0, cap=1800.0)
        self.interval_ms = interval_ms
        self.once = once
        self.budget = budget
        self.frames_ok = 0
        self.frames_failed = 0
        self.frames_missing = 0
        #: frames begun since the cycle started (``once`` counts them against the budget)
        self.frames_run = 0
        self.last_error: Fault | None = None
        self.last_success_ms: int | None = None
        self.retry_after: float | None = None
        #: epoch ms at which the next frame starts
        self.next_due: int | None = None
        super().__init__()

    # --- decisions ------------------------------------------------------------------------------

    def begin_frame(self) -> None:
        """The wait is over: the next frame starts."""
        self.begin()

    def ended(
        self,
        now: int,
        ok: bool,
        *,
        error: Fault | None = None,
        more: bool = False,
        newest: int | None = None,
        source_due: int | None = None,
        rand: float = 0.0,
    ) -> CycleDecision:
        """A frame ended at ``now``. ``newest`` is the loop's newest stored record time and
        ``source_due`` the next read time the source itself asks for, when it has a rule."""
        self.frame_done(ok=ok, error=error, now_ms=now)
        if self.once:
            if ok and more and self.frames_run < self.budget:
                return self._due(now)
            return Finish()
        if not ok:
            ladder = self.backoff if reached(error) else self.backoff.capped(UNREACHED_RETRY_CAP_S)
            wait = max(ladder.delay(self.frames_missing, rand), retry_after(error))
            self.send("next")  # ready holds the backoff
            return self._due(now + int(wait * 1000))
        if more:
            return self._due(now)
        if source_due is not None:
            return self._due(source_due)
        due = align_schedule(newest, now, interval_ms=self.interval_ms, rand=rand)
        return self._due(min(due, now + self.interval_ms + STALE_SOURCE_SLACK_MS))

    def halt(self) -> None:
        """The loop's task ends (cancelled, or ``once`` finished): the cycle stops, once."""
        if not self.stopped.is_active:
            self.send("stop")

    def _due(self, at: int) -> NextFrame:
        self.next_due = at
        return NextFrame(at)

    # --- actions --------------------------------------------------------------------------------

    def on_begin(self) -> None:
        self.frames_run += 1

    def on_frame_done(self, ok: bool = False, error: Fault | None = None, now_ms: int | None = None) -> None:
        if ok:
            self.frames_ok += 1
            self.frames_missing = 0
            self.last_success_ms = now_ms
            self.retry_after = None
        else:
            self.frames_failed += 1
            self.frames_missing += 1
            self.last_error = error
            self.retry_after = getattr(error, "retry_after", None)
