"""Store upserts/s (frames of readings), CPU time, beside a bare loop doing the same work.

Ours is :meth:`store.Store.upsert`. The ceiling does what it does with the least code: for
each frame, in one transaction, it builds each row by hand (the identifier with
:func:`uuid.uuid5`, the ISO time with :func:`time.gmtime`, the document as a literal dict in
key order, encoded by orjson) and writes the rows and the sequence with hand-written SQL into
a store of the same schema. Both write the same rows (a test compares them).
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.timing import Figures, cpu_rate
from connect.records import NIGHTSCOUT_NAMESPACE, Entry, make_identifier
from store import Store

BARE_UPSERT = (
    "INSERT INTO entries (identifier, seq, date, date_string, type, sgv, direction, device, source, json, "
    "srv_created, srv_modified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(identifier) DO UPDATE SET seq = excluded.seq, date = excluded.date, "
    "date_string = excluded.date_string, type = excluded.type, sgv = excluded.sgv, "
    "direction = excluded.direction, device = excluded.device, source = excluded.source, "
    "json = excluded.json, srv_modified = excluded.srv_modified WHERE entries.json IS NOT excluded.json"
)


def readings(rows: int) -> list[Entry]:
    return [
        Entry(
            type="sgv",
            date=1_700_000_000_000 + i * 300_000,
            device="bench",
            sgv=40 + i % 300,
            direction="Flat",
        )
        for i in range(rows)
    ]


def bare_rows(entries: list[Entry], source: str, seq: int, now: int) -> list[tuple[Any, ...]]:
    """The ceiling's rows: what :func:`store.database.row_for` makes for these readings (an
    sgv with a direction and its trend, nothing else), by hand."""
    rows = []
    for e in entries:
        seq += 1
        identifier = str(uuid.uuid5(NIGHTSCOUT_NAMESPACE, f"{e.device}_{e.date}_{e.type}"))
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(e.date // 1000)) + f".{e.date % 1000:03d}Z"
        doc = {"date": e.date, "dateString": iso, "device": e.device, "direction": e.direction,
               "identifier": identifier, "sgv": e.sgv, "trend": e.trend, "type": e.type}  # fmt: skip
        rows.append(
            (identifier, seq, e.date, iso, e.type, e.sgv, e.direction, e.device, source,
             orjson.dumps(doc).decode(), now, now)
        )  # fmt: skip
    return rows


def bench_store(rows: int = 50_000, batch: int = 288) -> Figures:
    """Store upserts/s (frames of ``batch`` readings) beside the bare loop, CPU time."""
    ours_entries = readings(rows)
    bare_entries = readings(rows)  # fresh objects: neither side finds the other's work cached
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "ours.db")

        def ours() -> None:
            for i in range(0, rows, batch):
                store.upsert(ours_entries[i : i + batch], source="bench")

        make_identifier.cache_clear()  # ours hashes every identifier, as the ceiling does
        o = cpu_rate(rows, ours)
        store.close()

        Store(Path(tmp) / "bare.db").close()  # the same schema; then nothing of ours
        conn = sqlite3.connect(Path(tmp) / "bare.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")

        def ceiling() -> None:
            for i in range(0, rows, batch):
                conn.execute("BEGIN IMMEDIATE")
                (seq,) = conn.execute("SELECT value FROM sequence WHERE name = 'seq'").fetchone()
                now = int(time.time() * 1000)
                frame = bare_rows(bare_entries[i : i + batch], "bench", seq, now)
                conn.executemany(BARE_UPSERT, frame)
                conn.execute("UPDATE sequence SET value = ? WHERE name = 'seq'", (seq + len(frame),))
                conn.execute("COMMIT")

        c = cpu_rate(rows, ceiling)
        conn.close()
    return {"ours": o, "ceiling": c, "ratio": o / c}
