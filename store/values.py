"""The values the store's port speaks in (``store.abc``): what a write answers, what a
delivery reads, what a reader is asked for and gives back. Both backends and every caller share
them; they hold no SQL of either backend beyond a SQLite condition's own functions."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from connect.records import Record


@attrs.frozen
class PersistResult:
    """What one persisted frame changed: rows written (new or changed) per collection."""

    written: Mapping[str, int]
    checkpoint: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.written.values())


@attrs.frozen
class PushKey:
    """One pushed record and how its sender named it (see :meth:`Store.persist_push`)."""

    record: Record
    #: the ``_id`` the sender gave (a replacement of that record)
    object_id: str | None = None
    #: the sender's own ``identifier``
    identifier: str | None = None
    #: a PUT: the record named by ``object_id`` must exist
    must_exist: bool = False


@attrs.frozen
class PushResult:
    """What a push wrote: the identifier each record was stored under, rows written per collection."""

    identifiers: Sequence[str]
    written: Mapping[str, int]


@attrs.frozen
class V3Result:
    """What an API v3 write did to one document."""

    #: the identifier the document is stored under
    identifier: str
    #: a new document (v3's 201); otherwise it replaced (or deduplicated onto) a stored one
    created: bool
    #: the document's ``srv_modified`` after the write (unchanged when it was written identical)
    srv_modified: int


#: a stored document a v3 write builds on: its identifier and JSON; None when there is none
Stored = tuple[str, dict[str, Any]] | None


@attrs.frozen
class RejectedGroup:
    """Records one output set aside in one collection, for one status code and reason."""

    output: str
    collection: str
    status: int
    reason: str
    records: int
    queued: bool
    first_at: int
    last_at: int


@attrs.frozen
class Pending:
    """A record waiting for an output: its sequence number and Nightscout JSON."""

    seq: int
    doc: dict[str, Any]


Op = Literal["=", "!=", ">", ">=", "<", "<="]


OPS: Final[frozenset[str]] = frozenset({"=", "!=", ">", ">=", "<", "<="})


@attrs.frozen
class Where:
    """An extra SQL condition on the documents (alias ``e``), with its bound parameters and the
    functions it calls, registered on the borrowed connection before the query runs."""

    sql: str
    params: tuple[Any, ...] = ()
    functions: tuple[tuple[str, int, Callable[..., Any]], ...] = ()
    #: the conditions this SQL was made from (``store.search.Condition`` / ``AnyOf``), for a
    #: store that writes its own SQL (PostgreSQL)
    items: tuple[Any, ...] = ()

    def prepare(self, conn: sqlite3.Connection) -> None:
        for name, nargs, function in self.functions:
            conn.create_function(name, nargs, function, deterministic=True)


SQLITE_INT_MAX: Final = 2**63 - 1


@attrs.frozen
class Filter:
    """One condition: ``column op value`` (value already converted: epoch ms, number or text)."""

    column: str
    op: Op
    value: int | str

    def __attrs_post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown operator {self.op!r}")
        if isinstance(self.value, int) and not -SQLITE_INT_MAX <= self.value <= SQLITE_INT_MAX:
            raise ValueError(f"{self.column}: number out of range")


@attrs.frozen
class Reading:
    """A CGM reading as the status page draws it."""

    date: int
    sgv: int
    direction: str | None
    device: str


@attrs.frozen
class Dose:
    """A treatment as the status page marks it: the carbs eaten and the insulin given, if any."""

    date: int
    event_type: str | None
    insulin: float | None
    carbs: float | None


@attrs.frozen
class StoredEpisode:
    """An episode as the API and the status page show it (``end`` None while it lasts)."""

    account: str
    kind: str
    start: int
    end: int | None
    sgv_min: int | None
    sgv_max: int | None
    readings: int
