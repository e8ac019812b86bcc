"""MQTT output: every record, as its Nightscout JSON, on ``{prefix}/{collection}/{device}``.

paho-mqtt has no trio integration, so paho is driven through its external-loop API and never
starts a thread of its own: ``connect()`` (a blocking TCP/TLS handshake) runs in
``trio.to_thread``; afterwards trio waits on paho's socket (``wait_readable`` /
``wait_writable``) and calls ``loop_read`` / ``loop_write`` / ``loop_misc`` in the trio thread,
so every paho callback runs there too. When paho closes its socket, ``on_socket_close`` calls
``trio.lowlevel.notify_closing`` so a task blocked on that socket wakes instead of hanging.

Delivery is at-least-once: a chunk is published with QoS 1 and the cursor moves past it only
when the broker acknowledged every message (PUBACK). A connection lost in between means the
chunk is published again after reconnecting; a fresh paho client is made for every connection,
so paho's own in-flight state never outlives a connection and the store cursor alone decides
what is sent.
"""

from __future__ import annotations

import json
import random
import ssl
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import paho.mqtt.client as mqtt
import structlog
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from connect.clock import wall_ms
from connect.errors import ConnectError, OutputAuthError, TransientError
from connect.httpkit import mqtt_tls_context
from connect.records import COLLECTIONS, EVENTS, Collection, Stream
from connect.redact import redact_text, register_secret
from machines.alerts import MMOL_TO_MGDL
from machines.delivery import DeliveryPolicy
from outputs.delivery import Clock, Output, Sequenced
from outputs.settings import MqttTarget, mqtt_target
from store.abc import StoredRow

if TYPE_CHECKING:
    from store.abc import WriterStore
    from store.aio import AsyncStore

log = structlog.get_logger("outputs.mqtt")

#: CONNACK reason codes that mean "your credentials", not "try later" (v3 codes 4 and 5 map here)
AUTH_REASONS: Final = frozenset({134, 135})
#: characters a topic level must not contain
_TOPIC_UNSAFE: Final = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})


def topic_level(value: Any) -> str:
    """A device name made safe as one topic level (no separators, no wildcards)."""
    text = str(value or "").translate(_TOPIC_UNSAFE).strip()
    return text or "unknown"


