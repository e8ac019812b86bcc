"""The formal machines (Session, Fetch, Cycle, Poller, Delivery, Subscription, Lease) and their timing math.

Pure and synchronous: no I/O, no async, no event loop. Each takes events that carry their facts
(``now``, the outcome, the error) and answers what to do next (:mod:`machines.decisions`); the
runtime in ``connect.runtime`` and the outputs perform the I/O, as h11 does for HTTP.
"""

from machines.cycle import CycleMachine
from machines.delivery import DeliveryMachine
from machines.fetch import FetchMachine
from machines.lease import LeaseMachine
from machines.poller import PollerMachine
from machines.session import SessionMachine
from machines.subscription import SubscriptionMachine

ALL_MACHINES = (
    SessionMachine,
    FetchMachine,
    CycleMachine,
    PollerMachine,
    DeliveryMachine,
    SubscriptionMachine,
    LeaseMachine,
)

__all__ = [
    "ALL_MACHINES",
    "CycleMachine",
    "DeliveryMachine",
    "FetchMachine",
    "LeaseMachine",
    "PollerMachine",
    "SessionMachine",
    "SubscriptionMachine",
]
