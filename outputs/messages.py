"""Alerts in words, for people: "Low 68 mg/dL ↗ at 14:05, 5 min ago".

Times are the daemon's local time (``TZ``); values are in the site's units
(``CONNECT_DISPLAY_UNITS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from connect.records import ARROWS
from machines.alerts import URGENT_KINDS, in_units, unit_label

LABELS: Final[Mapping[str, str]] = {
    "urgent_low": "Urgent low",
    "low": "Low",
    "high": "High",
    "urgent_high": "Urgent high",
    "falling_fast": "Falling fast",
    "rising_fast": "Rising fast",
    "stale": "No reading",
    "urgent_stale": "No reading",
}


def clock_time(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000).astimezone().strftime("%H:%M")


def age_text(now_ms: int, then_ms: int) -> str:
    minutes = int((now_ms - then_ms) // 60_000)
    if minutes < 1:
        return "just now"
    if minutes < 60:
        return f"{minutes} min ago"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min ago" if rest else f"{hours} h ago"


def level(kind: str) -> str:
    return "urgent" if kind in URGENT_KINDS else "warning"


def alert_text(body: Mapping[str, Any], *, now: int, units: str | None) -> tuple[str, str]:
    """(title, message) for an ``alert:raised`` or ``alert:cleared`` body."""
    data = body.get("data") or {}
    kind = str(data.get("kind", ""))
    label = LABELS.get(kind, kind.replace("_", " ").capitalize())
    sgv, date, direction = data.get("sgv"), data.get("date"), data.get("direction")
    reading = ""
    if isinstance(sgv, (int, float)) and isinstance(date, int):
        arrow = ARROWS.get(str(direction), "")
        value = f"{in_units(float(sgv), units)} {unit_label(units)}"
        reading = f"{value}{' ' + arrow if arrow else ''} at {clock_time(date)}"
    cleared = body.get("event") == "alert:cleared"
    if kind in ("stale", "urgent_stale"):
        minutes = data.get("threshold")
        title = f"{label} for {minutes:g} min" if isinstance(minutes, (int, float)) else label
        if cleared:
            title = "Readings are back"
        message = f"{title}{': last ' + reading if reading and not cleared else ''}"
        if cleared and reading:
            message = f"{title}: {reading}"
    else:
        title = f"{label} over" if cleared else label
        message = f"{title} {reading}" if reading else title
        if reading and isinstance(date, int):
            message += f", {age_text(now, date)}"
    account = body.get("account")
    if account:
        title = f"{title} ({account})"
    return title, message
