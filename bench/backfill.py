"""Benchmark: backfill entries/s from a Nightscout site.

Ours is the whole path — the ``nightscout`` source's windows and paging, the machines, the
runtime and the store, put together by :func:`connect.assemble.assemble` from settings parsed as
the CLI parses them — copying 30 days of 5-minute entries in one frame. The ceiling does the same
work in a bare loop: it reads the same day windows with httpx, decodes them, makes each document
a record (:func:`connect.records.from_nightscout`, as the source's transform does) and upserts
them all in one transaction. Both talk to the same in-process site
(:mod:`bench.nightscout_site`), so the site's own cost is in both figures, and both are CPU time
(nothing waits on a network).
"""

from __future__ import annotations

import time

import httpx
import trio

from bench.nightscout_site import NightscoutSite, sgv_docs
from bench.timing import Figures
from connect.assemble import assemble
from connect.httpkit import sha1_hex
from connect.loading import load_settings
from connect.records import from_nightscout, make_identifier
from store import Store

DAY_MS = 86_400_000
SECRET = "benchmark-api-secret"


def bench_backfill(days: int = 30, rounds: int = 3) -> Figures:
    """Entries/s copied by the ``nightscout`` source, beside a bare loop doing the same work (CPU time)."""
    now = int(time.time() * 1000) // 300_000 * 300_000
    docs = sgv_docs(now - days * DAY_MS + 300_000, days * 288)

    def site() -> NightscoutSite:
        seeded = NightscoutSite(SECRET)
        seeded.seed_entries(docs)
        return seeded

    flags = {
        "--store-path": ":memory:",
        "--http-bind": "0",
        "--backfill-days": str(days),
        "--source-endpoint": "http://bench.test",
        "--source-api-secret": SECRET,
        "--source-collections": "entries",
    }
    settings, source = load_settings(
        [part for flag in flags.items() for part in flag], source_name="nightscout"
    )

    async def ours() -> float:
        nightscout = site()
        store = Store(":memory:")
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=nightscout.app)) as client,
            assemble(
                settings, source, client=client, store=store, clock=lambda: now, deliver=False
            ) as daemon,
        ):
            make_identifier.cache_clear()  # both sides hash every identifier
            started = time.process_time()
            ok = await daemon.runtime.run_once()
            elapsed = time.process_time() - started
        stored = store.count("entries")
        store.close()
        if not ok or stored != len(docs):
            raise RuntimeError(f"backfill incomplete: {stored} of {len(docs)}")
        return stored / elapsed

    async def ceiling() -> float:
        nightscout = site()
        headers = {"api-secret": sha1_hex(SECRET)}
        store = Store(":memory:")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=nightscout.app)) as client:
            make_identifier.cache_clear()
            started = time.process_time()
            records = []
            for day in range(days):
                low = now - (days - day) * DAY_MS
                params = {"find[date][$gt]": str(low), "find[date][$lte]": str(low + DAY_MS), "count": "1000"}
                response = await client.get(
                    "http://bench.test/api/v1/entries.json", params=params, headers=headers
                )
                records += [from_nightscout("entries", doc) for doc in response.json()]
            store.upsert(records, source="nightscout")
            elapsed = time.process_time() - started
        stored = store.count("entries")
        store.close()
        if stored != len(docs):
            raise RuntimeError(f"ceiling stored {stored} of {len(docs)}")
        return stored / elapsed

    from connect.logs import configure

    configure(fmt="json", level="warning")
    mine = max(trio.run(ours) for _ in range(rounds))
    top = max(trio.run(ceiling) for _ in range(rounds))
    return {"ours": mine, "ceiling": top, "ratio": mine / top}
