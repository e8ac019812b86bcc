"""The benchmark command: every figure beside a ceiling measured in the same run.

    bash scripts/bench.sh        (or: .venv/bin/python -m connect.bench)

Figures are throughputs on this machine right now; the ratios to their ceilings are what to
compare between runs, since shared machines are noisy.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connect.records import Entry, to_nightscout
from machines import CycleMachine, FetchMachine
from store import Store
from store.database import UPSERT_SQL, row_for

FRAME_EVENTS = ("start", "ready", "session_ok", "gaps_known", "fetched", "transformed", "persisted", "finish")


def _rate(count: int, fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return count / (time.perf_counter() - started)


def bench_machines(frames: int = 3000) -> dict[str, float]:
    """Events/s through a Cycle and its Fetch machines, beside a bare transition table."""

    def ours() -> None:
        cycle = CycleMachine()
        cycle.send("start")
        for _ in range(frames):
            cycle.send("begin")
            fetch = FetchMachine()
            for event in FRAME_EVENTS:
                fetch.send(event)
            cycle.send("frame_done", ok=True, now_ms=0)
            cycle.send("next")

    table = {
        ("idle", "start"): "waiting", ("waiting", "ready"): "auth", ("auth", "session_ok"): "gaps",
        ("gaps", "gaps_known"): "fetching", ("fetching", "fetched"): "transforming",
        ("transforming", "transformed"): "persisting", ("persisting", "persisted"): "success",
        ("success", "finish"): "done", ("ready", "begin"): "operating",
        ("operating", "frame_done"): "after", ("after", "next"): "ready",
    }  # fmt: skip

    def ceiling() -> None:
        cycle = "ready"
        for _ in range(frames):
            cycle = table[(cycle, "begin")]
            state = "idle"
            for event in FRAME_EVENTS:
                state = table[(state, event)]
            cycle = table[(cycle, "frame_done")]
            cycle = table[(cycle, "next")]

    events = frames * (len(FRAME_EVENTS) + 3)
    o, c = _rate(events, ours), _rate(events, ceiling)
    return {"ours": o, "ceiling": c, "ratio": o / c}


def bench_store(rows: int = 50_000, batch: int = 288) -> dict[str, float]:
    """Store upserts/s (frames of ``batch`` readings) beside raw executemany into the same schema."""
    entries = [
        Entry(
            type="sgv",
            date=1_700_000_000_000 + i * 300_000,
            device="bench",
            sgv=40 + i % 300,
            direction="Flat",
        )
        for i in range(rows)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "ours.db")

        def ours() -> None:
            for i in range(0, rows, batch):
                store.upsert(entries[i : i + batch], source="bench")

        o = _rate(rows, ours)
        store.close()

        raw_store = Store(Path(tmp) / "raw.db")  # same schema, then bypass everything of ours
        raw_store.close()
        conn = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        prepared = [row_for(e, "bench", i + 1) for i, e in enumerate(entries)]

        def ceiling() -> None:
            for i in range(0, rows, batch):
                conn.execute("BEGIN")
                conn.executemany(UPSERT_SQL["entries"], prepared[i : i + batch])
                conn.execute("COMMIT")

        c = _rate(rows, ceiling)
        conn.close()
    return {"ours": o, "ceiling": c, "ratio": o / c}


def optional_benches() -> dict[str, Callable[[], dict[str, float]]]:
    """Benchmarks that live beside the outputs and the API, when present."""
    found: dict[str, Callable[[], dict[str, float]]] = {}
    for module, names in (
        ("outputs.bench", ("bench_nightscout", "bench_mqtt")),
        ("api.bench", ("bench_api",)),
        ("connect.bench_accounts", ("bench_accounts",)),
        ("connect.bench_backfill", ("bench_backfill",)),
    ):
        try:
            mod: Any = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        for name in names:
            fn = getattr(mod, name, None)
            if callable(fn):
                found[name] = fn
    return found


def main() -> None:
    rows: list[tuple[str, str, dict[str, float]]] = [
        ("machine events/s (Cycle + Fetch)", "bare transition table", bench_machines()),
        ("store upserts/s (frames of 288)", "raw sqlite3.executemany", bench_store()),
    ]
    labels = {
        "bench_nightscout": ("delivery to Nightscout emulator, records/s", "bare httpx loop"),
        "bench_mqtt": ("delivery to mosquitto, QoS 1 messages/s", "bare paho publisher"),
        "bench_api": ("API entries.json?count=288, requests/s", "bare ASGI app, same bytes"),
        "bench_backfill": (
            "backfill from a Nightscout, entries/s (30 days)",
            "bare httpx loop, same windows",
        ),
        "bench_accounts": (
            "accounts polled/s (200 runtimes, one frame each)",
            "fetch+transform+persist direct",
        ),
    }
    for name, fn in optional_benches().items():
        label, ceiling = labels.get(name, (name, "ceiling"))
        try:
            rows.append((label, ceiling, fn()))
        except Exception as exc:  # one missing piece (e.g. no broker) must not hide the rest
            print(f"{label}: not measured ({type(exc).__name__}: {exc})")
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'ours':>12}  {'ceiling':>12}  {'ratio':>6}  ceiling is")
    for label, ceiling, result in rows:
        print(
            f"{label:<{width}}  {result['ours']:>12,.0f}  {result['ceiling']:>12,.0f}  "
            f"{result['ratio']:>6.2g}  {ceiling}"
        )
        if "bytes_per_account" in result:
            print(
                f"{'  memory per account, KiB':<{width}}  {result['bytes_per_account'] / 1024:>12,.1f}  "
                f"{result['ceiling_bytes'] / 1024:>12,.1f}  {'':>6}  the same plan and store, no runtime"
            )


if __name__ == "__main__":
    main()

__all__ = ["bench_machines", "bench_store", "main", "to_nightscout"]
