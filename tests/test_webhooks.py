"""Webhook delivery against a real receiver on a loopback port that fails, times out and answers
slowly: every event arrives once, in order, signed; the JMESPath filter selects as documented;
a refused event is set aside; the last payloads and their outcomes are kept for the API."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from connect.alerting import AlertConfig, evaluate
from connect.httpkit import INSTANCE_ID, LOOP_HEADER
from connect.records import Batch, Entry, Treatment
from machines.alerts import MIN_MS
from machines.delivery import DeliveryPolicy
from machines.timing import Backoff
from outputs.alert_settings import HookSpec
from outputs.events import WebhookOutput, truthy
from store import AsyncStore, Store
from store.reader import StoreReader
from tests.emulators.serve import serve_in_thread

SECRET = "webhook-signing-secret"
FAST = DeliveryPolicy(transient=Backoff(base=0.05, cap=0.2, jitter=0.0), paused=Backoff(base=0.2, cap=0.5))


class Receiver:
    """An ASGI webhook receiver that misbehaves as scripted, one behaviour per request."""

    def __init__(self, script: list[str], secret: str = SECRET) -> None:
        self.script = list(script)
        self.secret = secret
        self.accepted: list[dict[str, Any]] = []
        self.requests = 0
        self.bad_signatures = 0
        self.origins: set[str] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests += 1
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(headers.get("x-connect-signature", ""), expected):
            self.bad_signatures += 1
        self.origins.add(headers.get(LOOP_HEADER, ""))
        behaviour = self.script.pop(0) if self.script else "ok"
        status = 200
        if behaviour == "fail":
            status = 503
        elif behaviour == "refuse":
            status = 422
        elif behaviour == "timeout":
            await asyncio.sleep(2.0)  # the sender has given up long before: nothing is recorded
            return await self._answer(send, 200)
        elif behaviour == "slow":
            await asyncio.sleep(0.2)
        if status == 200:
            doc = json.loads(body)
            assert headers["x-connect-event"] == doc["event"] and headers["x-connect-delivery"] == doc["id"]
            self.accepted.append(doc)
        await self._answer(send, status)

    @staticmethod
    async def _answer(send: Any, status: int) -> None:
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def receiver_url() -> Iterator[Any]:
    servers: list[Any] = []

    def start(receiver: Receiver) -> str:
        cm = serve_in_thread(receiver)
        servers.append(cm)
        return str(cm.__enter__())

    yield start
    for cm in servers:
        cm.__exit__(None, None, None)


def store_with_events(path: Path) -> tuple[Store, list[tuple[int, str, str]]]:
    """Two accounts' readings (lows among them) and a treatment, judged into the outbox."""
    store = Store(path)
    now = 1_750_000_000_000
    for account, sgvs in (("sim:alice", [120, 90, 70, 60, 75, 95]), ("sim:bob", [200, 270, 150])):
        records: list[Any] = [
            Entry(type="sgv", date=now - (len(sgvs) - i) * 5 * MIN_MS, device="cgm", sgv=v, direction="Flat")
            for i, v in enumerate(sgvs)
        ]
        records.append(
            Treatment(event_type="Correction Bolus", date=now - 2 * MIN_MS, device="pump", insulin=1.5)
        )
        store.persist_frame(account, "Loop", Batch.of(records))
        # judged as the readings came: each one shortly after it was taken
        for i in range(len(sgvs)):
            evaluate(
                store,
                AlertConfig(key=account, label=account.split(":")[1]),
                now - (len(sgvs) - i) * 5 * MIN_MS + 1000,
            )
    rows = [
        (int(s), str(i), str(a))
        for s, i, a in store.conn.execute("SELECT seq, id, account FROM events ORDER BY seq")
    ]
    return store, rows


async def deliver(out: WebhookOutput, store: Store, *, timeout: float = 30.0) -> None:
    last = store.conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            await nursery.start(out.run)
            while store.cursor(out.name, "events") < last or out.state != "idle":
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


