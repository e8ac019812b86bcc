"""MQTT output against a real mosquitto: every record published, PUBACK-driven cursor,
reconnect across a broker restart, login refusal, retained current, TLS, no secrets in logs."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from connect.logs import configure
from connect.records import Batch, DeviceStatus, Entry, Record, Treatment
from machines.delivery import DeliveryPolicy
from machines.timing import Backoff
from outputs.mqtt import MqttOutput, topic_level
from outputs.settings import mqtt_target
from store import AsyncStore, Store
from tests.mosquitto import Broker, Subscriber, make_tls_files
from tests.stores import MakeStore

T0 = 1_700_000_000_000
FAST = DeliveryPolicy(
    transient=Backoff(base=0.1, cap=0.5, jitter=0.0), paused=Backoff(base=0.5, cap=1.0, jitter=0.0)
)


def readings(n: int, start: int = T0, device: str = "sim-cgm") -> list[Entry]:
    return [
        Entry(type="sgv", date=start + i * 300_000, device=device, sgv=80 + i % 150, direction="Flat")
        for i in range(n)
    ]


def persist(store: Store, records: list[Record]) -> None:
    store.persist_frame("sim", "main", Batch.of(records))


async def apersist(astore: AsyncStore, records: list[Record]) -> None:
    """Persist while an output runs: through its store's worker, never beside a transaction of it."""
    await astore.persist_frame("sim", "main", Batch.of(records))


