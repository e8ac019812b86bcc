"""``sim``: a deterministic simulated CGM — the demo's source and the tests' workhorse.

Readings fall every five minutes on a fixed phase; each value is a pure function of the seed
and the reading's time (a daily rhythm, meal responses and seeded noise), so any window can be
regenerated exactly and a backfill of any length is cheap. Meals come with a bolus and carbs
as ``Meal Bolus`` treatments when enabled.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Final

import attrs
import httpx

from connect.contract import BuilderLike, LastKnown, SourceInfo
from connect.errors import ProtocolError
from connect.fields import ConnectSettings
from connect.records import Batch, Entry, Record, Treatment

INTERVAL_MS: Final = 300_000
DAY_MS: Final = 86_400_000
#: at most this much history per frame; a longer backfill continues in the next frames
MAX_WINDOW_MS: Final = 2 * DAY_MS
#: meal times (minutes after midnight UTC) and typical carbs
MEALS: Final = ((7 * 60 + 30, 45), (12 * 60 + 30, 60), (19 * 60, 70))


class SimSettings(ConnectSettings):
    """Settings of the simulated CGM (``CONNECT_SIM_*``)."""

    sim_seed: int = 1
    sim_device: str = "nightscout-connect-sim"
    sim_treatments: bool = True


_MASK64: Final = (1 << 64) - 1


def _noise(seed: int, index: int) -> float:
    """Seeded noise in [-1, 1), a pure function of the seed and the reading's index: SplitMix64's
    mixing of the pair (a few integer operations, where seeding a generator per reading cost
    ten times more and was most of a reading's cost)."""
    z = (seed * 1_000_003 + index) * 0x9E3779B97F4A7C15 & _MASK64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
    return ((z ^ (z >> 31)) >> 11) * 2.0**-52 - 1.0


def _meal_effect(ms: int, seed: int) -> float:
    """mg/dL above baseline from meals in the last four hours (a gamma-shaped rise and fall)."""
    total = 0.0
    day_start = ms - ms % DAY_MS
    for day in (day_start - DAY_MS, day_start):
        for minute, carbs in MEALS:
            meal_ms = day + minute * 60_000
            age_min = (ms - meal_ms) / 60_000
            if 0 < age_min < 240:
                size = carbs * (0.8 + 0.4 * ((_noise(seed, meal_ms // INTERVAL_MS) + 1) / 2))
                total += size * 1.6 * (age_min / 45) * math.exp(1 - age_min / 45)
    return total


def glucose_at(ms: int, seed: int) -> int:
    """The simulated glucose (mg/dL) at a reading time."""
    index = ms // INTERVAL_MS
    day_phase = 2 * math.pi * (ms % DAY_MS) / DAY_MS
    base = 115 + 20 * math.sin(day_phase + seed) + 8 * math.sin(3 * day_phase)
    smooth = sum(_noise(seed, index - k) for k in range(6)) / 6  # correlated noise
    value = base + _meal_effect(ms, seed) + 12 * smooth
    return int(min(400, max(40, round(value))))


def direction_for(delta_per_min: float) -> str:
    """Nightscout's direction for a rate of change in mg/dL per minute."""
    for limit, name in ((3, "DoubleUp"), (2, "SingleUp"), (1, "FortyFiveUp"), (-1, "Flat"), (-2, "FortyFiveDown"), (-3, "SingleDown")):  # fmt: skip
        if delta_per_min > limit:
            return name
    return "DoubleDown"


def reading_times(after_ms: int, until_ms: int) -> Iterator[int]:
    """Reading times t with after < t <= until, on the five-minute grid."""
    first = (after_ms // INTERVAL_MS + 1) * INTERVAL_MS
    yield from range(first, until_ms + 1, INTERVAL_MS)


@attrs.frozen
class SimWindow:
    """What the sim "fetched": a time window; transform turns it into readings."""

    after: int
    until: int
    treatments_after: int


@attrs.define
class SimDriver:
    settings: SimSettings

    def generate_driver(self, builder: BuilderLike) -> None:
        builder.register_loop(
            "SimEntries",
            fetch=self.fetch,
            transform=self.transform,
            collections=("entries", "treatments"),
            expected_interval=timedelta(milliseconds=INTERVAL_MS),
            site_filter={"device": self.settings.sim_device},
        )

    async def fetch(self, session: Any, last_known: LastKnown) -> SimWindow:
        after = max(last_known.get("entries"), last_known.now - 90 * DAY_MS)
        until = min(last_known.now, after + MAX_WINDOW_MS)
        return SimWindow(after=after, until=until, treatments_after=last_known.get("treatments"))

    def transform(self, raw: Any, last_known: LastKnown) -> Batch:
        if not isinstance(raw, SimWindow) or raw.until < raw.after:
            raise ProtocolError("sim: not a window")
        seed, device = self.settings.sim_seed, self.settings.sim_device
        records: list[Record] = []
        for ms in reading_times(raw.after, raw.until):
            value = glucose_at(ms, seed)
            slope = (value - glucose_at(ms - INTERVAL_MS, seed)) / 5.0
            records.append(
                Entry(type="sgv", date=ms, sgv=value, direction=direction_for(slope), device=device, noise=1)
            )
        if self.settings.sim_treatments:
            records.extend(self._meals(max(raw.after, raw.treatments_after), raw.until))
        more = raw.until < last_known.now
        return Batch.of(records, covered={"entries": raw.until, "treatments": raw.until}, more=more)

    def _meals(self, after: int, until: int) -> Iterator[Treatment]:
        day = after - after % DAY_MS
        while day <= until:
            for minute, carbs in MEALS:
                at = day + minute * 60_000
                if after < at <= until:
                    grams = round(
                        carbs * (0.8 + 0.4 * ((_noise(self.settings.sim_seed, at // INTERVAL_MS) + 1) / 2))
                    )
                    yield Treatment(
                        event_type="Meal Bolus",
                        date=at,
                        device=self.settings.sim_device,
                        carbs=grams,  # whole grams, served as the integer they are
                        insulin=round(grams / 10, 1),
                        entered_by=self.settings.sim_device,
                    )
            day += DAY_MS


def make(settings: Any, client: httpx.AsyncClient) -> SimDriver:
    return SimDriver(settings=settings)


SOURCE = SourceInfo(
    name="sim",
    description="a deterministic simulated CGM (a reading every 5 minutes, meals as treatments)",
    settings=SimSettings,
    factory=make,
)
