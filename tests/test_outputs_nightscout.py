"""Nightscout output against the Nightscout emulator: outages, rejections, refused secrets,
tokens, gap analysis, and no duplicate devicestatus after a lost answer or a crash."""

from __future__ import annotations

import io
import json
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from connect.clock import VirtualClock
from connect.errors import OutputAuthError
from connect.httpkit import sha1_hex
from connect.logs import configure
from connect.records import Batch, DeviceStatus, Entry, Profile, Record, Treatment
from outputs.nightscout import NightscoutOutput
from store import AsyncStore, Store
from tests.emulators.nightscout import NightscoutEmulator, sgv_series
from tests.stores import MakeStore

T0 = 1_700_000_000_000
FIVE_MIN = 300_000
SECRET = "a-long-enough-api-secret"
SITE = "http://nightscout.test"


def reading(i: int, start: int = T0, device: str = "sim-cgm") -> Entry:
    return Entry(
        type="sgv", date=start + i * FIVE_MIN, device=device, sgv=70 + (i * 7) % 200, direction="Flat"
    )


def status_doc(i: int, start: int = T0, device: str = "connect://sim") -> DeviceStatus:
    return DeviceStatus(
        device=device, date=start + i * FIVE_MIN, payload={"uploader": {"battery": 100 - i % 50}}
    )


class InlineStore(AsyncStore):
    """The store called in the trio thread: with autojump_clock, a worker thread would let
    virtual time race ahead while the store works."""

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args, **kwargs)


def persist(store: Store, records: list[Record]) -> None:
    store.persist_frame("sim", "main", Batch.of(records))


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    """Each backend in turn: what an output reads is the store's contract."""
    return make_store()  # type: ignore[return-value]


@pytest.fixture
async def site() -> AsyncIterator[tuple[NightscoutEmulator, httpx.AsyncClient]]:
    emulator = NightscoutEmulator(SECRET, now=VirtualClock(T0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator.app)) as client:
        yield emulator, client


def make_output(store: Store, client: httpx.AsyncClient, **kwargs: Any) -> NightscoutOutput:
    kwargs.setdefault("api_secret", SECRET)
    return NightscoutOutput(
        kwargs.pop("endpoint", SITE), InlineStore(store), client, clock=VirtualClock(T0), rng=random.Random(7),
        **kwargs,
    )  # fmt: skip


def dates(docs: list[dict[str, Any]], field: str = "date") -> list[Any]:
    return [d[field] for d in docs]


