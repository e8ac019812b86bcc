"""The CareLink source under the real runtime, in virtual time, against the emulator.

Days pass in a moment under trio's MockClock; the emulator publishes a reading every five
minutes on the same virtual clock. Random fault schedules (5xx, 401, 429, HTML pages, cut or
non-JSON bodies, timeouts, refusals at the token endpoint) must not lose or duplicate a reading,
must not refresh the token more than once per refusal or expiry, and must never present a
rotated refresh token again (the emulator would revoke the whole login, as Auth0 does).
"""

from __future__ import annotations

import json
import math
import random
import stat
import tempfile
from pathlib import Path
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
from sources.carelink import LOOP_NAME, make
from sources.carelink.settings import CareLinkSettings
from sources.carelink.tokens import TokenData, write_token_file
from store import AsyncStore, Store
from tests.emulators.carelink import CareLinkEmulator
from tests.logcapture import captured_logs

START = 1_750_000_000_000  # June 2025
MINUTE = 60_000
HOUR = 60 * MINUTE
TTL_S = 1800
DATA_FAULTS = ("500", "503html", "401", "429", "html", "truncated", "nonjson", "timeout")
TOKEN_FAULTS = ("500", "429", "timeout", "html", "503html")


class Scenario:
    def __init__(self, tmp: Path, *, generation: str, seed: int, history_ms: int = HOUR) -> None:
        self.clock = VirtualClock(START)
        # a short history keeps payloads small: virtual hours then cost little real time
        self.emu = CareLinkEmulator(
            now=self.clock, first_reading_ms=START - history_ms, generation=generation,
            access_ttl_s=TTL_S, seed=seed, gaps={5, 40, 41, 77},
        )  # fmt: skip
        self.settings = CareLinkSettings(
            carelink_token_file=tmp / "token.json", carelink_server="http://carelink.test", country_code="GB"
        )
        self.store = Store(":memory:")
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.emu), follow_redirects=False)
        self.driver = make(self.settings, self.client, clock=self.clock)
        builder = Builder("minimedcarelink")
        self.driver.generate_driver(builder)
        self.runtime = SourceRuntime(
            builder.build(),
            AsyncStore(self.store),
            clock=self.clock,
            backfill_days=30,
            rng=random.Random(seed),
        )

    def write_tokens(self) -> dict[str, Any]:
        doc = self.emu.issue_tokens()
        write_token_file(self.settings.carelink_token_file, TokenData.from_json(doc, what="test"))
        return doc

    async def run_for(self, ms: int) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.runtime.run)
            await trio.sleep(ms / 1000)
            nursery.cancel_scope.cancel()

    def stored_entries(self) -> dict[int, int]:
        docs = self.store.docs("entries", newest_first=False)
        dates = [d["date"] for d in docs]
        assert len(dates) == len(set(dates)), "a reading was stored twice"
        return {d["date"]: d["sgv"] for d in docs}

    def served(self) -> set[int]:
        return {t for r in self.emu.log if r.endpoint == "data" and r.status == 200 for t in r.served}

    def check(self, end: int, *, settle_ms: int) -> None:
        """Nothing lost, nothing duplicated or invented, no refresh storm, no token reuse."""
        emu = self.emu
        stored = self.stored_entries()
        published = emu.published(end)
        assert set(stored) <= set(published), "an entry the vendor never published"
        assert all(published[t] == v for t, v in stored.items())
        assert set(stored) == self.served(), "a reading some answer carried is missing"
        settled = emu.published(end - settle_ms)
        missing = sorted(set(settled) - set(stored))
        assert not missing, f"readings lost: {missing[:5]}"
        if emu.generation == "7xxG":
            got = {(d["date"], d["eventType"]): d["insulin"] for d in self.store.docs("treatments")}
            assert set(emu.expected_treatments(end - settle_ms)) <= set(got)
            assert set(got) <= set(emu.expected_treatments(end))
            assert all(got[k] == v for k, v in emu.expected_treatments(end).items() if k in got)
        # one refresh per refusal or expiry, never a storm; a rotated token is never presented again
        refusals = sum(1 for r in emu.log if r.endpoint in ("data", "users") and r.status == 401)
        token_faults = sum(1 for r in emu.log if r.endpoint == "token" and r.fault is not None)
        expiries = math.ceil((end - START) / (0.95 * (TTL_S - 600) * 1000))
        assert emu.count("token") <= 1 + refusals + token_faults + expiries
        assert not emu.revoked, "a rotated refresh token was presented again"
        path = self.settings.carelink_token_file
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        saved = json.loads(path.read_text())
        assert saved["refresh_token"] in emu.current.values()

    def secrets(self, first: dict[str, Any]) -> set[str]:
        return set(self.emu.access) | set(self.emu.families) | {first["refresh_token"]}


