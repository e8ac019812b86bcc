"""The MQTT subscribe source: Nightscout documents (or any JSON mapped by JMESPath) arriving on
broker topics, written to the store like polled frames.

paho is driven from trio exactly as the MQTT output drives it (its external-loop ``_Link``).
The session is persistent (``clean_session=False``, a fixed client id) and subscribed with QoS 1;
messages are acknowledged by hand only after the transaction holding them has committed, so a
broker or daemon that goes away between the two sends them again (the store dedupes). The
:class:`~machines.subscription.SubscriptionMachine` decides the waits between connections.
A message that cannot be read or mapped is set aside in ``rejected`` (output ``mqtt-source``)
with its topic and reason, counted, and acknowledged: it never stops the subscription.
"""

from __future__ import annotations

import hashlib
import random
import ssl
from typing import Any, Final

import jmespath
import paho.mqtt.client as mqtt
import pydantic
import structlog
import trio
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import Field, SecretStr

from connect.clock import jitter_rng, wall_ms
from connect.errors import ConnectError, OutputAuthError, StoreError, TransientError
from connect.fields import ConnectSettings
from connect.httpkit import mqtt_tls_context
from connect.pushed import DocumentError, documents, parse_json, read_document
from connect.records import Collection
from connect.redact import redact_text
from machines.subscription import SubscriptionMachine
from outputs.mqtt import _Link
from outputs.settings import MqttTarget, mqtt_target
from store import AsyncStore
from store.values import PushKey

log = structlog.get_logger("connect.subscriber")

#: the name its set-aside messages carry in ``rejected``
REJECTED_AS: Final = "mqtt-source"
#: messages stored in one transaction at most
BATCH: Final = 500


class PushSettings(ConnectSettings):
    """The MQTT subscribe source (``CONNECT_MQTT_SOURCE_*``); set the URL to enable it."""

    mqtt_source_url: SecretStr | None = Field(
        default=None, description="MQTT broker to subscribe to, mqtt://user:pass@host:1883 or mqtts://…"
    )
    mqtt_source_topics: str = Field(
        default="nightscout/#", description="comma-separated topic filters to subscribe to (QoS 1)"
    )
    mqtt_source_format: str = Field(
        default="nightscout",
        description="nightscout (a document or an array per message) or jmespath:<expression>",
    )
    mqtt_source_client_id: str = Field(
        default="nightscout-connect-source", description="client id of the persistent session"
    )

    @pydantic.field_validator("mqtt_source_url")
    @classmethod
    def _url_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        mqtt_target(value.get_secret_value())
        return value

    @pydantic.field_validator("mqtt_source_format")
    @classmethod
    def _format_shape(cls, value: str) -> str:
        value = value.strip()
        if value == "nightscout":
            return value
        if value.startswith("jmespath:"):
            try:
                jmespath.compile(value.removeprefix("jmespath:"))
            except jmespath.exceptions.JMESPathError:
                raise ValueError("the JMESPath expression does not parse") from None
            return value
        raise ValueError("nightscout or jmespath:<expression>")

    @pydantic.field_validator("mqtt_source_topics")
    @classmethod
    def _topics_shape(cls, value: str) -> str:
        filters = [t.strip() for t in value.split(",") if t.strip()]
        if not filters:
            raise ValueError("name at least one topic filter")
        for topic in filters:
            # paho refuses these only when subscribing, which would end the daemon's subscription
            levels = topic.split("/")
            misplaced = any(
                ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+")
                for i, level in enumerate(levels)
            )
            if misplaced:
                raise ValueError(
                    "a topic filter has # or + inside a level (+ is one whole level, # the last)"
                )
            if "\x00" in topic or len(topic.encode("utf-8")) > 65535:
                raise ValueError("a topic filter holds a NUL character or is over 65535 bytes")
        return value


def _reason(problem: str, message: mqtt.MQTTMessage) -> str:
    """What is wrong, and which message it is (its payload's digest, never the payload: it may
    hold anything)."""
    digest = hashlib.sha256(bytes(message.payload)).hexdigest()[:16]
    return f"{problem} (payload sha256 {digest}, {len(message.payload)} bytes)"


def collection_of(doc: Any) -> Collection:
    """Which collection a Nightscout document belongs in, from its fields."""
    if isinstance(doc, dict):
        if "eventType" in doc:
            return "treatments"
        if "sgv" in doc or "mbg" in doc or doc.get("type") in {"sgv", "mbg", "cal"}:
            return "entries"
        if any(key in doc for key in ("pump", "uploader", "openaps", "loop", "xdripjs", "uploaderBattery")):
            return "devicestatus"
    return "entries"


