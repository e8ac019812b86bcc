"""The status page at ``/``: one self-contained HTML document, no scripts, no external assets.

It shows the newest reading (value, Nightscout's direction arrow, age), an inline SVG chart of
the last 24 hours with the 70–180 mg/dL target range shaded and the episodes out of range (and
without readings) as bands, and every machine's state and next poll. The browser reloads it every minute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any, Final

from api import status as st
from connect.records import ARROWS
from store.reader import Reading, StoredEpisode

DAY_MS: Final = 86_400_000
TARGET_LOW: Final = 70
TARGET_HIGH: Final = 180
Y_MIN: Final = 40
Y_MAX: Final = 400


# chart geometry (SVG user units)
WIDTH: Final = 960
HEIGHT: Final = 320
LEFT: Final = 44
RIGHT: Final = 12
TOP: Final = 12
BOTTOM: Final = 28

STYLE: Final = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:1rem 1.5rem;
background:#111;color:#eee}
h1{font-size:1.1rem;font-weight:600;margin:0 0 .75rem;color:#aaa}
h2{font-size:1rem;margin:1.5rem 0 .5rem;color:#aaa}
.current{display:flex;align-items:baseline;gap:.75rem;margin-bottom:.5rem}
.sgv{font-size:4rem;font-weight:700;line-height:1}
.arrow{font-size:3rem}
.unit,.age,.muted{color:#999}
.stale .sgv,.stale .arrow{color:#777;text-decoration:line-through}
.low{color:#e55}.high{color:#eb3}.in-range{color:#5c5}
svg{width:100%;max-width:960px;height:auto;background:#181818;border-radius:6px}
.target-range{fill:#2a4d2a;opacity:.55}
.episode{opacity:.28}.episode-low{fill:#e55}.episode-urgent_low{fill:#f22;opacity:.42}
.episode-high{fill:#eb3}.episode-urgent_high{fill:#f80;opacity:.42}.episode-stale{fill:#888}
.grid{stroke:#333;stroke-width:1}
.axis-label{fill:#888;font-size:11px}
table{border-collapse:collapse;font-size:.9rem}
th,td{text-align:left;padding:.25rem .75rem .25rem 0;border-bottom:1px solid #2a2a2a}
th{color:#999;font-weight:500}
.error{color:#e88}
"""


def arrow(direction: str | None) -> str:
    return ARROWS.get(direction or "", "-")


def _local(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000).astimezone()


def clock_time(ms: float) -> str:
    return _local(ms).strftime("%H:%M")


