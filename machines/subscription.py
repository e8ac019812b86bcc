"""Subscription: one push source holding a broker subscription open (the MQTT source).

connecting → subscribing → listening; a lost connection (or a refused connect or subscribe) →
backoff, then connecting again, on the one backoff policy. Nothing here is a schedule: a push
source has nobody to ask, so the machine only decides how long to wait before reconnecting.
"""

from __future__ import annotations

from statemachine import State

from machines.base import Machine
from machines.timing import Backoff

#: a broker that went away: a second after the first failure, at most five minutes
RECONNECT = Backoff(base=1.0, cap=300.0)


class SubscriptionMachine(Machine):
    """connecting → subscribing → listening; ``lost`` → backoff → ``retry`` → connecting.

    ``failures`` counts connections lost in a row; reaching ``listening`` (the broker granted
    the subscriptions) clears it, so a broker restarted once costs one short wait. ``stop``
    ends the machine from any state.
    """

    connecting = State(initial=True)
    subscribing = State()
    listening = State()
    backoff = State()
    stopped = State(final=True)

    connected = connecting.to(subscribing)
    subscribed = subscribing.to(listening)
    lost = connecting.to(backoff) | subscribing.to(backoff) | listening.to(backoff)
    retry = backoff.to(connecting)
    stop = connecting.to(stopped) | subscribing.to(stopped) | listening.to(stopped) | backoff.to(stopped)

    def __init__(self, policy: Backoff = RECONNECT) -> None:
        self.policy = policy
        self.failures = 0
        self.last_error: str | None = None
        super().__init__()

    def on_enter_listening(self) -> None:
        self.failures = 0
        self.last_error = None

    def on_lost(self, error: str = "") -> None:
        self.failures += 1
        self.last_error = error or None

    def halt(self) -> None:
        """The subscription's task ends: the machine stops, once."""
        if not self.stopped.is_active:
            self.send("stop")

    def wait_s(self, rand: float = 0.0) -> float:
        """Seconds to wait in ``backoff`` before the next connection."""
        return self.policy.delay(self.failures, rand)
