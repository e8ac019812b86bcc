"""Fault scripts and the request log that the cookie- and token-based vendor emulators share."""

from __future__ import annotations

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
