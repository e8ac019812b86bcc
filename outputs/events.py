"""Outputs of the events outbox: webhooks (HTTP POST, signed) and notifications (Apprise).

They are delivered like the collections: each output keeps a cursor on the events' ``seq`` and
moves it only when the far side took the event, executing its Delivery machine (backoff on
passing trouble, a pause on refused credentials or a wrong address, a refused event set aside).
One event per request, in ``seq`` order, so a receiver sees each account's events in order; a
resend after a lost answer carries the same ``id`` (and ``X-Connect-Delivery``), so a receiver
can drop what it has seen. Events an output does not want (its event list, its JMESPath filter)
are passed over: the cursor moves past them without a request.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import httpx
import structlog
import trio

from connect.clock import wall_ms
from connect.errors import ConfigError, OutputAuthError, RateLimited, RequestRejected, TransientError
from connect.httpkit import INSTANCE_ID, LOOP_HEADER, retry_after_seconds, send
from connect.records import EVENTS, Stream
from connect.redact import describe_error, register_secret
from machines.delivery import DeliveryPolicy
from outputs.alert_settings import HookSpec
from outputs.delivery import Clock, Output
from outputs.messages import alert_text

if TYPE_CHECKING:
    from store.aio import AsyncStore

log = structlog.get_logger("outputs.events")

#: events read per query
WINDOW: Final = 200
SIGNATURE_HEADER: Final = "x-connect-signature"


class EventRow(Protocol):
    """An event read from the outbox (``store.events.EventRow``): its ``seq`` for the cursor,
    its ``id``, its name, and its body exactly as it is sent."""

    @property
    def seq(self) -> int: ...
    @property
    def id(self) -> str: ...
    @property
    def event(self) -> str: ...
    @property
    def text(self) -> str: ...
    def body(self) -> dict[str, Any]: ...


class EventRefused(RequestRejected):
    """The receiver refused an event for good (a 4xx other than auth, 404/405, 408, 425, 429)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def truthy(value: Any) -> bool:
    """JMESPath's truth: false, null, and empty strings, lists and objects are false (0 is true)."""
    if value is None or value is False:
        return False
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    return True


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the raw body>``, the ``X-Connect-Signature`` value."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class EventOutput(Output):
    """Delivers the events outbox one event at a time; subclasses say how one is sent."""

    streams: tuple[Stream, ...] = (EVENTS,)

    def __init__(
        self,
        name: str,
        astore: AsyncStore,
        *,
        events: frozenset[str] | None = None,
        expression: str | None = None,
        clock: Clock = wall_ms,
        rng: random.Random | None = None,
        policy: DeliveryPolicy | None = None,
    ) -> None:
        super().__init__(name, astore, clock=clock, rng=rng, policy=policy, chunk_size=1)
        self.events = events
        self.expression = expression
        self._compiled: Any = None
        if expression:
            import jmespath

            self._compiled = jmespath.compile(expression)

    def selects(self, row: EventRow) -> bool:
        """This output wants ``row``: its event is listed, and the filter holds for its body."""
        if self.events is not None and row.event not in self.events:
            return False
        if self._compiled is None:
            return True
        return truthy(self._compiled.search(row.body()))

    async def _send(self, row: EventRow) -> None:  # pragma: no cover - every output has its own
        raise NotImplementedError

    # --- delivery ---------------------------------------------------------------------------

    async def _deliver_pending(self) -> None:
        while True:
            after = int(await self.astore.cursor(self.name, EVENTS))
            rows = await self.astore.events_after(after, limit=WINDOW)
            if not rows:
                return
            passed_over: int | None = None
            for row in rows:
                if not self.selects(row):
                    passed_over = row.seq
                    continue
                if passed_over is not None:
                    await self.astore.advance(self.name, EVENTS, passed_over)
                    passed_over = None
                self._sending()
                try:
                    await self._send(row)
                except EventRefused as exc:
                    await self._refused(EVENTS, [row], exc.status, describe_error(exc) or "refused")
                    continue
                await self._accepted(EVENTS, [row])
            if passed_over is not None:
                await self.astore.advance(self.name, EVENTS, passed_over)


