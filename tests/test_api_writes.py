"""The write API against Nightscout's rules: dedupe keys, one answer per document, whole
requests or nothing, credentials required, 4xx never 5xx (hypothesis-generated documents)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.context import Writer
from api.routes.uploads import MAX_BODY_BYTES
from connect.pushed import push_origin
from store import AsyncStore, Store
from tests.test_api_support import SECRET, make_app

HEADERS = {"api-secret": hashlib.sha1(SECRET.encode()).hexdigest()}
T0 = 1_780_000_000_000
FIVE_MIN = 300_000


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory):
    path = Path(tmp_path_factory.mktemp("writes")) / "reads.db"
    Store(path).close()
    app, reader = make_app(path, secret=SECRET, readable=True)
    yield app
    reader.close()


class World:
    """A fresh in-memory store behind the app's writer, and a client for one trio run."""

    def __init__(self, app: Any) -> None:
        self.store = Store(":memory:")
        self.wakes = 0
        self.app = app
        context = app.state.context
        # a still clock: a document without a time is stamped the same "now" when sent again
        app.state.context = attrs.evolve(
            context, writer=Writer(AsyncStore(self.store, inline=True), self.wake), clock=lambda: T0
        )

    def wake(self) -> None:
        self.wakes += 1

    def counts(self) -> dict[str, int]:
        return {c: self.store.count(c) for c in ("entries", "treatments", "devicestatus")}

    def run(self, body: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ours.test") as client:
                return await body(client)

        return trio.run(main)

    def post(self, path: str, payload: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.run(
            lambda c: c.post(path, content=content, headers=HEADERS if headers is None else headers)
        )


def entry(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "sgv",
        "sgv": 100 + i % 50,
        "date": T0 + i * FIVE_MIN,
        "device": "xDrip-DexcomG6",
        **extra,
    }


def treatment(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "eventType": "Meal Bolus",
        "created_at": f"2026-06-0{1 + i % 9}T12:{i % 60:02d}:00.000Z",
        "carbs": 10 + i,
        "insulin": 1.5,
        "enteredBy": "xdrip",
        **extra,
    }


def test_entries_answer_one_document_each_and_dedupe_on_date_and_type(app):
    world = World(app)
    batch = [entry(i) for i in range(288)]
    first = world.post("/api/v1/entries", batch)
    assert first.status_code == 200, first.text
    docs = first.json()
    assert len(docs) == 288 and all(len(d["_id"]) == 24 for d in docs)
    assert [d["sgv"] for d in docs] == [e["sgv"] for e in batch]
    again = world.post("/api/v1/entries.json", batch)
    assert again.status_code == 200 and [d["_id"] for d in again.json()] == [d["_id"] for d in docs]
    assert world.counts()["entries"] == 288
    # another device at the same time and type replaces the reading, as Nightscout does
    replaced = world.post("/api/v1/entries", entry(0, device="Juggluco", sgv=222))
    assert replaced.json()[0]["_id"] == docs[0]["_id"]
    assert world.counts()["entries"] == 288
    # another type at the same time is a record of its own
    world.post("/api/v1/entries", [{"type": "mbg", "mbg": 120, "date": T0}])
    assert world.counts()["entries"] == 289
    assert world.wakes == 3  # the resend wrote nothing and woke nobody


def test_treatments_dedupe_on_created_at_and_event_type_or_identifier(app):
    world = World(app)
    batch = [treatment(i) for i in range(10)]
    assert world.post("/api/v1/treatments", batch).status_code == 200
    assert world.post("/api/v1/treatments", batch).status_code == 200
    assert world.counts()["treatments"] == 10
    # another device, same created_at and eventType: the same treatment
    world.post("/api/v1/treatments", treatment(0, enteredBy="AndroidAPS", carbs=99))
    assert world.counts()["treatments"] == 10
    # an identifier names the treatment whatever its time
    ided = treatment(20, identifier="aaps-1")
    world.post("/api/v1/treatments", ided)
    world.post("/api/v1/treatments", {**ided, "created_at": "2026-06-09T13:00:00.000Z"})
    assert world.counts()["treatments"] == 11
    # no created_at: stamped now, as Nightscout does
    stamped = world.post("/api/v1/treatments", {"eventType": "Note", "notes": "hi"})
    assert stamped.status_code == 200 and stamped.json()[0]["created_at"]


def test_devicestatus_takes_an_object_or_an_array(app):
    world = World(app)
    one = {"device": "openaps://phone", "created_at": "2026-06-01T12:00:00Z", "pump": {"reservoir": 80}}
    assert len(world.post("/api/v1/devicestatus", one).json()) == 1
    many = [{**one, "created_at": f"2026-06-01T12:0{i}:00Z"} for i in range(1, 4)]
    answer = world.post("/api/v1/devicestatus", many).json()
    assert len(answer) == 3 and answer[0]["pump"] == {"reservoir": 80}
    assert world.counts()["devicestatus"] == 4


def test_put_and_delete_a_treatment_by_its_id(app):
    world = World(app)
    (doc,) = world.post("/api/v1/treatments", treatment(1)).json()
    changed = {**treatment(1), "carbs": 55}
    put = world.run(lambda c: c.put(f"/api/v1/treatments/{doc['_id']}", json=changed, headers=HEADERS))
    assert put.status_code == 200 and put.json()["carbs"] == 55 and put.json()["_id"] == doc["_id"]
    by_body = world.run(
        lambda c: c.put(
            "/api/v1/treatments", json={**changed, "_id": doc["_id"], "carbs": 60}, headers=HEADERS
        )
    )
    assert by_body.status_code == 200 and by_body.json()["carbs"] == 60
    assert world.counts()["treatments"] == 1
    missing = world.run(lambda c: c.put("/api/v1/treatments/" + "0" * 24, json=changed, headers=HEADERS))
    assert missing.status_code == 404
    gone = world.run(lambda c: c.delete(f"/api/v1/treatments/{doc['_id']}", headers=HEADERS))
    assert gone.status_code == 200 and gone.json()["n"] == 1
    assert world.counts()["treatments"] == 0


def test_writes_need_the_secret_even_when_reading_is_open(app):
    world = World(app)
    for headers in ({}, {"api-secret": "0" * 40}):
        response = world.post("/api/v1/entries", [entry(1)], headers=headers)
        assert response.status_code == 401
    anonymous = world.run(lambda c: c.delete("/api/v1/treatments/" + "0" * 24))
    assert anonymous.status_code == 401
    assert world.counts() == {"entries": 0, "treatments": 0, "devicestatus": 0}


def test_a_read_only_api_refuses_writes_and_says_why(app):
    World(app)
    context = app.state.context
    app.state.context = attrs.evolve(context, writer=None)
    try:
        world = World.__new__(World)
        world.app = app
        response = world.post("/api/v1/entries", [entry(1)])
        assert response.status_code == 405 and "serve" in response.json()["description"]
    finally:
        app.state.context = context


def test_a_body_over_the_cap_is_413_and_writes_nothing(app):
    world = World(app)
    big = b"[" + b" " * (MAX_BODY_BYTES + 1) + b"]"
    assert world.post("/api/v1/entries", big).status_code == 413
    assert world.counts()["entries"] == 0


def test_rows_pushed_here_carry_the_address_they_were_sent_to(app):
    world = World(app)
    world.post("/api/v1/entries", [entry(1)])
    (source,) = world.store.conn.execute("SELECT source FROM entries").fetchone()
    assert source == push_origin("http://ours.test") == "push@http://ours.test:80"
    assert push_origin("https://Site.example/ns") == "push@https://site.example:443"
    assert push_origin("http://[::1") == "push@unknown"
    odd = world.run(lambda c: c.post("/api/v1/entries", json=[entry(2)], headers={**HEADERS, "host": "[::1"}))
    assert odd.status_code == 200


# --- hypothesis: any document, valid or not -------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["type", "sgv", "date", "dateString", "device", "direction", "mbg", "eventType", "created_at",
          "carbs", "insulin", "_id", "identifier", "pump", "noise"]  # fmt: skip


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """Mostly plausible documents with some fields broken, and now and then anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    i = draw(st.integers(0, 40))
    doc: dict[str, Any] = draw(st.sampled_from([entry(i), treatment(i), {"device": "d", "date": T0 + i}]))
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=2)):
        doc[field] = draw(JSON)
    return doc


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    collection=st.sampled_from(["entries", "treatments", "devicestatus"]),
    batch=st.lists(documents(), min_size=1, max_size=6),
)
def test_any_batch_is_stored_whole_and_once_or_refused_whole(app, collection, batch):
    world = World(app)
    seed = world.post(
        f"/api/v1/{collection}",
        [entry(100), treatment(100), {"device": "d", "date": T0}][
            ["entries", "treatments", "devicestatus"].index(collection)
        ],
    )
    assert seed.status_code == 200
    before = world.counts()
    first = world.post(f"/api/v1/{collection}", batch)
    assert 200 <= first.status_code < 500, first.text
    if first.status_code != 200:
        assert first.status_code == 400
        description = first.json()["description"]
        assert description.startswith(("document ", "the body"))
        assert world.counts() == before  # nothing of the request was written
        return
    answer = first.json()
    assert len(answer) == len(batch)
    after = world.counts()
    assert 0 < after[collection] - before[collection] <= len(batch) or after == before
    second = world.post(f"/api/v1/{collection}", batch)
    assert second.status_code == 200
    assert [d["_id"] for d in second.json()] == [d["_id"] for d in answer]
    assert world.counts() == after  # sent twice, stored once
