"""Benchmark: how many accounts one process can poll.

Each account is a daemon as ``once --accounts-dir`` builds it — :func:`connect.assemble.assemble`
over the simulated CGM and its own in-memory store, without outputs — polling a steady-state
frame (the last hour: twelve readings). The ceiling does the same work without the machines and
the runtime: the source's fetch and transform called directly and the batch persisted. Both are
CPU time (nothing waits on a network). Memory
per account is the Python heap the daemons hold (tracemalloc), reported beside the ceiling's.
"""

from __future__ import annotations

import time
import tracemalloc
from contextlib import AsyncExitStack
from typing import Any

import trio

from bench.timing import Figures
from connect.assemble import assemble
from connect.contract import LastKnown
from connect.records import make_identifier
from connect.settings import CoreSettings, settings_model
from sources.sim import SOURCE, make
from store import Store

HOUR_DAYS = 1 / 24


def _settings(accounts: int) -> list[CoreSettings]:
    """One run's settings per account, from the composed model the CLI parses into (built once:
    parsing flags 200 times would only measure the parser)."""
    model = settings_model(SOURCE)
    # passed as a dict: the model's static type is CoreSettings, which lacks the source's fields
    fields: list[dict[str, Any]] = [
        {
            "store_path": ":memory:",
            "account": str(i),
            "backfill_days": HOUR_DAYS,
            "sim_seed": i,
            "sim_device": f"acct-{i}",
        }
        for i in range(accounts)
    ]
    return [model(**each) for each in fields]


def bench_accounts(accounts: int = 200) -> Figures:
    """Polls/s over ``accounts`` daemons (one frame each), beside direct fetch + transform + persist."""
    from connect.logs import configure

    # as a daemon logs by default: no debug lines, so no transition listeners on the machines
    configure(fmt="json", level="warning")
    settings = _settings(accounts)

    async def ours() -> tuple[float, float]:
        # each daemon makes its own HTTP client, as ``--accounts-dir`` does; tracemalloc sees
        # only its Python objects (~3 KiB), not the OpenSSL context behind it (~0.8 MiB of RSS)
        async with AsyncExitStack() as stack:
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            daemons = [
                await stack.enter_async_context(
                    assemble(each, SOURCE, store=Store(":memory:"), deliver=False)
                )
                for each in settings
            ]
            held = (tracemalloc.get_traced_memory()[0] - before) / accounts
            tracemalloc.stop()
            make_identifier.cache_clear()  # both sides hash every identifier
            started = time.process_time()
            async with trio.open_nursery() as nursery:
                for daemon in daemons:
                    nursery.start_soon(daemon.runtime.run_once)
            elapsed = time.process_time() - started
            for daemon in daemons:
                daemon.store.close()
        return accounts / elapsed, held

    async def ceiling() -> tuple[float, float]:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        parts = [(make(each, None), Store(":memory:")) for each in settings]  # type: ignore[arg-type]
        held = (tracemalloc.get_traced_memory()[0] - before) / accounts
        tracemalloc.stop()
        now = int(time.time() * 1000)
        make_identifier.cache_clear()
        started = time.process_time()
        for i, (driver, store) in enumerate(parts):
            last = LastKnown(values={}, backfill_from=now - 3_600_000, now=now)
            batch = driver.transform(await driver.fetch(None, last), last)
            store.persist_frame("sim", f"{i}", batch)
        elapsed = time.process_time() - started
        return accounts / elapsed, held

    o, o_mem = trio.run(ours)
    c, c_mem = trio.run(ceiling)
    return {"ours": o, "ceiling": c, "ratio": o / c, "bytes_per_account": o_mem, "ceiling_bytes": c_mem}
