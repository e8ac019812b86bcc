"""Wall-clock time as the runtime sees it, and a virtual one for tests.

The runtime schedules with trio's clock (monotonic, mockable) but reasons about readings in
epoch milliseconds. A clock is any callable returning epoch ms.
"""

from __future__ import annotations

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
