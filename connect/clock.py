"""Wall-clock time as the runtime sees it, a virtual one for tests, and the jitter's randomness.

The runtime schedules with trio's clock (monotonic, mockable) but reasons about readings in
epoch milliseconds. A clock is any callable returning epoch ms.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import trio

#: epoch milliseconds on demand: :func:`wall_ms`, a :class:`VirtualClock`, or a test's own
Clock = Callable[[], int]


def wall_ms() -> int:
    """Epoch milliseconds from the system clock."""
    return int(time.time() * 1000)


class VirtualClock:
    """Epoch ms that advance with trio's clock: under MockClock, days pass in microseconds."""

    def __init__(self, start_ms: int) -> None:
        self.start_ms = start_ms
        self._origin: float | None = None

    def __call__(self) -> int:
        now = trio.current_time()
        if self._origin is None:
            self._origin = now
        return self.start_ms + int(round((now - self._origin) * 1000))


#: the process's one generator seeded from the system: each account's own is seeded from it
_SEEDS = random.Random()


def jitter_rng() -> random.Random:
    """A generator of its own for one part of one account (its retries' and schedule's jitter).

    ``random.Random()`` reads 2.5 KB of the system's randomness for each generator: at a
    thousand accounts, three each, thousands of system calls while they start (each one handing
    the interpreter to another thread). Jitter needs no such seed, only generators that differ."""
    return random.Random(_SEEDS.getrandbits(64))