def payload_of(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")


#: a record as its row keeps it: the JSON text is the message body as it is (the text
#: :func:`payload_of` would write, made once when the record was stored), with the columns the
#: topic and ``current`` need, so a message is made without parsing the document
Stored = StoredRow


def records_after(store: WriterStore, collection: Collection, after: int, limit: int) -> list[Stored]:
    """Records with ``seq`` above ``after`` (not the cursor: the pipeline reads ahead of it)."""
    return store.rows_after(collection, after, limit)


def advance_and_read(
    store: WriterStore, output: str, collection: Collection, seq: int, after: int, limit: int
) -> list[Stored]:
    """The group after ``after`` read, then ``output``'s cursor moved to ``seq`` (an acknowledged
    group): one trip to the store's worker thread instead of two, the cursor untouched when
    either fails."""
    group = store.rows_after(collection, after, limit)
    store.advance(output, collection, seq)
    return group


def _newest_delivered_sgv(store: WriterStore, output: str) -> dict[str, Any] | None:
    """The newest sgv the broker has acknowledged (runs on the store's worker thread)."""
    row = store.newest_sgv(upto_seq=store.cursor(output, "entries"))
    return None if row is None else row.doc()


#: how far back the reading before the current one may be for a delta (Nightscout shows none
#: across a longer gap either)
DELTA_WINDOW_MS: Final = 15 * 60_000
#: Nightscout's own conversion, the one the status page and the alerts use too
MMOL_PER_MGDL: Final = 1 / MMOL_TO_MGDL


def current_view(store: WriterStore, doc: dict[str, Any], *, only_newest: bool) -> dict[str, Any] | None:
    """The retained ``current`` payload for ``doc``: its Nightscout JSON plus ``delta`` (mg/dL
    since the reading before it, None across a gap), ``units`` and the value in mmol/L.

    With ``only_newest``, None when the store already holds a newer sgv: during a backfill the
    groups go out oldest first, and ``current`` must not step through history on the way."""
    date = int(doc["date"])
    if only_newest:
        newest = store.newest_sgv()
        if newest is not None and int(newest.doc()["date"]) > date:
            return None
    before = store.sgv_before(date, date - DELTA_WINDOW_MS)
    sgv = doc.get("sgv")
    delta = sgv - before if before is not None and isinstance(sgv, (int, float)) else None
    mmol = round(sgv * MMOL_PER_MGDL, 1) if isinstance(sgv, (int, float)) else None
    return {**doc, "delta": delta, "units": "mg/dL", "mmol": mmol}


def saved_sources(store: WriterStore) -> list[dict[str, Any]]:
    """Each source's part of the status the daemon last saved in the store (none yet: [])."""
    status = store.status_of("daemon")
    sources = status.get("sources") if isinstance(status, dict) else None
    return [s for s in sources or [] if isinstance(s, dict) and s.get("source")]


def source_state(source: dict[str, Any]) -> dict[str, Any]:
    """One source's state for Home Assistant: its session's state, when its loops last
    succeeded and next check, and the last error (already free of secrets)."""
    session = source.get("session") or {}
    loops = [loop for loop in (source.get("loops") or {}).values() if isinstance(loop, dict)]
    successes = [loop["last_success"] for loop in loops if isinstance(loop.get("last_success"), int)]
    dues = [loop["next_due"] for loop in loops if isinstance(loop.get("next_due"), int)]
    errors = [loop["last_error"] for loop in loops if loop.get("last_error")]
    return {
        "source": source.get("source"),
        "state": session.get("state") or "unknown",
        "last_success": max(successes) if successes else None,
        "next_check": min(dues) if dues else None,
        "last_error": session.get("last_error") or (errors[0] if errors else None),
    }


class AckGroup:
    """Messages published together; done when the broker acknowledged all of them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.unacked: set[int] = set()
        self.done = trio.Event()

    def acknowledged(self, mid: int) -> None:
        self.unacked.discard(mid)
        self.check()

    def check(self) -> None:
        if not self.unacked:
            self.done.set()


class _Link:
    """One broker connection: paho's client plus the trio tasks that move its bytes."""

    def __init__(self, client: mqtt.Client, *, qos: int, display: str) -> None:
        self.client = client
        self.qos = qos
        self.display = display
        self.error: ConnectError | None = None
        self.scope: trio.CancelScope | None = None
        self.connected = trio.Event()
        self.write_wanted = trio.Event()
        #: message id → the group of messages it belongs to, until the broker acknowledges it
        self.waiting: dict[int, AckGroup] = {}
        self.closing = False
        #: (topic, payload) published retained when the connection ends cleanly
        self.farewell: tuple[str, bytes] | None = None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write

    # --- paho callbacks (always in the trio thread: they run inside loop_read/write/misc) ---

    def _on_connect(self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            code = int(reason.value)
            if code in AUTH_REASONS:
                self.fail(OutputAuthError(f"MQTT broker {self.display} refused the login ({reason})"))
            else:
                self.fail(TransientError(f"MQTT broker {self.display} refused the connection ({reason})"))
            return
        self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not self.closing:
            self.fail(TransientError(f"MQTT connection to {self.display} lost ({reason})"))

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: Any, _props: Any) -> None:
        if reason.is_failure:  # MQTT 5 only: the broker refused this message
            self.fail(TransientError(f"MQTT broker {self.display} refused a message ({reason})"))
            return
        group = self.waiting.pop(mid, None)
        if group is not None:
            group.acknowledged(mid)

    def _on_socket_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        # a task blocked in wait_readable/wait_writable on this socket must wake up
        trio.lowlevel.notify_closing(sock)

    def _on_register_write(self, _c: mqtt.Client, _u: Any, _sock: Any) -> None:
        self.write_wanted.set()

    # --- control ---------------------------------------------------------------------------------

    def fail(self, error: ConnectError) -> None:
        """End this connection with ``error`` (the first error wins)."""
        if self.error is None and not self.closing:
            self.error = error
        if self.scope is not None:
            self.scope.cancel()

    def finish(self) -> None:
        """End this connection cleanly."""
        self.closing = True
        if self.scope is not None:
            self.scope.cancel()

    def _check(self, rc: MQTTErrorCode, what: str) -> bool:
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return True
        self.fail(
            TransientError(f"MQTT connection to {self.display}: {what} failed ({mqtt.error_string(rc)})")
        )
        return False

    # --- the tasks ------------------------------------------------------------------------------

    async def reader(self) -> None:
        client = self.client
        while True:
            sock = client.socket()
            if sock is None:
                self.fail(TransientError(f"MQTT connection to {self.display} closed"))
                return
            pending = getattr(sock, "pending", None)
            # TLS may hold decrypted bytes the OS socket no longer signals
            if not (pending is not None and pending() > 0):
                try:
                    await trio.lowlevel.wait_readable(sock)
                except (trio.ClosedResourceError, OSError):
                    self.fail(TransientError(f"MQTT connection to {self.display} closed"))
                    return
            try:
                rc = client.loop_read()
            except OSError as exc:
                self.fail(
                    TransientError(f"MQTT connection to {self.display}: read failed ({type(exc).__name__})")
                )
                return
            if not self._check(rc, "read"):
                return

    async def writer(self) -> None:
        client = self.client
        while True:
            if not client.want_write():
                self.write_wanted = trio.Event()
                if not client.want_write():
                    await self.write_wanted.wait()
                continue
            sock = client.socket()
            if sock is None:
                self.fail(TransientError(f"MQTT connection to {self.display} closed"))
                return
            try:
                await trio.lowlevel.wait_writable(sock)
                rc = client.loop_write()
            except (trio.ClosedResourceError, OSError):
                self.fail(TransientError(f"MQTT connection to {self.display} closed"))
                return
            if not self._check(rc, "write"):
                return

    async def keepalive(self, interval: float) -> None:
        """paho's pings and ping timeouts (it measures keepalive on the monotonic clock)."""
        while True:
            await trio.sleep(interval)
            if not self._check(self.client.loop_misc(), "keepalive"):
                return

    async def guard(self, fn: Callable[[_Link], Awaitable[None]]) -> None:
        """Run the connection's work; its end (or its error) ends the connection."""
        try:
            await fn(self)
        except ConnectError as exc:
            self.fail(exc)
        else:
            self.finish()

    def publish(self, messages: Sequence[tuple[str, bytes, bool]]) -> AckGroup:
        """Hand ``messages`` to paho (the writer task sends them); their PUBACKs complete the group."""
        group = AckGroup(len(messages))
        for topic, payload, retain in messages:
            info = self.client.publish(topic, payload, qos=self.qos, retain=retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise TransientError(f"MQTT publish to {self.display} failed ({mqtt.error_string(info.rc)})")
            if not info.is_published():
                group.unacked.add(info.mid)
                self.waiting[info.mid] = group
        group.check()
        self.write_wanted.set()
        return group

    async def acknowledged(self, group: AckGroup, *, within: float) -> None:
        """Wait until the broker acknowledged every message of ``group``."""
        with trio.move_on_after(within) as scope:
            await group.done.wait()
        if scope.cancelled_caught:
            raise TransientError(
                f"MQTT broker {self.display} acknowledged {group.size - len(group.unacked)} of "
                f"{group.size} messages in {within:g} s"
            )

    def close(self) -> None:
        """Say goodbye when the connection is healthy; always release the socket."""
        client = self.client
        sock = client.socket()
        if sock is None:
            return
        if self.error is None:
            self.closing = True
            try:
                if self.farewell is not None:
                    # a clean stop says so itself; the broker sends the will only when the
                    # connection is lost
                    client.publish(*self.farewell, qos=1, retain=True)
                client.disconnect()
                client.loop_write()
            except OSError:
                pass
        sock = client.socket()
        if sock is not None:
            sock.close()


class MqttOutput(Output):
    """Publishes the store's records, and then the events, to an MQTT broker, QoS 1 by default."""

    streams: tuple[Stream, ...] = (*COLLECTIONS, EVENTS)

    def __init__(
        self,
        target: MqttTarget,
        astore: AsyncStore,
        *,
        topic_prefix: str = "nightscout",
        qos: int = 1,
        retain_current: bool = False,
        discovery: bool = False,
        discovery_prefix: str = "homeassistant",
        display_units: str = "mg/dl",
        ca_file: str | Path | None = None,
        client_id: str | None = None,
        group_size: int = 250,
        window: int = 8,
        inflight: int = 0,
        keepalive: int = 60,
        connect_timeout: float = 15.0,
        ack_timeout: float = 60.0,
        name: str = "mqtt",
        clock: Clock = wall_ms,
        rng: random.Random | None = None,
        policy: DeliveryPolicy | None = None,
    ) -> None:
        super().__init__(name, astore, clock=clock, rng=rng, policy=policy, chunk_size=group_size)
        self.broker = target
        register_secret(target.password)
        self.topic_prefix = topic_prefix.strip("/")
        self.qos = qos
        # Home Assistant's sensors read the retained current: discovery needs it
        self.retain_current = retain_current or discovery
        self.discovery = discovery
        self.discovery_prefix = discovery_prefix.strip("/")
        self.display_units = display_units
        self.ca_file = None if ca_file is None else str(ca_file)
        self.client_id = client_id or f"nightscout-connect-{uuid.uuid4().hex[:12]}"
        self.group_size = group_size
        self.window = window
        #: paho's own in-flight limit (0: none; the window above bounds what is outstanding)
        self.inflight = inflight
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self._connected = False
        #: date of the newest sgv published on {prefix}/current during this run
        self._current_date: int | None = None
        #: source → the state last published on {prefix}/source/<source> (with discovery)
        self._source_states: dict[str, bytes] = {}

    @classmethod
    def from_settings(
        cls, settings: Any, astore: AsyncStore, *, clock: Clock = wall_ms, rng: random.Random | None = None
    ) -> MqttOutput:
        return cls(
            mqtt_target(settings.mqtt_url.get_secret_value()),
            astore,
            topic_prefix=settings.mqtt_topic_prefix,
            qos=settings.mqtt_qos,
            retain_current=settings.mqtt_retain_current,
            discovery=getattr(settings, "mqtt_discovery", False),
            discovery_prefix=getattr(settings, "mqtt_discovery_prefix", "homeassistant"),
            display_units=getattr(settings, "display_units", "mg/dl"),
            ca_file=settings.mqtt_ca_file,
            client_id=settings.mqtt_client_id,
            clock=clock,
            rng=rng,
        )

    def target(self) -> str:
        return self.broker.display()

    def status(self) -> dict[str, Any]:
        snapshot = super().status()
        snapshot["connected"] = self._connected
        return snapshot

    def event_topic(self, event: str) -> str:
        return f"{self.topic_prefix}/events/{topic_level(event)}"

    def topic(self, collection: Collection, doc: dict[str, Any]) -> str:
        return f"{self.topic_prefix}/{collection}/{topic_level(doc.get('device'))}"

    @property
    def current_topic(self) -> str:
        return f"{self.topic_prefix}/current"

    @property
    def status_topic(self) -> str:
        """``online`` (retained) while the output is connected, ``offline`` after a clean stop
        and, as the connection's last will, when the broker loses it."""
        return f"{self.topic_prefix}/status"

    @property
    def node(self) -> str:
        return "nightscout_connect_" + "".join(c if c.isalnum() else "_" for c in self.topic_prefix)

    def _device(self) -> dict[str, Any]:
        return {
            "identifiers": [self.node],
            "name": f"nightscout-connect ({self.topic_prefix})",
            "manufacturer": "nightscout-connect",
        }

    def _config(self, key: str, state_topic: str, config: dict[str, Any]) -> tuple[str, bytes, bool]:
        body = {
            **config,
            "unique_id": f"{self.node}_{key}",
            "object_id": f"{self.node}_{key}",
            "state_topic": state_topic,
            "availability_topic": self.status_topic,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": self._device(),
        }
        return (f"{self.discovery_prefix}/sensor/{self.node}_{key}/config", payload_of(body), True)

    def source_messages(self, sources: Sequence[dict[str, Any]]) -> list[tuple[str, bytes, bool]]:
        """Each source's state, retained on ``{prefix}/source/<source>`` when it changed, and
        the first time a source is seen, its discovery config."""
        messages = []
        for source in sources:
            state = source_state(source)
            level = topic_level(state["source"])
            payload = payload_of(state)
            if self._source_states.get(level) == payload:
                continue
            topic = f"{self.topic_prefix}/source/{level}"
            if level not in self._source_states:
                key = "source_" + "".join(c if c.isalnum() else "_" for c in level)
                config = {
                    "name": f"{state['source']} state",
                    "value_template": "{{ value_json.state }}",
                    "json_attributes_topic": topic,
                    "icon": "mdi:cloud-sync",
                }
                messages.append(self._config(key, topic, config))
            messages.append((topic, payload, True))
            self._source_states[level] = payload
        return messages

    def discovery_messages(self) -> list[tuple[str, bytes, bool]]:
        """Home Assistant's MQTT discovery: one retained config per sensor, all reading the
        retained ``current`` and going unavailable with the status topic."""
        mmol = self.display_units.lower().startswith("mmol")
        unit = "mmol/L" if mmol else "mg/dL"
        sensors: dict[str, dict[str, Any]] = {
            "glucose": {
                "name": "Glucose",
                "value_template": "{{ value_json.mmol }}" if mmol else "{{ value_json.sgv }}",
                "unit_of_measurement": unit,
                "device_class": "blood_glucose_concentration",
                "state_class": "measurement",
            },
            "delta": {
                "name": "Glucose delta",
                "value_template": "{{ (value_json.delta * 0.0555) | round(1) if value_json.delta is not none else none }}"
                if mmol
                else "{{ value_json.delta }}",
                "unit_of_measurement": unit,
                "state_class": "measurement",
            },
            "direction": {
                "name": "Glucose trend",
                "value_template": "{{ value_json.direction }}",
                "icon": "mdi:trending-up",
            },
            "reading_time": {
                "name": "Last reading",
                "value_template": "{{ value_json.dateString }}",
                "device_class": "timestamp",
            },
        }
        return [self._config(key, self.current_topic, config) for key, config in sensors.items()]

    # --- the connection ---------------------------------------------------------------------

    def _make_client(self, client_id: str, *, announce: bool = False) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
            # paho would otherwise reconnect synchronously inside loop_read on some CONNACKs
            reconnect_on_failure=False,
        )
        if self.broker.username is not None:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            # the process's one context for this CA file (None: the system's CAs)
            client.tls_set_context(mqtt_tls_context(self.ca_file))
        client.max_inflight_messages_set(self.inflight)
        client.max_queued_messages_set(0)
        if announce:
            client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        client.connect_timeout = self.connect_timeout
        return client

    async def probe(self) -> tuple[bool, str]:
        """Connect and log in, then disconnect: nothing is published (``check``)."""

        async def nothing(_link: _Link) -> None:
            return None

        try:
            await self._with_connection(nothing, client_id=f"{self.client_id}-check", restate_current=False)
        except OutputAuthError:
            return False, "refused the login"
        except ConnectError as exc:
            text = (
                str(exc)
                .replace(f"MQTT broker {self.target()} ", "")
                .replace(f"MQTT connection to {self.target()}", "connection")
            )
            return False, redact_text(text)
        return True, "ok, logged in" if self.broker.username is not None else "ok, connected"

    async def _with_connection(
        self,
        body: Callable[[_Link], Awaitable[None]],
        *,
        client_id: str | None = None,
        restate_current: bool = True,
        farewell: bool = False,
    ) -> None:
        """Connect, run ``body`` while the connection lives, disconnect; raise what ended it.

        ``farewell``: a clean end publishes ``offline`` on the status topic (the daemon's
        connection; a ``once`` pass leaves ``online`` standing between cron runs)."""
        broker = self.broker
        try:
            # inside the try: a CA bundle removed or damaged since start fails here, as a
            # connection failure, not as a crash of the daemon
            client = self._make_client(client_id or self.client_id, announce=restate_current)
            # a blocking TCP connect and TLS handshake; paho sends CONNECT before returning
            await trio.to_thread.run_sync(
                lambda: client.connect(broker.host, broker.port, keepalive=self.keepalive),
                abandon_on_cancel=True,
            )
        except ssl.SSLCertVerificationError as exc:
            raise TransientError(
                f"MQTT broker {self.target()}: TLS certificate not trusted ({exc.reason})"
            ) from None
        except ssl.SSLError as exc:
            raise TransientError(f"MQTT broker {self.target()}: TLS failed ({type(exc).__name__})") from None
        except (OSError, ValueError) as exc:
            raise TransientError(f"MQTT broker {self.target()} unreachable ({type(exc).__name__})") from None
        link = _Link(client, qos=self.qos, display=self.target())
        if farewell:
            link.farewell = (self.status_topic, b"offline")
        try:
            async with trio.open_nursery() as nursery:
                link.scope = nursery.cancel_scope
                nursery.start_soon(link.reader)
                nursery.start_soon(link.writer)
                nursery.start_soon(link.keepalive, max(1.0, self.keepalive / 4))
                nursery.start_soon(link.guard, lambda lk: self._session(lk, body, restate_current))
        finally:
            self._connected = False
            link.close()
        if link.error is not None:
            raise link.error

    async def _session(
        self, link: _Link, body: Callable[[_Link], Awaitable[None]], restate_current: bool = True
    ) -> None:
        with trio.move_on_after(self.connect_timeout) as scope:
            await link.connected.wait()
        if scope.cancelled_caught:
            raise TransientError(f"MQTT broker {self.target()} sent no CONNACK in {self.connect_timeout:g} s")
        log.info("mqtt connected", output=self.name, broker=self.target())
        if restate_current:
            self._source_states = {}  # restated on this connection's first pass
            announced = [(self.status_topic, b"online", True)]
            if self.discovery:
                announced.extend(self.discovery_messages())
            await link.acknowledged(link.publish(announced), within=self.ack_timeout)
        if self.retain_current and restate_current:
            await self._republish_current(link)
        # connected in status: ready to deliver, the retained current restated
        self._connected = True
        await body(link)

    # --- delivery ---------------------------------------------------------------------------

    async def _serve(self) -> None:
        await self._with_connection(self._serve_link, farewell=True)

    async def _serve_link(self, link: _Link) -> None:
        while True:
            async with self._lock:
                await self._deliver_over(link)
            await self._idle()

    async def _deliver_once(self) -> None:
        async def one_pass(link: _Link) -> None:
            async with self._lock:
                await self._deliver_over(link)
            self.machine.send("drained")

        # a client id of its own: sharing run()'s would make the broker drop one of the two
        await self._with_connection(one_pass, client_id=f"{self.client_id}-once")

    async def _deliver_over(self, link: _Link) -> None:
        """Everything past the cursor, pipelined: up to ``window`` groups in flight at once.

        Groups are acknowledged in order and the cursor follows the acknowledged prefix, so a
        connection lost midway re-publishes at most the groups that were in flight. Keeping the
        pipe full matters: a burst that drains completely waits on the broker's last PUBACKs
        (small segments, Nagle) once per burst.
        """
        for stream in self.streams:
            after = int(await self.astore.cursor(self.name, stream))
            in_flight: deque[tuple[Sequence[Sequenced], AckGroup]] = deque()
            exhausted = False
            while True:
                while not exhausted and len(in_flight) < self.window:
                    group, messages = await self._group_after(stream, after)
                    if not group:
                        exhausted = True
                        break
                    in_flight.append((group, link.publish(messages)))
                    after = group[-1].seq
                if not in_flight:
                    break
                group, acks = in_flight.popleft()
                self._sending()  # the broker's PUBACKs for this group are what is awaited
                await link.acknowledged(acks, within=self.ack_timeout)
                if exhausted or stream == EVENTS:
                    await self._accepted(stream, group)
                    continue
                # the cursor moved and the next group read in one trip to the store's thread
                following = await self.astore.call(
                    advance_and_read, self.astore.store, self.name, stream, group[-1].seq, after,
                    self.group_size,
                )  # fmt: skip
                await self._accepted(stream, group, advanced=True)
                if not following:
                    exhausted = True
                    continue
                in_flight.append((following, link.publish(await self._messages(stream, following))))
                after = following[-1].seq
        if self.discovery:
            sources = await self.astore.call(saved_sources, self.astore.store)
            states = self.source_messages(sources)
            if states:
                await link.acknowledged(link.publish(states), within=self.ack_timeout)

    async def _group_after(
        self, stream: Stream, after: int
    ) -> tuple[Sequence[Sequenced], list[tuple[str, bytes, bool]]]:
        """The next group past ``after`` and its messages: records on their collection's topics,
        events (their body as webhooks get it) on ``{prefix}/events/{event}``."""
        if stream == EVENTS:
            events = await self.astore.events_after(after, limit=self.group_size)
            return events, [(self.event_topic(e.event), e.text.encode("utf-8"), False) for e in events]
        group = await self._records_after(stream, after, self.group_size)
        return group, await self._messages(stream, group)

    async def _messages(
        self, collection: Collection, group: Sequence[Stored]
    ) -> list[tuple[str, bytes, bool]]:
        """A group's messages: each record's stored JSON on its device's topic, and the new
        ``current`` when the group holds a newer sgv."""
        prefix = f"{self.topic_prefix}/{collection}/"
        messages = [(prefix + topic_level(r.device), r.text.encode("utf-8"), False) for r in group]
        candidate = self._newer_current(collection, group)
        if candidate is not None:
            current: dict[str, Any] | None = await self.astore.call(
                current_view, self.astore.store, candidate, only_newest=True
            )
            if current is not None:
                messages.append((self.current_topic, payload_of(current), True))
                # one connection delivers in order: later groups compare against this one
                self._current_date = int(candidate["date"])
        return messages

    async def _records_after(self, collection: Collection, after: int, limit: int) -> list[Stored]:
        rows: list[Stored] = await self.astore.call(
            records_after, self.astore.store, collection, after, limit
        )
        return rows

    def _newer_current(self, collection: Collection, group: Sequence[Stored]) -> dict[str, Any] | None:
        """The group's newest sgv when it is newer than what {prefix}/current holds."""
        if not self.retain_current or collection != "entries":
            return None
        sgvs = [r for r in group if r.kind == "sgv" and r.date is not None]
        if not sgvs:
            return None
        newest = max(sgvs, key=lambda r: int(r.date or 0))
        if self._current_date is not None and int(newest.date or 0) <= self._current_date:
            return None
        doc = newest.doc()
        return doc if isinstance(doc.get("date"), int) else None

    async def _republish_current(self, link: _Link) -> None:
        """Retained messages do not survive every broker restart: restate the newest one."""
        doc: dict[str, Any] | None = await self.astore.call(
            _newest_delivered_sgv, self.astore.store, self.name
        )
        self._current_date = None if doc is None else int(doc["date"])
        if doc is not None:
            view = await self.astore.call(current_view, self.astore.store, doc, only_newest=False)
            acks = link.publish([(self.current_topic, payload_of(view or doc), True)])
            await link.acknowledged(acks, within=self.ack_timeout)