def age_text(now_ms: int, then_ms: int) -> str:
    minutes = int((now_ms - then_ms) // 60_000)
    if minutes < 1:
        return "just now" if now_ms >= then_ms - 60_000 else "in the future"
    if minutes < 60:
        return f"{minutes} min ago"
    hours, rest = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {rest} min ago" if rest else f"{hours} h ago"
    return f"{hours // 24} days ago"


def until_text(now_ms: int, due_ms: float | None) -> str:
    if due_ms is None:
        return "—"
    seconds = int((due_ms - now_ms) // 1000)
    if seconds <= 0:
        return f"due ({clock_time(due_ms)})"
    if seconds < 60:
        return f"in {seconds} s ({clock_time(due_ms)})"
    return f"in {seconds // 60} min ({clock_time(due_ms)})"


def band(sgv: int) -> str:
    if sgv < TARGET_LOW:
        return "low"
    if sgv > TARGET_HIGH:
        return "high"
    return "in-range"


COLOURS: Final = {"low": "#e55", "high": "#eb3", "in-range": "#5c5"}


#: what an episode band says when hovered
EPISODE_NAMES: Final = {
    "urgent_low": "urgent low",
    "low": "low",
    "high": "high",
    "urgent_high": "urgent high",
    "stale": "no readings",
}


def chart(readings: Sequence[Reading], now_ms: int, episodes: Sequence[StoredEpisode] = ()) -> str:
    """The last 24 hours as SVG: one circle per reading, the target range shaded, and a band
    behind the readings for every episode out of range (or without readings)."""
    start = now_ms - DAY_MS
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM

    def x(ms: int) -> float:
        return LEFT + max(0.0, min(1.0, (ms - start) / DAY_MS)) * plot_w

    def y(sgv: float) -> float:
        clamped = max(Y_MIN, min(Y_MAX, sgv))
        return TOP + (Y_MAX - clamped) / (Y_MAX - Y_MIN) * plot_h

    parts = [
        f'<svg id="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="glucose, last 24 hours" xmlns="http://www.w3.org/2000/svg">',
        f'<rect class="target-range" x="{LEFT}" y="{y(TARGET_HIGH):.1f}" width="{plot_w}" '
        f'height="{y(TARGET_LOW) - y(TARGET_HIGH):.1f}"/>',
    ]
    for e in episodes:
        if e.kind not in EPISODE_NAMES:
            continue
        end = now_ms if e.end is None else e.end
        if end < start or e.start > now_ms:
            continue
        x0, x1 = x(e.start), x(end)
        until = "now" if e.end is None else clock_time(e.end)
        parts.append(
            f'<rect class="episode episode-{e.kind}" x="{x0:.1f}" y="{TOP}" width="{max(x1 - x0, 1.0):.1f}" '
            f'height="{plot_h}"><title>{escape(EPISODE_NAMES[e.kind])} {clock_time(e.start)}–{until}</title></rect>'
        )
    for level in (TARGET_LOW, TARGET_HIGH, 100, 250, 300, 400):
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(level):.1f}" y2="{y(level):.1f}"/>'
            f'<text class="axis-label" x="{LEFT - 6}" y="{y(level) + 4:.1f}" text-anchor="end">{level}</text>'
        )
    # a time label every three hours, on the hour
    hour = 3_600_000
    tick = start - start % hour + hour
    while tick <= now_ms:
        if _local(tick).hour % 3 == 0:
            parts.append(
                f'<text class="axis-label" x="{x(tick):.1f}" y="{HEIGHT - 8}" '
                f'text-anchor="middle">{clock_time(tick)}</text>'
            )
        tick += hour
    for r in readings:
        parts.append(
            f'<circle class="reading" cx="{x(r.date):.1f}" cy="{y(r.sgv):.1f}" r="3" '
            f'fill="{COLOURS[band(r.sgv)]}"><title>{r.sgv} mg/dL at {clock_time(r.date)}</title></circle>'
        )
    parts.append("</svg>")
    return "".join(parts)


def current_block(latest: Reading | None, now_ms: int) -> str:
    if latest is None:
        return '<div id="current" class="current"><span class="muted">no readings stored yet</span></div>'
    stale = now_ms - latest.date > 15 * 60_000
    value = "CGM ERROR" if latest.sgv < 39 else str(latest.sgv)
    return (
        f'<div id="current" class="current{" stale" if stale else ""}">'
        f'<span class="sgv {band(latest.sgv)}">{escape(value)}</span>'
        f'<span class="arrow" title="{escape(latest.direction or "no direction")}">{escape(arrow(latest.direction))}</span>'
        f'<span class="unit">mg/dL</span>'
        f'<span class="age" data-date="{latest.date}">{escape(age_text(now_ms, latest.date))} '
        f"({clock_time(latest.date)}, {escape(latest.device)})</span></div>"
    )


