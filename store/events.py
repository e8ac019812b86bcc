"""The events outbox, episodes, alert state and the webhooks' recent payloads.

Plain functions over a connection of the writer :class:`~store.database.Store`: the alert
evaluator calls them inside its one transaction; outputs reach them through the store's methods
(``events_after``, ``events_lag``, ``log_delivery``). The events are delivered like the
collections: outputs keep a cursor on their ``seq`` (``cursors.collection = 'events'``) and move
it only when the far side took them; an event's ``id`` is stable, so writing it twice is a
no-op and a receiver can tell a resend from a new event.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

#: payloads kept per webhook for /api/connect/webhooks
WEBHOOK_LOG_KEEP: Final = 50


def _now_ms() -> int:
    return int(time.time() * 1000)


@attrs.frozen
class EventRow:
    """An event waiting for an output: its ``seq``, and the body exactly as it is sent."""

    seq: int
    id: str
    event: str
    account: str
    time: int
    text: str

    def body(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.text)
        return value


@attrs.frozen
class NewEvent:
    """An event an alert pass appends to the outbox (unless one with its ``id`` is there)."""

    id: str
    event: str
    #: the account as events name it
    account: str
    time: int
    #: the event as it is sent (:func:`body_text`)
    body: str


@attrs.frozen
class AlertState:
    """One account's stored alert machine and how far into the collections it has looked."""

    state: dict[str, Any] | None
    entries_seq: int
    treatments_seq: int


@attrs.frozen
class NewRecord:
    """A row stored past the alert machine's position."""

    seq: int
    identifier: str
    date: int
    type: str | None
    sgv: int | None
    direction: str | None
    text: str


