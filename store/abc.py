"""The store's ports: what the daemon, its outputs, pushes and alerts need of a store.

Two adapters implement them: :class:`store.database.Store` (SQLite, one file per account, the
embedded default) and :class:`store.postgres.PostgresStore` (PostgreSQL, many accounts in one
database). Everything above the store — :class:`store.aio.AsyncStore`, the outputs, the alert
pass — is written against :class:`WriterStore` and :class:`AlertTransaction` only, so a backend
is chosen once, where the daemon is assembled, and nothing else knows which one it got.

The semantics every adapter keeps (the contract tests run against both):

* a frame's records and its checkpoints are written in one transaction;
* upserts are idempotent by ``identifier``: an unchanged record keeps its ``seq``;
* every write that changes a record gives it a new, larger ``seq`` (one sequence per store, or
  per account in a shared database), in commit order, so an output that reads past its cursor
  by ``seq`` misses nothing;
* the stored JSON is returned byte for byte as it was written (outputs send it as it is);
* a fault of the storage (a full disk, a lost server) is reported through
  :meth:`WriterStore.as_store_error`, anything else is a bug and propagates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import attrs

from connect.errors import StoreError
from connect.records import Batch, Collection, Record, Stream
from store.events import AlertState, EventRow, NewEvent, NewRecord
from store.terms import Row as SearchRow
from store.terms import Search
from store.values import (
    Dose,
    Filter,
    Pending,
    PersistResult,
    PushKey,
    PushResult,
    Reading,
    RejectedGroup,
    Stored,
    StoredEpisode,
    V3Result,
    Where,
)


@attrs.define
class StoredRow:
    """A stored record as an output reads it: its ``seq``, its Nightscout JSON exactly as the
    store keeps it, and its ``source`` (``push@<site>`` for records pushed to the write API).

    Not frozen, though nothing changes one: a frozen attrs class sets each field through
    ``object.__setattr__``, which made building a 500-row chunk cost three times as much."""

    seq: int
    text: str
    source: str = ""
    #: the columns a message's topic and ``current`` need, so an output that sends the JSON as
    #: it is never parses it (filled by ``rows_after``; None where the collection has none)
    device: str | None = None
    #: the entry's ``type`` (``sgv``, ``mbg``, ``cal``); None in the other collections
    kind: str | None = None
    date: int | None = None

    def doc(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.text)
        return value


class AlertTransaction(Protocol):
    """What one alert pass reads and writes, all inside one transaction of the store."""

    def load_alert_state(self, key: str) -> AlertState: ...

    def save_alert_state(self, key: str, value: AlertState) -> None: ...

    def new_entries(self, source: str, after: int, limit: int) -> list[NewRecord]: ...

    def new_treatments(self, source: str, after: int, limit: int) -> list[NewRecord]: ...

    def add_events(self, events: Sequence[NewEvent]) -> int:
        """The events not in the outbox yet appended, in order (one statement's worth of round
        trips, however many); how many were."""
        ...

    def prune_events(self, before_ms: int) -> int: ...

    def close_episode(self, key: str, end: int, now: int) -> None: ...

    def open_episode(self, key: str, kind: str, start: int, now: int) -> None: ...

    def update_open_episode(
        self, key: str, sgv_min: int | None, sgv_max: int | None, readings: int, now: int
    ) -> None: ...


@runtime_checkable
@runtime_checkable
class WaitFree(Protocol):
    """A store that can run a short call on the event loop itself without ever waiting on a lock
    (SQLite: see :meth:`store.database.Store.without_waiting`)."""

    def without_waiting(self) -> AbstractContextManager[None]:
        """While open, a lock held elsewhere fails a call at once (:meth:`busy` says so) instead
        of being waited for, and nothing syncs the disk."""
        ...

    def busy(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a lock held elsewhere (the call may be made again, off the loop)."""
        ...


