"""Benchmark: what waiting costs, and the memory an account holds.

A hundred simulated accounts, each a daemon as ``--accounts-dir`` builds it
(:func:`connect.assemble.assemble` over its own store file and HTTP client, without outputs),
run their first frame and then wait for the next reading. Idle is the process's CPU time
(every thread) over ``seconds`` of that waiting, as a percentage of one core; the default
window is one status period (:data:`connect.daemon.STATUS_EVERY_S`), so every daemon's
once-a-minute look at its status row falls in it once. Their clock is held just after a
reading, so no loop polls during the window. Memory is the process's resident set grown by
the accounts (``/proc/self/statm``), divided among them. Both are measured in a process of
their own (``python -m bench.idle``): in one that ran the other figures, freed memory would be
reused and the growth would read low.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from bench.timing import Figures
from connect.assemble import assemble
from connect.daemon import STATUS_EVERY_S
from connect.settings import settings_model
from sources.sim import INTERVAL_MS, SOURCE
from store import Store

HOUR_DAYS = 1 / 24


def rss_bytes() -> int:
    """The process's resident set now (``/proc``; the peak where there is no ``/proc``)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_idle(accounts: int = 100, seconds: float = STATUS_EVERY_S + 1.0) -> Figures:
    """Idle CPU (% of a core) of ``accounts`` waiting daemons, and RSS per account (bytes),
    measured in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.idle", str(accounts), str(seconds)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the idle figure failed: {done.stderr[-2000:]}")
    result: Figures = json.loads(done.stdout)
    return result


def measure_idle(accounts: int, seconds: float) -> Figures:
    """:func:`bench_idle`, in this process."""
    from connect.logs import configure

    # as a daemon logs by default: no debug lines, so no transition listeners on the machines
    configure(fmt="json", level="warning")
    # just after a reading: every loop's next frame is minutes away
    held = int(time.time() * 1000) // INTERVAL_MS * INTERVAL_MS + 1_000
    model = settings_model(SOURCE)

    async def run(tmp: Path) -> Figures:
        fields: list[dict[str, Any]] = [
            {"store_path": str(tmp / f"{i}.db"), "account": str(i), "backfill_days": HOUR_DAYS,
             "sim_seed": i, "sim_device": f"acct-{i}"}
            for i in range(accounts)
        ]  # fmt: skip
        before = rss_bytes()
        async with AsyncExitStack() as stack:
            daemons = []
            for each in fields:
                store = Store(each["store_path"])
                stack.callback(store.close)
                daemons.append(
                    await stack.enter_async_context(
                        assemble(model(**each), SOURCE, store=store, clock=lambda: held, deliver=False)
                    )
                )
            async with trio.open_nursery() as nursery:
                for daemon in daemons:
                    await nursery.start(daemon.run)
                # every first frame done (a minute at most), its status saved
                for _ in range(1200):
                    if all(loop.cycle.frames_ok for d in daemons for loop in d.runtime.loops):
                        break
                    await trio.sleep(0.05)
                else:
                    raise RuntimeError("the accounts' first frames did not finish")
                await trio.sleep(1.0)
                grown = rss_bytes() - before
                cpu = time.process_time()
                await trio.sleep(seconds)
                used = time.process_time() - cpu
                nursery.cancel_scope.cancel()
        return {"idle_cpu_percent": 100.0 * used / seconds, "rss_per_account": grown / accounts}

    with tempfile.TemporaryDirectory() as tmp:
        result: Figures = trio.run(run, Path(tmp))
    return result


if __name__ == "__main__":
    print(json.dumps(measure_idle(int(sys.argv[1]), float(sys.argv[2]))))