def machines_block(snapshot: Mapping[str, Any] | None, now_ms: int) -> str:
    if snapshot is None:
        return '<p class="error">the runtime status is not available</p>'
    rows = []
    for source in st.sources(snapshot):
        session = source.get("session")
        name = escape(st.text(source.get("source"), "unknown"))
        if isinstance(session, Mapping) and st.text(session.get("state")) not in ("", "none"):
            error = st.text(session.get("last_error"))
            rows.append(
                f'<tr class="machine"><td>{name}</td><td>session</td>'
                f"<td>{escape(st.text(session.get('state'), 'unknown'))}</td><td>—</td>"
                f"<td>logins {int(st.number(session.get('logins')) or 0)}</td>"
                f'<td class="error">{escape(error)}</td></tr>'
            )
    for view in st.loops(snapshot):
        error = st.text(view.data.get("last_error"))
        success = st.number(view.data.get("last_success"))
        rows.append(
            f'<tr class="machine"><td>{escape(view.source)}</td><td>{escape(view.name)}</td>'
            f"<td>{escape(view.state)}</td>"
            f'<td class="next-poll">{escape(until_text(now_ms, st.number(view.data.get("next_due"))))}</td>'
            f"<td>ok {int(view.count('frames_ok'))} · failed {int(view.count('frames_failed'))}"
            f"{' · last success ' + escape(age_text(now_ms, int(success))) if success else ''}</td>"
            f'<td class="error">{escape(error)}</td></tr>'
        )
    if not rows:
        return '<p class="muted">no machines running</p>'
    return (
        '<table id="machines"><tr><th>source</th><th>machine</th><th>state</th><th>next poll</th>'
        "<th>frames</th><th>last error</th></tr>" + "".join(rows) + "</table>"
    )


def outputs_block(snapshot: Mapping[str, Any] | None, lag: Mapping[str, Mapping[str, int]]) -> str:
    rows = []
    named = {str(o["name"]): o for o in st.outputs(snapshot)} if snapshot is not None else {}
    for name in sorted({*named, *lag}):
        output = named.get(name, {})
        pending = sum(lag.get(name, {}).values())
        rows.append(
            f'<tr class="output"><td>{escape(name)}</td><td>{escape(st.text(output.get("state"), "—"))}</td>'
            f"<td>{pending}</td><td>{int(st.number(output.get('delivered')) or 0)}</td>"
            f'<td class="error">{escape(st.text(output.get("last_error")))}</td></tr>'
        )
    if not rows:
        return '<p class="muted">the store is the only output</p>'
    return (
        '<table id="outputs"><tr><th>output</th><th>state</th><th>waiting</th><th>delivered</th>'
        "<th>last error</th></tr>" + "".join(rows) + "</table>"
    )


def render(
    *,
    readings: Sequence[Reading],
    latest: Reading | None,
    snapshot: Mapping[str, Any] | None,
    lag: Mapping[str, Mapping[str, int]],
    now_ms: int,
    title: str = "nightscout-connect",
    episodes: Sequence[StoredEpisode] = (),
) -> str:
    in_window = sum(1 for r in readings if r.date >= now_ms - DAY_MS)
    return (
        "<!DOCTYPE html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="refresh" content="60">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f"{current_block(latest, now_ms)}"
        f'<p class="muted">{in_window} readings in the last 24 hours · page built {clock_time(now_ms)}</p>'
        f"{chart(readings, now_ms, episodes)}"
        f"<h2>Machines</h2>{machines_block(snapshot, now_ms)}"
        f"<h2>Outputs</h2>{outputs_block(snapshot, lag)}"
        "</body></html>"
    )


def unauthorized(*, reads_off: bool, title: str = "nightscout-connect") -> str:
    """The page a browser gets instead of the glucose page when it may not read: what to do,
    and nothing about the readings (no refresh either: reloading cannot change the answer)."""
    if reads_off:
        advice = (
            "<p>Reading is off: no secret is set and anonymous reading is not enabled.</p>"
            "<p>Either set <code>CONNECT_HTTP_SECRET</code> (12+ characters) and open this page as "
            "<code>/?token=&lt;the secret&gt;</code>, or set <code>CONNECT_HTTP_READABLE=true</code> "
            "to let anyone who can reach this address read it. Then restart.</p>"
        )
    else:
        advice = "<p>This page needs the API secret: open it as <code>/?token=&lt;CONNECT_HTTP_SECRET&gt;</code>.</p>"
    return (
        "<!DOCTYPE html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}: not authorized</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>{advice}</body></html>"
    )
