"""Fetch: one frame of one loop, from its first attempt to done; started again for the next frame."""

from __future__ import annotations

from collections.abc import Iterable

from statemachine import State

from machines.base import Machine
from machines.decisions import EndFrame, Fault, FrameDecision, RetryAt, StartingPoints, retry_after
from machines.timing import Backoff

#: collections a Nightscout site inserts without deduplicating: a guessed start could double an
#: existing site's history, so they wait for the site's answer
UNDEDUPLICATED = frozenset({"devicestatus", "profile"})
#: how gap analysis that failed is asked again: once per frame at most, on this ladder
GAP_RETRY = Backoff(base=30.0, cap=1800.0)


class FetchMachine(Machine):
    """idle → auth → determine_gaps → fetching → persisting → done.

    Any step may ``fail``; from ``error`` the ``retry`` event goes to ``waiting`` (``ready``
    ends that wait and starts the next attempt) while attempts remain and the error is one a
    retry can fix, and otherwise ends the frame in ``done`` with ``ok`` false. Attempts count tries, so ``max_retries=2`` allows three.
    :meth:`failed` decides when the next try starts: at once after a dead session (the Session
    machine paces the login), else after the frame backoff or the remote side's Retry-After.

    Each state is one the frame can be seen in: the runtime awaits in each (the session, the
    checkpoints, the vendor, the store). Transforming the vendor's answer awaits nothing, so
    ``fetched`` carries the frame's records and ``persisted`` ends the frame: a state no status
    could show would cost every frame an event and decide nothing.

    The machine lives as long as its loop (``start`` from ``done`` begins the next frame) and keeps
    the site's answers to gap analysis across frames: an answer is asked for once; a question
    that failed is asked again on a later frame, no sooner than :data:`GAP_RETRY` says; until
    it is answered, collections in :data:`UNDEDUPLICATED` are held (left out of the frame)
    while the others start from the backfill horizon (the site deduplicates them).
    """

    idle = State(initial=True)
    waiting = State()
    auth = State()
    determine_gaps = State()
    fetching = State()
    persisting = State()
    error = State()
    done = State()

    # the first attempt waits for nothing: only a retry has a wait to hold
    start = idle.to(auth) | done.to(auth)
    ready = waiting.to(auth)
    session_ok = auth.to(determine_gaps)
    gaps_known = determine_gaps.to(fetching)
    fetched = fetching.to(persisting)
    persisted = persisting.to(done)
    fail = (
        waiting.to(error)
        | auth.to(error)
        | determine_gaps.to(error)
        | fetching.to(error)
        | persisting.to(error)
    )
    retry = error.to(waiting, cond="can_retry") | error.to(done, unless="can_retry")

    def __init__(self, *, max_retries: int = 2, backoff: Backoff | None = None) -> None:
        self.max_retries = max_retries
        self.backoff = backoff or Backoff(base=2.0, cap=60.0)
        self.attempts = 0
        self.last_error: Fault | None = None
        #: the per-collection checkpoint this frame starts from
        self.last_known: dict[str, int] = {}
        self.batch: object = None
        self.ok = False
        #: epoch ms of the next try, while the frame waits to retry
        self.retry_at: int | None = None
        #: the site's newest record per collection (None: the site has none)
        self.gap_answers: dict[str, int | None] = {}
        self.gap_failures: dict[str, int] = {}
        self.gap_retry_at: dict[str, int] = {}
        self.gap_error: Fault | None = None
        super().__init__()

    # --- decisions ------------------------------------------------------------------------------

    def begin(self) -> None:
        """A new frame: counters of the last one are cleared, the first attempt waits its turn."""
        self.start()

    def failed(self, now: int, error: Fault | None, rand: float = 0.0) -> FrameDecision:
        """The attempt failed with ``error``: retry at a time, or end the frame."""
        self.send("fail", error=error)
        self.send("retry")
        if self.current_state_value == "done":
            self.retry_at = None
            return EndFrame(ok=False)
        if getattr(error, "kind", "") == "session_expired":
            wait = retry_after(error)  # the Session machine decides how soon the next login is
        else:
            wait = max(self.backoff.delay(self.attempts - 1, rand), retry_after(error))
        self.retry_at = now + int(wait * 1000)
        return RetryAt(self.retry_at)

    def gaps_to_ask(self, now: int, missing: Iterable[str]) -> list[str]:
        """Which of the collections without a checkpoint to ask the site about now."""
        return [c for c in missing if c not in self.gap_answers and now >= self.gap_retry_at.get(c, now)]

    def gap_answered(self, collection: str, newest: int | None) -> None:
        self.gap_answers[collection] = newest
        self.gap_failures.pop(collection, None)
        self.gap_retry_at.pop(collection, None)

    def gap_failed(self, collection: str, now: int, error: Fault, rand: float = 0.0) -> None:
        failures = self.gap_failures.get(collection, 0) + 1
        self.gap_failures[collection] = failures
        self.gap_retry_at[collection] = now + int(GAP_RETRY.delay(failures, rand) * 1000)
        self.gap_error = error

    def starting_points(self, missing: Iterable[str]) -> StartingPoints:
        """Where each collection without a checkpoint starts (see :class:`StartingPoints`)."""
        values: dict[str, int] = {}
        held: set[str] = set()
        for collection in missing:
            if collection in self.gap_answers:
                answer = self.gap_answers[collection]
                if answer is not None:
                    values[collection] = answer
            elif collection in UNDEDUPLICATED:
                held.add(collection)
        return StartingPoints(values=values, held=frozenset(held), cause=self.gap_error if held else None)

    # --- actions --------------------------------------------------------------------------------

    def on_start(self) -> None:
        # a new frame on the same machine: nothing of the last one is left; its first attempt
        # begins now
        self.attempts = 1
        self.last_error = None
        self.last_known = {}
        self.batch = None
        self.ok = False
        self.retry_at = None

    def on_enter_waiting(self) -> None:
        self.attempts += 1  # the next attempt, from the moment its wait begins

    def on_gaps_known(self, last_known: dict[str, int] | None = None) -> None:
        self.last_known = dict(last_known or {})

    def on_fetched(self, batch: object = None) -> None:
        self.batch = batch

    def on_persisted(self) -> None:
        self.ok = True
        self.last_error = None
        self.retry_at = None

    def on_fail(self, error: Fault | None = None) -> None:
        self.last_error = error

    def can_retry(self) -> bool:
        """Attempts remain, and the error is not one that retrying cannot fix."""
        retryable = bool(getattr(self.last_error, "retryable", True))
        return retryable and self.attempts <= self.max_retries
