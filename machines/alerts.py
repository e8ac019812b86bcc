"""Alerts and episodes: what a glucose series means for the person wearing the sensor.

Pure and synchronous, like the other machines: :class:`AlertMachine` takes readings and the
time (``reading(r, now)``, ``tick(now)``) and answers decisions — raise this alert, clear that
one, the episode changed — and the deadline of its next look at the clock (``deadline(now)``);
the daemon's alerting task performs them (events and episodes in the store) and sleeps until
that deadline. It imports nothing of ours.

The rules, one per alert kind, each a two-state rule (clear ⇄ raised):

* ``urgent_low`` / ``low`` — a reading below ``BG_LOW`` / ``BG_TARGET_BOTTOM``; over once a
  reading is back at or above the threshold plus the hysteresis margin.
* ``high`` / ``urgent_high`` — a reading above ``BG_TARGET_TOP`` / ``BG_HIGH``; over once a
  reading is at or below the threshold minus the margin.
* ``falling_fast`` / ``rising_fast`` — the arrow is a double (or triple) arrow, or, without an
  arrow, the change since the previous reading is at least ``fast_rate`` mg/dL a minute; over
  once the trend is below a single arrow (``fast_clear_rate``).
* ``stale`` / ``urgent_stale`` — no reading for ``ALARM_TIMEAGO_WARN_MINS`` /
  ``ALARM_TIMEAGO_URGENT_MINS``; over with the next reading.

An alert is raised once per episode of its condition, and announced again every
``repeat_ms`` while the condition lasts and the newest reading is current. History never
raises one: a reading older than ``max_age_ms`` when it is evaluated (a backfill, a late
upload) moves the conditions and the episodes, but only a current reading (or the clock, for
staleness) raises an alert. A condition that history shows to be over clears its alert.

The episode is the band the conditions put the newest reading in (``urgent_low``, ``low``,
``normal``, ``high``, ``urgent_high``), or ``stale`` while readings are missing; a gap longer
than the stale limit inside history is recorded as a stale episode too, silently.

Thresholds are mg/dL here; :func:`site_thresholds` turns a Nightscout site's settings (which
may be in mmol/L) into them, the one place where units are converted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

import attrs

MIN_MS: Final = 60_000

AlertKind = Literal[
    "urgent_low", "low", "high", "urgent_high", "falling_fast", "rising_fast", "stale", "urgent_stale"
]
EpisodeKind = Literal["urgent_low", "low", "normal", "high", "urgent_high", "stale"]

GLUCOSE_KINDS: Final[tuple[AlertKind, ...]] = ("urgent_low", "low", "high", "urgent_high")
RATE_KINDS: Final[tuple[AlertKind, ...]] = ("falling_fast", "rising_fast")
STALE_KINDS: Final[tuple[AlertKind, ...]] = ("stale", "urgent_stale")
ALERT_KINDS: Final[tuple[AlertKind, ...]] = (*GLUCOSE_KINDS, *RATE_KINDS, *STALE_KINDS)
EPISODE_KINDS: Final[tuple[EpisodeKind, ...]] = (
    "urgent_low",
    "low",
    "normal",
    "high",
    "urgent_high",
    "stale",
)
#: alerts a person should not sleep through (Nightscout's URGENT level)
URGENT_KINDS: Final = frozenset({"urgent_low", "urgent_high", "urgent_stale"})

#: Nightscout's constants.MMOL_TO_MGDL
MMOL_TO_MGDL: Final = 18.0
#: Nightscout converts BG_* thresholds from mmol/L only when BG_HIGH is below this
MMOL_BELOW: Final = 50.0
#: values below this are CGM error codes, not glucose (Nightscout shows them as errors)
LOWEST_GLUCOSE: Final = 39
#: a previous reading further back than this gives no rate
RATE_WINDOW_MS: Final = 15 * MIN_MS

#: arrows and what they say of the trend: −2 falling fast … 2 rising fast
ARROW_LEVELS: Final[Mapping[str, int]] = {
    "TripleDown": -2,
    "DoubleDown": -2,
    "SingleDown": -1,
    "FortyFiveDown": 0,
    "Flat": 0,
    "FortyFiveUp": 0,
    "SingleUp": 1,
    "DoubleUp": 2,
    "TripleUp": 2,
}


def is_mmol(units: str | None) -> bool:
    """Nightscout's test for a site in mmol/L (``DISPLAY_UNITS`` containing "mmol")."""
    return "mmol" in (units or "").lower()