async def eventually(predicate: Callable[[], Any], *, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while True:
            result = predicate()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return
            await trio.sleep(0.02)


async def caught_up(out: MqttOutput, astore: AsyncStore, *, timeout: float = 20.0) -> None:
    """The store's lag (not the status' cached one) is zero and the output sits idle."""

    async def check() -> bool:
        return out.state == "idle" and await astore.lag(out.name) == 0

    await eventually(check, timeout=timeout)


def identifiers(messages: list[tuple[str, bytes, bool]], prefix: str = "nightscout/entries/") -> list[str]:
    return [json.loads(payload)["identifier"] for topic, payload, _ in messages if topic.startswith(prefix)]


def records_only(messages: list[tuple[str, bytes, bool]]) -> list[tuple[str, bytes, bool]]:
    """The messages but the availability topic's online/offline."""
    return [m for m in messages if m[0] != "nightscout/status"]


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    """Each backend in turn: what an output reads is the store's contract."""
    return make_store()  # type: ignore[return-value]


def output(broker: Broker, astore: AsyncStore, url: str | None = None, **kwargs: Any) -> MqttOutput:
    return MqttOutput(mqtt_target(url or broker.url), astore, policy=FAST, **kwargs)


async def test_every_record_is_published_on_its_topic(mosquitto: Broker, store: Store) -> None:
    sub = Subscriber(mosquitto.port, "nightscout/#").start()
    entries = readings(700)  # more than one chunk
    treatment = Treatment(event_type="Meal Bolus", date=T0 + 60_000, device="pump", carbs=30.0, insulin=2.5)
    statuses = [DeviceStatus(device="loop://iPhone", date=T0 + i * 300_000, payload={"pump": {"reservoir": 90 - i}})
                for i in range(3)]  # fmt: skip
    persist(store, [*entries, treatment, *statuses])
    astore = AsyncStore(store)
    out = output(mosquitto, astore)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(out.run)
            await caught_up(out, astore)
            await eventually(lambda: len(sub.snapshot()) >= 705)
            nursery.cancel_scope.cancel()
        await eventually(lambda: sub.snapshot()[-1][1] == b"offline")
    finally:
        sub.stop()
    # the availability topic: online while connected, offline after a clean stop
    assert [p for t, p, _ in sub.snapshot() if t == "nightscout/status"] == [b"online", b"offline"]
    messages = records_only(sub.snapshot())
    assert len(messages) == 704  # nothing failed, so nothing was sent twice
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for topic, payload, retain in messages:
        assert not retain
        by_topic.setdefault(topic, []).append(json.loads(payload))
    assert set(by_topic) == {
        "nightscout/entries/sim-cgm", "nightscout/treatments/pump", "nightscout/devicestatus/loop:__iPhone",
    }  # fmt: skip
    assert by_topic["nightscout/entries/sim-cgm"] == store.docs("entries", newest_first=False)
    assert by_topic["nightscout/treatments/pump"] == store.docs("treatments")
    assert by_topic["nightscout/devicestatus/loop:__iPhone"] == store.docs("devicestatus", newest_first=False)
    assert store.cursor("mqtt", "entries") == store.max_seq("entries")
    status = out.status()
    assert status["state"] == "idle" and status["delivered"] == 704 and status["connected"] is False
    assert status["target"] == mosquitto.url


async def test_wake_delivers_new_frames_and_cursor_waits_for_the_broker(
    mosquitto: Broker, store: Store
) -> None:
    sub = Subscriber(mosquitto.port, "nightscout/#").start()
    astore = AsyncStore(store)
    out = output(mosquitto, astore)
    batches = [readings(5, start=T0 + k * 1_500_000) for k in range(3)]
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(out.run)
            for batch in batches:
                await apersist(astore, list(batch))
                out.wake()
                await caught_up(out, astore)
            assert out.status()["connected"] is True
            # the broker goes away: new records stay pending, the cursor does not move
            mosquitto.stop()
            before = store.cursor("mqtt", "entries")
            await apersist(astore, list(readings(4, start=T0 + 10 * 1_500_000)))
            out.wake()
            await eventually(lambda: out.state == "backoff")
            await trio.sleep(0.3)
            assert store.cursor("mqtt", "entries") == before
            assert await astore.lag("mqtt") == 4
            assert "lost" in out.status()["last_error"] or "unreachable" in out.status()["last_error"]
            nursery.cancel_scope.cancel()
    finally:
        sub.stop()
    assert len(identifiers(sub.snapshot())) == 15


async def test_broker_restart_mid_stream_loses_nothing(
    mosquitto_factory: Callable[..., Broker], store: Store
) -> None:
    broker = mosquitto_factory(persistence=True)
    # a subscriber with a persistent session: the broker keeps its queue across the restart
    sub = Subscriber(broker.port, "nightscout/#", client_id="restart-watcher", persistent=True).start()
    astore = AsyncStore(store)
    out = output(broker, astore, group_size=50, window=4)
    first = readings(1500)
    second = readings(300, start=T0 + 1500 * 300_000)
    persist(store, list(first))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(out.run)
            # stop the broker while chunks are in flight
            await eventually(lambda: store.cursor("mqtt", "entries") >= 300)
            sub.expect_reconnect()
            broker.stop()
            await apersist(astore, list(second))
            out.wake()
            await eventually(lambda: out.state == "backoff")
            unacknowledged = {
                p.doc["identifier"] for p in await astore.pending("mqtt", "entries", limit=5000)
            }
            # blocking calls: the output (a task of this trio loop) cannot publish in between, so a
            # fresh subscriber sees exactly what is published after the restart
            broker.start()
            late = Subscriber(broker.port, "nightscout/#").start()
            sub.wait_resubscribed()
            try:
                await caught_up(out, astore, timeout=30)
                expected = {e.identifier for e in [*first, *second]}
                await eventually(lambda: set(identifiers(sub.snapshot())) >= expected, timeout=30)
                await eventually(lambda: set(identifiers(late.snapshot())) >= unacknowledged, timeout=30)
            finally:
                late.stop()
            late_seen = late.snapshot()
            nursery.cancel_scope.cancel()
    finally:
        sub.stop()
    assert set(identifiers(sub.snapshot())) == expected
    assert store.cursor("mqtt", "entries") == store.max_seq("entries")
    # stopped mid-stream: part of the first batch was not acknowledged when the broker went away
    assert len(unacknowledged) >= 300 + len(second)
    # after the restart exactly those were published again, each once
    assert sorted(identifiers(late_seen)) == sorted(unacknowledged)


async def test_refused_login_is_an_auth_error_and_the_password_stays_secret(
    mosquitto_factory: Callable[..., Broker], store: Store
) -> None:
    password = "correct-horse-battery-staple"
    broker = mosquitto_factory(users={"cgm": password})
    persist(store, list(readings(20)))
    astore = AsyncStore(store)
    logs = io.StringIO()
    configure(fmt="json", level="debug", stream=logs)
    try:
        wrong = output(broker, astore, url=f"mqtt://cgm:not-the-{password}@127.0.0.1:{broker.port}")
        async with trio.open_nursery() as nursery:
            await nursery.start(wrong.run)
            await eventually(lambda: wrong.state == "paused_auth")
            nursery.cancel_scope.cancel()
        status = wrong.status()
        assert status["failures"] >= 1 and "refused the login" in status["last_error"]
        assert await astore.lag("mqtt") == 20
        assert status["retry_at"] is not None

        sub = Subscriber(broker.port, "nightscout/#", username="cgm", password=password).start()
        right = output(broker, astore, url=f"mqtt://cgm:{password}@127.0.0.1:{broker.port}")
        try:
            assert await right.deliver_until_idle()
            await eventually(lambda: len(records_only(sub.snapshot())) == 20)
        finally:
            sub.stop()
        texts = [logs.getvalue(), json.dumps(status), json.dumps(right.status()), repr(right.broker)]
    finally:
        configure(fmt="json", level="warning", stream=io.StringIO())
    assert "refused the login" in logs.getvalue()
    for text in texts:
        assert password not in text
    assert right.status()["target"] == f"mqtt://127.0.0.1:{broker.port}"


async def test_retained_current_is_the_newest_sgv_and_survives_a_broker_restart(
    mosquitto: Broker, store: Store
) -> None:
    astore = AsyncStore(store)
    out = output(mosquitto, astore, retain_current=True)
    entries = readings(30)
    # an older reading persisted later must not replace the current one
    late_old = Entry(type="sgv", date=T0 - 600_000, device="sim-cgm", sgv=55)
    meter = Entry(type="mbg", date=T0 + 40 * 300_000, device="meter", mbg=140)
    persist(store, list(entries))

    async def retained() -> dict[str, Any]:
        sub = Subscriber(mosquitto.port, "nightscout/current").start()
        try:
            await eventually(lambda: len(sub.snapshot()) == 1)
        finally:
            sub.stop()
        topic, payload, retain = sub.snapshot()[0]
        assert topic == "nightscout/current" and retain
        doc: dict[str, Any] = json.loads(payload)
        return doc

    async with trio.open_nursery() as nursery:
        await nursery.start(out.run)
        await caught_up(out, astore)
        assert (await retained())["identifier"] == entries[-1].identifier
        await apersist(astore, [late_old, meter])
        out.wake()
        await caught_up(out, astore)
        assert (await retained())["identifier"] == entries[-1].identifier
        # without persistence the broker forgets retained messages: the output restates it
        mosquitto.restart()
        await eventually(lambda: out.status()["connected"] is False)
        await eventually(lambda: out.status()["connected"] is True)
        assert (await retained())["identifier"] == entries[-1].identifier
        nursery.cancel_scope.cancel()


async def test_tls_with_a_private_ca(
    mosquitto_factory: Callable[..., Broker], store: Store, tmp_path: Path
) -> None:
    files = make_tls_files(tmp_path / "tls")
    if files is None:
        import os

        if os.environ.get("CI"):
            pytest.fail("openssl is not installed (CI requires it)")
        pytest.skip("openssl is not installed")
    ca = files[0]
    broker = mosquitto_factory(tls=files)
    persist(store, list(readings(10)))
    astore = AsyncStore(store)
    untrusted = output(broker, astore)  # the system CAs do not know this broker
    assert not await untrusted.deliver_until_idle(attempts=1)
    assert "not trusted" in untrusted.status()["last_error"]
    sub = Subscriber(broker.port, "nightscout/#", tls_ca=ca).start()
    try:
        trusted = output(broker, astore, ca_file=ca)
        assert await trusted.deliver_until_idle()
        await eventually(lambda: len(records_only(sub.snapshot())) == 10)
    finally:
        sub.stop()
    assert trusted.status()["target"].startswith("mqtts://")


async def test_deliver_until_idle_reports_an_unreachable_broker(store: Store) -> None:
    persist(store, list(readings(3)))
    astore = AsyncStore(store)
    from tests.mosquitto import free_port

    out = MqttOutput(mqtt_target(f"mqtt://127.0.0.1:{free_port()}"), astore, policy=FAST)
    assert not await out.deliver_until_idle(attempts=2, max_wait=0.1)
    assert out.status()["state"] == "backoff"
    assert "unreachable" in out.status()["last_error"]
    assert await astore.lag("mqtt") == 3


def test_topic_levels_are_safe() -> None:
    assert topic_level("share2") == "share2"
    assert topic_level("xDrip+/#1") == "xDrip___1"
    assert topic_level(None) == "unknown"
    assert topic_level("  ") == "unknown"


@pytest.mark.parametrize("ci", ["", "1"])
def test_a_missing_broker_skips_locally_and_fails_under_ci(ci: str) -> None:
    """The broker fixture, run in a child pytest whose mosquitto "is not installed"."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["MOSQUITTO_BINARY"] = "/nonexistent/mosquitto"
    if ci:
        env["CI"] = ci
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rsf",
         "tests/test_outputs_mqtt.py::test_every_record_is_published_on_its_topic[sqlite]"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if ci:
        assert result.returncode == 1, result.stdout
        assert "CI requires the broker" in result.stdout and "SKIPPED" not in result.stdout
    else:
        assert result.returncode == 0, result.stdout
        assert "SKIPPED [1]" in result.stdout and "mosquitto is not installed" in result.stdout


async def test_a_ca_bundle_gone_since_start_is_a_delivery_error_not_a_crash(
    store: Store, tmp_path: Path
) -> None:
    persist(store, list(readings(2)))
    from tests.mosquitto import free_port

    out = MqttOutput(
        mqtt_target(f"mqtts://127.0.0.1:{free_port()}"), AsyncStore(store), policy=FAST,
        ca_file=tmp_path / "removed.pem",
    )  # fmt: skip
    assert not await out.deliver_until_idle(attempts=1)
    assert out.status()["state"] == "backoff"
    assert "unreachable (FileNotFoundError)" in out.status()["last_error"]


async def test_events_are_published_on_their_topics_after_the_records(
    mosquitto: Broker, store: Store
) -> None:
    from connect.alerting import AlertConfig, evaluate

    sub = Subscriber(mosquitto.port, "nightscout/#").start()
    now = T0 + 3 * 300_000
    persist(
        store,
        [
            Entry(type="sgv", date=T0 + i * 300_000, device="cgm", sgv=v, direction="Flat")
            for i, v in enumerate([110, 75, 70])
        ],
    )
    evaluate(store, AlertConfig(key="sim", label="alice"), now)
    stored = [row.text for row in store.events_after(0)]
    astore = AsyncStore(store)
    out = output(mosquitto, astore)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(out.run)
            await eventually(lambda: len(records_only(sub.snapshot())) >= 3 + len(stored))
            # the lag status shows is re-read after the pass: wait for it too
            await eventually(
                lambda: out.state == "idle" and store.events_lag("mqtt") == 0 and out.status()["lag"] == 0
            )
            nursery.cancel_scope.cancel()
    finally:
        sub.stop()
    messages = records_only(sub.snapshot())
    events = [(topic, payload) for topic, payload, _ in messages if topic.startswith("nightscout/events/")]
    # the event's body exactly as stored (and as a webhook gets it), on its own topic
    assert [payload.decode() for _, payload in events] == stored
    assert [topic for topic, _ in events] == [f"nightscout/events/{json.loads(t)['event']}" for t in stored]
    assert "nightscout/events/alert:raised" in {topic for topic, _ in events}
    # records first, then the events
    topics = [topic for topic, _, _ in messages]
    assert all(t.startswith("nightscout/entries/") for t in topics[:3])
    assert out.status()["lag"] == 0


# --- Home Assistant: discovery, availability, delta and units, a current that never goes back ---


def retained_now(broker: Broker, topic: str) -> list[tuple[str, bytes, bool]]:
    """What a subscriber arriving now is handed for ``topic`` (the retained messages)."""
    import time

    sub = Subscriber(broker.port, topic).start()
    try:
        time.sleep(0.5)
        return sub.snapshot()
    finally:
        sub.stop()


async def test_home_assistant_discovery_and_availability(mosquitto: Broker, store: Store) -> None:
    persist(store, list(readings(3)))
    astore = AsyncStore(store)
    out = output(mosquitto, astore, discovery=True, display_units="mmol")
    async with trio.open_nursery() as nursery:
        await nursery.start(out.run)
        await caught_up(out, astore)
        configs = await trio.to_thread.run_sync(retained_now, mosquitto, "homeassistant/sensor/+/config")
        status = await trio.to_thread.run_sync(retained_now, mosquitto, "nightscout/status")
        current = await trio.to_thread.run_sync(retained_now, mosquitto, "nightscout/current")
        nursery.cancel_scope.cancel()
    node = "nightscout_connect_nightscout_"
    by_id = {json.loads(p)["unique_id"].removeprefix(node): json.loads(p) for _, p, r in configs if r}
    assert set(by_id) == {"glucose", "delta", "direction", "reading_time"}
    glucose = by_id["glucose"]
    assert (
        glucose["unit_of_measurement"] == "mmol/L"
        and glucose["device_class"] == "blood_glucose_concentration"
    )
    assert glucose["state_topic"] == "nightscout/current"
    assert all(c["availability_topic"] == "nightscout/status" for c in by_id.values())
    assert by_id["reading_time"]["device_class"] == "timestamp"
    assert [p for _, p, r in status if r] == [b"online"]
    (doc,) = [json.loads(p) for _, p, r in current if r]  # discovery turns the retained current on
    # delta and units ride in the payload: readings 80, 81, 82 five minutes apart
    assert (doc["sgv"], doc["delta"], doc["units"], doc["mmol"]) == (82, 1, "mg/dL", 4.6)
    # a clean stop says offline itself
    after = await trio.to_thread.run_sync(retained_now, mosquitto, "nightscout/status")
    assert [p for _, p, r in after if r] == [b"offline"]


async def test_a_lost_connection_leaves_the_last_will(mosquitto: Broker, store: Store) -> None:
    astore = AsyncStore(store)
    out = output(mosquitto, astore, retain_current=True, keepalive=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(out.run)
        await eventually(lambda: out.status()["connected"] is True)
        online = await trio.to_thread.run_sync(retained_now, mosquitto, "nightscout/status")
        assert [p for _, p, r in online if r] == [b"online"]
        # the daemon vanishes without a goodbye: its socket dies, the broker publishes the will
        sock = out_socket(out)
        sock.shutdown(2)
        await eventually(lambda: out.status()["connected"] is False)

        async def offline() -> bool:
            seen = await trio.to_thread.run_sync(retained_now, mosquitto, "nightscout/status")
            return [p for _, p, r in seen if r] == [b"offline"]

        await eventually(offline, timeout=20)
        nursery.cancel_scope.cancel()


def out_socket(out: MqttOutput) -> Any:
    import gc

    from outputs.mqtt import _Link

    (link,) = [o for o in gc.get_objects() if isinstance(o, _Link) and o.client.socket() is not None]
    return link.client.socket()


async def test_a_backfill_never_moves_the_retained_current_back(mosquitto: Broker, store: Store) -> None:
    now = T0 + 12 * 3_600_000
    astore = AsyncStore(store)
    # the newest hour first, as a source catching up the present before the past
    persist(store, readings(12, start=now - 11 * 300_000))
    seen = Subscriber(mosquitto.port, "nightscout/current").start()
    out = output(mosquitto, astore, retain_current=True, group_size=50)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(out.run)
            await caught_up(out, astore)
            # then eleven hours of history, in frames oldest first: 132 readings in 3 groups
            for hour in range(11):
                await apersist(astore, readings(12, start=T0 + hour * 3_600_000))
            out.wake()
            await caught_up(out, astore)
            nursery.cancel_scope.cancel()
    finally:
        seen.stop()
    dates = [json.loads(p)["date"] for t, p, _ in seen.snapshot() if t == "nightscout/current"]
    assert dates and dates == sorted(dates) and dates[-1] == now
    assert set(dates) == {now}


async def test_a_first_delivery_of_history_publishes_only_the_newest_as_current(
    mosquitto: Broker, store: Store
) -> None:
    # three hours stored before the output ever ran: its groups go out oldest first
    persist(store, readings(36))
    seen = Subscriber(mosquitto.port, "nightscout/current").start()
    astore = AsyncStore(store)
    out = output(mosquitto, astore, retain_current=True, group_size=10)
    try:
        assert await out.deliver_until_idle()
        await eventually(lambda: len(seen.snapshot()) >= 1)
    finally:
        seen.stop()
    dates = [json.loads(p)["date"] for t, p, _ in seen.snapshot() if t == "nightscout/current"]
    assert dates == [T0 + 35 * 300_000]  # never the three-hour-old newest of the first group


async def test_each_sources_state_is_a_home_assistant_sensor(mosquitto: Broker, store: Store) -> None:
    persist(store, list(readings(2)))
    store.save_status(
        "daemon",
        {
            "sources": [
                {
                    "source": "dexcomshare:alice",
                    "session": {"state": "rejected", "last_error": "AuthRejected: password refused"},
                    "loops": {
                        "Entries": {"last_success": T0, "next_due": T0 + 1_800_000, "last_error": None}
                    },
                }
            ],
            "outputs": [],
        },
    )
    astore = AsyncStore(store)
    out = output(mosquitto, astore, discovery=True)
    assert await out.deliver_until_idle()
    configs = await trio.to_thread.run_sync(
        retained_now,
        mosquitto,
        "homeassistant/sensor/nightscout_connect_nightscout_source_dexcomshare_alice/config",
    )
    (config,) = [json.loads(p) for _, p, r in configs if r]
    assert config["state_topic"] == "nightscout/source/dexcomshare:alice"
    assert config["value_template"] == "{{ value_json.state }}"
    state = await trio.to_thread.run_sync(retained_now, mosquitto, "nightscout/source/+")
    (doc,) = [json.loads(p) for _, p, r in state if r]
    assert doc == {
        "source": "dexcomshare:alice",
        "state": "rejected",
        "last_success": T0,
        "next_check": T0 + 1_800_000,
        "last_error": "AuthRejected: password refused",
    }
