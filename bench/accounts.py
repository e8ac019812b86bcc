"""Benchmark: how many accounts one process can poll.

Each account is a daemon as ``--accounts-dir`` builds it — :func:`connect.assemble.assemble`
over the simulated CGM and its own in-memory store, without outputs — whose loop takes one
steady-state frame (the last hour: twelve readings) as ``run`` takes every frame: the Cycle
begins it, the Fetch machine walks it, the Cycle decides when the next one is due. Starting and
stopping the daemons is outside the clock (a daemon does that once; it polls every five
minutes for as long as it runs).

The ceiling does the same observable work with the least code: the same machines' callbacks
driven by a dict from (state, event) to target instead of the library's engine, the
checkpoints read, the source's fetch and transform called directly, the batch persisted, and
the next frame's due time computed. Both are CPU time (nothing waits on a network). Memory per
account is the Python heap the daemons hold (tracemalloc), reported beside the ceiling's.
"""

from __future__ import annotations

import random
import time
import tracemalloc
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import trio
from statemachine import StateMachine

from bench.timing import Figures, rounded
from connect.assemble import assemble
from connect.contract import LastKnown
from connect.records import make_identifier
from connect.settings import CoreSettings, settings_model
from machines import CycleMachine, FetchMachine
from machines.timing import align_schedule
from sources.sim import SOURCE, make
from store import Store

HOUR_DAYS = 1 / 24
#: the events a steady-state frame sends, by machine (what :meth:`LoopDriver.step` sends)
CYCLE_EVENTS = ("begin", "frame_done")
FETCH_EVENTS = ("start", "session_ok", "gaps_known", "fetched", "persisted")


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


def _driver(settings: CoreSettings) -> Any:
    return make(settings, None)  # type: ignore[arg-type]  # the sim contacts nothing


class TableDriven:
    """One of our machines moved by a dict lookup per event, calling the callbacks the library
    would (``on_<event>`` with the event's facts, then ``on_enter_<target>``): the machine's
    own work, without the engine's."""

    def __init__(self, machine: StateMachine) -> None:
        self.machine = machine
        self.state = str(machine.current_state_value)
        #: (state, event) → (target, ``on_<event>``, ``on_enter_<target>``)
        self.table: dict[
            tuple[str, str], tuple[str, Callable[..., Any] | None, Callable[[], Any] | None]
        ] = {}
        for state in machine.states:
            for transition in state.transitions:
                if list(transition.cond):
                    continue  # guarded: not on a frame's happy path
                target = transition.target.id
                for event in transition.events:
                    self.table[(state.id, event.id)] = (
                        target,
                        getattr(machine, f"on_{event.id}", None),
                        getattr(machine, f"on_enter_{target}", None),
                    )

    def send(self, event: str, **facts: Any) -> None:
        target, on_event, on_enter = self.table[(self.state, event)]
        if on_event is not None:
            on_event(**facts)
        if on_enter is not None:
            on_enter()
        self.state = target


def bench_accounts(accounts: int = 200, rounds: int = 5) -> Figures:
    """Frames/s over ``accounts`` daemons (one steady-state frame each), beside the same work
    with the machines' callbacks driven by a dict; the best of ``rounds`` of each, alternated."""
    from connect.logs import configure

    # as a daemon logs by default: no debug lines, so no transition listeners on the machines
    configure(fmt="json", level="warning")
    settings = _settings(accounts)

    async def ours() -> tuple[float, float, int]:
        # each daemon makes its own HTTP client, as ``--accounts-dir`` does (sharing the
        # process's one TLS context)
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
            for daemon in daemons:
                daemon.runtime.poller.send("start")  # as ``run`` starts it, once
            make_identifier.cache_clear()  # both sides hash every identifier
            stored = 0
            started = time.process_time()
            async with trio.open_nursery() as nursery:
                for daemon in daemons:
                    for loop in daemon.runtime.loops:
                        nursery.start_soon(loop.step)
            elapsed = time.process_time() - started
            for daemon in daemons:
                for loop in daemon.runtime.loops:
                    stored += loop.records_written
                daemon.runtime._stopped()
                daemon.store.close()
        return accounts / elapsed, held, stored

    async def ceiling() -> tuple[float, float, int]:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        parts = [
            (_driver(each), Store(":memory:"), TableDriven(CycleMachine()), TableDriven(FetchMachine()))
            for each in settings
        ]
        held = (tracemalloc.get_traced_memory()[0] - before) / accounts
        tracemalloc.stop()
        rng = random.Random(0)
        make_identifier.cache_clear()
        stored = 0
        started = time.process_time()
        for i, (driver, store, cycle, fetch) in enumerate(parts):
            now = int(time.time() * 1000)
            key = f"sim:{i}"
            cycle.send("begin")
            fetch.send("start")
            fetch.send("session_ok")
            values = store.checkpoints(key, "SimEntries")
            fetch.send("gaps_known", last_known=values)
            last = LastKnown(values=values, backfill_from=now - 3_600_000, now=now)
            batch = driver.transform(await driver.fetch(None, last), last)
            fetch.send("fetched", batch=batch)
            result = store.persist_frame(key, "SimEntries", batch)
            fetch.send("persisted")
            cycle.send("frame_done", ok=True, now_ms=now)
            newest = max(result.checkpoint.values(), default=None)
            align_schedule(newest, now, interval_ms=300_000, rand=rng.random())
            stored += result.total
        elapsed = time.process_time() - started
        return accounts / elapsed, held, stored

    mine: list[float] = []
    top: list[float] = []
    for _ in range(rounds):
        c, c_mem, c_stored = trio.run(ceiling)
        o, o_mem, o_stored = trio.run(ours)
        if o_stored != c_stored or o_stored == 0:
            raise RuntimeError(f"benchmark frames differ: ours stored {o_stored}, the ceiling {c_stored}")
        mine.append(o)
        top.append(c)
    return {
        **rounded(max(mine), max(top)),
        "bytes_per_account": o_mem,
        "ceiling_bytes": c_mem,
        "events_per_frame": len(CYCLE_EVENTS) + len(FETCH_EVENTS),
    }
