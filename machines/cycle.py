"""Cycle: one loop's endless round of frames, with backoff after failures."""

from __future__ import annotations

from typing import Any

from statemachine import State, StateMachine


class CycleMachine(StateMachine):
    """init → ready → operating → after → ready …; ``stop`` from anywhere → stopped.

    ``ready`` waits ``backoff(frames_missing)`` (nothing after a success); ``after`` waits for
    the next expected reading. One failed frame adds one to ``frames_missing`` however many
    retries it made; a success resets it.
    """

    init = State(initial=True)
    ready = State()
    operating = State()
    after = State()
    stopped = State(final=True)

    start = init.to(ready)
    begin = ready.to(operating)
    frame_done = operating.to(after)
    next = after.to(ready)
    stop = init.to(stopped) | ready.to(stopped) | operating.to(stopped) | after.to(stopped)

    def __init__(self) -> None:
        self.frames_ok = 0
        self.frames_failed = 0
        self.frames_missing = 0
        self.last_error: Any = None
        self.last_success_ms: int | None = None
        self.retry_after: float | None = None
        super().__init__()

    def on_frame_done(self, ok: bool = False, error: Any = None, now_ms: int | None = None) -> None:
        if ok:
            self.frames_ok += 1
            self.frames_missing = 0
            self.last_success_ms = now_ms
            self.retry_after = None
        else:
            self.frames_failed += 1
            self.frames_missing += 1
            self.last_error = error
            self.retry_after = getattr(error, "retry_after", None)
