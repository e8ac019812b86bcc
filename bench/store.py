"""Store upserts/s (frames of readings) beside raw ``executemany`` into the same schema."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from bench.timing import Figures, rate
from connect.records import Entry
from store import Store
from store.database import UPSERT_SQL, row_for


def bench_store(rows: int = 50_000, batch: int = 288) -> Figures:
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

        o = rate(rows, ours)
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

        c = rate(rows, ceiling)
        conn.close()
    return {"ours": o, "ceiling": c, "ratio": o / c}
