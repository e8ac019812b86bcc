"""The MQTT subscribe source against a real mosquitto: readings stored once, garbage set aside
and counted, and a broker restarted mid-stream loses nothing published with QoS 1."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import trio
from paho.mqtt.enums import CallbackAPIVersion

from connect.subscriber import REJECTED_AS, MqttSubscriber, PushSettings, collection_of
from store import AsyncStore, Store
from tests.mosquitto import Broker

T0 = 1_780_000_000_000


def reading(i: int) -> dict[str, Any]:
    return {"type": "sgv", "sgv": 90 + i % 80, "date": T0 + i * 300_000, "device": "pi", "direction": "Flat"}


def publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish with QoS 1 and wait for every PUBACK (runs in a worker thread)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


async def until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


def subscriber(broker: Broker, store: Store, **extra: Any) -> MqttSubscriber:
    settings = PushSettings(
        mqtt_source_url=broker.url,
        mqtt_source_topics="cgm/#, loop/devicestatus",
        mqtt_source_client_id=f"src-{uuid.uuid4().hex[:8]}",
        **extra,
    )
    return MqttSubscriber(settings, AsyncStore(store))


async def test_readings_are_stored_once_and_garbage_is_set_aside(
    mosquitto_factory: Callable[..., Broker], tmp_path: Path
) -> None:
    broker = mosquitto_factory(persistence=True)
    store = Store(tmp_path / "s.db")
    source = subscriber(broker, store)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        await until(lambda: source.machine.current_state_value == "listening", "the subscription")
        first = [("cgm/pi", json.dumps(reading(i)).encode()) for i in range(144)]
        # a batch as one message, and the first half once more: stored once
        first.append(("cgm/pi", json.dumps([reading(i) for i in range(100)]).encode()))
        garbage = [
            ("cgm/pi", b"not json"),
            ("cgm/pi", json.dumps({"type": "sgv", "sgv": "high", "date": T0}).encode()),
            ("cgm/pi", b"[1, 2, 3]"),
            ("cgm/pi", bytes(range(256))),
        ]
        await trio.to_thread.run_sync(publish, broker.port, first + garbage)
        await until(lambda: store.count("entries") == 144 and source.rejected == 4, "the first half")
        # the broker goes away and comes back (SIGTERM keeps its persistence file); what it had
        # not seen acknowledged yet comes again, and the store keeps it once
        await trio.to_thread.run_sync(broker.restart)
        await until(lambda: source.machine.current_state_value == "listening", "the resubscription")
        second = [("cgm/pi", json.dumps(reading(i)).encode()) for i in range(144, 288)]
        second.append(
            ("loop/devicestatus", json.dumps({"device": "loop", "created_at": T0, "pump": {}}).encode())
        )
        await trio.to_thread.run_sync(publish, broker.port, second)
        await until(lambda: store.count("entries") == 288 and store.count("devicestatus") == 1, "the rest")
        status = source.status()
        assert status["received"] >= len(first) + len(garbage) + len(second)
        assert status["stored"] == 289 and status["rejected"] == 4
        assert status["state"] == "listening" and source.machine.failures == 0
        nursery.cancel_scope.cancel()
    reasons = [
        row[0] for row in store.conn.execute("SELECT error FROM rejected WHERE output = ?", (REJECTED_AS,))
    ]
    assert len(reasons) == 4 and all(r.startswith("topic cgm/pi: ") for r in reasons)
    assert any("sgv" in r for r in reasons)
    store.close()


async def test_messages_queued_while_the_broker_restarts_are_not_lost(
    mosquitto_factory: Callable[..., Broker], tmp_path: Path
) -> None:
    """QoS 1 messages the broker accepted for our persistent session survive its restart."""
    broker = mosquitto_factory(persistence=True)
    store = Store(tmp_path / "s.db")
    source = subscriber(broker, store)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        await until(lambda: source.machine.current_state_value == "listening", "the subscription")
        # the store holds back the first batch: the messages are received, not yet acknowledged
        gate = trio.Event()
        real = source.astore.persist_push

        async def held(*args: Any) -> Any:
            await gate.wait()
            return await real(*args)

        source.astore.persist_push = held  # type: ignore[method-assign]
        messages = [("cgm/pi", json.dumps(reading(i)).encode()) for i in range(288)]
        await trio.to_thread.run_sync(publish, broker.port, messages)
        await until(lambda: source.received >= 1, "the first message")
        assert store.count("entries") == 0
        await trio.to_thread.run_sync(broker.restart)
        gate.set()
        await until(lambda: store.count("entries") == 288, "every reading")
        # what was not acknowledged came again after the restart; the store kept each reading once
        assert source.status()["received"] > 288 - 1
        nursery.cancel_scope.cancel()
    store.close()


def test_jmespath_maps_any_json_and_documents_find_their_collection() -> None:
    from connect.pushed import read_document

    settings = PushSettings(
        mqtt_source_url="mqtt://127.0.0.1:1", mqtt_source_format="jmespath:{type: 'sgv', sgv: v, date: t}"
    )
    source = MqttSubscriber(settings, AsyncStore(Store(":memory:")))
    message = mqtt.MQTTMessage(topic=b"x")
    message.payload = json.dumps({"v": 120, "t": T0}).encode()
    (key,) = source._read(message, T0)
    assert key.record.date == T0 and key.record.sgv == 120  # type: ignore[union-attr]
    assert collection_of({"eventType": "Note"}) == "treatments"
    assert collection_of({"pump": {}}) == "devicestatus"
    assert read_document("entries", reading(1), 0, now=T0).record.device == "pi"
    with pytest.raises(ValueError):
        PushSettings(mqtt_source_url="mqtt://h", mqtt_source_format="csv")
    # a filter paho would refuse at SUBSCRIBE is a bad setting, not a subscription that dies
    for topics in ("cgm/#/x", "cgm/a+", "cgm/#x", "ok/#, x#"):
        with pytest.raises(ValueError):
            PushSettings(mqtt_source_url="mqtt://h", mqtt_source_topics=topics)
    assert PushSettings(mqtt_source_url="mqtt://h", mqtt_source_topics="+/cgm/+, #").mqtt_source_topics


@pytest.mark.e2e
def test_the_daemon_subscribes_stores_once_and_outlives_a_broker_restart(
    mosquitto_factory: Callable[..., Broker], tmp_path: Path
) -> None:
    """``CONNECT_SOURCE=mqtt`` through the real CLI: 288 readings stored once, garbage set aside
    and counted in status, and readings the broker accepted while the daemon was connected
    survive the broker going away mid-stream (persistence on)."""
    import hashlib
    import signal

    import httpx

    from tests.test_e2e_nightscout import HTTP_SECRET, free_port, query, start, wait_for
    from tests.test_e2e_serve import answers

    broker = mosquitto_factory(persistence=True)
    db = tmp_path / "mqtt.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    auth = {"api-secret": hashlib.sha1(HTTP_SECRET.encode()).hexdigest()}
    proc = start(
        "run",
        CONNECT_SOURCE="mqtt",
        CONNECT_STORE_PATH=str(db),
        CONNECT_HTTP_BIND=f"127.0.0.1:{port}",
        CONNECT_HTTP_SECRET=HTTP_SECRET,
        CONNECT_MQTT_SOURCE_URL=broker.url,
        CONNECT_MQTT_SOURCE_TOPICS="cgm/#",
        CONNECT_MQTT_SOURCE_CLIENT_ID=f"e2e-{uuid.uuid4().hex[:8]}",
    )

    def push_status() -> dict[str, Any]:
        try:
            answer = httpx.get(f"{base}/api/connect/status", headers=auth, timeout=2)
        except httpx.HTTPError:
            return {}
        found = answer.json().get("push") or [{}] if answer.status_code == 200 else [{}]
        return dict(found[0])

    def stored() -> int:
        rows = query(db, "SELECT count(*) FROM entries")
        return int(rows[0][0]) if rows else 0

    try:
        wait_for(answers(base), timeout=30, what="the API", proc=proc)
        wait_for(
            lambda: push_status().get("state") == "listening", timeout=30, what="the subscription", proc=proc
        )
        garbage = [
            ("cgm/pi", b"not json"),
            ("cgm/pi", json.dumps({"type": "sgv", "sgv": "high", "date": T0}).encode()),
            ("cgm/pi", b"[1, 2, 3]"),
            ("cgm/pi", bytes(range(256))),
        ]
        first = [("cgm/pi", json.dumps(reading(i)).encode()) for i in range(144)]
        publish(broker.port, first + garbage)
        wait_for(lambda: stored() == 144, timeout=30, what="the first half", proc=proc)
        wait_for(
            lambda: push_status().get("rejected") == 4, timeout=30, what="the garbage set aside", proc=proc
        )
        # mid-stream: the daemon is still connected but not reading when the broker takes the
        # second half for its session; then the broker goes away (SIGTERM: it saves its
        # persistence file) and comes back, and the daemon carries on
        proc.send_signal(signal.SIGSTOP)
        try:
            publish(broker.port, [("cgm/pi", json.dumps(reading(i)).encode()) for i in range(144, 288)])
            broker.restart()
        finally:
            proc.send_signal(signal.SIGCONT)
        wait_for(lambda: stored() == 288, timeout=60, what="every reading", proc=proc)
        status = push_status()
        assert status["state"] == "listening"
        assert status["stored"] == 288 and status["rejected"] == 4
        # the second half was in flight to the stopped daemon: the broker sent it again, marked
        # so, and status tells those apart from new messages
        assert status["redelivered"] > 0 and status["received"] >= 288 + 4
        assert query(db, "SELECT count(DISTINCT date) FROM entries") == [(288,)]
        assert query(db, "SELECT count(*) FROM rejected WHERE output = ?", (REJECTED_AS,)) == [(4,)]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err[-3000:]
