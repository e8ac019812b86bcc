"""The Glooko source under the real runtime, in virtual time, against the emulator.

Four loops (CGM, boluses, basals, food) share one cookie session, each with its own
checkpoints. Records reach Glooko late (the pump and phone sync late; a pump may upload once a
day), so every loop re-reads its newest hours, and its late-sync horizon once an hour. A first
frame, as `once` runs it, already brings the last hours. Cookie expiry, daily uploads and random
fault schedules must not lose or duplicate a record, nor cause more than one sign-in per expiry
or refusal.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from connect.builder import Builder
from connect.clock import VirtualClock
from connect.runtime import SourceRuntime
from sources.glooko import FEEDS, GlookoSettings, make
from store import AsyncStore, Store
from tests.emulators.glooko import GlookoEmulator
from tests.logcapture import captured_logs

START = 1_749_513_600_000  # 2025-06-10T00:00:00Z: summer time in Berlin for weeks either side
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
PASSWORD = "correct horse battery"
DATA = ("readings", "normalBoluses", "scheduledBasals", "foods")
DATA_FAULTS = ("500", "503html", "401", "429", "html", "truncated", "nonjson", "timeout")
SIGNIN_FAULTS = ("500", "503html", "429", "html", "timeout")


class Scenario:
    def __init__(self, *, seed: int, cookie_ttl_s: int = 86_400, style: str = "camel",
                 syncs: dict[str, tuple[int, int]] | None = None, lookback_days: int = 1,
                 first_ms: int = START - DAY + 2 * HOUR, backfill_days: float = 30) -> None:  # fmt: skip
        self.clock = VirtualClock(START)
        self.emu = GlookoEmulator(
            # history starts inside the one-day look-back even when faults delay the first read
            now=self.clock, first_ms=first_ms, cookie_ttl_s=cookie_ttl_s, reading_style=style,
            password=PASSWORD, code_in_sign_in=seed % 2 == 0, syncs=syncs,
        )  # fmt: skip
        self.settings = GlookoSettings(
            glooko_email=self.emu.email, glooko_password=PASSWORD, glooko_server="http://glooko.test",
            glooko_timezone="Europe/Berlin", glooko_lookback_days=lookback_days,
        )  # fmt: skip
        self.store = Store(":memory:")
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.emu), follow_redirects=False)
        builder = Builder("glooko")
        make(self.settings, client).generate_driver(builder)
        self.plan = builder.build()
        self.backfill_days = backfill_days
        self.rng = random.Random(seed)
        self.runtime = self.new_runtime()

    def new_runtime(self) -> SourceRuntime:
        """A runtime over the same store, as each run of ``once`` from cron starts one."""
        return SourceRuntime(
            self.plan,
            AsyncStore(self.store),
            clock=self.clock,
            backfill_days=self.backfill_days,
            rng=self.rng,
        )

    async def run_for(self, ms: int) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.runtime.run)
            await trio.sleep(ms / 1000)
            nursery.cancel_scope.cancel()

    def check(self, end: int, *, settle_ms: int, expiries: int = 0) -> None:
        emu = self.emu
        docs = self.store.docs("entries", newest_first=False)
        assert len({d["date"] for d in docs}) == len(docs), "a reading was stored twice"
        stored = {d["date"]: d["sgv"] for d in docs}
        expected = emu.expected_entries(end)
        assert set(stored) <= set(expected) and all(expected[t] == v for t, v in stored.items())
        missing = sorted(set(emu.expected_entries(end - settle_ms)) - set(stored))
        assert not missing, f"readings lost: {missing[:5]}"

        treatments: dict[tuple[int, str], dict[str, float]] = {}
        for d in self.store.docs("treatments"):
            key = (d["date"], d["eventType"])
            assert key not in treatments, "a treatment was stored twice"
            treatments[key] = {k: d[k] for k in ("insulin", "carbs", "rate", "duration") if k in d}
        want = emu.expected_treatments(end)
        assert set(treatments) <= set(want)
        for key, fields in treatments.items():
            assert fields == {k: float(v) for k, v in want[key].items()}, key
        lost = sorted(set(emu.expected_treatments(end - settle_ms)) - set(treatments))
        assert not lost, f"treatments lost: {lost[:5]}"

        # one sign-in per expiry or refusal: never a storm
        refusals = sum(1 for r in emu.log if r.endpoint != "signin" and r.status == 401)
        failed = sum(1 for r in emu.log if r.endpoint == "signin" and r.status != 200)
        assert emu.count("signin") <= 1 + refusals + failed + expiries

    def checkpoints(self) -> dict[str, dict[str, int]]:
        return {feed.loop: self.store.checkpoints("glooko", feed.loop) for feed in FEEDS}


async def test_backfill_then_live(autojump_clock: trio.testing.MockClock) -> None:
    s = Scenario(seed=2)
    with captured_logs() as logs:
        await s.run_for(6 * HOUR)
    end = s.clock()
    s.check(end, settle_ms=60 * MINUTE)
    assert s.emu.count("signin") == 1
    # every loop has its own checkpoints: where it read to, near now, and its last long re-read
    marks = s.checkpoints()
    assert {loop: set(c) for loop, c in marks.items()} == {
        "GlookoCGM": {"entries", "entries:resync"}, "GlookoBoluses": {"treatments", "treatments:resync"},
        "GlookoBasals": {"treatments", "treatments:resync"}, "GlookoFoods": {"treatments", "treatments:resync"},
    }  # fmt: skip
    assert all(end - 20 * MINUTE <= c[key] <= end for c in marks.values() for key in c if ":" not in key)
    assert all(end - 80 * MINUTE <= c[key] <= end for c in marks.values() for key in c if ":" in key)
    # a day of history in one page, then live reads
    assert s.emu.count("readings") <= 1 + 6 * 12 + 3
    assert s.emu.count("foods") <= 1 + 6 * 4 + 3
    status = s.runtime.status()
    assert all(loop["frames_failed"] == 0 for loop in status["loops"].values())
    text = logs.getvalue() + json.dumps(status, default=str)
    for secret in [PASSWORD, s.emu.code, *s.emu.sessions]:
        assert secret not in text


async def test_cookie_expiry_mid_run_signs_in_again(autojump_clock: trio.testing.MockClock) -> None:
    """The cookie lasts 90 minutes, and the server also drops every session once: no gap."""
    s = Scenario(seed=3, cookie_ttl_s=5400, style="snake")
    async with trio.open_nursery() as nursery:
        await nursery.start(s.runtime.run)
        await trio.sleep(2.5 * 3600)
        s.emu.expire_sessions()
        await trio.sleep(3.5 * 3600)
        nursery.cancel_scope.cancel()
    expiries = math.ceil(6 * HOUR / (0.95 * 5400 * 1000))
    s.check(s.clock(), settle_ms=60 * MINUTE, expiries=expiries)
    assert s.emu.count("signin") >= 1 + 4  # the Max-Age renewals, plus the dropped session
    assert sum(1 for r in s.emu.log if r.status == 401) >= 1


def late(s: Scenario) -> list[int]:
    """How late (ms) each stored treatment reached Glooko."""
    return [s.emu.arrives(feed, t) - t for feed in ("normalBoluses", "scheduledBasals", "foods")
            for _k, t in s.emu.arrived(feed, s.clock())]  # fmt: skip


async def test_a_pump_that_uploads_once_a_day_loses_nothing(autojump_clock: trio.testing.MockClock) -> None:
    """The pump syncs at 06:00 UTC and the phone's food log every eight hours: a bolus reaches
    Glooko up to a day after it was given. Six hours of overlap lost most of them."""
    syncs = {"normalBoluses": (DAY, 6 * HOUR), "scheduledBasals": (DAY, 6 * HOUR), "foods": (8 * HOUR, HOUR)}
    s = Scenario(seed=5, syncs=syncs)
    with captured_logs():
        await s.run_for(8 * HOUR)
    s.check(s.clock(), settle_ms=90 * MINUTE)
    assert max(late(s)) > 20 * HOUR  # the 06:00 upload brought records from the day before
    assert s.store.count("treatments") >= 30
    # still about one request per frame: the long re-read replaces a frame's read once an hour
    frames = sum(loop["frames_ok"] + loop["frames_failed"] for loop in s.runtime.status()["loops"].values())
    data = sum(s.emu.count(feed) for feed in DATA)
    assert data <= frames + 4


@pytest.mark.parametrize("backfill_days", [1, 30])
async def test_cron_runs_show_the_last_hours_first_then_fill_the_history(
    backfill_days: int, autojump_clock: trio.testing.MockClock
) -> None:
    """``once`` on a fresh store, with a three-day Glooko look-back, which wins over
    CONNECT_BACKFILL_DAYS either way: the first run reads the last minutes' readings first, then
    goes on while the source says more, so it also fills the history; nothing comes twice."""
    s = Scenario(seed=6, lookback_days=3, backfill_days=backfill_days, first_ms=START - 2 * DAY - 12 * HOUR)
    with captured_logs():
        assert await s.new_runtime().run_once()
        newest = s.store.newest_date("entries")
        assert newest is not None and newest >= START - 15 * MINUTE  # the readings lag 8 minutes
        runs = 1
        while any(s.store.checkpoints("glooko", feed.loop).get(f"{feed.collection}:history", 0)
                  < s.store.checkpoints("glooko", feed.loop).get(f"{feed.collection}:history_end", 0)
                  for feed in FEEDS):  # fmt: skip
            await trio.sleep(300)
            assert await s.new_runtime().run_once()
            runs += 1
    oldest = min(d["date"] for d in s.store.docs("entries", newest_first=False))
    assert oldest == s.emu.first_ms  # older than CONNECT_BACKFILL_DAYS=1: the Glooko look-back won
    s.check(s.clock(), settle_ms=30 * MINUTE, expiries=runs - 1)  # each run signs in once
    assert runs == 1  # one cron run completes the backfill


@st.composite
def fault_schedules(draw: st.DrawFn) -> list[tuple[str, str, int, int]]:
    windows = []
    for _ in range(draw(st.integers(1, 5))):
        endpoint = draw(st.sampled_from([*DATA, "signin"]))
        kind = draw(st.sampled_from(SIGNIN_FAULTS if endpoint == "signin" else DATA_FAULTS))
        start = draw(st.integers(0, 150)) * MINUTE
        windows.append((endpoint, kind, start, draw(st.integers(1, 20)) * MINUTE))
    return windows


# no shrinking: each example is hours of virtual time; the schedule is printed on failure
@settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    schedule=fault_schedules(),
    seed=st.integers(0, 1000),
    style=st.sampled_from(["camel", "snake"]),
    uploads=st.dictionaries(st.sampled_from(["normalBoluses", "scheduledBasals", "foods"]),
                            st.integers(30, 150).map(lambda m: (DAY, m * MINUTE)), min_size=1),
)  # fmt: skip
def test_random_fault_schedules_lose_nothing(
    schedule: list[tuple[str, str, int, int]], seed: int, style: str, uploads: dict[str, tuple[int, int]]
) -> None:
    """Faults, cookie expiry, and a device that uploads a day's records at once during the run."""
    note(f"schedule={schedule} seed={seed} style={style} uploads={uploads}")

    async def scenario() -> None:
        s = Scenario(seed=seed, style=style, cookie_ttl_s=3 * 3600, syncs=uploads)
        for endpoint, kind, start, length in schedule:
            s.emu.schedule(kind, START + start, START + start + length, endpoint=endpoint)
        with captured_logs() as logs:
            await s.run_for(4 * HOUR + 30 * MINUTE)
        s.check(s.clock(), settle_ms=60 * MINUTE, expiries=math.ceil(5 * HOUR / (0.95 * 3 * HOUR)))
        text: Any = logs.getvalue() + json.dumps(s.runtime.status(), default=str)
        for secret in [PASSWORD, s.emu.code, *s.emu.sessions]:
            assert secret not in text

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_site_with_other_treatments_does_not_cut_a_first_start_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Gap analysis asks the site for each feed's own records.

    The site holds a loop app's Temp Basals up to a few minutes ago, and no Glooko record.
    Asking for the site's newest treatment of any kind would start every feed minutes ago and
    skip three days of history; asked for their own records, the feeds read their look-back.
    """
    from connect.records import iso_from_ms
    from outputs.nightscout import NightscoutOutput
    from tests.emulators.nightscout import NightscoutEmulator

    s = Scenario(seed=4, lookback_days=3, first_ms=START - 3 * DAY + 2 * HOUR)
    secret = "site-api-secret-0123"
    site = NightscoutEmulator(secret, now=s.clock)
    site.seed_treatments(
        [{"eventType": "Temp Basal", "created_at": iso_from_ms(START - m * MINUTE), "device": "loop://iPhone",
          "rate": 0.5, "duration": 30} for m in range(5, 600, 30)]
    )  # fmt: skip
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=site.app)) as client:
        output = NightscoutOutput("http://site.test", AsyncStore(s.store), client, api_secret=secret)
        s.runtime = SourceRuntime(
            s.plan, AsyncStore(s.store), clock=s.clock, backfill_days=30, rng=s.rng, gap_finder=output.newest
        )
        await s.run_for(8 * HOUR)
    s.check(s.clock(), settle_ms=60 * MINUTE)
    for event in ("Carb Correction", "Temp Basal", "Meal Bolus"):
        dates = [d["date"] for d in s.store.docs("treatments") if d["eventType"] == event]
        assert min(dates) < START - 2 * DAY, f"the {event} history was read"
    asked = [r for r in site.requests if r.path == "/api/v1/treatments.json"]
    assert len(asked) == 3  # once per treatment feed, not once per frame
