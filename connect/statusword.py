"""``nightscout-connect status``: what the daemon on a store last said about itself, in words.

Reads the status row the daemon saves in its store (``machine_status``), read-only, beside a
running daemon or after it stopped: each source's session and loops, each output's delivery,
the newest reading. Nothing is contacted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from connect.loading import UsageError, load_settings


def _when(ms: Any, now_ms: int) -> str:
    """An epoch-ms time as a person says it: "in 3 min", "12 min ago", "at 14:30 UTC"."""
    if not isinstance(ms, (int, float)):
        return "unknown"
    delta = (ms - now_ms) / 60_000
    if abs(delta) < 1:
        return "now"
    if abs(delta) < 120:
        minutes = round(abs(delta))
        return f"in {minutes} min" if delta > 0 else f"{minutes} min ago"
    stamp = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"at {stamp}"


SESSION_WORDS = {
    "none": "no login needed",
    "inactive": "not logged in yet",
    "authenticating": "logging in",
    "authorizing": "logging in",
    "established": "logged in",
    "active": "logged in",
    "refreshing": "renewing its login",
    "expired": "login expired, logging in again",
    "rejected": "password refused",
    "locked_out": "locked out by the vendor",
}

OUTPUT_WORDS = {
    "idle": "up to date",
    "reading": "delivering",
    "sending": "delivering",
    "backoff": "failing, trying again",
    "paused_auth": "refused the credentials",
    "paused_refusals": "refusing records",
}


def describe(status: dict[str, Any], updated_ms: int | None, now_ms: int) -> list[str]:
    lines = []
    if updated_ms is not None:
        lines.append(f"saved {_when(updated_ms, now_ms)} by the daemon on this store")
    for source in status.get("sources", []):
        session = source.get("session") or {}
        words = SESSION_WORDS.get(str(session.get("state")), str(session.get("state")))
        if session.get("not_before"):
            words += f", next try {_when(session['not_before'], now_ms)}"
        lines.append(f"{source.get('source')}: {words}")
        for name, loop in (source.get("loops") or {}).items():
            parts = [f"{loop.get('frames_ok', 0)} frames ok"]
            if loop.get("frames_failed"):
                parts.append(f"{loop['frames_failed']} failed")
            if loop.get("last_success"):
                parts.append(f"last success {_when(loop['last_success'], now_ms)}")
            if loop.get("next_due"):
                parts.append(f"next check {_when(loop['next_due'], now_ms)}")
            elif loop.get("state") == "stopped":
                parts.append("stopped")
            if loop.get("last_error"):
                error = loop["last_error"]
                parts.append(
                    f"last error: {error.get('message', error) if isinstance(error, dict) else error}"
                )
            lines.append(f"  {name}: " + ", ".join(parts))
    for output in status.get("outputs", []):
        words = OUTPUT_WORDS.get(str(output.get("state")), str(output.get("state")))
        lag = output.get("lag")
        extra = f", {lag} records waiting" if lag else ""
        lines.append(f"output {output.get('name')} {output.get('target', '')}: {words}{extra}".rstrip())
    if not status.get("outputs"):
        lines.append("outputs: none (records stay in the local store)")
    store = status.get("store") or {}
    if store.get("state") not in (None, "ok"):
        lines.append(f"store: {store.get('state')}")
    return lines


def newest_reading(conn: sqlite3.Connection, now_ms: int) -> str:
    row = conn.execute(
        "SELECT date, sgv, direction FROM entries WHERE type = 'sgv' ORDER BY date DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return "newest reading: none yet"
    date, sgv, direction = row
    return f"newest reading: {sgv} mg/dL {direction or ''} {_when(date, now_ms)}".replace("  ", " ")


def one_line(status: dict[str, Any], stored: int, newest: tuple[Any, ...] | None, now_ms: int) -> str:
    """The demo's summary, once a minute: readings stored, the newest, each loop's next check."""
    parts = [f"{stored} readings stored"]
    if newest is not None:
        date, sgv, direction = newest
        parts.append(f"newest {sgv} mg/dL {direction or ''} {_when(date, now_ms)}".replace("  ", " "))
    for source in status.get("sources", []):
        for name, loop in (source.get("loops") or {}).items():
            due = loop.get("next_due")
            parts.append(f"{name} next check {_when(due, now_ms)}" if due else f"{name} {loop.get('state')}")
    return "demo: " + "; ".join(parts)


def _postgres_status(url: str, account: str, now_ms: int) -> int:
    """``status`` of one account of a PostgreSQL store."""
    from store.postgres_reader import PostgresReader

    reader = PostgresReader(url, account=account)
    try:
        reader.verify()
        saved = reader.status_row("daemon")
        latest = reader.latest_reading()
    finally:
        reader.close()
    if latest is None:
        reading = "newest reading: none yet"
    else:
        reading = f"newest reading: {latest.sgv} mg/dL {latest.direction or ''} {_when(latest.date, now_ms)}"
        reading = reading.replace("  ", " ")
    if saved is None:
        print(f"no daemon has saved its status in {reader.path} (account {account!r}) yet")
        print(reading)
        return 0
    print("\n".join(describe(saved[0], saved[1], now_ms)))
    print(reading)
    return 0


def cmd_status(args: Sequence[str]) -> int:
    settings, _ = load_settings(args, source_name="sim")
    if settings.store_url is not None:
        return _postgres_status(
            settings.store_url.get_secret_value(), settings.account, int(time.time() * 1000)
        )
    path = settings.store_path
    if path == ":memory:" or not os.path.exists(path):
        raise UsageError([f"--store-path / CONNECT_STORE_PATH: no store at {path!r}"])
    now_ms = int(time.time() * 1000)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT json, updated_at FROM machine_status WHERE key = 'daemon'").fetchone()
        reading = newest_reading(conn, now_ms)
    except sqlite3.DatabaseError as exc:
        raise UsageError([f"--store-path / CONNECT_STORE_PATH: {path!r} is not a store ({exc})"]) from None
    finally:
        conn.close()
    if row is None:
        print(f"no daemon has saved its status in {path} yet")
        print(reading)
        return 0
    status = json.loads(row[0])
    print("\n".join(describe(status, row[1], now_ms)))
    print(reading)
    return 0
