"""Timing helpers shared by the figures."""

from __future__ import annotations

import time
from collections.abc import Callable

Figures = dict[str, float]


def rate(count: int, fn: Callable[[], None]) -> float:
    """``count`` divided by the seconds ``fn`` takes."""
    started = time.perf_counter()
    fn()
    return count / (time.perf_counter() - started)


def rounded(ours: float, ceiling: float) -> Figures:
    return {"ours": round(ours, 1), "ceiling": round(ceiling, 1), "ratio": round(ours / ceiling, 3)}


def best_of(rounds: int, ours: Callable[[], float], ceiling: Callable[[], float]) -> Figures:
    """Alternate the two measurements and keep the best of each: on a shared machine the best
    run is the one least disturbed by everything else."""
    mine: list[float] = []
    top: list[float] = []
    for _ in range(rounds):
        top.append(ceiling())
        mine.append(ours())
    return rounded(max(mine), max(top))


def cpu_rate(count: int, fn: Callable[[], None]) -> float:
    """``count`` divided by the CPU seconds (this process, every thread) ``fn`` takes: steadier
    than wall time on a shared machine, for work that waits on nothing."""
    started = time.process_time()
    fn()
    return count / (time.process_time() - started)
