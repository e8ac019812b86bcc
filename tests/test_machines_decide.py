"""The machines decide: four defects of scattered policy, each through the program as a user
runs it, and each fixed by a decision that now lives in a machine.

1. ``once`` completes any backfill in one run (Cycle: frames while the source says more).
2. Gap analysis that fails is asked again; devicestatus and profile wait for the site's answer
   instead of starting "now" for good (Fetch).
3. An accepted chunk clears the delivery failures (Delivery).
4. A stale first Dexcom session is logged in again once, at once (Session).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import trio

from connect.clock import VirtualClock
from connect.records import Batch, Entry
from outputs.nightscout import NightscoutOutput
from store import Store
from tests.emulators.nightscout import NightscoutEmulator, devicestatus_series, iso_from_ms, sgv_series
from tests.test_dexcom_driver import build_run, check_nothing_served_is_lost_or_doubled
from tests.test_e2e_nightscout import (
    DAY_MS,
    ENTRIES_30_DAYS,
    OUTPUT_SECRET,
    SOURCE_SECRET,
    WRONG_SECRET,
    cli,
    identifiers,
    query,
    site,
    thirty_days,
)
from tests.test_outputs_nightscout import InlineStore

__all__ = ["site"]  # the loopback Nightscout fixture, shared with the e2e tests

# --- 1. once and a backfill longer than the site's history ------------------------------------


def test_one_once_run_completes_a_90_day_backfill_of_a_30_day_site(site: Any, tmp_path: Path) -> None:
    """The first 60 one-day windows are empty; each frame says ``more``: one run goes on until
    the source stops saying it, so a cron user has everything after the first run."""
    emu, url = site(SOURCE_SECRET)
    docs = thirty_days(emu)
    db = tmp_path / "copy.db"
    result = cli(
        "once",
        timeout=120,
        CONNECT_SOURCE="nightscout",
        CONNECT_SOURCE_ENDPOINT=url,
        CONNECT_SOURCE_API_SECRET=SOURCE_SECRET,
        CONNECT_STORE_PATH=str(db),
        CONNECT_BACKFILL_DAYS="90",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stored = query(db, "SELECT identifier FROM entries")
    assert len(stored) == ENTRIES_30_DAYS
    assert {i for (i,) in stored} == identifiers(docs)


# --- 2. a wrong output secret at first start, then the right one --------------------------------


def test_a_wrong_output_secret_first_then_the_right_one_delivers_every_devicestatus_and_the_profile(
    site: Any, tmp_path: Path
) -> None:
    source, source_url = site(SOURCE_SECRET)
    now = source.now()
    source.seed_entries(sgv_series(now - 2 * DAY_MS, 576))
    statuses = devicestatus_series(now - 60 * 3600_000, 720)
    source.seed_devicestatus(statuses)
    source.seed_profiles(
        [
            {
                "defaultProfile": "Default",
                "startDate": iso_from_ms(now - 10 * DAY_MS),
                "created_at": iso_from_ms(now - 10 * DAY_MS),
                "store": {
                    "Default": {"dia": 5, "carbratio": [{"time": "00:00", "value": 10}], "units": "mg/dl"}
                },
            }
        ]
    )
    target, target_url = site(OUTPUT_SECRET)
    db = tmp_path / "store.db"
    settings = {
        "CONNECT_SOURCE": "nightscout",
        "CONNECT_SOURCE_ENDPOINT": source_url,
        "CONNECT_SOURCE_API_SECRET": SOURCE_SECRET,
        "CONNECT_STORE_PATH": str(db),
        "CONNECT_NIGHTSCOUT_ENDPOINT": target_url,
    }
    first = cli("once", timeout=120, CONNECT_API_SECRET=WRONG_SECRET, **settings)
    assert first.returncode == 1
    assert target.count("devicestatus") == 0 and target.count("profile") == 0
    # nothing was started from a guess: devicestatus waits for the site's answer
    assert query(db, "SELECT count(*) FROM devicestatus")[0][0] == 0
    assert WRONG_SECRET not in first.stderr + first.stdout

    second = cli("once", timeout=120, CONNECT_API_SECRET=OUTPUT_SECRET, **settings)
    assert second.returncode == 0, second.stderr[-3000:]
    assert target.count("devicestatus") == len(statuses) == 720
    assert target.count("profile") == 1
    assert target.count("entries") == 576


# --- 3. a site that fails every third request ---------------------------------------------------


class EveryThird:
    """An ASGI wrapper: every request takes ``latency`` seconds (virtual) and, when ``fail`` is
    set, every third upload is answered 503."""

    def __init__(self, app: Any, *, fail: bool, latency: float = 0.5) -> None:
        self.app = app
        self.fail = fail
        self.latency = latency
        self.posts = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await trio.sleep(self.latency)
        if scope["type"] == "http" and scope["method"] == "POST":
            self.posts += 1
            if self.fail and self.posts % 3 == 0:
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": b"busy"})
                return
        await self.app(scope, receive, send)


async def _deliver(tmp_path: Path, name: str, *, fail: bool) -> tuple[float, int]:
    """Virtual seconds to deliver 9,601 readings, and the entries the site ends up with."""
    emulator = NightscoutEmulator(OUTPUT_SECRET, now=VirtualClock(1_700_000_000_000))
    store = Store(tmp_path / f"{name}.db")
    batch = Batch.of(
        Entry(type="sgv", date=1_690_000_000_000 + i * 300_000, device="cgm", sgv=100 + i % 90)
        for i in range(9_601)
    )
    store.persist_frame("sim", "main", batch)
    app = EveryThird(emulator.app, fail=fail)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        out = NightscoutOutput(
            "http://site.test",
            InlineStore(store),
            client,
            api_secret=OUTPUT_SECRET,
            rng=random.Random(3),
            clock=VirtualClock(1_700_000_000_000),
        )
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            await nursery.start(out.run)
            while await out.astore.lag(out.name) > 0:
                await trio.sleep(0.1)
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
    store.close()
    return elapsed, emulator.count("entries")


async def test_delivery_to_a_site_failing_every_third_request_takes_at_most_three_times_as_long(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    healthy, healthy_count = await _deliver(tmp_path, "healthy", fail=False)
    flaky, flaky_count = await _deliver(tmp_path, "flaky", fail=True)
    assert healthy_count == flaky_count == 9_601
    assert flaky <= 3 * healthy, (flaky, healthy)


# --- 4. a stale first Dexcom session ---------------------------------------------------------------


def test_a_stale_first_dexcom_session_costs_one_more_login_and_no_data() -> None:
    run, client = build_run()
    # the first read after the first login is told the session does not exist
    run.emulator.inject("code", code="SessionIdNotFound", endpoint="read")

    async def once() -> bool:
        async with client:
            ok = await run.runtime.run_once()
        run.end_ms = run.clock()
        return ok

    ok = trio.run(once, clock=trio.testing.MockClock(autojump_threshold=0))
    assert ok
    assert run.emulator.count("login") <= 2
    reads = [r for r in run.emulator.requests if r.endpoint == "read"]
    assert [r.code for r in reads][:1] == ["SessionIdNotFound"]
    assert len(run.stored_dates()) >= 6 * 12 - 1  # the six hours of history the account holds
    check_nothing_served_is_lost_or_doubled(run)
