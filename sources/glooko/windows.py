"""Which time windows one frame of a Glooko feed reads, and the checkpoints it may then claim. Pure.

Glooko receives a record when the phone, pump or meter syncs: minutes after it happened, or a
day later for a pump or meter that uploads once a day. The v2 endpoints select by when a record
happened (``startDate`` / ``endDate``), not by when it arrived: protocols/04-glooko.md names
``lastUpdatedAt`` only as a parameter old clients sent, with nothing to say the server filters
on it, so it cannot be paged on. A time cursor alone would skip every late record, so each feed
reads its recent past again (reads are idempotent: identifiers are UUID v5 of device, time and
type, and the store keeps an unchanged record as it is):

* every frame reads from its checkpoint, and at least the last ``SYNC_OVERLAP_MS``;
* once every ``RESYNC_EVERY_MS`` a frame reaches back the whole late-sync horizon instead,
  so one request an hour, not every request, carries the long re-read;
* a first start, or a gap longer than the horizon, reads the horizon at once, so the newest data
  arrives with the first frame (a cron user sees today, not a fortnight ago), and leaves what
  lies before it as *history*, read one day per frame, oldest first, beside the live read.

Each feed's marks are checkpoints of its loop, all of which only ever grow (the store keeps the
largest): ``<collection>`` is where the last live read ended, ``<collection>:resync`` when the
last horizon re-read ran, and ``[<collection>:history, <collection>:history_end)`` the history
still to read. A loop stored before history existed has a checkpoint and no history marks: it
has nothing left to backfill.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from connect.contract import LastKnown
from sources.glooko.const import (
    DAY_MS,
    HISTORY_END_MARK,
    HISTORY_MARK,
    LIVE_FRESH_MS,
    PAGE_MS,
    RESYNC_EVERY_MS,
    RESYNC_MARK,
    SYNC_OVERLAP_MS,
)


@attrs.frozen(kw_only=True)
class Plan:
    """The ``[start, end)`` windows (UTC ms, oldest first) a frame reads, the checkpoints it
    vouches for once every one of them was read in full, and whether history remains."""

    windows: tuple[tuple[int, int], ...]
    covered: Mapping[str, int]
    more: bool


def plan(last_known: LastKnown, collection: str, *, lookback_days: int, late_ms: int) -> Plan:
    """The next frame of one feed.

    ``lookback_days`` bounds the history of a first start (and wins over the runtime's
    ``backfill_from``, which ``CONNECT_BACKFILL_DAYS`` sets for every source: the Glooko setting is
    the more specific one). ``late_ms`` is the late-sync horizon: how late a record may reach
    Glooko and still be read.
    """
    now = last_known.now
    floor = now - lookback_days * DAY_MS
    marks = last_known.values
    live = marks.get(collection)
    resynced = marks.get(collection + RESYNC_MARK)
    history = marks.get(collection + HISTORY_MARK)
    history_end = marks.get(collection + HISTORY_END_MARK)
    pending = history is not None and history_end is not None and max(history, floor) < history_end
    covered: dict[str, int] = {}
    read_live = True

    if live is None or live < now - late_ms:
        # Nothing read yet, or a gap longer than the horizon: the horizon now, the rest as history.
        start = max(now - late_ms, floor)
        if not pending:
            # Records up to a horizon before the old checkpoint may have synced during the gap.
            history = floor if live is None else max(live - late_ms, floor)
        # A pending history is kept and stretched to here: it then also spans the gap (re-reading
        # what the live reads already saw between them is harmless).
        history_end = start
        covered[collection + RESYNC_MARK] = now
    elif resynced is None or not 0 <= now - resynced < RESYNC_EVERY_MS:
        # Due (a mark in the future means the clock was set back: re-read rather than wait). From
        # a horizon before the checkpoint: a record that happened just before the last read and
        # synced after it is found even when the loop was stopped for a while.
        start = min(live, now) - late_ms
        covered[collection + RESYNC_MARK] = now
    else:
        start = min(live, now - SYNC_OVERLAP_MS)
        # Frames that read history run back to back: a live read seconds old is not repeated.
        read_live = not (pending and now - live < LIVE_FRESH_MS)

    windows: list[tuple[int, int]] = []
    more = False
    if history is not None and history_end is not None and max(history, floor) < history_end:
        begin = max(history, floor)
        end = min(begin + PAGE_MS, history_end)
        windows.append((begin, end))
        covered[collection + HISTORY_MARK] = end
        covered[collection + HISTORY_END_MARK] = history_end
        more = end < history_end
    if read_live:
        windows.append((start, now))
        covered[collection] = now
    return Plan(windows=tuple(windows), covered=covered, more=more)
