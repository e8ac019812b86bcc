"""Benchmark: how many accounts one process can poll.

Each account is a full ``SourceRuntime`` (Poller, Session, a Cycle per loop, a Fetch per frame)
over the simulated CGM and its own in-memory store, polling a steady-state frame (the last hour:
twelve readings). The ceiling does the same work without the machines and the runtime: the
source's fetch and transform called directly and the batch persisted. Memory per account is the
Python heap the runtimes hold (tracemalloc), reported beside the ceiling's.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import trio

from bench.timing import Figures
from connect.builder import Builder
from connect.contract import LastKnown
from connect.runtime import SourceRuntime
from sources.sim import SOURCE, SimSettings
from store import AsyncStore, Store

HOUR_DAYS = 1 / 24


def _plan(seed: int) -> Any:
    builder = Builder("sim")
    driver = SOURCE.factory(SimSettings(sim_seed=seed, sim_device=f"acct-{seed}"), None)  # type: ignore[arg-type]
    driver.generate_driver(builder)
    return builder.build()


def bench_accounts(accounts: int = 200) -> Figures:
    """Polls/s over ``accounts`` runtimes (one frame each), beside direct fetch + transform + persist."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    async def ours() -> tuple[float, float]:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        runtimes = [
            SourceRuntime(_plan(i), AsyncStore(Store(":memory:")), backfill_days=HOUR_DAYS, account=str(i))
            for i in range(accounts)
        ]
        held = (tracemalloc.get_traced_memory()[0] - before) / accounts
        tracemalloc.stop()
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for runtime in runtimes:
                nursery.start_soon(runtime.run_once)
        elapsed = time.perf_counter() - started
        return accounts / elapsed, held

    async def ceiling() -> tuple[float, float]:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        parts = [(_plan(i).loops[0], Store(":memory:")) for i in range(accounts)]
        held = (tracemalloc.get_traced_memory()[0] - before) / accounts
        tracemalloc.stop()
        now = int(time.time() * 1000)
        started = time.perf_counter()
        for i, (loop, store) in enumerate(parts):
            last = LastKnown(values={}, backfill_from=now - 3_600_000, now=now)
            batch = loop.transform(await loop.fetch(None, last), last)
            store.persist_frame("sim", f"{i}", batch)
        elapsed = time.perf_counter() - started
        return accounts / elapsed, held

    o, o_mem = trio.run(ours)
    c, c_mem = trio.run(ceiling)
    return {"ours": o, "ceiling": c, "ratio": o / c, "bytes_per_account": o_mem, "ceiling_bytes": c_mem}
