"""Machine events/s through a Cycle and its Fetch machines, beside a bare transition table."""

from __future__ import annotations

from bench.timing import Figures, rate
from machines import CycleMachine, FetchMachine

FRAME_EVENTS = ("start", "ready", "session_ok", "gaps_known", "fetched", "transformed", "persisted", "finish")


def bench_machines(frames: int = 3000) -> Figures:
    """Events/s through a Cycle and its Fetch machines, beside a bare transition table."""

    def ours() -> None:
        # as the runtime drives them: both machines live as long as the loop
        cycle = CycleMachine()
        fetch = FetchMachine()
        cycle.send("start")
        for _ in range(frames):
            cycle.send("begin")
            if fetch.current_state_value == "done":
                fetch.send("reset")
            for event in FRAME_EVENTS:
                fetch.send(event)
            cycle.send("frame_done", ok=True, now_ms=0)
            cycle.send("next")

    table = {
        ("idle", "start"): "waiting", ("waiting", "ready"): "auth", ("auth", "session_ok"): "gaps",
        ("gaps", "gaps_known"): "fetching", ("fetching", "fetched"): "transforming",
        ("transforming", "transformed"): "persisting", ("persisting", "persisted"): "success",
        ("success", "finish"): "done", ("ready", "begin"): "operating",
        ("operating", "frame_done"): "after", ("after", "next"): "ready",
    }  # fmt: skip

    def ceiling() -> None:
        cycle = "ready"
        for _ in range(frames):
            cycle = table[(cycle, "begin")]
            state = "idle"
            for event in FRAME_EVENTS:
                state = table[(state, event)]
            cycle = table[(cycle, "frame_done")]
            cycle = table[(cycle, "next")]

    events = frames * (len(FRAME_EVENTS) + 3)
    o, c = rate(events, ours), rate(events, ceiling)
    return {"ours": o, "ceiling": c, "ratio": o / c}
