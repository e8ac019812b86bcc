"""Machine cost per frame: the events a frame sends through a Cycle and its Fetch machine, and
the CPU time they take.

No ceiling: a bare transition table does none of the machines' work (guards, callbacks,
construction) and its ratio meant nothing, so the figure is the cost itself.
"""

from __future__ import annotations

import time

from bench.timing import Figures
from machines import CycleMachine, FetchMachine

FRAME_EVENTS = ("start", "ready", "session_ok", "gaps_known", "fetched", "transformed", "persisted", "finish")
#: the Cycle's begin, frame_done and next, the Fetch's reset, and the Fetch's own events
EVENTS_PER_FRAME = 4 + len(FRAME_EVENTS)


def bench_machines(frames: int = 300) -> Figures:
    """Events per frame and CPU microseconds per frame, as the runtime drives the machines."""
    # as the runtime drives them: both machines live as long as the loop
    cycle = CycleMachine()
    fetch = FetchMachine()
    cycle.send("start")

    def frame() -> None:
        cycle.send("begin")
        if fetch.current_state_value == "done":
            fetch.send("reset")
        for event in FRAME_EVENTS:
            fetch.send(event)
        cycle.send("frame_done", ok=True, now_ms=0)
        cycle.send("next")

    frame()  # the first frame has no reset; every later one sends EVENTS_PER_FRAME events
    started = time.process_time()
    for _ in range(frames):
        frame()
    used = time.process_time() - started
    return {"events_per_frame": EVENTS_PER_FRAME, "cpu_us_per_frame": 1e6 * used / frames}
