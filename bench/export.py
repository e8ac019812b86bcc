"""An export of 90 days of readings, rows/s, beside reading the same rows in one query; and the
peak RSS of each, every run in a child process of its own (an export holds one page at a time,
the single query holds them all)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from bench.timing import Figures
from connect.records import Entry
from store import Store

DAY_READINGS = 288

#: the child's own peak: VmHWM belongs to its address space (ru_maxrss would count the parent's
#: pages at the fork, before the exec)
_CHILD = """
import os, resource, sqlite3, sys, time


def peak():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


from store.export import export_chunks
from store.reader import StoreReader

path, mode = sys.argv[1], sys.argv[2]
started = time.perf_counter()
with open(os.devnull, "wb") as out:
    if mode == "ours":
        reader = StoreReader(path)
        for chunk in export_chunks(reader, "entries", "ndjson", -2**62, 2**62):
            out.write(chunk)
        reader.close()
    else:
        conn = sqlite3.connect(path)
        rows = conn.execute("SELECT json FROM entries ORDER BY date, rowid").fetchall()
        out.write(("\\n".join(doc for (doc,) in rows) + "\\n").encode())
        conn.close()
print(time.perf_counter() - started, peak())
"""


def _run(path: Path, mode: str) -> tuple[float, int]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), mode], capture_output=True, text=True, check=True
    )
    seconds, peak = done.stdout.split()
    return float(seconds), int(peak)


def bench_export(days: int = 90, rounds: int = 3) -> Figures:
    """Rows/s of ``export`` (NDJSON) beside one ``SELECT`` of the same rows written at once, the
    best of ``rounds``; ``peak_rss`` and ``ceiling_rss`` are the children's peak RSS in bytes."""
    rows = days * DAY_READINGS
    start = 1_700_000_000_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.db"
        store = Store(path)
        for day in range(days):
            store.upsert(
                [
                    Entry(
                        type="sgv", date=start + (day * DAY_READINGS + i) * 300_000, device="bench", sgv=100
                    )
                    for i in range(DAY_READINGS)
                ]
            )
        store.close()
        ours = [_run(path, "ours") for _ in range(rounds)]
        ceiling = [_run(path, "ceiling") for _ in range(rounds)]
    best, top = min(s for s, _ in ours), min(s for s, _ in ceiling)
    return {
        "ours": rows / best,
        "ceiling": rows / top,
        "ratio": top / best,
        "peak_rss": float(min(p for _, p in ours)),
        "ceiling_rss": float(min(p for _, p in ceiling)),
    }