async def test_token_expiries_each_refresh_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Eight virtual hours of 30-minute access tokens: each is refreshed once, no reading is lost."""
    s = Scenario(tmp_path, generation="7xxG", seed=3)
    first = s.write_tokens()
    with captured_logs() as logs:
        await s.run_for(8 * HOUR)
    end = s.clock()
    s.check(end, settle_ms=10 * MINUTE)
    lifetime_ms = 0.95 * (TTL_S - 600) * 1000
    # a session past its time is renewed by the next frame, at most five minutes later
    renewals = s.emu.count("token")
    assert (
        math.floor(8 * HOUR / (lifetime_ms + 5 * MINUTE)) - 1 <= renewals <= math.ceil(8 * HOUR / lifetime_ms)
    )
    assert s.emu.count("token", status=200) == s.emu.count("token")
    assert s.emu.count("discovery") == 1 and s.emu.count("users") == 1
    # one display/message per upload: aligned to the pump's uploads, not polling blindly
    assert 8 * 12 - 2 <= s.emu.count("data") <= 8 * 12 + 2
    status = s.runtime.status()
    assert status["loops"][LOOP_NAME]["frames_failed"] == 0
    text = logs.getvalue() + json.dumps(status, default=str) + repr(s.driver.__dict__)
    for secret in s.secrets(first):
        assert secret not in text
    assert s.runtime.session.machine.logins == s.emu.count("token") + 1


async def test_expired_token_mid_run_loses_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """CareLink refuses the access token (401) in the middle of the run: one refresh, no gap."""
    s = Scenario(tmp_path, generation="legacy", seed=5)
    s.write_tokens()
    s.emu.schedule("401", START + 2 * HOUR, START + 2 * HOUR + 1, endpoint="data")
    s.emu.inject("401", endpoint="data", times=1)  # and the very first data request
    await s.run_for(4 * HOUR)
    s.check(s.clock(), settle_ms=10 * MINUTE)
    refused = s.emu.count("data", status=401)
    assert refused >= 1
    expiries = math.floor((s.clock() - START) / (0.95 * (TTL_S - 600) * 1000))
    assert s.emu.count("token") <= refused + expiries


def rows_by_identifier(store: Store) -> dict[str, dict[str, tuple[int, int]]]:
    """identifier → (date, seq) of every stored record, per collection: a rewrite shows in seq."""
    return {
        c: {i: (d, q) for i, d, q in store.conn.execute(f"SELECT identifier, date, seq FROM {c}")}
        for c in ("entries", "treatments", "devicestatus")
    }


@pytest.mark.parametrize("silent_minutes", [11, 45, 120])
@pytest.mark.parametrize("generation", ["legacy", "7xxG"])
async def test_a_silent_pump_duplicates_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, generation: str, silent_minutes: int
) -> None:
    """The pump stops uploading for a while, then uploads what it recorded meanwhile.

    Every answer during the silence is the last upload again, only ``currentServerTime`` later:
    the store must not change at all (no reading moved, none rewritten, no second device
    status), and afterwards every reading is there exactly once.
    """
    s = Scenario(tmp_path, generation=generation, seed=7)
    s.write_tokens()
    silent_from = START + HOUR
    silent_to = silent_from + silent_minutes * MINUTE
    s.emu.silence(silent_from, silent_to)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.runtime.run)
        # the frame of the last upload before the silence has run by now
        await trio.sleep((silent_from + 2 * MINUTE - s.clock()) / 1000)
        before = rows_by_identifier(s.store)
        await trio.sleep((silent_to - 10_000 - s.clock()) / 1000)
        during = rows_by_identifier(s.store)
        await trio.sleep((silent_to + 2 * HOUR - s.clock()) / 1000)
        nursery.cancel_scope.cancel()
    asked = [
        r
        for r in s.emu.log
        if r.endpoint == "data" and r.status == 200 and silent_from < r.time_ms < silent_to
    ]
    assert len(asked) >= silent_minutes // 5  # CareLink was asked all along, and answered
    assert during == before
    s.check(s.clock(), settle_ms=10 * MINUTE)
    stored = rows_by_identifier(s.store)
    # nothing stored before the silence moved or vanished after it (a reading that was the
    # newest loses its trend later, so its row may change: its date and identifier may not)
    for collection, records in before.items():
        assert {i: stored[collection][i][0] for i in records} == {i: d for i, (d, _) in records.items()}
    # a device status per upload: none made up from the answers during the silence
    assert not [d for d, _ in stored["devicestatus"].values() if silent_from < d < silent_to]


async def test_missing_token_file_waits_for_a_person(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Without a token file the session is rejected and waits long: no hammering of CareLink."""
    s = Scenario(tmp_path, generation="7xxG", seed=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(s.runtime.run)
        await trio.sleep(3 * 3600)
        status = s.runtime.status()
        assert status["session"]["state"] == "rejected"
        assert "login carelink" in (status["session"]["last_error"] or "")
        assert s.runtime.session.machine.logins <= 3  # 30 min, then 1 h, …
        assert len(s.emu.log) == 0
        s.write_tokens()  # the person logs in; the next attempt picks the file up
        await trio.sleep(6 * 3600)
        nursery.cancel_scope.cancel()
    s.check(s.clock(), settle_ms=10 * MINUTE)


@st.composite
def fault_schedules(draw: st.DrawFn) -> list[tuple[str, str, int, int]]:
    """(endpoint, kind, start offset, length) windows within the first four hours."""
    windows = []
    for _ in range(draw(st.integers(1, 6))):
        endpoint = draw(st.sampled_from(["data", "data", "data", "token", "discovery"]))
        kinds = DATA_FAULTS if endpoint == "data" else TOKEN_FAULTS
        kind = draw(st.sampled_from(kinds))
        start = draw(st.integers(0, 4 * 60)) * MINUTE
        length = draw(st.integers(1, 25)) * MINUTE
        windows.append((endpoint, kind, start, length))
    return windows


# no shrinking: each example is hours of virtual time; the schedule is printed on failure
@settings(
    max_examples=5,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    schedule=fault_schedules(),
    generation=st.sampled_from(["legacy", "7xxG"]),
    seed=st.integers(0, 1000),
)
def test_random_fault_schedules_lose_nothing(
    tmp_path: Path, schedule: list[tuple[str, str, int, int]], generation: str, seed: int
) -> None:
    note(f"schedule={schedule} generation={generation} seed={seed}")

    async def scenario() -> None:
        directory = Path(tempfile.mkdtemp(dir=tmp_path))
        s = Scenario(directory, generation=generation, seed=seed)
        first = s.write_tokens()
        for endpoint, kind, start, length in schedule:
            s.emu.schedule(kind, START + start, START + start + length, endpoint=endpoint)
        with captured_logs() as logs:
            await s.run_for(6 * HOUR)
        # after the faults end (4h25 at most) the loop backs off at most 30 min, then catches up
        s.check(s.clock(), settle_ms=15 * MINUTE)
        text = logs.getvalue() + json.dumps(s.runtime.status(), default=str)
        for secret in s.secrets(first):
            assert secret not in text

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