def site_thresholds(
    bg_low: float, bg_target_bottom: float, bg_target_top: float, bg_high: float, units: str | None
) -> tuple[float, float, float, float]:
    """A site's ``BG_LOW``, ``BG_TARGET_BOTTOM``, ``BG_TARGET_TOP``, ``BG_HIGH`` in mg/dL.

    Nightscout's own rule: on a site whose units are mmol/L and whose ``BG_HIGH`` is below 50,
    all four are mmol/L and are converted (× 18, rounded); otherwise they are mg/dL as they
    stand (an old mmol site that kept its thresholds in mg/dL keeps working).
    """
    values = (bg_low, bg_target_bottom, bg_target_top, bg_high)
    if is_mmol(units) and bg_high < MMOL_BELOW:
        return tuple(float(round(v * MMOL_TO_MGDL)) for v in values)  # type: ignore[return-value]
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def in_units(mgdl: float, units: str | None) -> str:
    """A glucose value as a person on that site reads it: ``68`` or ``3.8``."""
    if is_mmol(units):
        return f"{mgdl / MMOL_TO_MGDL:.1f}"
    return f"{round(mgdl)}"


def unit_label(units: str | None) -> str:
    return "mmol/L" if is_mmol(units) else "mg/dL"


@attrs.frozen(kw_only=True)
class Thresholds:
    """The rules' numbers, glucose in mg/dL and times in epoch-ms spans."""

    urgent_low: float = 55.0
    low: float = 80.0
    high: float = 180.0
    urgent_high: float = 260.0
    #: how far back across a threshold a reading must be to end its alert
    hysteresis: float = 5.0
    stale_ms: int = 15 * MIN_MS
    urgent_stale_ms: int = 30 * MIN_MS
    #: the snooze: an alert that lasts is announced again after this long
    repeat_ms: int = 30 * MIN_MS
    #: a reading older than this when evaluated is history (None: ``stale_ms``)
    history_ms: int | None = None
    #: mg/dL a minute that raise the trend alerts without an arrow, and below which they end
    fast_rate: float = 3.0
    fast_clear_rate: float = 2.0

    @property
    def max_age_ms(self) -> int:
        return self.stale_ms if self.history_ms is None else self.history_ms

    def of(self, kind: str) -> float:
        """The threshold a kind is judged by (mg/dL, mg/dL a minute, or minutes)."""
        if kind in GLUCOSE_KINDS:
            return float(getattr(self, kind))
        if kind in RATE_KINDS:
            return self.fast_rate
        return (self.stale_ms if kind == "stale" else self.urgent_stale_ms) / MIN_MS

    def problems(self) -> list[str]:
        """What makes these numbers unusable (empty when they are fine)."""
        out = []
        if not self.urgent_low < self.low < self.high < self.urgent_high:
            out.append(
                "the thresholds must rise: BG_LOW < BG_TARGET_BOTTOM < BG_TARGET_TOP < BG_HIGH "
                f"(got {self.urgent_low:g} < {self.low:g} < {self.high:g} < {self.urgent_high:g} mg/dL)"
            )
        if not self.stale_ms < self.urgent_stale_ms:
            out.append("ALARM_TIMEAGO_WARN_MINS must be less than ALARM_TIMEAGO_URGENT_MINS")
        if self.hysteresis < 0:
            out.append("the hysteresis margin cannot be negative")
        if not 0 < self.fast_clear_rate <= self.fast_rate:
            out.append("the trend rates must satisfy 0 < clear rate <= raise rate")
        return out