async def test_every_event_arrives_once_in_order_and_signed(tmp_path: Path, receiver_url: Any) -> None:
    receiver = Receiver(["fail", "timeout", "ok", "slow", "fail", "fail", "ok", "timeout", "slow", "fail"])
    url = receiver_url(receiver)
    store, rows = store_with_events(tmp_path / "s.db")
    assert {"glucose:new", "treatment:new", "episode:changed", "alert:raised", "alert:cleared"} <= {
        json.loads(t)["event"] for (t,) in store.conn.execute("SELECT json FROM events")
    }
    async with httpx.AsyncClient() as client:
        out = WebhookOutput(
            HookSpec(name="webhook", url=f"{url}/hook?token=query-token-1234", secret=SECRET, timeout=0.5),
            AsyncStore(store),
            client,
            policy=FAST,
        )
        await deliver(out, store)
    ids = [r.get("id") for r in receiver.accepted]
    assert ids == [eid for _, eid, _ in rows]  # each once, in the outbox's order
    for account in ("alice", "bob"):
        mine = [r["time"] for r in receiver.accepted if r["account"] == account]
        assert mine == sorted(mine)
    assert receiver.bad_signatures == 0
    assert receiver.origins == {INSTANCE_ID}
    assert receiver.requests > len(rows)  # the failures and timeouts were retried
    status = out.status()
    assert status["state"] == "idle" and status["lag"] == 0 and status["failures"] == 0
    assert "query-token-1234" not in json.dumps(status) and status["target"] == f"{url}/hook"
    # the last payloads and their outcomes, newest first, for /api/connect/webhooks
    with StoreReader(tmp_path / "s.db") as reader:
        log = reader.webhook_log()["webhook"]
    assert len(log) == min(50, len(rows))
    assert [entry["id"] for entry in log] == [eid for _, eid, _ in rows][::-1][:50]
    assert all(entry["outcome"] == "delivered" and entry["status"] == 200 for entry in log)
    assert log[-1]["payload"]["id"] == log[-1]["id"]
    assert max(entry["attempts"] for entry in log) >= 2


async def test_the_filter_and_the_event_list_select_what_is_sent(tmp_path: Path, receiver_url: Any) -> None:
    receiver = Receiver([])
    url = receiver_url(receiver)
    store, rows = store_with_events(tmp_path / "s.db")
    async with httpx.AsyncClient() as client:
        out = WebhookOutput(
            HookSpec(
                name="lows",
                url=url,
                secret=SECRET,
                events=frozenset({"alert:raised"}),
                filter="data.kind == 'low'",
            ),
            AsyncStore(store),
            client,
            policy=FAST,
        )
        await deliver(out, store)
        sugars = WebhookOutput(
            HookSpec(
                name="sugars", url=url, secret=SECRET, filter="event == 'glucose:new' && data.sgv > `100`"
            ),
            AsyncStore(store),
            client,
            policy=FAST,
        )
        await deliver(sugars, store)
    lows = [r for r in receiver.accepted if r["event"] == "alert:raised"]
    assert [(r["account"], r["data"]["kind"], r["data"]["sgv"]) for r in lows] == [("alice", "low", 70)]
    rest = receiver.accepted[len(lows) :]
    assert rest and all(r["event"] == "glucose:new" and r["data"]["sgv"] > 100 for r in rest)
    assert store.cursor("lows", "events") == rows[-1][0]  # passed over the rest without a request
    assert receiver.requests == len(receiver.accepted)


def test_jmespath_truth() -> None:
    assert not any(truthy(v) for v in (None, False, "", [], {}))
    assert all(truthy(v) for v in (0, 0.0, True, "x", [0], {"a": None}))


async def test_a_refused_event_is_set_aside_and_the_rest_go_on(tmp_path: Path, receiver_url: Any) -> None:
    receiver = Receiver(["ok", "refuse"])
    url = receiver_url(receiver)
    store, rows = store_with_events(tmp_path / "s.db")
    async with httpx.AsyncClient() as client:
        out = WebhookOutput(
            HookSpec(name="webhook", url=url, secret=SECRET), AsyncStore(store), client, policy=FAST
        )
        await deliver(out, store)
    assert [r["id"] for r in receiver.accepted] == [eid for i, (_, eid, _) in enumerate(rows) if i != 1]
    assert store.rejected_count("webhook") == 1
    with StoreReader(tmp_path / "s.db") as reader:
        log = reader.webhook_log()["webhook"]
    assert [e["outcome"] for e in log if e["id"] == rows[1][1]] == ["refused, set aside"]
