"""Notifications for people through Apprise: to a real local SMTP server (aiosmtpd) and to a
local JSON receiver (``json://``); a receiver that is down is retried, nothing is lost."""

from __future__ import annotations

import email
import json
import socket
import time
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import trio
from aiosmtpd.controller import Controller

from connect.alerting import AlertConfig, evaluate
from connect.records import Batch, Entry
from machines.alerts import MIN_MS
from machines.delivery import DeliveryPolicy
from machines.timing import Backoff
from outputs.events import NotifyOutput, notify_names
from outputs.messages import alert_text
from store import AsyncStore, Store
from tests.emulators.serve import serve_in_thread

FAST = DeliveryPolicy(transient=Backoff(base=0.05, cap=0.2, jitter=0.0))
NOW = 1_750_000_000_000


def ticking() -> Any:
    """Epoch ms from NOW on, moving with the real clock (backoff waits need time to pass)."""
    start = time.monotonic()
    return lambda: NOW + int((time.monotonic() - start) * 1000)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mailbox:
    """aiosmtpd handler: keeps every message it is handed."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


def store_with_a_low(path: Path, clock_ms: int) -> Store:
    """A low that begins and ends: one alert:raised and one alert:cleared in the outbox."""
    store = Store(path)
    for i, sgv in enumerate([120, 68, 64, 95]):
        date = clock_ms - (4 - i) * 5 * MIN_MS
        store.persist_frame(
            "sim",
            "Loop",
            Batch.of([Entry(type="sgv", date=date, device="cgm", sgv=sgv, direction="FortyFiveUp")]),
        )
        evaluate(store, AlertConfig(key="sim", label="alice"), date + 1000)
    return store


async def drain(out: NotifyOutput, store: Store) -> None:
    last = store.conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(out.run)
            while store.cursor(out.name, "events") < last or out.state != "idle":
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


async def test_an_alert_by_email_through_a_real_smtp_server(tmp_path: Path) -> None:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        store = store_with_a_low(tmp_path / "s.db", NOW)
        url = f"mailto://127.0.0.1:{port}?mode=insecure&from=cgm@example.org&to=carer@example.org"
        out = NotifyOutput(url, "notify:mailto", AsyncStore(store), clock=ticking(), policy=FAST)
        await drain(out, store)
    finally:
        controller.stop()
    assert len(mailbox.messages) == 1  # the raise; clears are not asked for by default
    message = mailbox.messages[0]
    assert message["To"] and "carer@example.org" in message["To"]
    assert "Low (alice)" in str(email.header.make_header(email.header.decode_header(message["Subject"])))
    payload = (
        message.get_payload(decode=True)
        if not message.is_multipart()
        else message.get_payload()[0].get_payload(decode=True)
    )
    text = payload.decode("utf-8")
    assert "Low 68 mg/dL ↗ at " in text and "min ago" in text


async def test_alerts_to_a_json_receiver_that_is_down_at_first(tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []
    calls = {"n": 0}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            message = await receive()
            await send({"type": f"{message['type']}.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        calls["n"] += 1
        status = 500 if calls["n"] == 1 else 200  # down for the first attempt
        if status == 200:
            received.append(json.loads(body))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    store = store_with_a_low(tmp_path / "s.db", NOW)
    with serve_in_thread(app) as base:
        host_port = base.split("://", 1)[1]
        out = NotifyOutput(
            f"json://{host_port}/alerts",
            "notify:json",
            AsyncStore(store),
            events=frozenset({"alert:raised", "alert:cleared"}),
            clock=ticking(),
            policy=FAST,
        )
        await drain(out, store)
    assert calls["n"] == 3  # the raise failed once, then the raise and the clear
    assert [r["title"] for r in received] == ["Low (alice)", "Low over (alice)"]
    assert received[0]["type"] == "warning" and received[1]["type"] == "success"
    assert received[0]["message"].startswith("Low 68 mg/dL ↗ at ")
    assert received[1]["message"].startswith("Low over 95 mg/dL ↗ at ")
    assert out.status()["target"] == "json://…"


def test_messages_in_the_sites_units_and_for_stale_data() -> None:
    low = {
        "event": "alert:raised",
        "account": "",
        "data": {"kind": "urgent_low", "sgv": 52, "date": NOW - 5 * MIN_MS, "direction": "SingleDown"},
    }
    title, text = alert_text(low, now=NOW, units="mmol")
    assert (
        title == "Urgent low"
        and text.startswith("Urgent low 2.9 mmol/L ↓ at ")
        and text.endswith(", 5 min ago")
    )
    stale = {
        "event": "alert:raised",
        "data": {
            "kind": "stale",
            "sgv": 120,
            "date": NOW - 16 * MIN_MS,
            "direction": "Flat",
            "threshold": 15.0,
        },
    }
    title, text = alert_text(stale, now=NOW, units=None)
    assert title == "No reading for 15 min" and text.startswith("No reading for 15 min: last 120 mg/dL → at ")
    assert notify_names(["ntfy://a", "json://b", "ntfy://c"]) == [
        "notify:ntfy",
        "notify:json",
        "notify:ntfy-2",
    ]


@pytest.mark.parametrize("secret", ["pa55word-in-url"])
async def test_the_url_is_never_shown(tmp_path: Path, secret: str) -> None:
    from connect.redact import redact_text

    store = Store(tmp_path / "s.db")
    out = NotifyOutput(f"mailtos://user:{secret}@mail.example.org", "notify:mailtos", AsyncStore(store))
    assert secret not in json.dumps(out.status())
    assert secret not in redact_text(f"failed for mailtos://user:{secret}@mail.example.org")
