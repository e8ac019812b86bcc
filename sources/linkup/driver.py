"""The linkup driver: binds settings and the HTTP client into the builder's coroutines."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import httpx

from connect.contract import Backoff, BuilderLike, Grant, LastKnown
from connect.errors import ProtocolError
from connect.records import Batch, Entry
from sources.linkup.client import LinkUpClient, Login, Session
from sources.linkup.const import DEVICE, LOOP_NAME, OVERLAP_MS, SPREAD_MS
from sources.linkup.settings import LinkUpSettings
from sources.linkup.transform import reading_times, transform
from sources.schedule import PollPlanner


class LinkUp:
    """One LibreLinkUp follower account as a source: one session, one loop."""

    def __init__(self, settings: LinkUpSettings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = LinkUpClient(settings, http)
        self.interval_ms = settings.link_up_interval * 60_000
        # a fixed per-account offset spreads many accounts over the planner's jitter without
        # randomness, so the schedule depends only on what the reads returned
        digest = hashlib.sha256(settings.link_up_username.encode("utf-8")).digest()
        self.spread_ms = int.from_bytes(digest[:4], "big") % SPREAD_MS
        #: when to read next: the readings' phase plus the learned delay until LibreLinkUp serves them
        self.planner = PollPlanner(interval_ms=self.interval_ms, jitter_ms=SPREAD_MS)
        #: the current readings (with their arrows) written within the overlap, by date: a late
        #: history point of the same moment is written as that reading, so the rewrite changes
        #: nothing. Lost on a restart, when such a point is written once without its arrow.
        self.recent: dict[int, Entry] = {}

    # --- session -----------------------------------------------------------------------------

    async def authenticate(self) -> Login:
        return await self.client.login()

    async def authorize(self, login: Any) -> Grant:
        if not isinstance(login, Login):
            raise ProtocolError("LibreLinkUp: authorize was given no login")
        session = await self.client.session(login)
        # the token lasts as long as the service says (180 days today); the runtime renews early
        return Grant(value=session, expires_in=login.lifetime_s)

    # --- the loop ----------------------------------------------------------------------------

    async def fetch(self, session: Any, last_known: LastKnown) -> Any:
        if not isinstance(session, Session):
            raise ProtocolError("LibreLinkUp: fetch was given no session")
        answer = await self.client.graph(session)
        try:
            times = reading_times(answer)
        except ProtocolError:
            times = []  # the transform reports the payload; the planner learns nothing from it
        self.planner.observe(polled_at=last_known.now, before=last_known.values.get("entries"), times=times)
        return answer

    def transform(self, raw: Any, last_known: LastKnown) -> Batch:
        batch = transform(raw, last_known, sensor_info=self.settings.link_up_sensor_info, recent=self.recent)
        # only current readings carry a direction; history points never do
        self.recent.update((e.date, e) for e in batch.entries if e.direction is not None)
        newest = max([last_known.values.get("entries", 0), *(e.date for e in batch.entries)])
        for date in [d for d in self.recent if d <= newest - OVERLAP_MS]:
            del self.recent[date]
        return batch

    def align_schedule(self, last_known: LastKnown, now_ms: int) -> int:
        """When to ask next: just after the next reading should have been published.

        Readings fall every interval in the phase of the newest stored one and LibreLinkUp
        serves each some seconds to minutes after its time (the phone uploads it first). The
        :class:`PollPlanner` learns that delay from the reads: a poll that misses its reading
        is checked again once shortly after, and a delay longer than the estimate moves later
        polls back, so a slow uploader costs neither a whole interval per reading nor two
        requests per reading. A sensor gap costs one request per slot.
        """
        newest = last_known.values.get("entries")
        return self.planner.next_poll(newest, now_ms, self.spread_ms / SPREAD_MS)

    def collections(self) -> tuple[str, ...]:
        if self.settings.link_up_sensor_info:
            return ("entries", "treatments", "devicestatus")
        return ("entries",)

    def generate_driver(self, builder: BuilderLike) -> None:
        builder.support_session(
            authenticate=self.authenticate,
            authorize=self.authorize,
            # used only when a login does not say how long its token lasts
            expire_after=timedelta(hours=12),
        )
        builder.register_loop(
            LOOP_NAME,
            fetch=self.fetch,
            transform=self.transform,
            collections=self.collections(),
            align_schedule=self.align_schedule,
            expected_interval=timedelta(milliseconds=self.interval_ms),
            frame_retries=2,
            frame_backoff=Backoff(base=10.0, cap=120.0),
            cycle_backoff=Backoff(base=30.0, cap=1800.0),
            site_filter={"device": DEVICE},
        )
