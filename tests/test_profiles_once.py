"""Profiles once: the Nightscout output never posts a profile the site already holds (same start
and settings), and a profile changed at the source becomes the site's newest profile."""

from __future__ import annotations

import copy
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from connect.clock import VirtualClock
from connect.httpkit import sha1_hex
from connect.records import Batch, Profile, iso_from_ms, to_nightscout
from outputs.nightscout import NightscoutOutput, profile_key
from store import AsyncStore, Store
from tests.clirun import cli
from tests.emulators.nightscout import NightscoutEmulator, serve_in_thread, sgv_series

T0 = 1_700_000_000_000
SECRET = "a-long-enough-api-secret"
SOURCE_SECRET = "profile-source-secret-1"
SITE = "http://nightscout.test"
START = T0 - 40 * 86_400_000


def settings(dia: Any = "4", basal: Any = "0.45") -> dict[str, Any]:
    """A profile's ``store`` as Nightscout's profile editor writes it (numbers as strings)."""
    return {
        "Default": {
            "dia": dia, "carbs_hr": "20", "delay": "20", "timezone": "Europe/Berlin", "units": "mg/dl",
            "carbratio": [{"time": "00:00", "value": "10", "timeAsSeconds": "0"}],
            "sens": [{"time": "00:00", "value": "40", "timeAsSeconds": "0"}],
            "basal": [{"time": "00:00", "value": basal, "timeAsSeconds": "0"}],
            "target_low": [{"time": "00:00", "value": "90", "timeAsSeconds": "0"}],
            "target_high": [{"time": "00:00", "value": "140", "timeAsSeconds": "0"}],
        }
    }  # fmt: skip


def site_doc(store: dict[str, Any], start: int = START) -> dict[str, Any]:
    """A profile as the site holds it when another program (or its own editor) wrote it."""
    return {
        "defaultProfile": "Default", "startDate": iso_from_ms(start), "mills": start,
        "units": "mg/dl", "created_at": iso_from_ms(start + 3_600_000), "store": store,
    }  # fmt: skip


class InlineStore(AsyncStore):
    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args, **kwargs)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store.db")
    yield s
    s.close()


@pytest.fixture
async def site() -> AsyncIterator[tuple[NightscoutEmulator, httpx.AsyncClient]]:
    emulator = NightscoutEmulator(SECRET, now=VirtualClock(T0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator.app)) as client:
        yield emulator, client


def output(store: Store, client: httpx.AsyncClient) -> NightscoutOutput:
    return NightscoutOutput(
        SITE, InlineStore(store), client, api_secret=SECRET, clock=VirtualClock(T0), rng=random.Random(3)
    )


def persist(store: Store, *profiles: Profile) -> None:
    store.persist_frame("nightscout", "profile", Batch.of(list(profiles)))


def profile(store: dict[str, Any], start: int = START) -> Profile:
    return Profile(date=start, device="unknown", units="mg/dl", store=store)


def test_the_key_is_start_and_settings_whatever_their_spelling() -> None:
    ours = to_nightscout(profile(settings()))
    theirs = copy.deepcopy(site_doc(settings(dia=4, basal=0.45)))
    theirs["store"] = dict(reversed(list(theirs["store"].items())))
    theirs["_id"] = "65a1b2c3d4e5f60718293a4b"
    assert profile_key(ours) == profile_key(theirs)
    assert profile_key(ours) != profile_key(site_doc(settings(dia="5")))
    assert profile_key(ours) != profile_key(site_doc(settings(), start=START + 1))
    assert profile_key({"store": {}}) is None


async def test_a_fresh_store_does_not_post_a_profile_the_site_holds(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    emulator.seed_profiles([site_doc(settings(dia=4, basal=0.45))])
    persist(store, profile(settings()))
    out = output(store, client)
    assert await out.deliver_until_idle()
    # the real Nightscout would now hold two identical profiles
    assert len(emulator.profiles) == 1
    assert emulator.received["profile"] == 0
    assert out.status()["lag"] == 0 and out.status()["rejected"] == 0


async def test_a_profile_changed_at_the_source_becomes_the_newest(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    out = output(store, client)
    persist(store, profile(settings()))
    assert await out.deliver_until_idle()
    assert len(emulator.profiles) == 1 and emulator.received["profile"] == 1
    # edited in place at the source: the same start, other settings
    persist(store, profile(settings(dia="5")))
    assert await out.deliver_until_idle()
    assert len(emulator.profiles) == 2
    newest = (await client.get(f"{SITE}/api/v1/profile/current.json", headers=out._headers)).json()
    assert newest[0]["store"]["Default"]["dia"] == "5"
    # a new profile from a later moment on
    later = START + 86_400_000
    persist(store, profile(settings(basal="0.5"), start=later))
    assert await out.deliver_until_idle()
    assert len(emulator.profiles) == 3 and emulator.received["profile"] == 3
    # sent again unchanged (a new store, or the source repeating itself): nothing posted
    fresh = Store(":memory:")
    try:
        persist(fresh, profile(settings()), profile(settings(dia="5")), profile(settings(basal="0.5"), later))
        assert await output(fresh, client).deliver_until_idle()
    finally:
        fresh.close()
    assert len(emulator.profiles) == 3 and emulator.received["profile"] == 3


def test_once_on_a_fresh_store_leaves_the_site_with_one_profile(tmp_path: Path) -> None:
    """``once`` copying a site to another that already has its profile."""
    source = NightscoutEmulator(SOURCE_SECRET)
    target = NightscoutEmulator(SECRET)
    source.seed_profiles([{**site_doc(settings()), "_id": "65a1b2c3d4e5f60718293a4b"}])
    source.seed_entries(sgv_series(source.now() - 3_600_000, 12))
    target.seed_profiles([site_doc(settings())])
    source_url, stop_source = serve_in_thread(source)
    target_url, stop_target = serve_in_thread(target)
    try:
        env = {
            "CONNECT_SOURCE": "nightscout", "CONNECT_SOURCE_ENDPOINT": source_url,
            "CONNECT_SOURCE_API_SECRET": SOURCE_SECRET, "CONNECT_NIGHTSCOUT_ENDPOINT": target_url,
            "CONNECT_API_SECRET": SECRET, "CONNECT_STORE_PATH": str(tmp_path / "fresh.db"),
            "CONNECT_BACKFILL_DAYS": "1",
        }  # fmt: skip
        result = cli("once", **env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(target.profiles) == 1 and target.received["profile"] == 0
        assert len(target.entries) == 12
        # the profile edited at the source goes up, and is the site's current profile
        source.seed_profiles([{**site_doc(settings(dia="5")), "_id": "65a1b2c3d4e5f60718293a4b"}])
        again = cli("once", **env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(target.profiles) == 2 and target.received["profile"] == 1
        current = httpx.get(
            f"{target_url}/api/v1/profile/current.json", headers={"api-secret": sha1_hex(SECRET)}
        )
        assert current.json()[0]["store"]["Default"]["dia"] == "5"
    finally:
        stop_source()
        stop_target()