@attrs.frozen
class Reading:
    """A CGM reading as the rules see it (sgv in mg/dL)."""

    date: int
    sgv: int
    direction: str | None = None


@attrs.frozen
class Episode:
    """A stretch of time in one band; ``end`` is None while it lasts."""

    kind: EpisodeKind
    start: int
    end: int | None = None


@attrs.frozen
class RaiseAlert:
    """Announce ``kind``: first (``repeat`` 0) or again while it lasts (``repeat`` ≥ 1).

    ``reading`` is the reading that shows it (for staleness: the last one there is);
    ``since`` is when the alert was first raised, ``at`` now.
    """

    kind: AlertKind
    reading: Reading | None
    threshold: float
    at: int
    since: int
    repeat: int


@attrs.frozen
class ClearAlert:
    """``kind`` is over: ``reading`` is back across the threshold (or, for staleness, here)."""

    kind: AlertKind
    reading: Reading | None
    threshold: float
    at: int
    since: int


@attrs.frozen
class ChangeEpisode:
    """The episode changed: ``ended`` (its ``end`` set; None for the first) and ``started``.

    ``announce`` is False for changes that history shows (a backfill, a gap found late).
    """

    ended: Episode | None
    started: Episode
    at: int
    announce: bool


AlertDecision = RaiseAlert | ClearAlert | ChangeEpisode


@attrs.define
class Raised:
    """An alert that was raised: when first, when last announced, how often."""

    since: int
    last: int
    count: int


@attrs.define
class EpisodeStats:
    """The running episode and what its readings did."""

    kind: EpisodeKind
    start: int
    sgv_min: int | None = None
    sgv_max: int | None = None
    readings: int = 0

    def add(self, sgv: int) -> None:
        self.sgv_min = sgv if self.sgv_min is None else min(self.sgv_min, sgv)
        self.sgv_max = sgv if self.sgv_max is None else max(self.sgv_max, sgv)
        self.readings += 1


class BadState(ValueError):
    """A stored alert state that this version cannot read."""


