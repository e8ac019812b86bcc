"""Set-aside records can be sent again: ``rejected`` lists them, ``rejected retry`` queues them,
the next delivery pass sends them (once each), and status and ``/metrics`` count them."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from api.metrics import make_registry, render
from connect.clock import VirtualClock
from connect.records import Batch, DeviceStatus, Entry, Record
from outputs.nightscout import NightscoutOutput
from store import AsyncStore
from store.abc import WriterStore
from store.reader import StoreReader
from tests.clirun import cli, rows
from tests.emulators.nightscout import NightscoutEmulator, serve_in_thread
from tests.stores import MakeStore

T0 = 1_700_000_000_000
FIVE_MIN = 300_000
SECRET = "a-long-enough-api-secret"
SITE = "http://nightscout.test"


class InlineStore(AsyncStore):
    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args, **kwargs)


@pytest.fixture
def store(make_store: MakeStore) -> WriterStore:
    """Each backend in turn: queuing and sending again is part of the store's contract."""
    return make_store()


@pytest.fixture
async def site() -> AsyncIterator[tuple[NightscoutEmulator, httpx.AsyncClient]]:
    emulator = NightscoutEmulator(SECRET, now=VirtualClock(T0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator.app)) as client:
        yield emulator, client


def output(store: WriterStore, client: httpx.AsyncClient, **kwargs: Any) -> NightscoutOutput:
    return NightscoutOutput(
        SITE, InlineStore(store), client, api_secret=SECRET, clock=VirtualClock(T0), rng=random.Random(5),
        **kwargs,
    )  # fmt: skip


def reading(i: int) -> Entry:
    return Entry(type="sgv", date=T0 + i * FIVE_MIN, device="sim-cgm", sgv=100 + i, direction="Flat")


def status_doc(i: int) -> DeviceStatus:
    return DeviceStatus(device="connect://sim", date=T0 + i * FIVE_MIN, payload={"uploader": {"battery": 90}})


def persist(store: WriterStore, records: list[Record]) -> None:
    store.persist_frame("sim", "main", Batch.of(records))


