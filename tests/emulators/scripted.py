"""Fault scripts and the request log that the cookie- and token-based vendor emulators share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs


@attrs.define
class Fault:
    """An injected fault: ``kind`` on some endpoints (all when None), ``times`` times (None: until
    removed) or during ``[start_ms, end_ms)`` of the emulator's clock."""

    kind: str
    endpoints: frozenset[str] | None = None
    times: int | None = 1
    start_ms: int | None = None
    end_ms: int | None = None
    retry_after: int = 30
    #: how long a "timeout" fault holds the request (longer than any client waits)
    hang_s: float = 120.0

    def matches(self, endpoint: str, now: int) -> bool:
        if self.endpoints is not None and endpoint not in self.endpoints:
            return False
        if self.start_ms is not None:
            return self.start_ms <= now < (self.end_ms if self.end_ms is not None else now + 1)
        return self.times is None or self.times > 0


@attrs.define
class Logged:
    time_ms: int
    method: str
    endpoint: str
    status: int = 0
    fault: str | None = None
    #: UTC times of the readings a complete 200 answer carried
    served: tuple[int, ...] = ()


class FaultScript:
    """What an emulator offers tests for faults: ``inject`` (the next few requests), ``schedule``
    (a window of the emulator's clock), and ``_fault_for`` for its handler."""

    #: the fault kinds this emulator knows how to answer with
    fault_kinds: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.faults: list[Fault] = []

    def inject(self, kind: str, *, endpoint: str | Iterable[str] | None = None, times: int | None = 1,
               **params: Any) -> Fault:  # fmt: skip
        """Answer the next ``times`` requests to ``endpoint`` (``None``: any) with a fault."""
        fault = Fault(kind, self._endpoints(kind, endpoint), times, **params)
        self.faults.append(fault)
        return fault

    def schedule(self, kind: str, start_ms: int, end_ms: int, *, endpoint: str | Iterable[str] | None = None,
                 **params: Any) -> Fault:  # fmt: skip
        """Answer every request to ``endpoint`` during ``[start_ms, end_ms)`` with a fault."""
        fault = Fault(kind, self._endpoints(kind, endpoint), None, start_ms, end_ms, **params)
        self.faults.append(fault)
        return fault

    def _endpoints(self, kind: str, endpoint: str | Iterable[str] | None) -> frozenset[str] | None:
        if kind not in self.fault_kinds:
            raise ValueError(f"unknown fault kind {kind!r}")
        if endpoint is None:
            return None
        return frozenset([endpoint] if isinstance(endpoint, str) else endpoint)

    def _fault_for(self, endpoint: str, now: int) -> Fault | None:
        for fault in self.faults:
            if fault.matches(endpoint, now):
                if fault.times is not None and fault.start_ms is None:
                    fault.times -= 1
                return fault
        return None
