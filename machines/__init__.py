"""The four formal machines (Session, Fetch, Cycle, Poller) and their timing math.

Pure and synchronous: no I/O, no async, no event loop. The runtime in ``connect.runtime``
performs the I/O and sends these machines events, as h11 does for HTTP.
"""

from machines.cycle import CycleMachine
from machines.fetch import FetchMachine
from machines.poller import PollerMachine
from machines.session import SessionMachine

ALL_MACHINES = (SessionMachine, FetchMachine, CycleMachine, PollerMachine)

__all__ = ["ALL_MACHINES", "CycleMachine", "FetchMachine", "PollerMachine", "SessionMachine"]
