"""Delivery throughput, each figure beside a ceiling measured in the same run.

* Nightscout: records/s from the store to a Nightscout site (:mod:`bench.nightscout_site`,
  in-process ASGI) through :class:`NightscoutOutput`, against a bare httpx loop posting the
  same chunks to a fresh site.
* MQTT: QoS 1 messages/s from the store to a local mosquitto through :class:`MqttOutput`,
  against a bare paho publisher (its own network thread, ``loop_start``) publishing the same
  payloads and waiting for every PUBACK.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import structlog
import trio
from paho.mqtt.enums import CallbackAPIVersion

from bench.broker import Mosquitto
from bench.nightscout_site import NightscoutSite
from bench.timing import Figures, best_of
from connect.httpkit import sha1_hex
from connect.logs import configure
from connect.records import Batch, Entry
from outputs.mqtt import MqttOutput, payload_of
from outputs.nightscout import NightscoutOutput
from outputs.settings import MqttTarget, mqtt_target
from store import AsyncStore, Store

T0 = 1_700_000_000_000
SECRET = "benchmark-api-secret"


def _entries(count: int) -> list[Entry]:
    return [
        Entry(type="sgv", date=T0 + i * 300_000, device="bench", sgv=60 + i % 300, direction="Flat")
        for i in range(count)
    ]


def _filled_store(path: Path, count: int) -> Store:
    store = Store(path)
    store.persist_frame("bench", "entries", Batch.of(_entries(count)))
    return store


def _quiet_logs() -> None:
    """Delivery logs every chunk at debug level; a benchmark prints its table and nothing else."""
    if not structlog.is_configured():
        configure(fmt="json", level="warning")


def bench_nightscout(records: int = 20_000, chunk_size: int = 500, rounds: int = 5) -> Figures:
    """Records/s uploaded to a Nightscout site: the output versus a bare httpx loop."""
    _quiet_logs()

    async def ours(store: Store) -> float:
        site = NightscoutSite(SECRET)
        transport = httpx.ASGITransport(app=site.app)
        async with httpx.AsyncClient(transport=transport) as client:
            output = NightscoutOutput(
                "http://bench.test", AsyncStore(store), client, api_secret=SECRET, chunk_size=chunk_size
            )
            started = time.perf_counter()
            ok = await output.deliver_until_idle()
            elapsed = time.perf_counter() - started
        if not ok or site.entry_count != records:
            raise RuntimeError(f"benchmark delivery incomplete: {output.status()}")
        return records / elapsed

    async def ceiling(bodies: list[bytes]) -> float:
        site = NightscoutSite(SECRET)
        transport = httpx.ASGITransport(app=site.app)
        headers = {"api-secret": sha1_hex(SECRET), "content-type": "application/json"}
        async with httpx.AsyncClient(transport=transport) as client:
            started = time.perf_counter()
            for body in bodies:
                response = await client.post(
                    "http://bench.test/api/v1/entries", content=body, headers=headers
                )
                response.raise_for_status()
            elapsed = time.perf_counter() - started
        if site.entry_count != records:
            raise RuntimeError("benchmark ceiling incomplete")
        return records / elapsed

    with tempfile.TemporaryDirectory() as tmp:
        store = _filled_store(Path(tmp) / "bench.db", records)
        try:
            # the same bytes the output sends (the store's JSON text, joined), encoded before the
            # clock starts: the ceiling is the site and the HTTP stack, nothing else
            texts = [text for (text,) in store.conn.execute("SELECT json FROM entries ORDER BY seq")]
            bodies = [
                ("[" + ",".join(texts[i : i + chunk_size]) + "]").encode("utf-8")
                for i in range(0, len(texts), chunk_size)
            ]

            def mine() -> float:
                store.conn.execute("DELETE FROM cursors")  # deliver everything again
                return trio.run(ours, store)

            return best_of(rounds, mine, lambda: trio.run(ceiling, bodies))
        finally:
            store.close()


def _paho_rate(target: MqttTarget, payloads: list[bytes]) -> float:
    """Messages/s a bare paho publisher (``loop_start``) gets acknowledged at QoS 1."""
    done = threading.Event()
    acked = [0]

    def on_publish(_c: Any, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        acked[0] += 1
        if acked[0] == len(payloads):
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-ceiling")
    # the output's own settings: no in-flight limit, no queue limit, its credentials and TLS
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    if target.username is not None:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        client.tls_set()
    client.on_publish = on_publish
    client.connect(target.host, target.port)
    client.loop_start()
    try:
        started = time.perf_counter()
        for payload in payloads:
            client.publish("bench/ceiling", payload, qos=1)
        if not done.wait(120):
            raise RuntimeError("benchmark ceiling: PUBACKs missing")
        elapsed = time.perf_counter() - started
    finally:
        client.disconnect()
        client.loop_stop()
    return len(payloads) / elapsed


async def _output_rate(target: MqttTarget, store: Store, messages: int) -> float:
    """Messages/s :class:`MqttOutput` delivers from ``store``."""
    output = MqttOutput(target, AsyncStore(store), topic_prefix="bench", client_id="bench-ours")
    started = time.perf_counter()
    ok = await output.deliver_until_idle()
    elapsed = time.perf_counter() - started
    if not ok:
        raise RuntimeError(f"benchmark delivery incomplete: {output.status()}")
    return messages / elapsed


def bench_mqtt(messages: int = 10_000, broker_url: str | None = None, rounds: int = 5) -> Figures:
    """QoS 1 messages/s to mosquitto: the output versus a bare paho publisher with loop_start.

    Without ``broker_url`` a private mosquitto is started on a free loopback port.
    """
    _quiet_logs()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as broker:
        url = broker_url or broker.enter_context(Mosquitto(Path(tmp) / "broker"))
        store = _filled_store(Path(tmp) / "bench.db", messages)
        try:
            target = mqtt_target(url)
            payloads = [payload_of(p.doc) for p in store.pending("ceiling", "entries", limit=messages)]

            def mine() -> float:
                store.conn.execute("DELETE FROM cursors")  # publish everything again
                return trio.run(_output_rate, target, store, messages)

            return best_of(rounds, mine, lambda: _paho_rate(target, payloads))
        finally:
            store.close()
