"""The store as seen from trio: every call runs on a worker thread, one at a time.

This is the store's boundary for the running daemon: a fault of the storage (SQLite's
``OperationalError`` / ``DatabaseError``: a full disk, an I/O error; PostgreSQL's lost server or
exhausted pool — whatever the store's ``as_store_error`` says is one) leaves it as a
:class:`~connect.errors.StoreError`, which fails the frame or the delivery pass like any other
retryable error, and is remembered until a write commits again (the API's readiness says so).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, ParamSpec, TypeVar

import structlog
import trio

from connect.errors import StoreError
from connect.records import Batch, Collection, Record, Stream
from store.abc import StoredRow, WaitFree, WriterStore
from store.events import EventRow
from store.values import Pending, PersistResult, PushKey, PushResult, RejectedGroup, Stored, V3Result

log = structlog.get_logger("store")

P = ParamSpec("P")
T = TypeVar("T")


#: worker threads the stores of one kind use at once in one process, unless the store's class
#: names its own number (``threads``: :attr:`store.database.Store.threads`,
#: :attr:`store.postgres.PostgresStore.threads`). Each store already runs one call at a time;
#: without a cap across stores, a thousand accounts starting together would start a thousand
#: threads, and the thread hand-offs (not the database) would take most of their start.
STORE_THREADS: Final = 4
#: commits :meth:`AsyncStore.call_brief` makes on the loop before the next call goes to a thread
#: after all: a commit on the loop skips the WAL checkpoint, which the next one off the loop
#: runs, so a store whose every write is brief still has its log folded back within this many
BRIEF_COMMITS: Final = 64
#: a frame with at most this many records is persisted on the loop when it can be (see
#: :meth:`AsyncStore.call_brief`): a poll's few new readings, not a backfill's thousands
BRIEF_RECORDS: Final = 64
_store_threads: trio.lowlevel.RunVar[dict[type, trio.CapacityLimiter]] = trio.lowlevel.RunVar("store_threads")
_background_threads: trio.lowlevel.RunVar[dict[type, trio.CapacityLimiter]] = trio.lowlevel.RunVar(
    "background_threads"
)


def store_threads(kind: type = object, threads: int = STORE_THREADS) -> trio.CapacityLimiter:
    """This trio run's limiter of the threads of one kind of store (made on first use: a limiter
    belongs to a run)."""
    return _limiter(_store_threads, kind, threads)


def background_threads(kind: type = object, threads: int = STORE_THREADS) -> trio.CapacityLimiter:
    """This trio run's limiter of the store threads of one kind that work nobody waits on may
    hold at once (:meth:`AsyncStore.call_background`)."""
    return _limiter(_background_threads, kind, threads)


def _limiter(
    var: trio.lowlevel.RunVar[dict[type, trio.CapacityLimiter]], kind: type, threads: int
) -> trio.CapacityLimiter:
    try:
        limiters = var.get()
    except LookupError:
        limiters = {}
        var.set(limiters)
    limiter = limiters.get(kind)
    if limiter is None:
        limiter = limiters[kind] = trio.CapacityLimiter(threads)
    return limiter


class AsyncStore:
    """Serialises every use of the writer connection through a one-slot limiter.

    SQLite allows one writer; funnelling every call through the same limiter keeps the
    connection single-threaded in practice and never blocks the trio loop. A PostgreSQL store
    is used the same way: one account's writes stay in order, and its ``seq`` in commit order.

    Each method of :class:`~store.abc.WriterStore` has its awaitable twin here, with the same signature and
    return type (a test compares the two), so callers are type-checked as the store is;
    :meth:`call` runs anything else — a query of an output's own — the same way.
    """

    def __init__(self, store: WriterStore, *, inline: bool | None = None) -> None:
        self.store = store
        self.limiter = trio.CapacityLimiter(1)
        #: how many of the process's store threads this kind of store may use at once, and
        #: how many of them its background calls may
        self._threads = (type(store), getattr(store, "threads", STORE_THREADS))
        background = getattr(store, "background_threads", None)
        self._background = None if background is None else (type(store), background)
        # An in-memory store is private to this process and fast; running it inline also keeps
        # trio's MockClock honest (autojump treats a task waiting on a thread as idle and would
        # leap virtual time forward while the thread works).
        self.inline = store.path == ":memory:" if inline is None else inline
        #: how :meth:`call_brief` keeps a call on the loop from waiting (None: it cannot)
        self._wait_free = store if isinstance(store, WaitFree) else None
        #: the store's current fault, from its first failure until a write commits again
        self.fault: StoreError | None = None
        #: epoch ms of the first failure of the current fault
        self.fault_since: int | None = None
        self.failures = 0
        #: commits made on the loop since the last one made off it
        self._brief_commits = 0

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the writer connection; a fault of the store raises
        :class:`StoreError` (the transaction, if any, rolled back)."""

        def run() -> tuple[T, bool]:
            commits = self.store.commits
            result = fn(*args, **kwargs)
            return result, self.store.commits != commits

        try:
            if self.inline:
                await trio.lowlevel.checkpoint()
                result, committed = run()
                self._brief_commits = 0
            else:
                # this store's one call at a time, on one of the process's few store threads
                async with self.limiter:
                    # abandon_on_cancel=False: a cancelled caller never leaves a transaction
                    # half done
                    result, committed = await trio.to_thread.run_sync(
                        run, limiter=store_threads(*self._threads), abandon_on_cancel=False
                    )
                if committed:
                    self._brief_commits = 0  # its commit runs the WAL checkpoint those on the loop skipped
        except Exception as exc:
            error = self._fault(exc)
            if error is None:
                raise
            raise error from exc
        return self._done(result, committed)

    async def call_background(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """As :meth:`call`, for work no frame waits on (an alert pass): when the store names
        its ``background_threads`` (PostgreSQL: half its threads), such calls of all the stores
        of its kind hold at most that many at once, so a thousand accounts' passes, queued
        behind their first frames, never take every connection from the next account's open
        or frame. (SQLite names none: its frames run on the loop, and holding passes back there
        measured slower.)"""
        if self._background is None:
            return await self.call(fn, *args, **kwargs)
        async with background_threads(*self._background):
            return await self.call(fn, *args, **kwargs)

    async def call_brief(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """As :meth:`call`, for a call that reads a little and commits a little (an output's
        cursor and its next chunk): run on the loop itself when that cannot wait.

        A hand-off to a worker thread costs more than such a call — the more so the busier the
        CPU, since the loop then waits for the thread to be scheduled — but a call on the loop
        stops everything else in the process while it runs, so it must never wait: it runs
        there only when the connection is free (no call of this store on a thread) and the
        store can make SQLite answer busy at once instead of waiting for another connection's
        lock (see :meth:`store.database.Store.without_waiting`, which also leaves the WAL
        checkpoint's disk sync to a commit made off the loop). Busy, it goes to the thread
        after all. Reading pages the OS has not cached is the cost that remains: a chunk's."""
        wait_free = self._wait_free
        if self.inline or wait_free is None or self._brief_commits >= BRIEF_COMMITS:
            return await self.call(fn, *args, **kwargs)
        await trio.lowlevel.checkpoint()
        try:
            self.limiter.acquire_nowait()
        except trio.WouldBlock:
            return await self.call(fn, *args, **kwargs)
        try:
            commits = self.store.commits
            with wait_free.without_waiting():
                result = fn(*args, **kwargs)
            committed = self.store.commits != commits
        except Exception as exc:
            if not wait_free.busy(exc):
                error = self._fault(exc)
                if error is None:
                    raise
                raise error from exc
            busy = True  # no fault: the thread waits for the lock as every other call does
        else:
            busy = False
            if committed:
                self._brief_commits += 1
        finally:
            self.limiter.release()
        if busy:
            return await self.call(fn, *args, **kwargs)
        return self._done(result, committed)

    def _fault(self, exc: Exception) -> StoreError | None:
        """``exc`` as a fault of the store (remembered), or None when it is anything else."""
        error = self.store.as_store_error(exc)
        if error is not None:
            self._failed(error)
        return error

    def _done(self, result: T, committed: bool) -> T:
        if committed and self.fault is not None:
            log.info("store writable again", store=self.store.path, failures=self.failures)
            self.fault = self.fault_since = None
        return result

    def _failed(self, error: StoreError) -> None:
        self.failures += 1
        if self.fault is None:
            self.fault_since = int(time.time() * 1000)
            log.warning("store failing", store=self.store.path, error=str(error))
        self.fault = error

    @property
    def health(self) -> dict[str, Any]:
        """For status: ``ok``, or ``failing`` with the error and since when."""
        if self.fault is None:
            return {"state": "ok", "failures": self.failures}
        return {
            "state": "failing",
            "error": str(self.fault),
            "since": self.fault_since,
            "failures": self.failures,
        }

    # --- writes ---------------------------------------------------------------------------

    async def upsert(self, records: Sequence[Record], *, source: str = "") -> dict[str, int]:
        return await self.call(self.store.upsert, records, source=source)

    async def persist_frame(self, source: str, loop: str, batch: Batch) -> PersistResult:
        if len(batch) <= BRIEF_RECORDS:
            return await self.call_brief(self.store.persist_frame, source, loop, batch)
        return await self.call(self.store.persist_frame, source, loop, batch)

    async def persist_push(self, source: str, pushed: Sequence[PushKey]) -> PushResult:
        return await self.call(self.store.persist_push, source, pushed)

    async def delete_pushed(self, collection: Collection, oid: str) -> bool:
        return await self.call(self.store.delete_pushed, collection, oid)

    async def create_v3(self, source: str, record: Record, identifier: str | None) -> V3Result:
        return await self.call(self.store.create_v3, source, record, identifier)

    async def rewrite_v3(
        self,
        source: str,
        collection: Collection,
        identifier: str,
        build: Callable[[Stored], Record],
        *,
        must_exist: bool,
    ) -> V3Result:
        return await self.call(
            self.store.rewrite_v3, source, collection, identifier, build, must_exist=must_exist
        )

    async def delete_v3(self, collection: Collection, identifier: str, *, permanent: bool) -> bool:
        return await self.call(self.store.delete_v3, collection, identifier, permanent=permanent)

    async def set_aside_message(self, source: str, topic: str, reason: str) -> bool:
        return await self.call(self.store.set_aside_message, source, topic, reason)

    async def advance(self, output: str, collection: Stream, seq: int) -> None:
        await self.call(self.store.advance, output, collection, seq)

    async def set_aside(
        self,
        output: str,
        collection: Stream,
        first_seq: int,
        last_seq: int,
        records: int,
        status: int,
        error: str,
    ) -> None:
        await self.call(self.store.set_aside, output, collection, first_seq, last_seq, records, status, error)

    async def queue_retry(
        self, output: str | None = None, collection: Collection | None = None
    ) -> dict[str, int]:
        return await self.call(self.store.queue_retry, output, collection)

    async def retry_done(self, output: str, collection: Collection, seqs: Sequence[int]) -> None:
        await self.call(self.store.retry_done, output, collection, seqs)

    async def ensure_cursors(self, output: str, streams: Sequence[Stream]) -> None:
        await self.call(self.store.ensure_cursors, output, streams)

    async def log_delivery(
        self,
        hook: str,
        event_id: str,
        seq: int,
        event: str,
        body: str,
        *,
        outcome: str,
        status: int | None,
        at: int,
    ) -> None:
        await self.call(
            self.store.log_delivery, hook, event_id, seq, event, body, outcome=outcome, status=status, at=at
        )

    async def save_status(self, key: str, value: Mapping[str, Any]) -> None:
        await self.call_brief(self.store.save_status, key, value)

    # --- reads ----------------------------------------------------------------------------

    async def checkpoints(self, source: str, loop: str) -> dict[str, int]:
        return await self.call_brief(self.store.checkpoints, source, loop)

    async def count(self, collection: Collection) -> int:
        return await self.call(self.store.count, collection)

    async def newest_date(self, collection: Collection) -> int | None:
        return await self.call(self.store.newest_date, collection)

    async def max_seq(self, collection: Collection) -> int:
        return await self.call(self.store.max_seq, collection)

    async def pending(self, output: str, collection: Collection, *, limit: int = 500) -> list[Pending]:
        return await self.call(self.store.pending, output, collection, limit=limit)

    async def pending_rows(self, output: str, collection: Collection, limit: int) -> list[StoredRow]:
        return await self.call(self.store.pending_rows, output, collection, limit)

    async def queued_rows(self, output: str, collection: Collection, limit: int) -> list[StoredRow]:
        return await self.call(self.store.queued_rows, output, collection, limit)

    async def queued_collections(self, output: str) -> set[str]:
        return await self.call(self.store.queued_collections, output)

    async def rows_after(self, collection: Collection, after: int, limit: int) -> list[StoredRow]:
        return await self.call(self.store.rows_after, collection, after, limit)

    async def newest_sgv(self, *, upto_seq: int | None = None) -> StoredRow | None:
        return await self.call(self.store.newest_sgv, upto_seq=upto_seq)

    async def sgv_before(self, date: int, since: int) -> int | None:
        return await self.call(self.store.sgv_before, date, since)

    async def sgv_summary(self) -> tuple[int, tuple[Any, ...] | None]:
        return await self.call(self.store.sgv_summary)

    async def lag(self, output: str, collection: Collection | None = None) -> int:
        return await self.call(self.store.lag, output, collection)

    async def cursor(self, output: str, collection: Stream) -> int:
        return await self.call(self.store.cursor, output, collection)

    async def events_after(self, after: int, *, limit: int = 500) -> list[EventRow]:
        return await self.call(self.store.events_after, after, limit=limit)

    async def events_lag(self, output: str) -> int:
        return await self.call(self.store.events_lag, output)

    async def rejected_count(self, output: str) -> int:
        return await self.call(self.store.rejected_count, output)

    async def rejected(
        self, output: str | None = None, collection: Collection | None = None
    ) -> list[RejectedGroup]:
        return await self.call(self.store.rejected, output, collection)

    async def load_status(self) -> dict[str, Any]:
        return await self.call(self.store.load_status)

    async def status_of(self, key: str) -> dict[str, Any] | None:
        return await self.call(self.store.status_of, key)

    async def docs(
        self, collection: Collection, *, newest_first: bool = True, limit: int | None = None
    ) -> list[dict[str, Any]]:
        return await self.call(self.store.docs, collection, newest_first=newest_first, limit=limit)
