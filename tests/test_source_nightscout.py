"""The nightscout source against the emulator: auth, paging by date, backfills of any length, errors."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from connect.builder import Builder
from connect.clock import VirtualClock
from connect.contract import LastKnown
from connect.errors import (
    AuthRejected,
    ConfigError,
    ProtocolError,
    RateLimited,
    RequestRejected,
    TransientError,
)
from connect.records import Batch, Entry, from_nightscout
from connect.redact import describe_error
from sources.nightscout import (
    DAY_MS,
    LATE_UPLOAD_MS,
    SOURCE,
    NightscoutSettings,
    NightscoutSource,
    ProfileRead,
    WindowRead,
    make,
    parse_endpoint,
)
from tests.emulators.nightscout import (
    NightscoutEmulator,
    devicestatus_series,
    iso_from_ms,
    sgv_series,
    treatment_series,
)

FIXTURES = Path(__file__).parent / "fixtures" / "nightscout"
SECRET = "source-site-api-secret"
SHA1 = hashlib.sha1(SECRET.encode()).hexdigest()
NOW = 1_750_000_000_000
MIN = 60_000


class Clock:
    def __init__(self, ms: int = NOW) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def source(
    emu: NightscoutEmulator, *, endpoint: str = "http://ns.test", secret: str | None = SECRET, **tunables: Any
) -> NightscoutSource:
    settings = NightscoutSettings(
        source_endpoint=endpoint, source_api_secret=None if secret is None else SecretStr(secret)
    )
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=emu.app))
    src = make(settings, client)
    for name, value in tunables.items():
        setattr(src, name, value)
    return src


def last_known(checkpoint: dict[str, int], *, now: int = NOW, days: int = 30) -> LastKnown:
    return LastKnown(values=dict(checkpoint), backfill_from=now - days * DAY_MS, now=now)


async def backfill(
    fetch: Callable[[Any, LastKnown], Any],
    transform: Callable[[Any, LastKnown], Batch],
    checkpoint: dict[str, int],
    *,
    now: int = NOW,
    days: int = 30,
    max_frames: int = 200,
) -> list[Batch]:
    """Frames by hand, as the runtime runs them: fetch, transform, advance the checkpoint."""
    batches: list[Batch] = []
    for _ in range(max_frames):
        lk = last_known(checkpoint, now=now, days=days)
        batch = transform(await fetch(None, lk), lk)
        batches.append(batch)
        for collection, value in batch.newest().items():
            checkpoint[collection] = max(checkpoint.get(collection, value), value)
        if not batch.more:
            return batches
    raise AssertionError("the backfill never finished")


def window_params(emu: NightscoutEmulator, path: str) -> list[dict[str, str]]:
    return [dict(parse_qsl(r.query)) for r in emu.requests_to(path, "GET")]


def expected_ids(collection: str, docs: list[dict[str, Any]]) -> set[str]:
    return {from_nightscout(collection, d).identifier for d in docs}  # type: ignore[arg-type]


# --- settings and wiring ----------------------------------------------------------------------


def test_endpoint_forms() -> None:
    assert parse_endpoint("my-site.herokuapp.com").base == "https://my-site.herokuapp.com"
    assert parse_endpoint("http://127.0.0.1:1337/").base == "http://127.0.0.1:1337"
    assert parse_endpoint("https://example.org/ns/api/v1/").base == "https://example.org/ns"
    with_query = parse_endpoint("https://example.org/?token=reader-0123456789abcdef")
    assert (with_query.base, with_query.token) == ("https://example.org", "reader-0123456789abcdef")
    userinfo = parse_endpoint("https://reader-0123456789abcdef@example.org")
    assert (userinfo.base, userinfo.token) == ("https://example.org", "reader-0123456789abcdef")
    assert "0123456789abcdef" not in repr(userinfo)
    for bad in ("", "ftp://example.org", "https://user:pass@example.org", "http://"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


def test_settings_errors_do_not_echo_the_endpoint() -> None:
    with pytest.raises(ValueError) as info:
        NightscoutSettings(source_endpoint="ftp://example.org/?token=reader-0123456789abcdef")
    assert "0123456789abcdef" not in str(info.value)
    with pytest.raises(ValueError):
        NightscoutSettings(source_endpoint="https://example.org", source_collections="entries,food")
    ok = NightscoutSettings(source_endpoint="https://example.org/?token=reader-0123456789abcdef")
    assert "0123456789abcdef" not in repr(ok)


def test_the_source_registers_a_session_and_one_loop_per_collection() -> None:
    assert SOURCE.name == "nightscout"
    assert SOURCE.settings is NightscoutSettings
    src = source(NightscoutEmulator(SECRET))
    builder = Builder("nightscout")
    src.generate_driver(builder)
    plan = builder.build()
    assert plan.session is not None
    assert [(loop.name, loop.collections) for loop in plan.loops] == [
        ("NightscoutEntries", ("entries",)),
        ("NightscoutTreatments", ("treatments",)),
        ("NightscoutDeviceStatus", ("devicestatus",)),
        ("NightscoutProfile", ("profile",)),
    ]
    only = make(
        NightscoutSettings(source_endpoint="https://example.org", source_collections="entries"),
        httpx.AsyncClient(),
    )
    builder = Builder("nightscout")
    only.generate_driver(builder)
    assert [loop.name for loop in builder.build().loops] == ["NightscoutEntries"]


def test_a_bad_endpoint_is_a_config_error() -> None:
    settings = NightscoutSettings.model_construct(
        source_endpoint="ftp://nowhere", source_api_secret=None, source_collections="entries"
    )
    with pytest.raises(ConfigError):
        make(settings, httpx.AsyncClient())


# --- authentication ---------------------------------------------------------------------------------


async def test_the_secret_is_sent_as_its_sha1_and_checked_at_login() -> None:
    emu = NightscoutEmulator(SECRET)
    src = source(emu)
    info = await src.authorize(await src.authenticate())
    assert info["isAdmin"] is True
    assert emu.requests[-1][:3] == ("GET", "/api/v1/verifyauth", 200)


async def test_a_wrong_secret_is_auth_rejected_and_never_shown() -> None:
    emu = NightscoutEmulator("the-real-secret-of-the-site")
    src = source(emu)
    errors: list[Exception] = []
    with pytest.raises(AuthRejected) as login:
        await src.authenticate()
    errors.append(login.value)
    with pytest.raises(AuthRejected) as fetch:
        await src.fetch_entries(None, last_known({}))
    errors.append(fetch.value)
    emu.fail_next(1, 500)
    with pytest.raises(TransientError) as transient:
        await src.fetch_entries(None, last_known({}))
    errors.append(transient.value)
    for error in errors:
        for text in (str(error), describe_error(error) or "", repr(error)):
            assert SECRET not in text
            assert SHA1 not in text and SHA1.upper() not in text
    assert emu.auth_failures >= 2


async def test_anonymous_reads_need_a_readable_site() -> None:
    denied = source(NightscoutEmulator(SECRET), secret=None)
    with pytest.raises(AuthRejected, match="anonymous"):
        await denied.authenticate()
    readable_emu = NightscoutEmulator(SECRET, auth_default_roles="readable", now=Clock())
    readable_emu.seed_entries(sgv_series(NOW - 30 * MIN, 6))
    readable = source(readable_emu, secret=None)
    await readable.authenticate()
    raw = await readable.fetch_entries(None, last_known({"entries": NOW - 60 * MIN}))
    assert len(readable.transform(raw, last_known({})).entries) == 6
    assert all("api-secret" not in r.query for r in readable_emu.requests)


async def test_a_token_in_the_endpoint_is_sent_as_a_query_parameter() -> None:
    emu = NightscoutEmulator(SECRET, tokens={"reader": ["readable"]}, now=Clock())
    emu.seed_entries(sgv_series(NOW - 30 * MIN, 6))
    token = emu.token_for("reader")
    for endpoint in (f"http://ns.test/?token={token}", f"http://{token}@ns.test"):
        src = source(emu, endpoint=endpoint, secret=None)
        info = await src.authenticate()
        assert info["rolefound"] == "FOUND"
        raw = await src.fetch_entries(None, last_known({"entries": NOW - 60 * MIN}))
        assert len(raw.docs) == 6
        assert all(dict(parse_qsl(r.query)).get("token") == token for r in emu.requests[-2:])
    wrong = source(emu, endpoint="http://ns.test/?token=reader-0000000000000000", secret=None)
    with pytest.raises(AuthRejected) as info_:
        await wrong.authenticate()
    assert "0000000000000000" not in str(info_.value)


# --- backfill by date windows ------------------------------------------------------------------------


async def test_thirty_days_of_entries_arrive_complete_in_one_frame() -> None:
    emu = NightscoutEmulator(SECRET, now=Clock())
    docs = sgv_series(NOW - 30 * DAY_MS + 4 * MIN, 8640)
    assert docs[-1]["date"] == NOW - MIN
    emu.seed_entries(docs)
    src = source(emu)
    checkpoint: dict[str, int] = {}
    batches = await backfill(src.fetch_entries, src.transform, checkpoint)
    got = [e for b in batches for e in b.entries]
    assert len(got) == 8640
    assert {e.identifier for e in got} == expected_ids("entries", docs)
    assert len(batches) == 1 and batches[0].more is False
    assert checkpoint == {"entries": NOW}
    assert {e.device for e in got} == {"xDrip-DexcomG6"}
    requests = window_params(emu, "/api/v1/entries")
    # one read per day, plus one below the first short page: it proves the site cuts no pages
    assert len(requests) == 31
    for params in requests:
        low, high = int(params["find[date][$gt]"]), int(params["find[date][$lte]"])
        assert 0 < high - low <= DAY_MS
        assert int(params["count"]) <= 1000


@pytest.mark.parametrize("cap", [100, 288, 287, 2])
async def test_a_site_that_silently_caps_count_still_gives_everything(cap: int) -> None:
    emu = NightscoutEmulator(SECRET, now=Clock(), max_count=cap)
    docs = sgv_series(NOW - 3 * DAY_MS + 4 * MIN, 864)
    emu.seed_entries(docs)
    src = source(emu, max_pages_per_window=400)
    batches = await backfill(src.fetch_entries, src.transform, {}, days=3)
    got = [e.identifier for b in batches for e in b.entries]
    assert len(got) == len(set(got)) == 864
    assert set(got) == expected_ids("entries", docs)


async def test_a_small_frame_budget_backfills_over_many_frames_without_gaps_or_repeats() -> None:
    emu = NightscoutEmulator(SECRET, now=Clock())
    docs = sgv_series(NOW - 30 * DAY_MS + 4 * MIN, 8640)
    emu.seed_entries(docs)
    src = source(emu, max_requests_per_frame=4)
    batches = await backfill(src.fetch_entries, src.transform, {})
    got = [e.identifier for b in batches for e in b.entries]
    assert len(batches) == 8
    assert [b.more for b in batches] == [True] * 7 + [False]
    assert len(got) == len(set(got)) == 8640
    assert set(got) == expected_ids("entries", docs)
    covered = [b.covered["entries"] for b in batches]
    assert covered == sorted(covered) and covered[-1] == NOW


async def test_treatments_and_devicestatus_backfill_by_created_at() -> None:
    emu = NightscoutEmulator(SECRET, now=Clock())
    treatments = treatment_series(NOW - 30 * DAY_MS + MIN, 1440)
    statuses = devicestatus_series(NOW - 30 * DAY_MS + 2 * MIN, 8640)
    emu.seed_treatments(treatments)
    emu.seed_devicestatus(statuses)
    src = source(emu, max_requests_per_frame=7)
    t_batches = await backfill(src.fetch_treatments, src.transform, {})
    got = [t.identifier for b in t_batches for t in b.treatments]
    assert len(got) == len(set(got)) == 1440
    assert set(got) == expected_ids("treatments", treatments)
    assert len(t_batches) == 5
    d_batches = await backfill(src.fetch_devicestatus, src.transform, {})
    got = [d.identifier for b in d_batches for d in b.devicestatus]
    assert len(got) == len(set(got)) == 8640
    for params in window_params(emu, "/api/v1/treatments"):
        assert params["find[created_at][$gt]"].endswith("Z")
        assert params["find[created_at][$lte]"].endswith("Z")


async def test_a_full_page_is_followed_by_paging_down_inside_the_window() -> None:
    emu = NightscoutEmulator(SECRET, now=Clock())
    docs = sgv_series(NOW - 2 * DAY_MS, 8640, every_ms=20_000)  # 4320 a day: five pages per day
    meters = [
        {"type": "mbg", "mbg": 100 + i % 50, "date": d["date"], "device": "meter"}
        for i, d in enumerate(docs[::7])
    ]
    emu.seed_entries(docs + meters)
    src = source(emu)
    batches = await backfill(src.fetch_entries, src.transform, {}, days=3)
    got = [e.identifier for b in batches for e in b.entries]
    assert len(got) == len(set(got)) == len(docs) + len(meters)
    assert set(got) == expected_ids("entries", docs + meters)
    pages = window_params(emu, "/api/v1/entries")
    assert len(pages) > 3 + 2  # the two dense days needed several pages each


async def test_many_documents_at_one_instant_survive_page_boundaries() -> None:
    emu = NightscoutEmulator(SECRET, now=Clock())
    docs = []
    for i in range(200):
        date = NOW - DAY_MS + i * 5 * MIN
        docs.append({"type": "sgv", "sgv": 100, "date": date, "device": "cgm"})
        docs.append({"type": "mbg", "mbg": 110, "date": date, "device": "meter"})
        docs.append(
            {"type": "cal", "slope": 900.0, "intercept": 30000.0, "scale": 1.0, "date": date, "device": "cgm"}
        )
    emu.seed_entries(docs)
    src = source(emu, max_pages_per_window=1000)
    src.page_sizes["entries"] = 10  # boundaries fall inside the groups of three
    batches = await backfill(src.fetch_entries, src.transform, {}, days=2)
    got = [e.identifier for b in batches for e in b.entries]
    assert len(got) == len(set(got)) == 600


async def test_a_window_too_dense_for_the_page_budget_shrinks() -> None:
    emu = NightscoutEmulator(SECRET, now=Clock())
    docs = sgv_series(NOW - 2 * DAY_MS + MIN, 2880, every_ms=MIN)
    emu.seed_entries(docs)
    src = source(emu, max_pages_per_window=2)
    src.page_sizes["entries"] = 100
    batches = await backfill(src.fetch_entries, src.transform, {}, days=2)
    got = [e.identifier for b in batches for e in b.entries]
    assert len(got) == len(set(got)) == 2880
    widths = {
        int(p["find[date][$lte]"]) - int(p["find[date][$gt]"])
        for p in window_params(emu, "/api/v1/entries")
        if "find[date][$lte]" in p
    }
    assert min(widths) < DAY_MS // 4


async def test_an_error_after_complete_windows_keeps_them_and_the_next_frame_continues() -> None:
    emu = NightscoutEmulator(SECRET, now=Clock())
    docs = sgv_series(NOW - 10 * DAY_MS + MIN, 2880)
    emu.seed_entries(docs)
    src = source(emu)
    # three windows complete (the first takes two reads: one proves its short page complete)
    emu.fail_next(1, 500, path="/api/v1/entries", skip=4)
    lk = last_known({}, days=10)
    raw = await src.fetch_entries(None, lk)
    assert isinstance(raw, WindowRead)
    assert raw.interrupted is not None and "HTTP 500" in raw.interrupted
    first = src.transform(raw, lk)
    assert first.covered == {"entries": NOW - 7 * DAY_MS}
    assert first.more is True
    assert len(first.entries) == 3 * 288
    emu.fail_next(1, 503, path="/api/v1/entries")
    with pytest.raises(TransientError):
        await src.fetch_entries(None, last_known(first.newest(), days=10))
    rest = await backfill(src.fetch_entries, src.transform, dict(first.newest()), days=10)
    got = [e.identifier for b in [first, *rest] for e in b.entries]
    assert len(got) == len(set(got)) == 2880


async def test_live_reads_look_back_for_late_uploads() -> None:
    clock = Clock()
    emu = NightscoutEmulator(SECRET, now=clock)
    emu.seed_entries(sgv_series(NOW - DAY_MS + 4 * MIN, 288))
    src = source(emu)
    checkpoint: dict[str, int] = {}
    await backfill(src.fetch_entries, src.transform, checkpoint, days=1)
    assert checkpoint == {"entries": NOW}
    # five minutes later: a new reading, and one the uploader had held back
    clock.ms = NOW + 5 * MIN
    fresh = sgv_series(NOW + 4 * MIN, 1)[0]
    late = {**sgv_series(NOW - 2 * MIN, 1)[0], "device": "phone-offline"}
    emu.seed_entries([fresh, late])
    lk = last_known(checkpoint, now=clock.ms, days=1)
    batch = src.transform(await src.fetch_entries(None, lk), lk)
    ids = {e.identifier for e in batch.entries}
    assert from_nightscout("entries", fresh).identifier in ids
    assert from_nightscout("entries", late).identifier in ids
    params = window_params(emu, "/api/v1/entries")[-1]
    assert int(params["find[date][$gt]"]) == clock.ms - LATE_UPLOAD_MS
    assert batch.covered == {"entries": clock.ms} and batch.more is False


async def test_an_empty_site_is_stepped_over() -> None:
    emu = NightscoutEmulator(SECRET, now=Clock())
    src = source(emu, max_requests_per_frame=10)
    batches = await backfill(src.fetch_entries, src.transform, {})
    assert len(batches) == 3
    assert sum(len(b) for b in batches) == 0
    assert batches[-1].covered == {"entries": NOW}


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (500, TransientError),
        (503, TransientError),
        ("timeout", TransientError),
        ("disconnect", TransientError),
        (429, RateLimited),
        ("html", ProtocolError),
        ("truncated", ProtocolError),
        ("object", ProtocolError),
    ],
)
async def test_server_trouble_maps_to_the_error_tree(fault: int | str, error: type[Exception]) -> None:
    emu = NightscoutEmulator(SECRET, tokens={"reader": ["readable"]}, now=Clock())
    token = emu.token_for("reader")
    src = source(emu, endpoint=f"http://ns.test/?token={token}")
    emu.fail_next(1, fault, retry_after=90 if fault == 429 else None)
    with pytest.raises(error) as info:
        await src.fetch_treatments(None, last_known({}))
    if fault == 429:
        assert info.value.retry_after == 90  # type: ignore[attr-defined]
    for text in (str(info.value), repr(info.value)):
        assert token not in text and SECRET not in text and "ns.test" not in text


async def test_a_wrong_path_is_a_rejected_request() -> None:
    src = source(NightscoutEmulator(SECRET), endpoint="http://ns.test/not-nightscout")
    with pytest.raises(RequestRejected):
        await src.fetch_entries(None, last_known({}))


# --- transform ---------------------------------------------------------------------------------------


def test_transform_skips_unusable_documents_and_refuses_malformed_bodies() -> None:
    src = source(NightscoutEmulator(SECRET))
    lk = last_known({})
    good = sgv_series(NOW - 10 * MIN, 2)
    bad = [
        {"type": "sensor", "date": NOW - MIN},  # a type our model does not hold
        {"type": "sgv", "sgv": 100},  # no time at all
        {"type": "sgv", "sgv": 100, "date": (NOW - MIN) // 1000},  # seconds, not ms
        {"type": "sgv", "sgv": {"$gt": 1}, "date": NOW - MIN},
        {"type": "sgv", "sgv": "5", "date": NOW - 3 * MIN, "device": "old"},  # lenient: kept
    ]
    raw = WindowRead(collection="entries", lower=NOW - DAY_MS, upper=NOW - 5 * MIN, docs=tuple(good + bad))
    batch = src.transform(raw, lk)
    assert [e.sgv for e in batch.entries] == [good[0]["sgv"], good[1]["sgv"], 5]
    assert batch.covered == {"entries": NOW - 5 * MIN} and batch.more is True
    assert src.transform(raw, lk) == batch  # pure
    with pytest.raises(ProtocolError):
        src.transform(WindowRead(collection="entries", lower=0, upper=NOW, docs=("sgv",)), lk)
    with pytest.raises(ProtocolError):
        src.transform({"entries": []}, lk)


TRANSFORMER = make(NightscoutSettings(source_endpoint="http://ns.test"), httpx.AsyncClient())
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
doc_keys = st.sampled_from(
    ["type", "sgv", "mbg", "date", "dateString", "direction", "trend", "device", "noise", "created_at",
     "eventType", "insulin", "carbs", "duration", "mills", "startDate", "store", "units", "_id"]
)  # fmt: skip
dates = st.integers(NOW - 40 * DAY_MS, NOW).map(lambda ms: ms) | st.integers(NOW - 40 * DAY_MS, NOW).map(
    iso_from_ms
)
documents = st.dictionaries(doc_keys, json_values | dates, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    collection=st.sampled_from(["entries", "treatments", "devicestatus"]),
    docs=st.lists(documents | json_values, max_size=6),
)
def test_transform_never_crashes(collection: str, docs: list[Any]) -> None:
    src = TRANSFORMER
    lk = last_known({})
    raw = WindowRead(collection=collection, lower=NOW - DAY_MS, upper=NOW, docs=tuple(docs))  # type: ignore[arg-type]
    try:
        batch = src.transform(raw, lk)
    except ProtocolError:
        assert any(not isinstance(d, dict) for d in docs)
        return
    records = batch.records(collection)  # type: ignore[arg-type]
    assert len({r.identifier for r in records}) == len(records)
    assert batch.covered == {collection: NOW} and batch.more is False
    profile = src.transform(ProfileRead(docs=tuple(d for d in docs if isinstance(d, dict))), lk)
    assert len(profile.profile) <= len(docs)


# --- profiles ------------------------------------------------------------------------------------------


async def test_profiles_keep_the_one_in_effect_and_newer_ones() -> None:
    clock = Clock()
    emu = NightscoutEmulator(SECRET, now=clock)
    emu.seed_profiles(json.loads((FIXTURES / "py-nightscout__profile_response.json").read_text()))
    src = source(emu)
    lk = last_known({})
    first = src.transform(await src.fetch_profile(None, lk), lk)
    # the fixtures are from 2017, long before the backfill: the newest is still carried
    assert [p.date for p in first.profile] == [1_489_035_240_000]
    assert set(first.profile[0].store) == {"Default", "Test2"}
    lk = last_known(first.newest())
    again = src.transform(await src.fetch_profile(None, lk), lk)
    assert again.profile == first.profile
    emu.seed_profiles(
        [{"defaultProfile": "Default", "startDate": iso_from_ms(NOW - DAY_MS), "store": {"Default": {}}}]
    )
    newer = src.transform(await src.fetch_profile(None, lk), lk)
    assert [p.date for p in newer.profile] == [NOW - DAY_MS]


async def test_the_recorded_entries_fixture_through_fetch_and_transform() -> None:
    emu = NightscoutEmulator(SECRET, now=Clock(1_672_384_600_000))
    emu.seed_entries(
        json.loads((FIXTURES / "nightscout-librelink-up__entries_v1_get_response.json").read_text())
    )
    src = source(emu)
    lk = last_known({}, now=1_672_384_600_000, days=1)
    batch = src.transform(await src.fetch_entries(None, lk), lk)
    assert batch.entries == (
        Entry(type="sgv", date=1_672_384_540_000, device="unknown", sgv=188, direction="Flat"),
    )


# --- through the runtime, in virtual time ----------------------------------------------------------------


async def run_runtime(emu: NightscoutEmulator, clock: VirtualClock, until: Callable[[Any], bool]) -> Any:
    from connect.runtime import SourceRuntime
    from store import AsyncStore, Store

    store = Store(":memory:")
    astore = AsyncStore(store)
    src = source(emu)
    builder = Builder("nightscout")
    src.generate_driver(builder)
    rt = SourceRuntime(builder.build(), astore, clock=clock, backfill_days=30, rng=random.Random(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        with trio.fail_after(7 * 86_400):  # virtual seconds
            while not until(store):
                await trio.sleep(60)
        nursery.cancel_scope.cancel()
    return store, rt


async def test_the_runtime_copies_exactly_the_sites_data_into_the_store(
    autojump_clock: trio.abc.Clock,
) -> None:
    clock = VirtualClock(NOW)
    emu = NightscoutEmulator(SECRET, now=clock)
    entries = sgv_series(NOW - 30 * DAY_MS + 4 * MIN, 8640)
    treatments = treatment_series(NOW - 30 * DAY_MS + MIN, 1440)
    emu.seed_entries(entries)
    emu.seed_treatments(treatments)
    emu.seed_profiles(json.loads((FIXTURES / "py-nightscout__profile_response.json").read_text()))

    def done(store: Any) -> bool:
        return bool(
            store.count("entries") >= 8640
            and store.count("treatments") >= 1440
            and store.count("profile") >= 1
        )

    store, rt = await run_runtime(emu, clock, done)
    stored = store.docs("entries")
    assert len(stored) == 8640
    assert {d["identifier"] for d in stored} == expected_ids("entries", entries)
    assert sorted(d["date"] for d in stored) == [d["date"] for d in entries]
    assert {d["identifier"] for d in store.docs("treatments")} == expected_ids("treatments", treatments)
    status = rt.status()
    assert status["session"]["state"] == "active"
    assert status["session"]["logins"] == 1
    assert status["loops"]["NightscoutEntries"]["frames_ok"] >= 1
    assert emu.auth_failures == 0


async def test_run_once_copies_a_thirty_day_backfill_in_one_frame(autojump_clock: trio.abc.Clock) -> None:
    from connect.runtime import SourceRuntime
    from store import AsyncStore, Store

    clock = VirtualClock(NOW)
    emu = NightscoutEmulator(SECRET, now=clock)
    entries = sgv_series(NOW - 30 * DAY_MS + 4 * MIN, 8640)
    emu.seed_entries(entries)
    store = Store(":memory:")
    builder = Builder("nightscout")
    source(emu).generate_driver(builder)
    rt = SourceRuntime(
        builder.build(), AsyncStore(store), clock=clock, backfill_days=30, rng=random.Random(2)
    )
    assert await rt.run_once() is True
    assert store.count("entries") == 8640


async def test_a_wrong_secret_puts_the_session_in_rejected_without_hammering(
    autojump_clock: trio.abc.Clock,
) -> None:
    clock = VirtualClock(NOW)
    emu = NightscoutEmulator("another-secret-entirely", now=clock)
    emu.seed_entries(sgv_series(NOW - DAY_MS, 288))
    from connect.runtime import SourceRuntime
    from store import AsyncStore, Store

    store = Store(":memory:")
    builder = Builder("nightscout")
    source(emu).generate_driver(builder)
    rt = SourceRuntime(
        builder.build(), AsyncStore(store), clock=clock, backfill_days=30, rng=random.Random(3)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        await trio.sleep(3600)  # an hour of virtual time
        nursery.cancel_scope.cancel()
    status = rt.status()
    assert status["session"]["state"] == "rejected"
    assert store.count("entries") == 0
    assert emu.auth_failures <= 3  # one login attempt, not one per loop per retry
    assert SECRET not in json.dumps(status) and SHA1 not in json.dumps(status)
