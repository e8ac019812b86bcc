"""Benchmark: backfill entries/s from a Nightscout site.

Ours is the whole path — the ``nightscout`` source's windows and paging, the machines, the
runtime and the store, put together by :func:`connect.assemble.assemble` from settings parsed as
the CLI parses them — copying 30 days of 5-minute entries in one frame. The ceiling reads the
same day windows with a bare httpx loop and decodes the JSON, storing nothing. Both talk to the
same in-process site (:mod:`bench.nightscout_site`), so the site's own cost is in both figures.
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
from store import Store

DAY_MS = 86_400_000
SECRET = "benchmark-api-secret"


def bench_backfill(days: int = 30, rounds: int = 3) -> Figures:
    """Entries/s copied by the ``nightscout`` source, beside a bare httpx loop over the same windows."""
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
            started = time.perf_counter()
            ok = await daemon.runtime.run_once()
            elapsed = time.perf_counter() - started
        stored = store.count("entries")
        store.close()
        if not ok or stored != len(docs):
            raise RuntimeError(f"backfill incomplete: {stored} of {len(docs)}")
        return stored / elapsed

    async def ceiling() -> float:
        nightscout = site()
        headers = {"api-secret": sha1_hex(SECRET)}
        read = 0
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=nightscout.app)) as client:
            started = time.perf_counter()
            for day in range(days):
                low = now - (days - day) * DAY_MS
                params = {"find[date][$gt]": str(low), "find[date][$lte]": str(low + DAY_MS), "count": "1000"}
                response = await client.get(
                    "http://bench.test/api/v1/entries.json", params=params, headers=headers
                )
                read += len(response.json())
            elapsed = time.perf_counter() - started
        if read != len(docs):
            raise RuntimeError(f"ceiling read {read} of {len(docs)}")
        return read / elapsed

    from connect.logs import configure

    configure(fmt="json", level="warning")
    mine = max(trio.run(ours) for _ in range(rounds))
    top = max(trio.run(ceiling) for _ in range(rounds))
    return {"ours": mine, "ceiling": top, "ratio": mine / top}
