"""Machine cost per frame: the events a frame sends through a Cycle and its Fetch machine, and
the CPU time they take.

No ceiling: a bare transition table does none of the machines' work (guards, callbacks,
construction) and its ratio meant nothing, so the figure is the cost itself.
"""

from __future__ import annotations

import time

from bench.timing import Figures
from machines import CycleMachine, FetchMachine

FRAME_EVENTS = ("start", "session_ok", "gaps_known", "fetched", "persisted")
#: the Cycle's begin and frame_done around the Fetch machine's own events
EVENTS_PER_FRAME = 2 + len(FRAME_EVENTS)


def bench_machines(frames: int = 300) -> Figures:
    """Events per frame and CPU microseconds per frame, as the runtime drives the machines."""
    # as the runtime drives them: both machines live as long as the loop
    cycle = CycleMachine()
    fetch = FetchMachine()

    def frame() -> None:
        cycle.begin_frame()
        for event in FRAME_EVENTS:
            fetch.send(event)
        cycle.send("frame_done", ok=True, now_ms=0)

    frame()
    started = time.process_time()
    for _ in range(frames):
        frame()
    used = time.process_time() - started
    return {"events_per_frame": EVENTS_PER_FRAME, "cpu_us_per_frame": 1e6 * used / frames}
