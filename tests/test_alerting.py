"""The alerting task over a real store: what a pass writes (events, episodes, state), that it
is all-or-nothing and never repeats itself (restarts included), and that it wakes by itself at
the machine's deadline for stale data (MockClock: no polling, no waiting)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from connect.alerting import AlertConfig, Alerting, evaluate
from connect.clock import VirtualClock
from connect.records import Batch, Entry, Treatment
from machines.alerts import MIN_MS
from store import AsyncStore, Store
from store.abc import WriterStore
from store.database import SqliteAlertTransaction
from store.postgres import PostgresAlertTransaction
from tests.stores import MakeStore, query

NOW = 1_750_000_000_000
KEY = "sim:alice"
CONFIG = AlertConfig(key=KEY, label="alice")


def entry(minutes_ago: float, sgv: int, *, now: int = NOW, direction: str = "Flat") -> Entry:
    return Entry(type="sgv", date=now - int(minutes_ago * MIN_MS), device="cgm", sgv=sgv, direction=direction)


def persist(store: WriterStore, records: list[Any], source: str = KEY) -> None:
    store.persist_frame(source, "Loop", Batch.of(records))


def events(store: WriterStore) -> list[dict[str, Any]]:
    return [row.body() for row in store.events_after(0)]


def names(store: WriterStore) -> list[str]:
    return [e["event"] for e in events(store)]


def test_a_backfill_whose_newest_reading_is_low_raises_one_alert(make_store: MakeStore) -> None:
    store = make_store()
    # two hours of history full of lows and highs, then the newest reading, low
    history = [entry(130 - 5 * i, 60 if i % 6 < 3 else 250) for i in range(23)]  # the newest 20 min old
    persist(store, [*history, entry(1, 62, direction="FortyFiveDown")])
    result = evaluate(store, CONFIG, NOW)
    raised = [e for e in events(store) if e["event"] == "alert:raised"]
    assert [(e["data"]["kind"], e["data"]["sgv"]) for e in raised] == [("low", 62)]
    body = raised[0]
    assert body["account"] == "alice" and body["time"] == NOW
    assert body["data"] | {"message": "-"} == {
        "kind": "low", "level": "warning", "sgv": 62, "date": NOW - MIN_MS, "direction": "FortyFiveDown",
        "threshold": 80.0, "units": "mg/dL", "since": NOW, "repeat": 0, "message": "-",
    }  # fmt: skip
    assert body["data"]["message"].startswith("Low 62 mg/dL ↘ at ") and body["data"]["message"].endswith(
        ", 1 min ago"
    )
    # only the last hour's readings are announced as new (CONNECT_EVENTS_MAX_AGE_MINUTES)
    assert names(store).count("glucose:new") == sum(
        1 for e in [*history, entry(1, 62)] if NOW - e.date <= 60 * MIN_MS
    )
    assert names(store).count("episode:changed") == 1  # the current low episode; history is silent
    assert result.deadline == NOW - MIN_MS + 15 * MIN_MS
    # episodes record the whole history, the last one open
    rows = query(store, "SELECT kind, end_at FROM episodes ORDER BY id")
    assert rows[0][0] == "low" and rows[-1] == ("low", None)
    assert len(rows) >= 8
    # nothing new: a second pass, and a restart (state from the store), write nothing
    assert evaluate(store, CONFIG, NOW + 1000).events == 0
    store.close()
    again = make_store()
    assert evaluate(again, CONFIG, NOW + 2000).events == 0
    assert names(again).count("alert:raised") == 1


def test_ids_are_stable_and_the_body_is_the_stored_text(make_store: MakeStore) -> None:
    store = make_store()
    persist(
        store,
        [entry(2, 120), Treatment(event_type="Meal Bolus", date=NOW - 3 * MIN_MS, device="pump", carbs=30.0)],
    )
    evaluate(store, CONFIG, NOW)
    rows = [(r.seq, r.id, r.event, r.text) for r in store.events_after(0)]
    assert [r[2] for r in rows] == ["glucose:new", "episode:changed", "treatment:new"]
    for _seq, eid, event, text in rows:
        body = json.loads(text)
        assert body["id"] == eid and body["event"] == event
        assert set(body) == {"event", "id", "time", "account", "data"}
    assert json.loads(rows[0][3])["data"]["sgv"] == 120
    assert json.loads(rows[2][3])["data"]["carbs"] == 30
    # an identical frame stored again writes nothing; a changed row keeps its event id
    persist(store, [entry(2, 120, direction="SingleUp")])
    assert evaluate(store, CONFIG, NOW + 1000).events == 0


def test_other_accounts_rows_are_not_this_accounts(make_store: MakeStore) -> None:
    store = make_store()
    persist(store, [entry(1, 50)], source="sim:bob")
    assert evaluate(store, CONFIG, NOW).events == 0
    assert evaluate(store, AlertConfig(key="sim:bob", label="bob"), NOW).events >= 3


def test_a_failed_pass_writes_nothing(make_store: MakeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store()
    persist(store, [entry(1, 50)])

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(SqliteAlertTransaction, "save_alert_state", broken)
    monkeypatch.setattr(PostgresAlertTransaction, "save_alert_state", broken)
    with pytest.raises(OSError, match="disk I/O"):
        evaluate(store, CONFIG, NOW)
    assert events(store) == [] and query(store, "SELECT count(*) FROM episodes") == [(0,)]
    monkeypatch.undo()
    assert evaluate(store, CONFIG, NOW).events > 0


async def test_the_task_wakes_at_the_deadline_for_stale_data(autojump_clock: trio.abc.Clock) -> None:
    clock = VirtualClock(NOW)
    store = Store(":memory:")
    woken: list[int] = []
    alerting = Alerting(AsyncStore(store), CONFIG, clock=clock, on_events=lambda: woken.append(clock()))
    persist(store, [entry(0, 120)])
    async with trio.open_nursery() as nursery:
        await nursery.start(alerting.run)
        await trio.sleep(14 * 60)
        assert "alert:raised" not in names(store)
        await trio.sleep(2 * 60)  # past 15 minutes without a reading
        raised = [e["data"]["kind"] for e in events(store) if e["event"] == "alert:raised"]
        assert raised == ["stale"]
        assert alerting.status()["episode"] == "stale"
        # a new reading (a frame persisted: the daemon wakes the task) ends it
        persist(store, [entry(0, 118, now=clock())])
        alerting.wake()
        await trio.sleep(1)
        assert [e["data"]["kind"] for e in events(store) if e["event"] == "alert:cleared"] == ["stale"]
        passes = alerting.status()["passes"]
        await trio.sleep(10 * 60)  # nothing due: the task slept, it did not poll
        assert alerting.status()["passes"] == passes
        nursery.cancel_scope.cancel()
    assert woken and alerting.status()["raised"] == []


def test_a_passs_events_are_appended_together_each_id_once(make_store: MakeStore) -> None:
    """A pass appends its events in one go: those already in the outbox are skipped, an id seen
    twice in one pass is written once (its first), and the rest keep the pass's order."""
    from store.events import NewEvent

    store = make_store()

    def new(eid: str, body: str = "{}") -> NewEvent:
        return NewEvent(eid, "glucose:new", "alice", NOW, body)

    with store.alert_transaction() as tx:
        assert tx.add_events([new("a"), new("b")]) == 2
        assert tx.add_events([]) == 0
    with store.alert_transaction() as tx:
        assert (
            tx.add_events(
                [new("b", '{"again":1}'), new("c"), new("d", '{"n":1}'), new("d", '{"n":2}'), new("a")]
            )
            == 2
        )
    rows = list(store.events_after(0))
    assert [r.id for r in rows] == ["a", "b", "c", "d"]
    assert [r.text for r in rows] == ["{}", "{}", "{}", '{"n":1}']
    assert [r.seq for r in rows] == sorted(r.seq for r in rows) and len({r.seq for r in rows}) == 4