def display_url(url: str) -> str:
    """A URL for status and logs: no credentials, no query (tokens ride there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class WebhookOutput(EventOutput):
    """POSTs each event's body to a URL, signed with HMAC-SHA256 when the hook has a secret."""

    def __init__(
        self,
        hook: HookSpec,
        astore: AsyncStore,
        client: httpx.AsyncClient,
        *,
        clock: Clock = wall_ms,
        rng: random.Random | None = None,
        policy: DeliveryPolicy | None = None,
    ) -> None:
        super().__init__(
            hook.name, astore, events=hook.events, expression=hook.filter, clock=clock, rng=rng, policy=policy
        )
        self.hook = hook
        self.client = client
        parts = urlsplit(hook.url)
        # the secret, a password in the URL and the values of its query are never logged
        register_secret(hook.secret, unquote(parts.password) if parts.password else None)
        register_secret(*(v for _, v in parse_qsl(parts.query) if len(v) >= 8))
        self._display = display_url(hook.url)

    def target(self) -> str:
        return self._display

    def status(self) -> dict[str, Any]:
        snapshot = super().status()
        snapshot["kind"] = "webhook"
        snapshot["events"] = "all" if self.events is None else sorted(self.events)
        snapshot["filter"] = self.expression
        return snapshot

    async def _send(self, row: EventRow) -> None:
        body = row.text.encode("utf-8")
        headers = {
            "content-type": "application/json",
            "x-connect-event": row.event,
            "x-connect-delivery": row.id,
            LOOP_HEADER: INSTANCE_ID,
        }
        if self.hook.secret:
            headers[SIGNATURE_HEADER] = signature(self.hook.secret, body)
        what = f"POST {self._display}"
        request = self.client.build_request(
            "POST", self.hook.url, content=body, headers=headers, timeout=self.hook.timeout
        )
        try:
            response = await send(self.client, request, what=what)
        except TransientError as exc:
            await self._log(row, describe_error(exc) or "failed", None)
            raise
        status = response.status_code
        if 200 <= status < 300:
            await self._log(row, "delivered", status)
            return
        error: Exception
        if status in (401, 403):
            error = OutputAuthError(f"{what}: HTTP {status} (check the receiver's credentials)")
        elif status in (404, 405, 410) or 300 <= status < 400:
            error = ConfigError(f"{what}: HTTP {status} (is the webhook URL right?)")
        elif status == 429:
            error = RateLimited(f"{what}: HTTP 429", retry_after=retry_after_seconds(response))
        elif status in (408, 425) or status >= 500:
            error = TransientError(f"{what}: HTTP {status}", retry_after=retry_after_seconds(response))
        else:
            error = EventRefused(f"{what}: HTTP {status}", status=status)
        outcome = "refused, set aside" if isinstance(error, EventRefused) else describe_error(error)
        await self._log(row, outcome or f"HTTP {status}", status)
        raise error

    async def _log(self, row: EventRow, outcome: str, status: int | None) -> None:
        await self.astore.log_delivery(
            self.name, row.id, row.seq, row.event, row.text, outcome=outcome, status=status, at=self.clock()
        )


class NotifyOutput(EventOutput):
    """Tells people about alerts through one Apprise URL (ntfy, Pushover, Telegram, mailto, …)."""

    def __init__(
        self,
        url: str,
        name: str,
        astore: AsyncStore,
        *,
        events: frozenset[str] = frozenset({"alert:raised"}),
        units: str | None = None,
        clock: Clock = wall_ms,
        rng: random.Random | None = None,
        policy: DeliveryPolicy | None = None,
    ) -> None:
        super().__init__(name, astore, events=events, clock=clock, rng=rng, policy=policy)
        self.url = url
        self.units = units
        parts = urlsplit(url)
        register_secret(url, unquote(parts.password) if parts.password else None)
        self._display = f"{parts.scheme}://…"

    def target(self) -> str:
        return self._display

    def status(self) -> dict[str, Any]:
        snapshot = super().status()
        snapshot["kind"] = "notify"
        return snapshot

    async def _send(self, row: EventRow) -> None:
        title, message = alert_text(row.body(), now=self.clock(), units=self.units)
        urgent = bool((row.body().get("data") or {}).get("level") == "urgent")
        cleared = row.event == "alert:cleared"
        sent = await trio.to_thread.run_sync(
            self._notify, title, message, urgent, cleared, abandon_on_cancel=True
        )
        if not sent:
            raise TransientError(f"{self._display} did not take the notification")

    def _notify(self, title: str, message: str, urgent: bool, cleared: bool) -> bool:
        import apprise

        kind = (
            apprise.NotifyType.SUCCESS
            if cleared
            else (apprise.NotifyType.FAILURE if urgent else apprise.NotifyType.WARNING)
        )
        sender = apprise.Apprise()
        if not sender.add(self.url):
            raise ConfigError(f"{self._display}: not an Apprise URL")
        return bool(sender.notify(title=title, body=message, notify_type=kind))


def notify_names(urls: list[str]) -> list[str]:
    """Stable output names for notification URLs: ``notify:<scheme>``, numbered when repeated."""
    names: list[str] = []
    for url in urls:
        scheme = url.split("://", 1)[0].lower() or "url"
        name = f"notify:{scheme}"
        n = 2
        while name in names:
            name = f"notify:{scheme}-{n}"
            n += 1
        names.append(name)
    return names


__all__ = [
    "EventOutput",
    "EventRefused",
    "NotifyOutput",
    "WebhookOutput",
    "notify_names",
    "signature",
    "truthy",
]
