"""The Glooko source under the real runtime, in virtual time, against the emulator.

Four loops (CGM, boluses, basals, food) share one cookie session, each with its own
checkpoint. Records reach Glooko late (the pump and phone sync late), so every loop re-reads
its newest hours. Cookie expiry and random fault schedules must not lose or duplicate a
record, nor cause more than one sign-in per expiry or refusal.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import httpx
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
    def __init__(self, *, seed: int, cookie_ttl_s: int = 86_400, style: str = "camel") -> None:
        self.clock = VirtualClock(START)
        self.emu = GlookoEmulator(
            # history starts inside the two-day look-back even when faults delay the first read
            now=self.clock, first_ms=START - DAY + 2 * HOUR, cookie_ttl_s=cookie_ttl_s, reading_style=style,
            password=PASSWORD, code_in_sign_in=seed % 2 == 0,
        )  # fmt: skip
        self.settings = GlookoSettings(
            glooko_email=self.emu.email, glooko_password=PASSWORD, glooko_server="http://glooko.test",
            glooko_timezone="Europe/Berlin", glooko_lookback_days=1,
        )  # fmt: skip
        self.store = Store(":memory:")
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.emu), follow_redirects=False)
        builder = Builder("glooko")
        make(self.settings, client).generate_driver(builder)
        self.plan = builder.build()
        self.runtime = SourceRuntime(
            self.plan, AsyncStore(self.store), clock=self.clock, backfill_days=30, rng=random.Random(seed)
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
    # every loop has its own checkpoint, near now
    marks = s.checkpoints()
    assert {loop: set(c) for loop, c in marks.items()} == {
        "GlookoCGM": {"entries"}, "GlookoBoluses": {"treatments"}, "GlookoBasals": {"treatments"},
        "GlookoFoods": {"treatments"},
    }  # fmt: skip
    assert all(end - 20 * MINUTE <= next(iter(c.values())) <= end for c in marks.values())
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
@given(schedule=fault_schedules(), seed=st.integers(0, 1000), style=st.sampled_from(["camel", "snake"]))
def test_random_fault_schedules_lose_nothing(
    schedule: list[tuple[str, str, int, int]], seed: int, style: str
) -> None:
    note(f"schedule={schedule} seed={seed} style={style}")

    async def scenario() -> None:
        s = Scenario(seed=seed, style=style, cookie_ttl_s=3 * 3600)
        for endpoint, kind, start, length in schedule:
            s.emu.schedule(kind, START + start, START + start + length, endpoint=endpoint)
        with captured_logs() as logs:
            await s.run_for(4 * HOUR + 30 * MINUTE)
        s.check(s.clock(), settle_ms=60 * MINUTE, expiries=math.ceil(5 * HOUR / (0.95 * 3 * HOUR)))
        text: Any = logs.getvalue() + json.dumps(s.runtime.status(), default=str)
        for secret in [PASSWORD, s.emu.code, *s.emu.sessions]:
            assert secret not in text

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
