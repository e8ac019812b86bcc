"""Shared pieces of the API tests: a populated store file, the app over it, a status snapshot.

(No tests here; the API test modules import these helpers.)

``ApiClient`` is starlette's in-process test client (renamed so pytest does not take it for a
test class).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

from api import ApiSettings, create_app
from connect.records import DeviceStatus, Entry, Profile, Treatment
from store import Store
from store.reader import StoreReader

with warnings.catch_warnings():
    # starlette's TestClient nags about its future transport; the requests it makes are what matter
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient as ApiClient  # noqa: F401 (for the API tests)

SECRET = "correct-horse-battery-staple"
FIVE_MIN = 300_000
DAY_MS = 86_400_000
DIRECTIONS = ["Flat", "FortyFiveUp", "SingleUp", "FortyFiveDown", "SingleDown", "Flat", "DoubleUp"]


def now_ms() -> int:
    return int(time.time() * 1000)


def readings(end_ms: int, count: int, *, device: str = "share2", step: int = FIVE_MIN) -> list[Entry]:
    """``count`` CGM readings every ``step`` ms ending at ``end_ms``, oldest first."""
    out = []
    for i in range(count):
        date = end_ms - (count - 1 - i) * step
        out.append(
            Entry(
                type="sgv",
                date=date,
                device=device,
                # a slow wave through low, in range and high, with a little wobble
                sgv=int(140 + 90 * math.sin(i / 24) + 12 * math.sin(i / 3.7)),
                direction=DIRECTIONS[i % len(DIRECTIONS)],
            )
        )
    return out


def populate(path: Path, *, end_ms: int | None = None, count: int = 300) -> dict[str, Any]:
    """A store file with readings, a meter value, treatments, a devicestatus and a profile."""
    end = now_ms() if end_ms is None else end_ms
    store = Store(path)
    entries = readings(end, count)
    extra = [
        # between readings, so the newest-first order has no ties
        Entry(type="mbg", date=end - 30 * 60_000 + 17_000, device="meter", mbg=123),
        Entry(
            type="cal",
            date=end - 40 * 60_000 + 17_000,
            device="share2",
            slope=900.0,
            intercept=30000.0,
            scale=1.0,
        ),
    ]
    treatments = [
        Treatment(event_type="Meal Bolus", date=end - i * 3_600_000, device="pump", insulin=2.5, carbs=30)
        for i in range(5)
    ] + [Treatment(event_type="Temp Basal", date=end - 90 * 60_000, device="pump", rate=0.5, duration=30)]
    statuses = [
        DeviceStatus(device="pump", date=end - i * FIVE_MIN, payload={"pump": {"reservoir": 100 - i}})
        for i in range(3)
    ]
    profile = [
        Profile(
            date=end - 10 * DAY_MS,
            device="pump",
            units="mg/dl",
            store={"Default": {"dia": "4", "basal": [{"time": "00:00", "value": "0.8", "timeAsSeconds": 0}]}},
        )
    ]
    store.upsert([*entries, *extra, *treatments, *statuses, *profile], source="test")
    store.close()
    return {"end": end, "entries": entries, "extra": extra, "treatments": treatments, "statuses": statuses}


def snapshot(now: int | None = None, *, missing: int = 0) -> dict[str, Any]:
    """A runtime status as the daemon reports it."""
    t = now_ms() if now is None else now
    return {
        "sources": [
            {
                "source": "dexcomshare",
                "poller": "running",
                "session": {
                    "state": "active",
                    "logins": 2,
                    "rejections": 0,
                    "failures": 1,
                    "last_error": None,
                },
                "loops": {
                    "DexcomShareEntries": {
                        "state": "after",
                        "fetch_state": "done",
                        "attempts": 1,
                        "frames_ok": 41,
                        "frames_failed": 3,
                        "frames_missing": missing,
                        "records_written": 288,
                        "last_success": t - 60_000,
                        "next_due": t + 4 * 60_000,
                        "last_error": None if not missing else "TransientError: 503 from share",
                    }
                },
            }
        ],
        "outputs": [
            {
                "name": "nightscout",
                "state": "idle",
                "lag": 0,
                "delivered": 290,
                "failures": 0,
                "last_error": None,
            }
        ],
    }


def make_app(
    path: Path, *, secret: str | None = SECRET, readable: bool = False, status: Any = None, **kw: Any
):
    settings = ApiSettings(http_secret=secret, http_readable=readable)
    reader = StoreReader(path)
    return create_app(reader, status or (lambda: snapshot()), settings, **kw), reader