class WriterStore(Protocol):
    """The writer side of a store: every call the daemon makes (through
    :class:`store.aio.AsyncStore`, one call at a time on a worker thread)."""

    #: how the store is named in logs and errors (a file path, or a URL without its password)
    path: str
    #: transactions committed so far (a store that commits is healthy again)
    commits: int

    def close(self) -> None: ...

    def as_store_error(self, exc: BaseException) -> StoreError | None:
        """``exc`` as a :class:`StoreError` when it is a fault of the storage (to wait out and
        report), None when it is anything else (a bug)."""
        ...

    def alert_transaction(self) -> AbstractContextManager[AlertTransaction]: ...

    # --- writes ---------------------------------------------------------------------------

    def upsert(self, records: Sequence[Record], *, source: str = "") -> dict[str, int]: ...

    def persist_frame(self, source: str, loop: str, batch: Batch) -> PersistResult: ...

    def persist_push(self, source: str, pushed: Sequence[PushKey]) -> PushResult: ...

    def delete_pushed(self, collection: Collection, oid: str) -> bool: ...

    def create_v3(self, source: str, record: Record, identifier: str | None) -> V3Result: ...

    def rewrite_v3(
        self,
        source: str,
        collection: Collection,
        identifier: str,
        build: Callable[[Stored], Record],
        *,
        must_exist: bool,
    ) -> V3Result: ...

    def delete_v3(self, collection: Collection, identifier: str, *, permanent: bool) -> bool: ...

    def set_aside_message(self, source: str, topic: str, reason: str) -> bool: ...

    def advance(self, output: str, collection: Stream, seq: int) -> None: ...

    def set_aside(
        self,
        output: str,
        collection: Stream,
        first_seq: int,
        last_seq: int,
        records: int,
        status: int,
        error: str,
    ) -> None: ...

    def queue_retry(
        self, output: str | None = None, collection: Collection | None = None
    ) -> dict[str, int]: ...

    def retry_done(self, output: str, collection: Collection, seqs: Sequence[int]) -> None: ...

    def ensure_cursors(self, output: str, streams: Sequence[Stream]) -> None: ...

    def log_delivery(
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
    ) -> None: ...

    def save_status(self, key: str, value: Mapping[str, Any]) -> None: ...

    # --- reads ----------------------------------------------------------------------------

    def checkpoints(self, source: str, loop: str) -> dict[str, int]: ...

    def count(self, collection: Collection) -> int: ...

    def newest_date(self, collection: Collection) -> int | None: ...

    def max_seq(self, collection: Collection) -> int: ...

    def pending(self, output: str, collection: Collection, *, limit: int = 500) -> list[Pending]: ...

    def pending_rows(self, output: str, collection: Collection, limit: int) -> list[StoredRow]: ...

    def queued_rows(self, output: str, collection: Collection, limit: int) -> list[StoredRow]: ...

    def queued_collections(self, output: str) -> set[str]: ...

    def rows_after(self, collection: Collection, after: int, limit: int) -> list[StoredRow]:
        """Records with ``seq`` above ``after``, oldest change first, with their ``device``,
        ``kind`` and ``date`` columns."""
        ...

    def lag(self, output: str, collection: Collection | None = None) -> int: ...

    def cursor(self, output: str, collection: Stream) -> int: ...

    def events_after(self, after: int, *, limit: int = 500) -> list[EventRow]: ...

    def events_lag(self, output: str) -> int: ...

    def rejected_count(self, output: str) -> int: ...

    def rejected(
        self, output: str | None = None, collection: Collection | None = None
    ) -> list[RejectedGroup]: ...

    def load_status(self) -> dict[str, Any]: ...

    def status_of(self, key: str) -> dict[str, Any] | None: ...

    def docs(
        self, collection: Collection, *, newest_first: bool = True, limit: int | None = None
    ) -> list[dict[str, Any]]: ...

    def newest_sgv(self, *, upto_seq: int | None = None) -> StoredRow | None: ...

    def sgv_before(self, date: int, since: int) -> int | None: ...

    def sgv_summary(self) -> tuple[int, tuple[Any, ...] | None]: ...


class ReaderStore(Protocol):
    """The read side, for the HTTP API: :class:`store.reader.StoreReader` over a SQLite file,
    :class:`store.postgres_reader.PostgresReader` over one account of a PostgreSQL database.
    Safe to use from many threads at once."""

    #: how the store is named in messages (a path, or a URL without its password)
    path: str

    def close(self) -> None: ...

    def doc_texts(
        self,
        collection: Collection,
        filters: Sequence[Filter] = (),
        limit: int = 10,
        *,
        page_deltas: bool = True,
        extra: Where | None = None,
    ) -> list[str]: ...

    def body(self, collection: Collection, filters: Sequence[Filter] = (), limit: int = 10) -> bytes: ...

    def docs(
        self, collection: Collection, filters: Sequence[Filter] = (), limit: int = 10
    ) -> list[dict[str, Any]]: ...

    def id_filters(self, collection: Collection, wanted: str) -> tuple[Filter, ...] | None: ...

    def distinct_values(self, collection: Collection, column: str, limit: int) -> list[str]: ...

    def pages_between(
        self, collection: Collection, since: int, until: int, page: int
    ) -> Iterator[list[str]]: ...

    def devices(self, collection: Collection) -> list[tuple[str, int]]: ...

    def one(self, collection: Collection, identifier: str) -> SearchRow | None: ...

    def history(
        self, collection: Collection, since: int, limit: int, *, inclusive: bool = False
    ) -> list[SearchRow]: ...

    def search(self, query: Search) -> list[SearchRow]: ...

    def last_modified(self) -> dict[Collection, int]: ...

    def readings(self, since_ms: int, until_ms: int) -> list[Reading]: ...

    def latest_delta(self) -> float | None: ...

    def doses(self, since_ms: int, until_ms: int) -> list[Dose]: ...

    def latest_reading(self) -> Reading | None: ...

    def collections(self) -> dict[str, dict[str, int | None]]: ...

    def outputs(self) -> list[str]: ...

    def lag(self, outputs: Iterable[str]) -> dict[str, dict[str, int]]: ...

    def rejected(self) -> list[RejectedGroup]: ...

    def episodes(
        self, since_ms: int, until_ms: int, *, account: str | None = None
    ) -> list[StoredEpisode]: ...

    def webhook_log(self) -> dict[str, list[dict[str, Any]]]: ...

    def saved_status(self, key: str = "daemon") -> dict[str, Any]: ...

    def revision(self) -> int: ...

    def ping(self) -> int: ...

    def verify(self) -> int: ...


__all__ = ["AlertTransaction", "ReaderStore", "StoredRow", "WriterStore"]