async def test_queued_records_go_out_first_once_each_and_leave_the_table(
    autojump_clock: trio.abc.Clock, store: WriterStore, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    persist(store, [*(reading(i) for i in range(40)), *(status_doc(i) for i in range(40))])
    # a burst of refusals: 16 → 8 → 4 → 2 → 1 set aside, then two more records alone
    emulator.fail_next(7, 400, method="POST")
    out = output(store, client, chunk_size=16)
    await out.deliver_until_idle()
    assert store.rejected_count("nightscout") == 3
    assert [(g.collection, g.status, g.records, g.queued) for g in store.rejected()] == [
        ("entries", 400, 3, False)
    ]
    assert len(emulator.entries) == 37 and len(emulator.devicestatus) == 40
    assert store.lag("nightscout") == 0

    # nothing moves them until asked
    assert await out.deliver_until_idle()
    assert len(emulator.entries) == 37
    assert store.queue_retry("nightscout", "devicestatus") == {}
    assert store.queue_retry(collection="entries") == {"nightscout entries": 3}
    assert store.rejected_count("nightscout") == 0 and store.lag("nightscout") == 3
    assert [g.queued for g in store.rejected()] == [True]
    assert store.queue_retry() == {}  # queued already

    posts_before = len(emulator.requests_to("/api/v1/entries", "POST"))
    assert await out.deliver_until_idle()
    assert len(emulator.entries) == 40 and emulator.received["entries"] == 40  # each once
    assert len(emulator.requests_to("/api/v1/entries", "POST")) == posts_before + 1  # one chunk
    assert store.rejected() == [] and store.lag("nightscout") == 0
    assert out.status()["rejected"] == 0


async def test_a_queued_record_refused_again_is_set_aside_again(
    autojump_clock: trio.abc.Clock, store: WriterStore, site: tuple[NightscoutEmulator, httpx.AsyncClient]
) -> None:
    emulator, client = site
    persist(store, [status_doc(i) for i in range(4)])
    emulator.fail_next(3, 400, method="POST")  # 4 → 2 → 1: the first record set aside
    out = output(store, client, chunk_size=4)
    await out.deliver_until_idle()
    assert len(emulator.devicestatus) == 3 and store.rejected_count("nightscout") == 1
    store.queue_retry()
    emulator.fail_post_status(422, "still wrong")
    await out.deliver_until_idle()
    (group,) = store.rejected()
    assert (group.status, group.records, group.queued) == (422, 1, False)
    assert store.lag("nightscout") == 0 and len(emulator.devicestatus) == 3
    # a devicestatus is never posted twice: a queued one is looked up at the site first
    store.queue_retry()
    emulator.fail_next(1, "lost", method="POST")  # stored, but the answer never arrives
    await out.deliver_until_idle()
    await out.deliver_until_idle()
    assert store.rejected() == [] and len(emulator.devicestatus) == 4
    assert len({d["identifier"] for d in emulator.devicestatus}) == 4


def test_a_record_changed_since_it_was_set_aside_is_not_queued(store: WriterStore) -> None:
    persist(store, [reading(0), reading(1)])
    (first, _second) = store.pending("nightscout", "entries")
    store.set_aside("nightscout", "entries", first.seq, first.seq, 1, 400, "HTTP 400")
    store.advance("nightscout", "entries", store.max_seq("entries"))
    changed = Entry(type="sgv", date=T0, device="sim-cgm", sgv=222, direction="Flat")
    persist(store, [changed])  # a new seq, past the cursor: it goes out as any new record
    assert store.queue_retry() == {}
    assert store.rejected() == [] and store.lag("nightscout") == 1


def test_rejected_lists_them_and_retry_then_once_delivers_them(tmp_path: Path) -> None:
    emulator = NightscoutEmulator(SECRET)
    url, stop = serve_in_thread(emulator)
    db = tmp_path / "store.db"
    settings = {
        "CONNECT_SOURCE": "sim", "CONNECT_SIM_SEED": "7", "CONNECT_STORE_PATH": str(db),
        "CONNECT_BACKFILL_DAYS": "0.5", "CONNECT_NIGHTSCOUT_ENDPOINT": url, "CONNECT_API_SECRET": SECRET,
        "CONNECT_NIGHTSCOUT_CHUNK_SIZE": "50",
    }  # fmt: skip
    try:
        missing = cli("rejected", CONNECT_STORE_PATH=str(db))
        assert missing.returncode == 2 and "no store at" in missing.stderr and not db.exists()
        # a burst of 400 answers: 50 → 25 → 12 → 6 → 3 → 1 set aside, then three more alone
        emulator.fail_next(9, 400, method="POST", path="/api/v1/entries")
        first = cli("once", **settings)
        assert first.returncode == 1  # records refused for good are not delivered
        refused = rows(db, "SELECT sum(records) FROM rejected")[0][0]
        assert refused == 4, first.stderr[-3000:]
        stored_entries = rows(db, "SELECT count(*) FROM entries")[0][0]
        assert len(emulator.entries) == stored_entries - 4

        listed = cli("rejected", **settings)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].split()[:5] == ["OUTPUT", "COLLECTION", "STATUS", "RECORDS", "STATE"]
        assert lines[1].split()[:6] == ["nightscout", "entries", "400", "4", "set", "aside"]
        assert "HTTP 400" in lines[1] and "rejected retry" in lines[-1]
        status = json.loads(rows(db, "SELECT json FROM machine_status WHERE key = 'daemon'")[0][0])
        (ns,) = status["outputs"]
        assert ns["rejected"] == 4
        metrics = _metrics(db)
        assert 'nightscout_connect_rejected_records{collection="entries",output="nightscout"} 4.0' in metrics

        bad = cli("rejected", "retry", "--collection", "readings", **settings)
        assert bad.returncode == 2 and "--collection" in bad.stderr
        queued = cli("rejected", "retry", "--output", "nightscout", "--collection", "entries", **settings)
        assert queued.returncode == 0, queued.stderr
        assert "queued 4 records" in queued.stdout
        assert "queued for retry" in cli("rejected", **settings).stdout

        # the site recovered: the next pass sends them, each once
        again = cli("once", **settings)
        assert again.returncode == 0, again.stderr[-3000:]
        assert cli("rejected", **settings).stdout.strip() == "no records set aside"
        stored_entries = rows(db, "SELECT count(*) FROM entries")[0][0]
        assert len(emulator.entries) == stored_entries == emulator.received["entries"]
        assert 'output="nightscout"} 0.0' in _metrics(db)
        status = json.loads(rows(db, "SELECT json FROM machine_status WHERE key = 'daemon'")[0][0])
        assert status["outputs"][0]["rejected"] == 0 and status["outputs"][0]["lag"] == 0
    finally:
        stop()


def _metrics(db: Path) -> str:
    reader = StoreReader(db)
    try:
        return render(make_registry(reader, lambda: {"sources": [], "outputs": []})).decode()
    finally:
        reader.close()