class AlertMachine:
    """One account's alert state: the conditions that hold, the alerts raised, the episode.

    ``reading`` takes readings oldest first (a reading not newer than the last one is passed
    over: a late upload of an older reading changes nothing); ``tick`` looks at the clock
    (staleness, repeats) and is called after every batch of readings and at ``deadline``.
    """

    STATE_VERSION: Final = 1

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        #: conditions that hold now (with hysteresis)
        self.active: set[str] = set()
        self.raised: dict[str, Raised] = {}
        self.last: Reading | None = None
        self.episode: EpisodeStats | None = None

    # --- events ------------------------------------------------------------------------------

    def reading(self, r: Reading, now: int) -> list[AlertDecision]:
        """A stored reading, evaluated at ``now``."""
        if r.sgv < LOWEST_GLUCOSE or (self.last is not None and r.date <= self.last.date):
            return []
        t = self.thresholds
        out: list[AlertDecision] = []
        previous = self.last
        if previous is not None and r.date - previous.date >= t.stale_ms and self._episode_kind() != "stale":
            # readings were missing here: history shows it (the clock did not see it live)
            out.append(self._change("stale", previous.date, now, announce=False))
        for kind in GLUCOSE_KINDS:
            self._set(kind, _enters(kind, r.sgv, t) or (kind in self.active and _holds(kind, r.sgv, t)))
        level = trend_level(r, previous, t)
        if level is not None:
            self._set("falling_fast", level <= -2 or ("falling_fast" in self.active and level <= -1))
            self._set("rising_fast", level >= 2 or ("rising_fast" in self.active and level >= 1))
        self.last = r
        band = self._band()
        if self.episode is None or self.episode.kind != band:
            out.append(self._change(band, r.date, now, announce=self._current(r, now)))
        assert self.episode is not None
        self.episode.add(r.sgv)
        current = self._current(r, now)
        for kind in (*GLUCOSE_KINDS, *RATE_KINDS):
            out.extend(self._rule(kind, now, r, may_raise=current))
        return out

    def tick(self, now: int) -> list[AlertDecision]:
        """Look at the clock: staleness begins or ends, lasting alerts are announced again."""
        last = self.last
        if last is None:
            return []
        t = self.thresholds
        out: list[AlertDecision] = []
        age = now - last.date
        self._set("stale", age >= t.stale_ms)
        self._set("urgent_stale", age >= t.urgent_stale_ms)
        if "stale" in self.active and self._episode_kind() != "stale":
            out.append(self._change("stale", last.date, now, announce=True))
        for kind in STALE_KINDS:
            out.extend(self._rule(kind, now, last, may_raise=True))
        current = self._current(last, now)
        for kind in (*GLUCOSE_KINDS, *RATE_KINDS):
            if kind in self.raised and kind in self.active and current:
                out.extend(self._rule(kind, now, last, may_raise=True))
        return out

    def deadline(self, now: int) -> int | None:
        """When ``tick`` may next decide something (None: not before another reading)."""
        last = self.last
        if last is None:
            return None
        t = self.thresholds
        due: list[int] = []
        if "stale" not in self.active:
            due.append(last.date + t.stale_ms)
        if "urgent_stale" not in self.active:
            due.append(last.date + t.urgent_stale_ms)
        for kind, raised in self.raised.items():
            if kind not in self.active:
                continue
            repeat_at = raised.last + t.repeat_ms
            # a glucose or trend alert repeats only while the newest reading is current
            current_until = last.date + t.max_age_ms
            if kind in STALE_KINDS or (repeat_at <= current_until and now <= current_until):
                due.append(repeat_at)
        later = [d for d in due if d > now]
        if len(later) < len(due):
            # a deadline already passed that a tick has not yet seen: look now
            return now
        return min(later) if later else None

    # --- what the status and the store show -------------------------------------------------

    @property
    def episode_kind(self) -> EpisodeKind | None:
        return None if self.episode is None else self.episode.kind

    def to_state(self) -> dict[str, Any]:
        """The state as plain JSON data (kept in the store: a restart raises nothing again)."""
        return {
            "v": self.STATE_VERSION,
            "active": sorted(self.active),
            "raised": {k: attrs.asdict(v) for k, v in sorted(self.raised.items())},
            "last": None if self.last is None else attrs.asdict(self.last),
            "episode": None if self.episode is None else attrs.asdict(self.episode),
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any] | None, thresholds: Thresholds | None = None) -> AlertMachine:
        """A machine in a stored state; :class:`BadState` when it cannot be read."""
        machine = cls(thresholds)
        if not data:
            return machine
        try:
            if data.get("v") != cls.STATE_VERSION:
                raise BadState(f"alert state version {data.get('v')!r}")
            active = set(_kinds(data.get("active", ())))
            raised = {
                kind: Raised(since=int(v["since"]), last=int(v["last"]), count=int(v["count"]))
                for kind, v in dict(data.get("raised") or {}).items()
                if kind in _kinds([kind])
            }
            last_data = data.get("last")
            last = (
                None
                if last_data is None
                else Reading(int(last_data["date"]), int(last_data["sgv"]), _text(last_data.get("direction")))
            )
            episode_data = data.get("episode")
            episode = None
            if episode_data is not None:
                kind = str(episode_data["kind"])
                if kind not in EPISODE_KINDS:
                    raise BadState(f"unknown episode kind {kind!r}")
                episode = EpisodeStats(
                    kind=kind,  # type: ignore[arg-type]
                    start=int(episode_data["start"]),
                    sgv_min=_int_or_none(episode_data.get("sgv_min")),
                    sgv_max=_int_or_none(episode_data.get("sgv_max")),
                    readings=int(episode_data.get("readings", 0)),
                )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadState(f"unreadable alert state ({type(exc).__name__})") from None
        machine.active, machine.raised, machine.last, machine.episode = active, raised, last, episode
        return machine

    # --- the rules ----------------------------------------------------------------------------

    def _current(self, r: Reading, now: int) -> bool:
        return now - r.date <= self.thresholds.max_age_ms

    def _set(self, kind: str, on: bool) -> None:
        if on:
            self.active.add(kind)
        else:
            self.active.discard(kind)

    def _band(self) -> EpisodeKind:
        for kind in ("urgent_low", "low", "urgent_high", "high"):
            if kind in self.active:
                return kind  # type: ignore[return-value]
        return "normal"

    def _episode_kind(self) -> EpisodeKind | None:
        return None if self.episode is None else self.episode.kind

    def _change(self, kind: EpisodeKind, start: int, now: int, *, announce: bool) -> ChangeEpisode:
        ended = None if self.episode is None else Episode(self.episode.kind, self.episode.start, start)
        self.episode = EpisodeStats(kind=kind, start=start)
        return ChangeEpisode(ended=ended, started=Episode(kind, start), at=now, announce=announce)

    def _rule(self, kind: AlertKind, now: int, r: Reading | None, *, may_raise: bool) -> list[AlertDecision]:
        """One kind's two-state rule: raise once, repeat after the snooze, clear when over."""
        t = self.thresholds
        raised = self.raised.get(kind)
        if kind in self.active:
            if raised is None:
                if not may_raise:
                    return []
                self.raised[kind] = Raised(since=now, last=now, count=1)
                return [RaiseAlert(kind, r, t.of(kind), now, now, 0)]
            if may_raise and now - raised.last >= t.repeat_ms:
                raised.last = now
                raised.count += 1
                return [RaiseAlert(kind, r, t.of(kind), now, raised.since, raised.count - 1)]
            return []
        if raised is not None:
            del self.raised[kind]
            return [ClearAlert(kind, r, t.of(kind), now, raised.since)]
        return []


