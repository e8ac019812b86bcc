"""Delivery throughput, each figure beside a ceiling measured in the same run.

* Nightscout: records/s from the store to a Nightscout site (:mod:`bench.nightscout_site`,
  in-process ASGI) through :class:`NightscoutOutput`, against a bare loop doing the same
  observable work to a fresh site: each chunk read past a cursor from the same store, posted
  as the stored JSON joined, and the cursor moved past it (so a restart resumes), with the
  least code — SQLite called inline, no machine, no status.
* MQTT: QoS 1 messages/s from the store to a local mosquitto through :class:`MqttOutput`,
  against a bare paho publisher (its own network thread, ``loop_start``) doing the same
  observable work: the same rows read from the store in the output's groups, each stored JSON
  published on its device's topic, every PUBACK awaited, and the cursor moved once per group.
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
from outputs.mqtt import MqttOutput
from outputs.nightscout import NightscoutOutput
from outputs.settings import MqttTarget, mqtt_target
from store import AsyncStore, Store

T0 = 1_700_000_000_000
#: the MQTT output's group (the records one store read takes and one cursor move acknowledges)
GROUP_SIZE = 250
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

    async def ceiling(store: Store) -> float:
        site = NightscoutSite(SECRET)
        transport = httpx.ASGITransport(app=site.app)
        headers = {"api-secret": sha1_hex(SECRET), "content-type": "application/json"}
        conn = store.conn
        async with httpx.AsyncClient(transport=transport) as client:
            started = time.perf_counter()
            after = 0
            while True:
                rows = conn.execute(
                    "SELECT seq, json FROM entries WHERE seq > ? ORDER BY seq LIMIT ?", (after, chunk_size)
                ).fetchall()
                if not rows:
                    break
                body = ("[" + ",".join(text for _, text in rows) + "]").encode("utf-8")
                response = await client.post(
                    "http://bench.test/api/v1/entries", content=body, headers=headers
                )
                response.raise_for_status()
                after = rows[-1][0]
                conn.execute(
                    "INSERT INTO cursors (output, collection, seq, updated_at) VALUES ('ceiling', 'entries', ?, 0) "
                    "ON CONFLICT(output, collection) DO UPDATE SET seq = excluded.seq",
                    (after,),
                )
            elapsed = time.perf_counter() - started
        if site.entry_count != records:
            raise RuntimeError("benchmark ceiling incomplete")
        return records / elapsed

    with tempfile.TemporaryDirectory() as tmp:
        store = _filled_store(Path(tmp) / "bench.db", records)
        try:

            def mine() -> float:
                store.conn.execute("DELETE FROM cursors")  # deliver everything again
                return trio.run(ours, store)

            return best_of(rounds, mine, lambda: trio.run(ceiling, store))
        finally:
            store.close()


def _paho_rate(target: MqttTarget, store: Store, messages: int, group_size: int) -> float:
    """Messages/s a bare paho publisher (``loop_start``) gets acknowledged at QoS 1."""
    done = threading.Event()
    acked = [0]

    def on_publish(_c: Any, _u: Any, _mid: int, _rc: Any, _p: Any) -> None:
        acked[0] += 1
        if acked[0] == messages:
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
    conn = store.conn
    try:
        started = time.perf_counter()
        after = 0
        groups: list[int] = []
        while True:
            rows = conn.execute(
                "SELECT seq, json, device FROM entries WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, group_size),
            ).fetchall()
            if not rows:
                break
            for _, text, device in rows:
                client.publish(f"bench/entries/{device}", text.encode("utf-8"), qos=1)
            after = rows[-1][0]
            groups.append(after)
        if not done.wait(120):
            raise RuntimeError("benchmark ceiling: PUBACKs missing")
        for seq in groups:
            conn.execute(
                "INSERT INTO cursors (output, collection, seq, updated_at) VALUES ('ceiling', 'entries', ?, 0) "
                "ON CONFLICT(output, collection) DO UPDATE SET seq = excluded.seq",
                (seq,),
            )
        elapsed = time.perf_counter() - started
    finally:
        client.disconnect()
        client.loop_stop()
    return messages / elapsed


async def _output_rate(target: MqttTarget, store: Store, messages: int) -> float:
    """Messages/s :class:`MqttOutput` delivers from ``store``."""
    output = MqttOutput(
        target, AsyncStore(store), topic_prefix="bench", client_id="bench-ours", group_size=GROUP_SIZE
    )
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

            def mine() -> float:
                store.conn.execute("DELETE FROM cursors")  # publish everything again
                return trio.run(_output_rate, target, store, messages)

            return best_of(rounds, mine, lambda: _paho_rate(target, store, messages, GROUP_SIZE))
        finally:
            store.close()