def body_text(body: Mapping[str, Any]) -> str:
    """An event's body as it is stored and sent: compact JSON, keys in a fixed order."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


# --- alert state, read and written inside the evaluator's transaction -----------------------------


def load_alert_state(conn: sqlite3.Connection, account: str) -> AlertState:
    row = conn.execute(
        "SELECT json, entries_seq, treatments_seq FROM alert_state WHERE account = ?", (account,)
    ).fetchone()
    if row is None:
        return AlertState(None, 0, 0)
    try:
        state = json.loads(row[0])
    except ValueError:
        state = None
    return AlertState(state if isinstance(state, dict) else None, int(row[1]), int(row[2]))


def save_alert_state(conn: sqlite3.Connection, account: str, value: AlertState) -> None:
    conn.execute(
        "INSERT INTO alert_state (account, json, entries_seq, treatments_seq, updated_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(account) DO UPDATE SET json = excluded.json, "
        "entries_seq = excluded.entries_seq, treatments_seq = excluded.treatments_seq, "
        "updated_at = excluded.updated_at",
        (
            account,
            json.dumps(value.state, sort_keys=True),
            value.entries_seq,
            value.treatments_seq,
            _now_ms(),
        ),
    )


def new_entries(conn: sqlite3.Connection, source: str, after: int, limit: int) -> list[NewRecord]:
    """Entries of ``source`` stored (or changed) after ``seq`` ``after``, in ``seq`` order."""
    rows = conn.execute(
        "SELECT seq, identifier, date, type, sgv, direction, json FROM entries "
        "WHERE seq > ? AND source = ? ORDER BY seq LIMIT ?",
        (after, source, limit),
    )
    return [
        NewRecord(int(s), str(i), int(d), t, None if v is None else int(v), dr, str(j))
        for s, i, d, t, v, dr, j in rows
    ]


def new_treatments(conn: sqlite3.Connection, source: str, after: int, limit: int) -> list[NewRecord]:
    rows = conn.execute(
        "SELECT seq, identifier, date, event_type, json FROM treatments "
        "WHERE seq > ? AND source = ? ORDER BY seq LIMIT ?",
        (after, source, limit),
    )
    return [NewRecord(int(s), str(i), int(d), t, None, None, str(j)) for s, i, d, t, j in rows]


def max_seq_of(conn: sqlite3.Connection, collection: str) -> int:
    (value,) = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {collection}").fetchone()
    return int(value)


def add_events(conn: sqlite3.Connection, events: Sequence[NewEvent]) -> int:
    """Append events to the outbox in order, each unless one with its ``id`` is there already;
    how many were appended."""
    before = conn.total_changes
    conn.executemany(
        "INSERT INTO events (id, event, account, time, json) VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
        [(e.id, e.event, e.account, e.time, e.body) for e in events],
    )
    return conn.total_changes - before


def prune_events(conn: sqlite3.Connection, before_ms: int) -> int:
    """Forget events older than ``before_ms`` (an output down for longer misses them)."""
    before = conn.total_changes
    conn.execute("DELETE FROM events WHERE time < ?", (before_ms,))
    return conn.total_changes - before


def close_episode(conn: sqlite3.Connection, account: str, end: int, now: int) -> None:
    conn.execute(
        "UPDATE episodes SET end_at = ?, updated_at = ? WHERE account = ? AND end_at IS NULL",
        (end, now, account),
    )


def open_episode(conn: sqlite3.Connection, account: str, kind: str, start: int, now: int) -> None:
    conn.execute(
        "INSERT INTO episodes (account, kind, start_at, end_at, readings, updated_at) VALUES (?, ?, ?, NULL, 0, ?)",
        (account, kind, start, now),
    )


def update_open_episode(
    conn: sqlite3.Connection, account: str, sgv_min: int | None, sgv_max: int | None, readings: int, now: int
) -> None:
    conn.execute(
        "UPDATE episodes SET sgv_min = ?, sgv_max = ?, readings = ?, updated_at = ? "
        "WHERE account = ? AND end_at IS NULL",
        (sgv_min, sgv_max, readings, now, account),
    )


# --- what event outputs read and write (through Store's methods) ---------------------------------


def events_after(conn: sqlite3.Connection, after: int, limit: int) -> list[EventRow]:
    """Events with ``seq`` above ``after``, oldest first."""
    rows = conn.execute(
        "SELECT seq, id, event, account, time, json FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, limit),
    )
    return [EventRow(int(s), str(i), str(e), str(a), int(t), str(j)) for s, i, e, a, t, j in rows]


def events_lag(conn: sqlite3.Connection, after: int) -> int:
    (n,) = conn.execute("SELECT count(*) FROM events WHERE seq > ?", (after,)).fetchone()
    return int(n)


def ensure_cursors(conn: sqlite3.Connection, output: str, streams: Sequence[str]) -> None:
    conn.executemany(
        "INSERT INTO cursors (output, collection, seq, updated_at) VALUES (?, ?, 0, ?) "
        "ON CONFLICT(output, collection) DO NOTHING",
        [(output, stream, _now_ms()) for stream in streams],
    )


def log_delivery(
    conn: sqlite3.Connection,
    hook: str,
    row: EventRow,
    *,
    outcome: str,
    status: int | None,
    at: int,
    keep: int = WEBHOOK_LOG_KEEP,
) -> None:
    conn.execute(
        "INSERT INTO webhook_log (hook, event_id, seq, event, attempts, status, outcome, at, body) "
        "VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?) ON CONFLICT(hook, event_id) DO UPDATE SET "
        "attempts = attempts + 1, status = excluded.status, outcome = excluded.outcome, at = excluded.at",
        (hook, row.id, row.seq, row.event, status, outcome, at, row.text),
    )
    conn.execute(
        "DELETE FROM webhook_log WHERE hook = ? AND seq NOT IN "
        "(SELECT seq FROM webhook_log WHERE hook = ? ORDER BY seq DESC LIMIT ?)",
        (hook, hook, keep),
    )


__all__ = [
    "WEBHOOK_LOG_KEEP",
    "AlertState",
    "EventRow",
    "NewEvent",
    "NewRecord",
    "add_events",
    "body_text",
    "ensure_cursors",
    "events_after",
    "events_lag",
    "load_alert_state",
    "log_delivery",
    "save_alert_state",
]
