"""Poller: owns a source's session and loops, and routes session events between them."""

from __future__ import annotations

from statemachine import State

from machines.base import Machine
from machines.decisions import Fault, SessionDecision, Use
from machines.session import SessionMachine


class PollerMachine(Machine):
    """idle → running → stopping → stopped.

    While running it is the bus between the loops and their one shared :class:`SessionMachine`:
    a loop asks it for the session (:meth:`acquire`); a loop told to :class:`Join` is kept in
    ``waiting`` until the login or refresh in flight ends, and :meth:`resolved` or
    :meth:`errored` then releases every waiting loop at once, so one login serves them all.
    There is no lock beside it: the session machine lets one login be in flight at a time.
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

    def __init__(self, loops: tuple[str, ...] = (), session: SessionMachine | None = None) -> None:
        self.loops = loops
        #: the shared session; None for a source that needs no login
        self.session = session
        #: loops waiting for the session, in the order they asked
        self.waiting: list[str] = []
        #: loops released by the last resolution or error
        self.released: list[str] = []
        self.session_errors = 0
        self.last_error: Fault | None = None
        super().__init__()

    def acquire(self, loop: str, now: int) -> SessionDecision:
        """``loop`` needs the session at ``now``: use it, log in, refresh, join, or wait."""
        if self.session is None:
            return Use(None)
        decision = self.session.request(now)
        if not isinstance(decision, Use) and self.current_state_value == "running":
            self.send("session_required", loop=loop)
        return decision

    def resolved(self) -> list[str]:
        """The login or refresh in flight gave a session: the loops to release."""
        if self.current_state_value == "running":
            self.send("session_resolved")
        else:
            self.released, self.waiting = self.waiting, []
        return self.released

    def errored(self, error: Fault | None) -> list[str]:
        """The login or refresh in flight failed (or was cancelled): the loops to release."""
        if self.current_state_value == "running":
            self.send("session_error", error=error)
        else:
            self.released, self.waiting = self.waiting, []
        return self.released

    def shut_down(self) -> None:
        """Every loop has ended: stop (through ``stopping``) unless already stopped."""
        if self.idle.is_active or self.running.is_active:
            self.send("stop")
        if self.stopping.is_active:
            self.send("finished")

    def on_session_required(self, loop: str = "") -> None:
        if loop not in self.waiting:
            self.waiting.append(loop)

    def on_session_resolved(self) -> None:
        self.released, self.waiting = self.waiting, []

    def on_session_error(self, error: Fault | None = None) -> None:
        self.session_errors += 1
        self.last_error = error
        self.released, self.waiting = self.waiting, []