def _enters(kind: str, sgv: int, t: Thresholds) -> bool:
    if kind == "urgent_low":
        return sgv < t.urgent_low
    if kind == "low":
        return sgv < t.low
    if kind == "high":
        return sgv > t.high
    return sgv > t.urgent_high


def _holds(kind: str, sgv: int, t: Thresholds) -> bool:
    """Still on: not yet back across the threshold by the hysteresis margin."""
    h = t.hysteresis
    if kind == "urgent_low":
        return sgv < t.urgent_low + h
    if kind == "low":
        return sgv < t.low + h
    if kind == "high":
        return sgv > t.high - h
    return sgv > t.urgent_high - h


def trend_level(r: Reading, previous: Reading | None, t: Thresholds) -> int | None:
    """−2 falling fast, −1 falling, 0 steady, 1 rising, 2 rising fast; None: nothing known.

    The arrow when there is one; otherwise the change since the previous reading (within
    :data:`RATE_WINDOW_MS`) in mg/dL a minute.
    """
    level = ARROW_LEVELS.get(r.direction or "")
    if level is not None:
        return level
    if previous is None or not 0 < r.date - previous.date <= RATE_WINDOW_MS:
        return None
    rate = (r.sgv - previous.sgv) / ((r.date - previous.date) / MIN_MS)
    if rate <= -t.fast_rate:
        return -2
    if rate <= -t.fast_clear_rate:
        return -1
    if rate >= t.fast_rate:
        return 2
    if rate >= t.fast_clear_rate:
        return 1
    return 0


def _kinds(values: Iterable[Any]) -> list[str]:
    out = []
    for value in values:
        if value not in ALERT_KINDS:
            raise BadState(f"unknown alert kind {value!r}")
        out.append(str(value))
    return out


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


__all__ = [
    "ALERT_KINDS",
    "EPISODE_KINDS",
    "AlertDecision",
    "AlertMachine",
    "BadState",
    "ChangeEpisode",
    "ClearAlert",
    "Episode",
    "RaiseAlert",
    "Reading",
    "Thresholds",
    "site_thresholds",
]
