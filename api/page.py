"""The status page at ``/``: one self-contained HTML document, no scripts, no external assets.

It shows what Nightscout's main screen shows: the newest reading large (value, direction arrow,
delta, age) in the site's units (``CONNECT_DISPLAY_UNITS``), the same in the tab's title, and an
inline SVG chart of the last 3, 6, 12 or 24 hours with the target band of the alert rules
(``CONNECT_BG_TARGET_BOTTOM`` – ``CONNECT_BG_TARGET_TOP``) shaded, the episodes out of range (and
without readings) as bands behind the readings, and the carbs and insulin of the treatments
marked with their amounts. Below it, every source and output says in a sentence how it is doing
and when it next acts. The browser reloads it every minute.

Narrow screens get the same document: the layout wraps, long error texts break, and a media
query enlarges the chart's labels in SVG units so they stay readable when the chart is scaled
down to a phone's width.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any, Final
from urllib.parse import urlencode

from api import status as st
from api.settings import PAGE_HOURS, Display
from connect.records import ARROWS
from machines.alerts import MMOL_TO_MGDL, in_units, unit_label
from store.values import Dose, Reading, StoredEpisode

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
Y_MIN: Final = 40
Y_MAX: Final = 400
#: a reading older than this is shown struck through (Nightscout's default stale time)
STALE_MS: Final = 15 * 60_000

# chart geometry (SVG user units); the top strip holds the treatments' amounts
WIDTH: Final = 800
HEIGHT: Final = 400
LEFT: Final = 64
RIGHT: Final = 16
TOP: Final = 68
BOTTOM: Final = 40
#: a y label closer than this (mg/dL) to a labelled line is left out: at a phone's width the
#: labels are large in SVG units and would overlap
LABEL_GAP_MGDL: Final = 40
#: the widest a character of a label gets (SVG units, at a phone's label size: 26 units)
LABEL_CHAR_WIDTH: Final = 16
#: the time labels' spacing per range (minutes)
TICK_MINUTES: Final[Mapping[int, int]] = {3: 30, 6: 60, 12: 120, 24: 180}

STYLE: Final = """
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1000px;
padding:1rem;background:#111;color:#eee;overflow-wrap:anywhere}
header{display:flex;flex-wrap:wrap;align-items:center;justify-content:space-between;gap:.5rem}
h1{font-size:1.1rem;font-weight:600;margin:0;color:#aaa}
h2{font-size:1rem;margin:1.5rem 0 .5rem;color:#aaa}
nav{display:flex;gap:.25rem}
nav a,nav strong{padding:.35rem .65rem;border-radius:5px;text-decoration:none;font-size:.95rem}
nav a{color:#9bd;background:#1d1d1d}nav strong{color:#111;background:#9bd}
.current{display:flex;flex-wrap:wrap;align-items:center;column-gap:1rem;row-gap:.25rem;margin:.75rem 0 .5rem}
.sgv{font-size:clamp(3.5rem,17vw,5.5rem);font-weight:700;line-height:1}
.arrow{font-size:clamp(2.75rem,12vw,4.25rem);line-height:1}
.readout{display:flex;flex-direction:column;gap:.2rem}
.delta{font-size:clamp(1.6rem,7vw,2.4rem);font-weight:600;line-height:1.1}
.unit{font-size:1rem;font-weight:400;color:#999}
.age{font-size:1.1rem;color:#bbb}
.muted{color:#999}
.stale .sgv,.stale .arrow,.stale .delta{color:#777;text-decoration:line-through}
.low{color:#e55}.high{color:#eb3}.in-range{color:#5c5}
svg{display:block;width:100%;height:auto;background:#181818;border-radius:6px}
.target-range{fill:#2a4d2a;opacity:.55}
.episode{opacity:.28}.episode-low{fill:#e55}.episode-urgent_low{fill:#f22;opacity:.42}
.episode-high{fill:#eb3}.episode-urgent_high{fill:#f80;opacity:.42}.episode-stale{fill:#888}
.grid{stroke:#333;stroke-width:1}
.axis-label{fill:#999;font-size:13px}
.treatment-line{stroke:#666;stroke-width:1;stroke-dasharray:3 4}
.treatment{font-size:13px;font-weight:600}
.insulin{fill:#6af}.carbs{fill:#fa5}
ul{list-style:none;margin:0;padding:0}
li{padding:.45rem 0;border-bottom:1px solid #2a2a2a;line-height:1.35}
.name{font-weight:600}
.detail{display:block;color:#999;font-size:.9rem}
.error{display:block;color:#e88;font-size:.9rem}
footer{margin-top:1.5rem;font-size:.85rem}
@media (max-width:640px){
body{padding:.75rem}
.axis-label,.treatment{font-size:26px}
.reading{r:5px}
}
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


def until_text(now_ms: int, due_ms: float) -> str:
    """A time ahead as a person says it: "now", "in 40 s", "in 4 min", "at 14:30"."""
    seconds = int((due_ms - now_ms) // 1000)
    if seconds <= 0:
        return "now"
    if seconds < 60:
        return f"in {seconds} s"
    if seconds < 3600:
        return f"in {seconds // 60} min"
    return f"at {clock_time(due_ms)}"


# --- glucose in the site's units ---------------------------------------------------------------


def value_text(sgv: int, display: Display) -> str:
    """A reading as the site shows it: ``121`` or ``6.7`` (mg/dL ÷ 18, as Nightscout divides)."""
    return in_units(sgv, display.units)


def delta_text(delta: float | None, display: Display) -> str:
    """The change since the previous reading with its sign: ``+3`` or ``-0.2``; "" when unknown."""
    if delta is None:
        return ""
    if display.mmol:
        return f"{round(delta / MMOL_TO_MGDL, 1) + 0.0:+.1f}"
    return f"{round(delta) + 0:+d}"


def band(sgv: float, display: Display) -> str:
    if sgv < display.thresholds.low:
        return "low"
    if sgv > display.thresholds.high:
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


def amount(value: float) -> str:
    return f"{value:g}"


def y_levels(display: Display) -> list[tuple[float, bool, bool]]:
    """The chart's horizontal lines (mg/dL), whether each is labelled and whether it is an edge
    of the band: the edges are always labelled, round values of the site's units when they
    stand clear of a labelled line."""
    low, high = display.thresholds.low, display.thresholds.high
    if display.mmol:
        grid = [mmol * MMOL_TO_MGDL for mmol in range(3, 23, 3)]
    else:
        grid = list(range(100, Y_MAX + 1, 100))
    levels: list[tuple[float, bool, bool]] = [(low, True, True), (high, True, True)]
    labelled = [low, high]
    for level in grid:
        if not Y_MIN < level <= Y_MAX or level in (low, high):
            continue
        clear = all(abs(level - other) >= LABEL_GAP_MGDL for other in labelled)
        levels.append((level, clear, False))
        if clear:
            labelled.append(level)
    return levels


def level_label(level: float, display: Display, *, edge: bool = True) -> str:
    """A threshold as the site writes it (``4.4``, ``10.0``); a grid line of whole mmol/L as
    the whole number."""
    if display.mmol and not edge:
        return f"{level / MMOL_TO_MGDL:.0f}"
    return in_units(level, display.units)


def chart(
    readings: Sequence[Reading],
    now_ms: int,
    episodes: Sequence[StoredEpisode] = (),
    *,
    hours: int = 24,
    display: Display | None = None,
    doses: Sequence[Dose] = (),
) -> str:
    """The last ``hours`` as SVG: one circle per reading, the target band shaded, a band behind
    the readings for every episode out of range (or without readings), and a dashed line with
    the amounts for every treatment with carbs or insulin."""
    display = display or Display()
    span = hours * HOUR_MS
    start = now_ms - span
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    plot_bottom = TOP + plot_h

    def x(ms: int) -> float:
        return LEFT + max(0.0, min(1.0, (ms - start) / span)) * plot_w

    def y(sgv: float) -> float:
        clamped = max(Y_MIN, min(Y_MAX, sgv))
        return TOP + (Y_MAX - clamped) / (Y_MAX - Y_MIN) * plot_h

    low, high = display.thresholds.low, display.thresholds.high
    parts = [
        f'<svg id="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="glucose, last {hours} hours" xmlns="http://www.w3.org/2000/svg">',
        f'<rect class="target-range" x="{LEFT}" y="{y(high):.1f}" width="{plot_w}" '
        f'height="{y(low) - y(high):.1f}"><title>target {level_label(low, display)}–'
        f"{level_label(high, display)} {unit_label(display.units)}</title></rect>",
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
    for level, labelled, edge in y_levels(display):
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(level):.1f}" y2="{y(level):.1f}"/>'
        )
        if labelled:
            parts.append(
                f'<text class="axis-label y-label" x="{LEFT - 8}" y="{y(level):.1f}" dy=".35em" '
                f'text-anchor="end">{level_label(level, display, edge=edge)}</text>'
            )
    # time labels on round local times, spaced for the range
    step = TICK_MINUTES.get(hours, 180)
    tick = start - start % (30 * 60_000) + 30 * 60_000
    while tick <= now_ms:
        local = _local(tick)
        at = x(tick)
        # a label that would run off either end is left out
        if (local.hour * 60 + local.minute) % step == 0 and 40 <= at <= WIDTH - 40:
            parts.append(
                f'<text class="axis-label x-label" x="{at:.1f}" y="{HEIGHT - 10}" '
                f'text-anchor="middle">{clock_time(tick)}</text>'
            )
        tick += 30 * 60_000
    drawn_to = -float("inf")  # the right end of the last amounts drawn
    for dose in doses:
        if not start <= dose.date <= now_ms:
            continue
        at = x(dose.date)
        shown = [
            (f"{amount(value)} {unit}", cls, row)
            for value, unit, cls, row in (
                (dose.insulin, "U", "insulin", TOP - 40),
                (dose.carbs, "g", "carbs", TOP - 8),
            )
            if value
        ]
        said = ", ".join(f"{text} {cls}" for text, cls, _ in shown)
        parts.append(
            f'<g class="dose"><title>{escape(dose.event_type or "treatment")} {clock_time(dose.date)}: {said}</title>'
            f'<line class="treatment-line" x1="{at:.1f}" x2="{at:.1f}" y1="{TOP - 4}" y2="{plot_bottom}"/>'
        )
        # amounts that would overlap the last ones drawn (at a phone's label size) are left
        # out: such a treatment keeps its line, and says its amounts when hovered
        wide = max((len(text) for text, _, _ in shown), default=0) * LABEL_CHAR_WIDTH
        anchor, left = "middle", at - wide / 2
        if left < LEFT - 8:
            anchor, left = "start", at
        elif left + wide > WIDTH:
            anchor, left = "end", at - wide
        if left >= drawn_to + 8:
            drawn_to = left + wide
            for text, cls, row in shown:
                parts.append(
                    f'<text class="treatment {cls}" x="{at:.1f}" y="{row}" text-anchor="{anchor}">{text}</text>'
                )
        parts.append("</g>")
    for r in readings:
        if not start <= r.date <= now_ms:
            continue
        parts.append(
            f'<circle class="reading" cx="{x(r.date):.1f}" cy="{y(r.sgv):.1f}" r="3" '
            f'fill="{COLOURS[band(r.sgv, display)]}"><title>{value_text(r.sgv, display)} '
            f"{unit_label(display.units)} at {clock_time(r.date)}</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def current_block(latest: Reading | None, now_ms: int, display: Display, delta: float | None = None) -> str:
    if latest is None:
        return '<section id="current" class="current"><span class="muted">no readings stored yet</span></section>'
    stale = now_ms - latest.date > STALE_MS
    error = latest.sgv < 39
    value = "CGM ERROR" if error else value_text(latest.sgv, display)
    shown = "" if error else delta_text(delta, display)
    return (
        f'<section id="current" class="current{" stale" if stale else ""}">'
        f'<span class="sgv {band(latest.sgv, display)}">{escape(value)}</span>'
        f'<span class="arrow" title="{escape(latest.direction or "no direction")}">{escape(arrow(latest.direction))}</span>'
        f'<span class="readout"><span class="delta">{escape(shown)} '
        f'<span class="unit">{unit_label(display.units)}</span></span>'
        f'<span class="age" data-date="{latest.date}">{escape(age_text(now_ms, latest.date))} '
        f'<span class="muted">({clock_time(latest.date)}, {escape(latest.device)})</span></span></span></section>'
    )


def page_title(latest: Reading | None, now_ms: int, display: Display, delta: float | None, site: str) -> str:
    """The tab's title: the value, arrow and delta first, so a tab among others still says it."""
    if latest is None:
        return f"no readings · {site}"
    if latest.sgv < 39:
        return f"CGM ERROR · {site}"
    words = [value_text(latest.sgv, display), arrow(latest.direction)]
    if delta is not None:
        words.append(delta_text(delta, display))
    if now_ms - latest.date > STALE_MS:
        words.append(f"({age_text(now_ms, latest.date)})")
    return f"{' '.join(words)} · {site}"


# --- the machines in words ---------------------------------------------------------------------

#: the product a source key names
SOURCE_NAMES: Final = {
    "dexcomshare": "Dexcom Share",
    "linkup": "LibreLinkUp",
    "minimedcarelink": "Medtronic CareLink",
    "glooko": "Glooko",
    "nightscout": "Nightscout",
    "sim": "Simulated CGM",
    "none": "Pushed data",
    "mqtt": "MQTT",
}

#: what an error of each kind means for the person reading the page
ERROR_WORDS: Final = {
    "AuthRejected": "password refused",
    "AccountLocked": "account locked by the vendor",
    "StepRequired": "the vendor wants you to act in its app first",
    "ConfigError": "settings need fixing",
    "StoreUnusable": "the store cannot be used",
    "SessionExpired": "login expired",
    "RateLimited": "asked to slow down",
    "TransientError": "not answering",
    "Unreachable": "cannot be reached",
    "StoreError": "cannot write the store",
    "ProtocolError": "answered something unexpected",
    "RequestRejected": "refused the request",
    "GapUnknown": "waiting for the Nightscout site",
    "OutputAuthError": "credentials refused",
}

SESSION_WORDS: Final = {
    "inactive": "not logged in yet",
    "authenticating": "logging in",
    "authorizing": "logging in",
    "established": "connected",
    "active": "connected",
    "refreshing": "connected",
    "expired": "login expired, logging in again",
    "failed": "login failing",
    "rejected": "login refused",
}

OUTPUT_WORDS: Final = {
    "reading": "delivering",
    "sending": "delivering",
    "backoff": "failing",
    "paused_auth": "credentials refused",
    "paused_config": "settings need fixing",
    "paused_refusals": "refusing records",
}

_KIND = re.compile(r"^([A-Z][A-Za-z]*): (.*)$", re.DOTALL)


def error_parts(text: str) -> tuple[str | None, str]:
    """``"AuthRejected: 401 …"`` → (the words for its kind, the message without the class)."""
    match = _KIND.match(text)
    if match is None:
        return None, text
    return ERROR_WORDS.get(match.group(1)), match.group(2)


def source_name(key: str) -> str:
    base, _, account = key.partition(":")
    name = SOURCE_NAMES.get(base, base)
    return f"{name} ({account})" if account else name


def loop_name(source: str, loop: str) -> str:
    """A loop as a person calls it: ``NightscoutTreatments`` of nightscout → "treatments"."""
    words = loop
    for prefix in ("Nightscout", "Glooko", "DexcomShare", "LibreLinkUp", "CareLink", "Sim"):
        if words.startswith(prefix) and len(words) > len(prefix):
            words = words[len(prefix) :]
            break
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", words)
    return {"Entries": "readings", "CGM": "CGM readings"}.get(words, spaced.lower())


def _item(cls: str, name: str, sentence: str, detail: str = "", error: str = "") -> str:
    return (
        f'<li class="{cls}"><span class="name">{escape(name)}:</span> {escape(sentence)}'
        + (f'<span class="detail">{escape(detail)}</span>' if detail else "")
        + (f'<span class="error">{escape(error)}</span>' if error else "")
        + "</li>"
    )


def loop_words(view: st.LoopView, now_ms: int, healthy: str) -> tuple[str, str, str]:
    """(what the loop is doing, when it next acts, its error when failing)."""
    due = st.number(view.data.get("next_due"))
    success = st.number(view.data.get("last_success"))
    detail = f"last data fetched {age_text(now_ms, int(success))}" if success else ""
    if view.state == "stopped":
        return "stopped", detail, ""
    if view.count("frames_missing") > 0:
        error = st.text(view.data.get("last_error"))
        kind, message = error_parts(error)
        words = kind or "failing"
        if due is not None:
            words += f", next try {clock_time(due)}" if due > now_ms else ", trying again now"
        return words, detail, message
    if view.state == "operating":
        return f"{healthy}, checking now", detail, ""
    if due is not None:
        return f"{healthy}, next check {until_text(now_ms, due)}", detail, ""
    return healthy, detail, ""


def source_items(source: Mapping[str, Any], views: Sequence[st.LoopView], now_ms: int) -> list[str]:
    key = st.text(source.get("source"), "unknown")
    name = source_name(key)
    raw_session = source.get("session")
    session: Mapping[str, Any] = raw_session if isinstance(raw_session, Mapping) else {}
    state = st.text(session.get("state"), "none")
    if state in ("rejected", "failed"):
        kind, message = error_parts(st.text(session.get("last_error")))
        words = kind or SESSION_WORDS[state]
        retry = st.number(session.get("not_before"))
        if retry is not None:
            words += f", next try {clock_time(retry)}" if retry > now_ms else ", trying again now"
        return [_item("machine", name, words, error=message)]
    if st.text(source.get("poller")) in ("stopping", "stopped"):
        return [_item("machine", name, "stopped")]
    started = any(v.count("frames_ok") > 0 for v in views)
    healthy = SESSION_WORDS.get(state) or ("running" if started else "starting")
    if len(views) == 1:
        words, detail, error = loop_words(views[0], now_ms, healthy)
        return [_item("machine", name, words, detail, error)]
    items = [_item("machine", name, healthy)]
    for view in views:
        words, detail, error = loop_words(view, now_ms, "up to date")
        items.append(_item("machine", f"{name}, {loop_name(key, view.name)}", words, detail, error))
    return items


def machines_block(snapshot: Mapping[str, Any] | None, now_ms: int) -> str:
    if snapshot is None:
        return '<p class="error">the daemon\'s status is not available</p>'
    views = list(st.loops(snapshot))
    items: list[str] = []
    for source in st.sources(snapshot):
        key = st.text(source.get("source"), "unknown")
        items.extend(source_items(source, [v for v in views if v.source == key], now_ms))
    for push in snapshot.get("push") or []:
        if isinstance(push, Mapping):
            state = st.text(push.get("state"), "unknown")
            words = "connected" if state in ("connected", "subscribed") else state.replace("_", " ")
            error = st.text(push.get("last_error")) if state not in ("connected", "subscribed") else ""
            received = int(st.number(push.get("received")) or 0)
            items.append(
                _item(
                    "machine",
                    f"MQTT subscription {st.text(push.get('broker'))}".strip(),
                    f"{words}, {received} messages received",
                    error=error_parts(error)[1] if error else "",
                )
            )
    store = st.store(snapshot)
    if st.text(store.get("state"), "ok") != "ok":
        kind, message = error_parts(st.text(store.get("error")))
        items.append(_item("machine", "Local store", kind or "failing", error=message))
    if not items:
        return '<p class="muted">no sources running</p>'
    return '<ul id="machines">' + "".join(items) + "</ul>"


def outputs_block(
    snapshot: Mapping[str, Any] | None, lag: Mapping[str, Mapping[str, int]], now_ms: int = 0
) -> str:
    items = []
    named = {str(o["name"]): o for o in st.outputs(snapshot)} if snapshot is not None else {}
    for name in sorted({*named, *lag}):
        output = named.get(name, {})
        pending = sum(lag.get(name, {}).values())
        state = st.text(output.get("state"))
        error = ""
        if state in OUTPUT_WORDS:
            kind, error = error_parts(st.text(output.get("last_error")))
            words = (kind if state == "backoff" and kind else None) or OUTPUT_WORDS[state]
            retry = st.number(output.get("retry_at"))
            if state == "backoff" and retry is not None and retry > now_ms:
                words += f", next try {clock_time(retry)}"
        elif state == "idle" or not state:
            words = "up to date" if pending == 0 else "sending soon"
        else:
            words = state.replace("_", " ")
        delivered = int(st.number(output.get("delivered")) or 0)
        counts = f"{pending} waiting, {delivered} delivered" if output else f"{pending} waiting"
        target = st.text(output.get("target"))
        label = f"{name} ({target})" if target else name
        items.append(_item("output", label, f"{words}; {counts}", error=error))
    if not items:
        return '<p class="muted">the store is the only output</p>'
    return '<ul id="outputs">' + "".join(items) + "</ul>"


def range_nav(hours: int, link: Mapping[str, str]) -> str:
    """Links to the other ranges, each with ``link`` (the page's token) so it opens too."""
    parts = []
    for choice in PAGE_HOURS:
        if choice == hours:
            parts.append(f'<strong aria-current="page">{choice} h</strong>')
        else:
            href = "?" + urlencode({"hours": str(choice), **link})
            parts.append(f'<a href="{escape(href)}">{choice} h</a>')
    return '<nav id="ranges" aria-label="time range">' + "".join(parts) + "</nav>"


def render(
    *,
    readings: Sequence[Reading],
    latest: Reading | None,
    snapshot: Mapping[str, Any] | None,
    lag: Mapping[str, Mapping[str, int]],
    now_ms: int,
    title: str = "nightscout-connect",
    episodes: Sequence[StoredEpisode] = (),
    display: Display | None = None,
    delta: float | None = None,
    doses: Sequence[Dose] = (),
    hours: int = 24,
    link: Mapping[str, str] | None = None,
    reload: str = "",
) -> str:
    """The page; ``link`` is the query the range links carry besides ``hours`` (a token), and
    ``reload`` the query the page reloads itself with (empty: its own address)."""
    display = display or Display()
    in_window = sum(1 for r in readings if now_ms - hours * HOUR_MS <= r.date <= now_ms)
    return (
        "<!DOCTYPE html>"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{escape("60; url=" + reload if reload else "60")}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(page_title(latest, now_ms, display, delta, title))}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<header><h1>{escape(title)}</h1>{range_nav(hours, link or {})}</header>"
        f"{current_block(latest, now_ms, display, delta)}"
        f"{chart(readings, now_ms, episodes, hours=hours, display=display, doses=doses)}"
        f"<h2>Sources</h2>{machines_block(snapshot, now_ms)}"
        f"<h2>Outputs</h2>{outputs_block(snapshot, lag, now_ms)}"
        f'<footer class="muted">{in_window} readings in the last {hours} hours · target '
        f"{level_label(display.thresholds.low, display)}–{level_label(display.thresholds.high, display)} "
        f"{unit_label(display.units)} · page built {clock_time(now_ms)}, reloads every minute</footer>"
        "</body></html>"
    )


def bad_range(link: Mapping[str, str], title: str = "nightscout-connect") -> str:
    """The 400 page for a range the page does not draw: the ranges it does, as links."""
    return (
        "<!DOCTYPE html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}: no such range</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{escape(title)}</h1>{range_nav(0, link)}</header>"
        "<p>The chart shows 3, 6, 12 or 24 hours: <code>?hours=</code> takes one of those.</p>"
        "</body></html>"
    )


def unauthorized(*, reads_off: bool, title: str = "nightscout-connect", base: str = "/") -> str:
    """The page a browser gets instead of the glucose page when it may not read: what to do,
    and nothing about the readings (no refresh either: reloading cannot change the answer).
    ``base`` is the page's own path (``/a/NAME/`` under ``serve --fleet``)."""
    if reads_off:
        advice = (
            "<p>Reading is off: no secret is set and anonymous reading is not enabled.</p>"
            "<p>Either set <code>CONNECT_HTTP_SECRET</code> (12+ characters) and open this page as "
            f"<code>{escape(base)}?token=&lt;the secret&gt;</code>, or set <code>CONNECT_HTTP_READABLE=true</code> "
            "to let anyone who can reach this address read it. Then restart.</p>"
        )
    else:
        advice = (
            "<p>This page needs the API secret: open it as "
            f"<code>{escape(base)}?token=&lt;CONNECT_HTTP_SECRET&gt;</code>.</p>"
        )
    return (
        "<!DOCTYPE html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}: not authorized</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>{advice}</body></html>"
    )
