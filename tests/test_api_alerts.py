"""``/api/connect/episodes`` and ``/api/connect/webhooks`` over a store the alert rules and a
webhook wrote, the delivery lag of event outputs, and the loop guard (508 for our own hooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from connect.alerting import AlertConfig, evaluate
from connect.httpkit import INSTANCE_ID, LOOP_HEADER
from store import Store
from store.events import EventRow
from tests.test_api_support import SECRET, ApiClient, make_app, now_ms, populate, snapshot

AUTH = {"api-secret": __import__("hashlib").sha1(SECRET.encode()).hexdigest()}


def judged_store(path: Path) -> tuple[int, Store]:
    now = now_ms()
    populate(path, end_ms=now - 60_000, count=300)
    store = Store(path)
    evaluate(store, AlertConfig(key="test", label="test"), now)
    return now, store


def test_episodes_of_the_last_day_and_of_a_range(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    now, store = judged_store(path)
    rows = store.conn.execute("SELECT kind, start_at, end_at FROM episodes ORDER BY start_at, id").fetchall()
    store.close()
    app, reader = make_app(path, clock=lambda: now)
    with ApiClient(app) as c:
        assert c.get("/api/connect/episodes").status_code == 401
        body = c.get("/api/connect/episodes", headers=AUTH).json()
        assert body["until"] == now and body["since"] == now - 86_400_000
        got = [(e["kind"], e["start"], e["end"]) for e in body["episodes"]]
        expected = [r for r in rows if r[1] <= now and (r[2] is None or r[2] >= now - 86_400_000)]
        assert got == expected
        assert {"low", "high", "normal"} <= {e["kind"] for e in body["episodes"]}
        assert got[-1][2] is None  # the one under way
        assert all(e["account"] == "test" and e["readings"] >= 0 for e in body["episodes"])
        one = body["episodes"][1]
        narrow = c.get(
            f"/api/connect/episodes?since={one['start']}&until={one['start']}", headers=AUTH
        ).json()
        assert (one["kind"], one["start"]) in {(e["kind"], e["start"]) for e in narrow["episodes"]}
        assert c.get("/api/connect/episodes?account=nobody", headers=AUTH).json()["episodes"] == []
        assert c.get("/api/connect/episodes?since=10&until=5", headers=AUTH).status_code == 400
        assert c.get("/api/connect/episodes?since=soon", headers=AUTH).status_code == 400
    reader.close()


def test_webhooks_show_state_and_the_last_payloads(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    populate(path, count=10)
    store = Store(path)
    for i in range(60):
        row = EventRow(seq=i + 1, id=f"id-{i}", event="glucose:new", account="a", time=i, text=f'{{"n":{i}}}')
        store.log_delivery(
            "webhook", row.id, row.seq, row.event, row.text, outcome="delivered", status=200, at=i
        )
    store.log_delivery(
        "webhook", "id-59", 60, "glucose:new", '{"n":59}', outcome="HTTP 503", status=503, at=99
    )
    store.close()
    status = snapshot()
    status["outputs"].append(
        {"name": "webhook", "kind": "webhook", "target": "https://hooks.example/in", "state": "backoff",
         "events": "all", "filter": None, "lag": 3, "delivered": 59, "last_error": "HTTP 503"}
    )  # fmt: skip
    app, reader = make_app(path, status=lambda: status)
    with ApiClient(app) as c:
        assert c.get("/api/connect/webhooks").status_code == 401
        (hook,) = c.get("/api/connect/webhooks", headers=AUTH).json()["webhooks"]
    reader.close()
    assert (
        hook["name"] == "webhook"
        and hook["state"] == "backoff"
        and hook["target"] == "https://hooks.example/in"
    )
    recent = hook["recent"]
    assert len(recent) == 50 and recent[0]["id"] == "id-59" and recent[-1]["id"] == "id-10"
    assert recent[0] | {"payload": None} == {
        "id": "id-59", "seq": 60, "event": "glucose:new", "attempts": 2, "status": 503,
        "outcome": "HTTP 503", "at": 99, "payload": None,
    }  # fmt: skip
    assert recent[0]["payload"] == {"n": 59}


def test_an_event_outputs_lag_counts_events_only(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _, store = judged_store(path)
    events = store.conn.execute("SELECT count(*) FROM events").fetchone()[0]
    store.ensure_cursors("webhook", ["events"])
    store.ensure_cursors("mqtt", ["entries", "treatments", "devicestatus", "profile", "events"])
    store.close()
    app, reader = make_app(path)
    with ApiClient(app) as c:
        delivery: dict[str, Any] = c.get("/api/connect/status", headers=AUTH).json()["store"]["delivery"]
    reader.close()
    webhook = delivery["webhook"]
    assert (webhook["lag"], webhook["collections"], webhook.get("rejected", 0)) == (events, {"events": events}, 0)
    assert delivery["mqtt"]["collections"]["events"] == events
    assert set(delivery["nightscout"]["collections"]) == {"entries", "treatments", "devicestatus", "profile"}


def test_a_request_from_our_own_webhook_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    populate(path, count=5)
    app, reader = make_app(path)
    with ApiClient(app) as c:
        looped = c.post("/api/v1/entries", headers={**AUTH, LOOP_HEADER: INSTANCE_ID}, content=b"{}")
        assert looped.status_code == 508 and looped.json()["message"] == "Loop Detected"
        assert c.get("/healthz", headers={LOOP_HEADER: "another-daemon"}).status_code == 200
    reader.close()