class MqttSubscriber:
    """One subscription, kept open forever; its counts and machine state go into status."""

    name = "mqtt-source"

    def __init__(
        self,
        settings: PushSettings,
        astore: AsyncStore,
        *,
        written: Any = None,
        clock: Any = None,
        rng: random.Random | None = None,
    ) -> None:
        assert settings.mqtt_source_url is not None
        self.broker: MqttTarget = mqtt_target(settings.mqtt_source_url.get_secret_value())
        self.topics = [t.strip() for t in settings.mqtt_source_topics.split(",") if t.strip()]
        fmt = settings.mqtt_source_format
        self.expression = (
            jmespath.compile(fmt.removeprefix("jmespath:")) if fmt.startswith("jmespath:") else None
        )
        self.client_id = settings.mqtt_source_client_id
        self.astore = astore
        self.written = written
        self.clock = clock
        self.rng = rng or jitter_rng()
        self.machine = SubscriptionMachine()
        self.source = f"mqtt@{self.broker.display()}"
        self.received = 0
        #: messages the broker marked as sent again (DUP): ones it had sent before a connection
        #: ended without seeing our acknowledgement; the store keeps each record once anyway
        self.redelivered = 0
        self.stored = 0
        self.rejected = 0
        self._queue: list[mqtt.MQTTMessage] = []
        self._arrived = trio.Event()

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "broker": self.broker.display(),
            "topics": self.topics,
            "state": self.machine.current_state_value,
            "received": self.received,
            "redelivered": self.redelivered,
            "stored": self.stored,
            "rejected": self.rejected,
            "failures": self.machine.failures,
            "last_error": self.machine.last_error,
        }

    # --- the connection loop ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                try:
                    await self._connection()
                    error = "connection ended"
                except ConnectError as exc:
                    error = str(exc)
                self.machine.send("lost", error=error)
                wait = self.machine.wait_s(self.rng.random())
                log.warning(
                    "mqtt source disconnected", broker=self.broker.display(), error=error, retry_in=wait
                )
                await trio.sleep(wait)
                self.machine.send("retry")
        finally:
            self.machine.halt()

    def _make_client(self, client_id: str | None = None) -> mqtt.Client:
        """The subscription's client; with another ``client_id`` (``check``), a clean session
        of its own, which leaves the daemon's persistent session and its queue alone."""
        persistent = client_id is None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id if persistent else client_id,
            clean_session=not persistent,  # a persistent session: the broker keeps QoS 1 messages for us
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        client.manual_ack_set(True)  # acknowledged once stored
        if self.broker.username is not None:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            client.tls_set_context(mqtt_tls_context())  # the process's one, with the system's CAs
        client.max_queued_messages_set(0)
        return client

    async def _open(self, client_id: str | None = None) -> mqtt.Client:
        """A client whose CONNECT is sent (a blocking TCP connect and TLS handshake, in a thread)."""
        broker = self.broker
        try:
            client = self._make_client(client_id)
            await trio.to_thread.run_sync(
                lambda: client.connect(broker.host, broker.port, keepalive=30), abandon_on_cancel=True
            )
        except ssl.SSLCertVerificationError as exc:
            raise TransientError(
                f"MQTT broker {broker.display()}: TLS certificate not trusted ({exc.reason})"
            ) from None
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise TransientError(
                f"MQTT broker {broker.display()} unreachable ({type(exc).__name__})"
            ) from None
        return client

    async def _subscribe(self, link: _Link, *, steer: bool) -> None:
        """Wait for the CONNACK, subscribe to every topic filter and wait for the SUBACK; a
        filter the broker refuses is an error naming it. ``steer``: tell the machine (the
        daemon's own connection; ``check`` leaves it alone)."""
        client, display = link.client, self.broker.display()
        subscribed = trio.Event()
        granted: list[Any] = []

        def on_subscribe(_c: Any, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
            granted.extend(reasons)
            subscribed.set()

        client.on_subscribe = on_subscribe
        with trio.move_on_after(15) as scope:
            await link.connected.wait()
        if scope.cancelled_caught:
            raise TransientError(f"MQTT broker {display} sent no CONNACK")
        if steer:
            self.machine.send("connected")
        client.subscribe([(topic, 1) for topic in self.topics])
        link.write_wanted.set()
        with trio.move_on_after(15) as scope:
            await subscribed.wait()
        if scope.cancelled_caught:
            raise TransientError(f"MQTT broker {display} did not answer the subscription")
        refused = [t for t, r in zip(self.topics, granted, strict=False) if getattr(r, "is_failure", False)]
        if refused:
            raise TransientError(f"MQTT broker {display} refused the subscription to {', '.join(refused)}")
        if steer:
            self.machine.send("subscribed")

    async def probe(self) -> tuple[bool, str]:
        """Connect, log in and subscribe to every topic filter, then disconnect, under a client id
        of its own (``check``): nothing is received into the store, the daemon's session is left
        as it is. Whether it worked, and what ``check`` prints after the broker's address."""
        broker = self.broker

        async def subscribe_only(link: _Link) -> None:
            await self._subscribe(link, steer=False)

        try:
            client = await self._open(f"{self.client_id}-check")
            link = _Link(client, qos=1, display=broker.display())
            try:
                async with trio.open_nursery() as nursery:
                    link.scope = nursery.cancel_scope
                    nursery.start_soon(link.reader)
                    nursery.start_soon(link.writer)
                    nursery.start_soon(link.guard, subscribe_only)
            finally:
                link.close()
            if link.error is not None:
                raise link.error
        except OutputAuthError:
            return False, "refused the login"
        except ConnectError as exc:
            # what went wrong and of which kind (unreachable (ConnectionRefusedError), refused
            # the subscription to …), as the outputs' lines say it, and never a credential
            text = (
                str(exc)
                .replace(f"MQTT broker {broker.display()} ", "")
                .replace(f"MQTT broker {broker.display()}: ", "")
                .replace(f"MQTT connection to {broker.display()}", "connection")
            )
            return False, redact_text(text)
        topics = ", ".join(self.topics)
        return True, f"ok, {'logged in and ' if broker.username is not None else ''}subscribed to {topics}"

    async def _connection(self) -> None:
        broker = self.broker
        client = await self._open()
        link = _Link(client, qos=1, display=broker.display())

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            self.received += 1
            self.redelivered += int(bool(message.dup))
            self._queue.append(message)
            self._arrived.set()

        client.on_message = on_message

        async def session(lk: _Link) -> None:
            await self._subscribe(lk, steer=True)
            log.info("mqtt source listening", broker=broker.display(), topics=self.topics)
            while True:
                await self._arrived.wait()
                self._arrived = trio.Event()
                while self._queue:
                    batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                    await self._take(lk, batch)

        try:
            async with trio.open_nursery() as nursery:
                link.scope = nursery.cancel_scope
                nursery.start_soon(link.reader)
                nursery.start_soon(link.writer)
                nursery.start_soon(link.keepalive, 7.5)
                nursery.start_soon(link.guard, session)
        finally:
            # unacknowledged messages come again on the next connection (the session persists)
            self._queue = []
            link.close()
        if link.error is not None:
            raise link.error

    # --- messages -------------------------------------------------------------------------------

    def _read(self, message: mqtt.MQTTMessage, now: int) -> list[PushKey]:
        value = parse_json(bytes(message.payload))
        if self.expression is not None:
            value = self.expression.search(value)
            if value is None:
                raise DocumentError(-1, "(body)", "the JMESPath expression found nothing")
        docs = documents(value)
        keys = []
        for index, doc in enumerate(docs):
            pushed = read_document(collection_of(doc), doc, index, now=now)
            keys.append(PushKey(pushed.record))
        return keys

    async def _take(self, link: _Link, batch: list[mqtt.MQTTMessage]) -> None:
        now = self.clock() if self.clock is not None else wall_ms()
        keys: list[PushKey] = []
        refused: list[tuple[str, str]] = []
        for message in batch:
            try:
                keys.extend(self._read(message, now))
            except DocumentError as exc:
                refused.append(
                    (message.topic, _reason(str(exc).replace("document -1: (body): ", ""), message))
                )
            except (jmespath.exceptions.JMESPathError, ValueError, TypeError) as exc:
                refused.append((message.topic, _reason(f"cannot be mapped ({type(exc).__name__})", message)))
        try:
            if keys:
                result = await self.astore.persist_push(self.source, keys)
                self.stored += sum(result.written.values())
                if sum(result.written.values()) and self.written is not None:
                    self.written()
            for topic, reason in refused:
                # a message resent after a reconnect is kept and counted once
                if await self.astore.set_aside_message(REJECTED_AS, topic, reason):
                    self.rejected += 1
                    log.warning("mqtt message set aside", topic=topic, reason=reason)
        except StoreError as exc:
            # nothing acknowledged: the broker sends these again after the reconnect
            raise TransientError(f"store: {exc}") from None
        for message in batch:
            link.client.ack(message.mid, message.qos)
        link.write_wanted.set()
