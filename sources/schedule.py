"""When to read next: just after the next reading becomes readable, learned from the reads.

A sensor reading carries the time it was measured, but a vendor cloud (Dexcom Share,
LibreLinkUp) serves it only once the phone has uploaded it, some seconds (sometimes a minute or
two) later. Polling at
``newest + interval + buffer`` with a fixed buffer works while that delay is shorter than the
buffer; when it is longer, every poll arrives just before the reading it is for, finds only
the one before, and each reading waits a whole interval for the next poll.

:class:`PollPlanner` keeps the buffer (the *lag*) as an estimate of that delay. Readings come
in slots one interval apart, counted from the newest stored reading; a poll is *for* the
latest slot it was scheduled after (slot + lag).

* A poll whose slot's reading is not in the answer is a *miss*: the planner checks again
  once, shortly after (``recheck_ms``), instead of waiting a whole interval.
* When the missed slot's reading shows up later, its delay was longer than the lag: the lag
  grows past what the polls proved (to the middle of the two polls when the recheck found
  it), up to ``ceiling_ms``.
* A poll that finds its reading at once shrinks the lag a little (``decay_ms``) toward
  ``floor_ms``, so a delay that got shorter is followed too, at the cost of a rare miss.

A reading that never comes (signal loss) is recognised when a later one arrives first: a
stretch of them costs one recheck and teaches nothing. Everything here is arithmetic on epoch milliseconds;
the caller supplies the random number.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import attrs

FLOOR_MS: Final = 15_000
CEILING_MS: Final = 280_000
JITTER_MS: Final = 10_000
DECAY_MS: Final = 1_000
RECHECK_MS: Final = 30_000


@attrs.define
class PollPlanner:
    """The polling phase of one loop: ``observe`` every successful read, ask ``next_poll``."""

    interval_ms: int
    floor_ms: int = FLOOR_MS
    ceiling_ms: int = CEILING_MS
    jitter_ms: int = JITTER_MS
    decay_ms: int = DECAY_MS
    recheck_ms: int = RECHECK_MS
    #: the current estimate of how long after its time a reading becomes readable
    lag_ms: int = FLOOR_MS
    #: the slot (reading time) a poll missed, while its reading is still awaited
    missed_slot: int | None = None
    #: the latest poll that did not find ``missed_slot``'s reading
    missed_at: int = 0
    #: the next poll should be the (single) quick recheck of ``missed_slot``
    recheck: bool = False
    #: the slot the last poll was for, if any
    polled_slot: int | None = None

    def _in_slot(self, time: int, slot: int) -> bool:
        return abs(time - slot) * 2 < self.interval_ms

    def observe(self, *, polled_at: int, before: int | None, times: Iterable[int]) -> None:
        """A read at ``polled_at`` returned readings with ``times``.

        ``before`` is the newest reading time the loop had stored before the read; slots are
        counted from it.
        """
        self.recheck = False
        self.polled_slot = None
        if before is None:
            return  # the first read (a backfill) says nothing about the phase
        seen = list(times)
        newest = max([before, *seen])
        learned = False
        if self.missed_slot is not None:
            slot = self.missed_slot
            if any(self._in_slot(t, slot) for t in seen):
                # a poll made after this reading's time had not seen it: its delay was longer
                low = self.missed_at - slot
                if polled_at - self.missed_at <= self.recheck_ms + self.jitter_ms:
                    learned_ms = (low + polled_at - slot) // 2  # the recheck found it
                else:
                    learned_ms = low + self.recheck_ms
                self.lag_ms = min(self.ceiling_ms, max(self.lag_ms, learned_ms))
                self.missed_slot = None
                learned = True
            elif newest * 2 >= slot * 2 + self.interval_ms:
                self.missed_slot = None  # later readings came first: that one never will
        steps = (polled_at - self.lag_ms - before) // self.interval_ms
        if steps < 1:
            return  # an early poll (a retry): it was for no slot
        slot = before + steps * self.interval_ms
        self.polled_slot = slot
        if any(self._in_slot(t, slot) for t in seen):
            if not learned and self.missed_slot is None:
                self.lag_ms = max(self.floor_ms, self.lag_ms - self.decay_ms)
            return
        if newest * 2 >= slot * 2 + self.interval_ms:
            return  # a later reading is here, this slot's is simply missing
        if self.missed_slot != slot:
            # a second slot missed while the first is still awaited: a gap in the readings
            # (or a delay beyond an interval), which a recheck would not fill
            self.recheck = self.missed_slot is None
            self.missed_slot = slot
        self.missed_at = polled_at

    def next_poll(self, newest: int | None, now: int, rand: float) -> int:
        """Epoch ms of the next read, given the newest stored reading time and a number in [0, 1)."""
        if self.recheck:
            self.recheck = False
            return now + self.recheck_ms + int(self.jitter_ms * rand)
        extra = self.lag_ms + int(self.jitter_ms * rand)
        if newest is None:
            return now + self.interval_ms + extra
        # the first slot whose poll is still ahead; never the slot the last poll was for (it
        # missed, and had its recheck or may not have one), a few seconds later again
        steps = max(1, (now - extra - newest) // self.interval_ms + 1)
        if self.polled_slot is not None and newest + steps * self.interval_ms <= self.polled_slot:
            steps = (self.polled_slot - newest) // self.interval_ms + 1
        return newest + steps * self.interval_ms + extra