async def test_two_days_down_then_everything_arrives_once_in_order(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    emulator.down = True
    out = make_output(store, client)
    frames = 576  # 48 h of 5-minute readings
    async with trio.open_nursery() as nursery:
        await nursery.start(out.run)
        for i in range(frames):
            records: list[Record] = [reading(i), status_doc(i)]
            if i % 12 == 0:
                records.append(
                    Treatment(event_type="Meal Bolus", date=T0 + i * FIVE_MIN, device="sim", carbs=20.0)
                )
            persist(store, records)
            out.wake()
            await trio.sleep(FIVE_MIN / 1000)
        assert out.state in ("backoff", "reading", "sending") and out.status()["failures"] > 100
        assert emulator.counts["entries"] == 0
        outage_requests = len(emulator.requests)
        # a frame every 5 minutes must not shorten a backoff into a storm: about one try per 5 min
        assert outage_requests <= 2 * frames
        emulator.down = False
        await trio.sleep(400)  # longer than the capped backoff
        assert out.state == "idle", (out.status(), emulator.requests[-5:])
        nursery.cancel_scope.cancel()
    for collection, count in (("entries", frames), ("devicestatus", frames), ("treatments", frames // 12)):
        docs = emulator.docs(collection)
        field = "date" if collection == "entries" else "created_at"
        assert len(docs) == count, collection
        assert len({d["identifier"] for d in docs}) == count, collection  # none twice
        assert dates(docs, field) == sorted(dates(docs, field)), collection  # arrived in date order
    assert dates(emulator.entries) == [reading(i).date for i in range(frames)]
    # the site's upserts would hide a resent entry or treatment: nothing was uploaded twice
    assert emulator.received == {
        "entries": frames, "treatments": frames // 12, "devicestatus": frames, "profile": 0,
    }  # fmt: skip
    status = out.status()
    assert status["lag"] == 0 and status["rejected"] == 0 and status["delivered"] == 2 * frames + frames // 12
    assert status["last_error"] == "TransientError: POST /api/v1/entries: HTTP 503"


async def test_a_refused_record_is_set_aside_and_the_rest_flows(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    statuses: list[Record] = [status_doc(i) for i in range(40)]
    # Nightscout 15 answers 400 to a devicestatus whose _id is not an ObjectId
    poisoned = DeviceStatus(
        device="connect://sim", date=T0 + 17 * FIVE_MIN + 1, payload={"_id": "not-an-oid"}
    )
    persist(store, [*statuses, poisoned])
    out = make_output(store, client, chunk_size=16)
    async with trio.open_nursery() as nursery:
        await nursery.start(out.run)
        await trio.sleep(60)
        status = out.status()
        assert status["rejected"] == 1 and status["lag"] == 0 and status["state"] == "idle", (
            status,
            emulator.requests,
        )
        assert "HTTP 400" in status["last_error"]
        assert len(emulator.devicestatus) == 40
        assert store.rejected_count("nightscout") == 1
        # later batches are not held back by it
        persist(store, [status_doc(i) for i in range(40, 50)])
        out.wake()
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    docs = emulator.devicestatus
    assert len(docs) == 50 and len({d["identifier"] for d in docs}) == 50
    assert poisoned.identifier not in {d["identifier"] for d in docs}
    assert store.count("devicestatus") == 51  # the refused record stays in the store


async def test_a_one_off_400_is_reported_and_delivery_goes_on(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    persist(store, [reading(i) for i in range(100)])
    emulator.fail_post_status(400)
    out = make_output(store, client)
    assert await out.deliver_until_idle()
    assert len(emulator.entries) == 100
    assert "POST /api/v1/entries: HTTP 400: Bad Request" in out.status()["last_error"]
    # the whole chunk was refused once; its halves went through
    posts = [r.status for r in emulator.requests_to("/api/v1/entries", "POST")]
    assert posts[0] == 400 and all(s == 200 for s in posts[1:])


async def test_wrong_secret_is_an_auth_error_without_a_retry_storm(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    wrong = "not-the-site-secret-at-all"
    logs = io.StringIO()
    configure(fmt="json", level="debug", stream=logs)
    try:
        out = make_output(store, client, api_secret=wrong)
        async with trio.open_nursery() as nursery:
            await nursery.start(out.run)
            for i in range(12 * 10):  # ten hours of frames
                persist(store, [reading(i)])
                out.wake()
                await trio.sleep(FIVE_MIN / 1000)
            status = out.status()
            nursery.cancel_scope.cancel()
    finally:
        configure(fmt="json", level="warning", stream=io.StringIO())
    # 5 min, 10, 20, 40, then hourly: a dozen tries in ten hours, not one per frame
    assert 5 <= emulator.auth_failures <= 14
    assert len(emulator.requests) == emulator.auth_failures
    assert status["state"] == "paused_auth" and status["lag"] == 120
    assert "HTTP 401" in status["last_error"]
    text = logs.getvalue() + json.dumps(status)
    assert "paused_auth" in text
    for secret in (wrong, sha1_hex(wrong), SECRET, sha1_hex(SECRET)):
        assert secret not in text


async def test_token_from_the_endpoint_url_is_sent_as_a_header(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    token = emulator.add_subject("connect-uploader", ["admin"])
    persist(store, [reading(i) for i in range(5)])
    out = make_output(store, client, api_secret=None, endpoint=f"{SITE}/?token={token}")
    assert out.status()["target"] == SITE
    assert await out.deliver_until_idle()
    assert len(emulator.entries) == 5
    # never in a URL: URLs end up in access logs
    assert all(token not in r.query and "token" not in r.query for r in emulator.requests)
    assert token not in json.dumps(out.status())


async def test_transient_failures_back_off_and_honour_retry_after(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    persist(store, [reading(i) for i in range(10)])
    emulator.fail_next(1, "timeout", path="/api/v1/entries")
    emulator.fail_next(1, "disconnect", path="/api/v1/entries")
    emulator.fail_next(1, "html", path="/api/v1/entries")  # a captive portal answering 200
    emulator.fail_next(1, 429, path="/api/v1/entries", retry_after=600)
    out = make_output(store, client)
    async with trio.open_nursery() as nursery:
        await nursery.start(out.run)
        await trio.sleep(100)  # 5 s + 10 s + 20 s of backoff, then the 429
        assert out.state == "backoff"
        assert "HTTP 429" in out.status()["last_error"]
        assert len(emulator.entries) == 0
        await trio.sleep(450)
        assert len(emulator.entries) == 0  # Retry-After: 600 is honoured
        await trio.sleep(100)
        assert len(emulator.entries) == 10 and out.state == "idle"
        nursery.cancel_scope.cancel()
    assert [r.status for r in emulator.requests] == [0, 0, 200, 429, 200]


async def test_a_wrong_endpoint_is_not_mistaken_for_rejected_records(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    _emulator, client = site
    persist(store, [reading(i) for i in range(10)])
    out = make_output(store, client, endpoint=f"{SITE}/not-nightscout")
    assert not await out.deliver_until_idle()
    status = out.status()
    assert status["state"] == "paused_config" and status["rejected"] == 0 and status["lag"] == 10
    assert "HTTP 404" in status["last_error"]


async def test_no_duplicate_devicestatus_after_a_lost_answer(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    # the site stores the POST, but its answer never reaches the uploader
    emulator.fail_next(1, "lost", method="POST")
    persist(store, [status_doc(i) for i in range(30)])
    out = make_output(store, client)
    assert await out.deliver_until_idle()
    docs = emulator.devicestatus
    assert len(docs) == 30 and len({d["identifier"] for d in docs}) == 30
    assert emulator.received["devicestatus"] == 30  # the lost one was not posted again
    gets = emulator.requests_to("/api/v1/devicestatus.json", "GET")
    assert len(gets) == 1  # the site was asked once what it already had


async def test_no_duplicates_after_a_crash_between_post_and_cursor(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    statuses = [status_doc(i) for i in range(20)]
    profile = Profile(date=T0, device="sim", units="mg/dl", store={"Default": {"dia": 4}})
    persist(store, [*statuses, profile])
    # the state a killed process leaves: attempt cursors written, the POSTs landed, no cursor moved
    astore = InlineStore(store)
    for collection, docs in (("devicestatus", store.docs("devicestatus", newest_first=False)[:12]),
                             ("profile", store.docs("profile"))):  # fmt: skip
        pending = store.pending("nightscout", collection, limit=len(docs))
        store.advance("nightscout.attempted", collection, pending[-1].seq)
        response = await client.post(
            f"{SITE}/api/v1/{collection}",
            json=[p.doc for p in pending],
            headers={"api-secret": sha1_hex(SECRET)},
        )
        assert response.status_code == 200
    assert store.cursor("nightscout", "devicestatus") == 0
    out = NightscoutOutput(SITE, astore, client, api_secret=SECRET, clock=VirtualClock(T0))
    assert await out.deliver_until_idle()
    docs = emulator.devicestatus
    assert len(docs) == 20 and len({d["identifier"] for d in docs}) == 20
    assert len(emulator.profiles) == 1
    # a later delivery asks nothing: the attempt cursor is no longer ahead
    persist(store, [status_doc(i) for i in range(20, 25)])
    before = len(emulator.requests_to("/api/v1/devicestatus.json", "GET"))
    assert await out.deliver_until_idle()
    assert len(emulator.requests_to("/api/v1/devicestatus.json", "GET")) == before
    assert len(emulator.devicestatus) == 25


async def test_newest_asks_the_site_for_gap_analysis(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    out = make_output(store, client)
    assert await out.newest("entries") is None
    assert await out.newest("devicestatus") is None
    old = T0 - 30 * 86_400_000  # older than the site's implicit four-day window
    emulator.seed_entries(sgv_series(old, 12))
    emulator.seed_treatments([{"eventType": "Note", "created_at": "2023-11-10T08:00:00.000Z"}])
    emulator.seed_profiles([{"startDate": "2023-01-01T00:00:00.000Z", "store": {}},
                            {"startDate": "2023-06-01T00:00:00.000Z", "store": {}}])  # fmt: skip
    assert await out.newest("entries") == old + 11 * FIVE_MIN
    assert await out.newest("treatments") == 1_699_603_200_000
    assert await out.newest("profile") == 1_685_577_600_000
    # another uploader's newer readings do not count as where this source left off
    emulator.seed_entries(sgv_series(old + 3_600_000, 5, device="share2"))
    emulator.seed_entries(sgv_series(old + 86_400_000, 5, device="xDrip-DexcomG6"))
    assert await out.newest("entries") == old + 86_400_000 + 4 * FIVE_MIN
    assert await out.newest("entries", {"device": "share2"}) == old + 3_600_000 + 4 * FIVE_MIN
    assert await out.newest("entries", {"device": "nobody"}) is None
    bad = make_output(store, client, api_secret="some-other-secret")
    with pytest.raises(OutputAuthError):
        await bad.newest("entries")


async def test_deliver_until_idle_reports_failure(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    persist(store, [reading(i) for i in range(3)])
    emulator.down = True
    out = make_output(store, client)
    assert not await out.deliver_until_idle(attempts=2)
    assert out.status()["lag"] == 3
    emulator.down = False
    assert await out.deliver_until_idle()
    assert out.status()["lag"] == 0 and out.status()["state"] == "idle"


async def test_a_site_refusing_every_upload_gets_no_request_per_record(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    persist(store, [reading(i) for i in range(288)])
    emulator.fail_next(10_000, 400, method="POST")  # a proxy that answers 400 to any upload
    out = make_output(store, client)
    async with trio.open_nursery() as nursery:
        await nursery.start(out.run)
        await trio.sleep(3 * 3600)
        status = out.status()
        posts = len(emulator.requests_to("/api/v1/entries", "POST"))
        # halving to one record, then ten of them: the output pauses for 5 min, 10, 20…, and
        # after each pause one more refused record (the run of refusals goes on) pauses it again
        assert status["state"] == "paused_refusals"
        assert re.search(r"refused 1\d entries records in a row", status["last_error"]), status
        assert posts <= 9 + 10 + 6 and status["rejected"] <= 10 + 6
        assert status["lag"] == 288 - status["rejected"]  # status is current while backing off
        # the site takes uploads again: everything not set aside arrives
        emulator.clear_faults()
        await trio.sleep(3600)
        nursery.cancel_scope.cancel()
    status = out.status()
    assert status["state"] == "idle" and status["lag"] == 0
    assert len(emulator.entries) + status["rejected"] == 288 and len(emulator.entries) >= 288 - 60


async def test_an_unforeseen_exception_is_shown_in_status_and_delivery_goes_on(
    autojump_clock: trio.abc.Clock, store: Store, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    """A library raising something outside our error tree must not stop the daemon."""
    emulator, client = site
    persist(store, [reading(i) for i in range(5)])
    out = make_output(store, client)
    real_send = client.send
    broken = [True]

    async def send(request: httpx.Request, **kwargs: Any) -> httpx.Response:
        if broken[0]:
            broken[0] = False
            raise RuntimeError("https://user:hunter2@site.example exploded")
        return await real_send(request, **kwargs)

    client.send = send  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(out.run)
        await trio.sleep(0.5)
        status = out.status()
        assert status["state"] == "backoff"
        assert "unexpected RuntimeError" in status["last_error"]
        assert "hunter2" not in str(status)
        await trio.sleep(600)
        assert out.status()["state"] == "idle" and out.status()["lag"] == 0
        nursery.cancel_scope.cancel()
    assert emulator.count("entries") == 5
