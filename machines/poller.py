"""Poller: owns a source's session and loops, and routes session events between them."""

from __future__ import annotations

from typing import Any

from statemachine import State, StateMachine


class PollerMachine(StateMachine):
    """idle → running → stopping → stopped.

    While running it is the bus between loops and their shared session: a loop that needs a
    session sends ``session_required``; the poller remembers it, and ``session_resolved`` or
    ``session_error`` releases every waiting loop at once, so one login serves them all.
    """

    idle = State(initial=True)
    running = State()
    stopping = State()
    stopped = State(final=True)

    start = idle.to(running)
    stop = running.to(stopping) | idle.to(stopped)
    finished = stopping.to(stopped)
    session_required = running.to.itself(internal=True)
    session_resolved = running.to.itself(internal=True)
    session_error = running.to.itself(internal=True)

    def __init__(self, loops: tuple[str, ...] = ()) -> None:
        self.loops = loops
        #: loops waiting for the session, in the order they asked
        self.waiting: list[str] = []
        #: loops released by the last resolution or error
        self.released: list[str] = []
        self.session_errors = 0
        self.last_error: Any = None
        super().__init__()

    def on_session_required(self, loop: str = "") -> None:
        if loop not in self.waiting:
            self.waiting.append(loop)

    def on_session_resolved(self) -> None:
        self.released, self.waiting = self.waiting, []

    def on_session_error(self, error: Any = None) -> None:
        self.session_errors += 1
        self.last_error = error
        self.released, self.waiting = self.waiting, []
