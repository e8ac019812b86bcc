"""Timing math for the machines: backoff and schedule alignment, as pure functions.

Randomness comes in as an argument (a float in [0, 1)) so every function is deterministic
and property-testable; the runtime supplies ``random.random()``.
"""

from __future__ import annotations

import math

import attrs


def backoff(
    failures: int, *, base: float = 5.0, cap: float = 900.0, jitter: float = 0.2, rand: float = 0.0
) -> float:
    """Seconds to wait after ``failures`` consecutive failures: capped exponential, jittered.

    Zero failures wait nothing. Jitter only shortens the wait (by at most ``jitter`` of it),
    so the cap is a hard ceiling and many accounts restarted together spread out.
    """
    if failures <= 0:
        return 0.0
    exponent = min(failures - 1, 62)  # 2**62 s is far beyond any cap; avoids float overflow
    delay = min(cap, base * math.pow(2.0, exponent))
    return delay * (1.0 - jitter * rand)


@attrs.frozen(kw_only=True)
class Backoff:
    """The one backoff policy: a capped, jittered exponential wait after consecutive failures.

    Every machine paces its retries with one of these (Session its logins, Fetch a frame's
    attempts, Cycle the frames after failed ones, Delivery an output's passes), so the shape of
    every wait in the daemon is the same function with different numbers.
    """

    base: float = 5.0
    cap: float = 900.0
    jitter: float = 0.2

    def delay(self, failures: int, rand: float = 0.0) -> float:
        """Seconds to wait after ``failures`` failures in a row (none: no wait)."""
        return backoff(failures, base=self.base, cap=self.cap, jitter=self.jitter, rand=rand)

    def capped(self, cap: float) -> Backoff:
        """The same ladder stopping at ``cap`` seconds at most."""
        return attrs.evolve(self, cap=min(self.cap, cap))


def rejected_delay(rejections: int, *, base: float = 1800.0, cap: float = 6 * 3600.0) -> float:
    """Seconds to wait before trying credentials the vendor rejected ``rejections`` times.

    Starts at half an hour and doubles to six hours: vendors lock accounts after a handful of
    failed logins, so at most a few attempts an hour ever reach them.
    """
    return backoff(max(rejections, 1), base=base, cap=cap, jitter=0.0)


#: the ladder a refused login climbs (half an hour, doubling to six hours, no jitter)
REJECTED = Backoff(base=1800.0, cap=6 * 3600.0, jitter=0.0)


#: the first wait after a login that failed for a passing reason, and the longest one
LOGIN_RETRY_BASE_S = 60.0
LOGIN_RETRY_CAP_S = 1800.0
#: the longest wait after logins that never reached the vendor (no network, DNS)
UNREACHED_RETRY_CAP_S = 300.0


def failed_login_delay(failures: int, *, rand: float = 0.0, reached: bool = True) -> float:
    """Seconds to wait before logging in again after ``failures`` unproductive logins in a row.

    An unproductive login is one that failed for a passing reason (5xx, timeout, a garbled
    answer) or whose session was refused before it delivered any data. Logins are the requests
    vendors watch for abuse and lock accounts over, so they are paced on their own scale —
    a minute, doubling to half an hour — never at the pace of a frame's data retries. That
    keeps a long outage to a handful of login attempts an hour (at most seven in the first).

    A login that never ``reached`` the vendor (the network was down) was seen by nobody, so it
    cannot count towards a lockout: those waits stop growing at five minutes, and the first
    login after the network comes back is at most that late rather than half an hour.
    """
    policy = LOGIN if reached else LOGIN.capped(UNREACHED_RETRY_CAP_S)
    return policy.delay(failures, rand)


#: the ladder unproductive logins climb (see :func:`failed_login_delay`)
LOGIN = Backoff(base=LOGIN_RETRY_BASE_S, cap=LOGIN_RETRY_CAP_S, jitter=0.2)


def align_schedule(
    last_known_ms: int | None,
    now_ms: int,
    *,
    interval_ms: int,
    buffer_ms: int = 15_000,
    jitter_ms: int = 10_000,
    rand: float = 0.0,
) -> int:
    """Epoch ms at which to poll next: just after the next reading is expected.

    Readings arrive every ``interval_ms`` in the phase of the last one, so the next one is due
    at ``last_known + k * interval`` for the smallest k that lies after ``now - buffer``. A small
    buffer lets the vendor publish it, and jitter spreads accounts. Without a last reading the
    loop simply waits one interval.
    """
    extra = buffer_ms + int(jitter_ms * rand)
    if last_known_ms is None or interval_ms <= 0:
        return now_ms + max(interval_ms, 0) + extra
    steps = (now_ms - extra - last_known_ms) // interval_ms + 1
    steps = max(steps, 1)
    return last_known_ms + steps * interval_ms + extra
