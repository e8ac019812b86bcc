"""API v3's writes as Nightscout's clients meet them: CREATE with dedupe, UPDATE as an upsert,
PATCH with fields a client may not change, soft DELETE that histories show, tokens required,
and v3's reads (READ, HISTORY, lastModified) seeing every write; hypothesis-generated bodies
answer 4xx, never 5xx, and a refused write leaves the store as it was."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api import create_app
from api.context import Writer
from api.routes.uploads import MAX_BODY_BYTES
from api.settings import ApiSettings
from store import AsyncStore, Store
from store.abc import ReaderStore, WriterStore
from store.postgres import PostgresStore
from store.postgres_reader import PostgresReader
from tests.stores import MakeStore
from tests.test_api_support import SECRET, make_app, snapshot

TOKEN = {"Authorization": f"Bearer {SECRET}"}
T0 = 1_780_000_000_000
FIVE_MIN = 300_000


class Site:
    """The daemon's API over one store file: the writer and the reads share it, as under ``run``."""

    def __init__(self, path: Path, *, readable: bool = False, store: WriterStore | None = None) -> None:
        """Over the SQLite file ``path``, or over ``store`` (a PostgreSQL account) when given."""
        self.store: WriterStore = Store(path) if store is None else store
        self.wakes = 0
        writer = Writer(AsyncStore(self.store, inline=True), self.wake)
        if isinstance(self.store, PostgresStore):
            self.reader: ReaderStore = PostgresReader(self.store.pool, account=self.store.account)
            settings = ApiSettings(http_secret=SECRET, http_readable=readable)
            self.app = create_app(self.reader, lambda: snapshot(), settings, writer=writer)
        else:
            self.app, self.reader = make_app(path, secret=SECRET, readable=readable, writer=writer)

    def wake(self) -> None:
        self.wakes += 1

    def close(self) -> None:
        self.reader.close()
        self.store.close()

    def count(self, collection: str) -> int:
        return self.store.count(collection)  # type: ignore[arg-type]

    def run(self, body: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ours.test") as client:
                return await body(client)

        return trio.run(main)

    def call(
        self, method: str, path: str, payload: Any = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        content = None
        if payload is not None:
            content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.run(
            lambda c: c.request(
                method,
                path,
                content=content,
                headers={"content-type": "application/json", **(TOKEN if headers is None else headers)},
            )
        )


@pytest.fixture
def site(tmp_path: Path, make_store: MakeStore) -> Iterator[Site]:
    """Each backend in turn: v3's writes and reads are the store's contract too."""
    store = make_store()
    made = Site(tmp_path / "store.db", store=store if isinstance(store, PostgresStore) else None)
    if isinstance(store, Store):
        store.close()  # the site opens the file itself
    yield made
    made.close()


def entry(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "sgv",
        "sgv": 100 + i % 50,
        "date": T0 + i * FIVE_MIN,
        "device": "AndroidAPS-DexcomG6",
        "app": "AndroidAPS",
        "direction": "Flat",
        **extra,
    }


def bolus(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "eventType": "Correction Bolus",
        "insulin": 1.5,
        "date": T0 + i * FIVE_MIN,
        "device": "AndroidAPS",
        "app": "AndroidAPS",
        **extra,
    }


def test_create_answers_201_then_dedupes_onto_the_stored_document(site: Site) -> None:
    first = site.call("POST", "/api/v3/entries", entry(0))
    assert first.status_code == 201, first.text
    created = first.json()
    assert created["status"] == 201 and created["identifier"] and created["lastModified"] > 0
    assert first.headers["location"] == f"/api/v3/entries/{created['identifier']}"
    assert first.headers["last-modified"].endswith("GMT")
    # the same reading again (another device, as a second uploader sends it): one document
    again = site.call("POST", "/api/v3/entries", entry(0, device="xDrip", sgv=140))
    assert again.status_code == 200, again.text
    dedupe = again.json()
    assert dedupe["isDeduplication"] is True and dedupe["identifier"] == created["identifier"]
    assert site.count("entries") == 1
    read = site.call("GET", f"/api/v3/entries/{created['identifier']}").json()["result"]
    assert read["sgv"] == 140 and read["isValid"] is True
    assert read["srvModified"] == dedupe["lastModified"] >= created["lastModified"]
    # a client's own identifier names the document it dedupes on, whatever its date
    mine = site.call("POST", "/api/v3/treatments", bolus(1, identifier="aaps-42"))
    assert mine.status_code == 201 and mine.json()["identifier"] == "aaps-42"
    moved = site.call("POST", "/api/v3/treatments", bolus(2, identifier="aaps-42", insulin=2))
    assert moved.status_code == 200 and moved.json()["identifier"] == "aaps-42"
    assert site.count("treatments") == 1
    # any text names a document; the Location header carries it encoded
    odd = site.call("POST", "/api/v3/treatments", bolus(3, identifier="phone 1 é€"))
    assert (
        odd.status_code == 201 and odd.headers["location"] == "/api/v3/treatments/phone%201%20%C3%A9%E2%82%AC"
    )
    assert site.call("DELETE", odd.headers["location"]).status_code == 200
    # the v1 reads serve what v3 wrote
    v1 = site.call("GET", "/api/v1/treatments.json").json()
    assert len(v1) == 1 and v1[0]["insulin"] == 2 and v1[0]["identifier"] == "aaps-42"
    assert site.wakes == 6


def test_create_checks_what_v3_requires_and_names_the_field(site: Site) -> None:
    cases = [
        ({k: v for k, v in entry(0).items() if k != "app"}, "Bad or missing app field"),
        (entry(0, app="  "), "Bad or missing app field"),
        ({k: v for k, v in entry(0).items() if k != "date"}, "Bad or missing date field"),
        (entry(0, date=123), "Bad or missing date field"),
        (entry(0, date="yesterday"), "Bad or missing date field"),
        (entry(0, utcOffset=5000), "Bad or missing utcOffset field"),
        (entry(0, identifier=17), "Bad or missing identifier field"),
        (entry(0, sgv="high"), "Bad sgv field"),
        (entry(0, direction=3), "Bad direction field"),
        (bolus(0, insulin=[1]), "Bad insulin field"),
    ]
    for body, message in cases:
        path = "/api/v3/treatments" if "eventType" in body else "/api/v3/entries"
        answer = site.call("POST", path, body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["message"] == message, answer.text
    for body in (b"not json", b"[]", b"{}", json.dumps([entry(0)]).encode()):
        answer = site.call("POST", "/api/v3/entries", body)
        assert answer.status_code == 400 and answer.json()["message"] == "Bad or missing request body"
    assert site.count("entries") == site.count("treatments") == 0
    # v3's own forms of a date: seconds, ISO, and created_at standing in
    assert site.call("POST", "/api/v3/entries", entry(1, date=(T0 + FIVE_MIN) // 1000)).status_code == 201
    assert site.call("POST", "/api/v3/entries", entry(2, date="2026-05-28T20:36:40Z")).status_code == 201
    note = {"eventType": "Note", "created_at": "2026-05-28T20:36:40Z", "app": "x", "notes": "hi"}
    assert site.call("POST", "/api/v3/treatments", note).status_code == 201
    assert site.count("entries") == 2 and site.count("treatments") == 1


def test_writes_need_a_token_even_when_reading_is_open(tmp_path: Path) -> None:
    site = Site(tmp_path / "open.db", readable=True)
    try:
        missing = site.call("POST", "/api/v3/entries", entry(0), headers={})
        assert missing.status_code == 401
        assert missing.json()["message"] == "Missing or bad access token or JWT"
        wrong = site.call("POST", "/api/v3/entries", entry(0), headers={"Authorization": "Bearer nope-nope"})
        assert wrong.status_code == 401 and wrong.json()["message"] == "Bad access token or JWT"
        # v3 never took the api-secret header
        v1_style = site.call("DELETE", "/api/v3/entries/x", headers={"api-secret": "0" * 40})
        assert v1_style.status_code == 401
        assert site.call("GET", "/api/v3/entries", headers={}).status_code == 200  # reading is open
        # a JWT from the token exchange writes
        jwt = site.call("GET", f"/api/v2/authorization/request/{SECRET}", headers={}).json()["token"]
        made = site.call("POST", "/api/v3/entries", entry(0), headers={"Authorization": f"Bearer {jwt}"})
        assert made.status_code == 201
        assert site.count("entries") == 1
        status = site.call("GET", "/api/v3/status").json()["result"]
        assert status["apiPermissions"]["entries"] == "crud" and status["apiPermissions"]["food"] == "r"
    finally:
        site.close()


def test_unknown_collections_and_huge_bodies_are_refused(site: Site) -> None:
    assert site.call("POST", "/api/v3/nope", entry(0)).status_code == 404
    assert site.call("POST", "/api/v3/food", {"date": T0, "app": "x", "name": "apple"}).status_code == 404
    huge = json.dumps(entry(0, notes="x" * (MAX_BODY_BYTES + 1))).encode()
    assert site.call("POST", "/api/v3/entries", huge).status_code == 413
    assert site.count("entries") == 0


def test_update_is_an_upsert_and_keeps_immutable_fields(site: Site) -> None:
    put = site.call("PUT", "/api/v3/treatments/aaps-7", bolus(3))
    assert put.status_code == 201, put.text
    assert put.json()["identifier"] == "aaps-7" and put.headers["location"] == "/api/v3/treatments/aaps-7"
    again = site.call("PUT", "/api/v3/treatments/aaps-7", bolus(3, insulin=3.5))
    assert again.status_code == 200 and again.json()["lastModified"] >= put.json()["lastModified"]
    doc = site.call("GET", "/api/v3/treatments/aaps-7").json()["result"]
    assert doc["insulin"] == 3.5 and site.count("treatments") == 1
    for field, value in (("date", T0), ("eventType", "Meal Bolus"), ("device", "Loop")):
        refused = site.call("PUT", "/api/v3/treatments/aaps-7", bolus(3, **{field: value}))
        assert refused.status_code == 400, refused.text
        assert refused.json()["message"] == f"Field {field} cannot be modified by the client"
    assert site.call("GET", "/api/v3/treatments/aaps-7").json()["result"]["insulin"] == 3.5


def test_patch_merges_and_refuses_what_a_client_may_not_change(site: Site) -> None:
    ident = site.call("POST", "/api/v3/treatments", bolus(4, notes="before")).json()["identifier"]
    before = site.call("GET", f"/api/v3/treatments/{ident}").json()["result"]
    patched = site.call("PATCH", f"/api/v3/treatments/{ident}", {"notes": "after", "srvModified": 1})
    assert patched.status_code == 200, patched.text
    after = site.call("GET", f"/api/v3/treatments/{ident}").json()["result"]
    assert after["notes"] == "after" and after["insulin"] == 1.5 and after["eventType"] == "Correction Bolus"
    assert after["srvModified"] == patched.json()["lastModified"] >= before["srvModified"]
    assert after["srvCreated"] == before["srvCreated"]
    for change in ({"eventType": "Note"}, {"device": "other"}, {"date": T0 + 1}, {"app": "other"}):
        refused = site.call("PATCH", f"/api/v3/treatments/{ident}", change)
        assert refused.status_code == 400, refused.text
        assert refused.json()["message"].startswith(f"Field {next(iter(change))} cannot be modified")
    bad = site.call("PATCH", f"/api/v3/treatments/{ident}", {"insulin": "lots"})
    assert bad.status_code == 400 and bad.json()["message"] == "Bad insulin field"
    assert site.call("PATCH", f"/api/v3/treatments/{ident}", {}).status_code == 400
    assert site.call("GET", f"/api/v3/treatments/{ident}").json()["result"]["notes"] == "after"
    assert site.call("PATCH", "/api/v3/treatments/no-such", {"notes": "x"}).status_code == 404


def test_delete_is_soft_and_histories_show_it(site: Site) -> None:
    kept = site.call("POST", "/api/v3/entries", entry(0)).json()["identifier"]
    gone = site.call("POST", "/api/v3/entries", entry(1)).json()["identifier"]
    changed = site.call("GET", "/api/v3/lastModified").json()["result"]["collections"]["entries"]
    listed = site.call("GET", "/api/v3/entries/history/0").json()["result"]
    assert [d["identifier"] for d in listed] == [kept, gone]
    deleted = site.call("DELETE", f"/api/v3/entries/{gone}")
    assert deleted.status_code == 200, deleted.text
    # the reads move on at once (no answer kept from before the deletion)
    assert site.call("GET", f"/api/v3/entries/{gone}").status_code == 410
    assert [d["identifier"] for d in site.call("GET", "/api/v3/entries").json()["result"]] == [kept]
    assert len(site.call("GET", "/api/v1/entries.json").json()) == 1
    since = site.call("GET", f"/api/v3/entries/history/{changed}").json()["result"]
    assert [(d["identifier"], d["isValid"]) for d in since] == [(gone, False)]
    assert site.call("GET", "/api/v3/lastModified").json()["result"]["collections"]["entries"] >= changed
    # a deleted document cannot be updated or patched, and deleting it again is done already
    assert site.call("PUT", f"/api/v3/entries/{gone}", entry(1)).status_code == 410
    assert site.call("PATCH", f"/api/v3/entries/{gone}", {"sgv": 99}).status_code == 410
    assert site.call("DELETE", f"/api/v3/entries/{gone}").status_code == 200
    # created again, it is a document again
    back = site.call("POST", "/api/v3/entries", entry(1, identifier=gone))
    assert back.status_code == 200 and back.json()["isDeduplication"] is True
    assert site.call("GET", f"/api/v3/entries/{gone}").json()["result"]["isValid"] is True
    # permanently: forgotten (404), and out of the histories
    assert site.call("DELETE", f"/api/v3/entries/{gone}?permanent=true").status_code == 200
    assert site.call("GET", f"/api/v3/entries/{gone}").status_code == 404
    assert gone not in [
        d["identifier"] for d in site.call("GET", "/api/v3/entries/history/0").json()["result"]
    ]
    assert site.call("DELETE", "/api/v3/entries/no-such").status_code == 404
    assert site.count("entries") == 1


def test_a_v1_delete_shows_in_v3_histories(site: Site) -> None:
    ident = site.call("POST", "/api/v3/treatments", bolus(5)).json()["identifier"]
    (doc,) = site.call("GET", "/api/v1/treatments.json", headers={"Authorization": f"Bearer {SECRET}"}).json()
    assert site.call("DELETE", f"/api/v1/treatments/{doc['_id']}").status_code == 200
    history = site.call("GET", "/api/v3/treatments/history/0").json()["result"]
    assert [(d["identifier"], d["isValid"]) for d in history] == [(ident, False)]


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
_fields = st.sampled_from(
    ["date", "app", "sgv", "type", "device", "utcOffset", "identifier", "eventType", "insulin",
     "created_at", "direction", "isValid", "srvModified", "notes", "carbs", "dateString"]
)  # fmt: skip


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    method=st.sampled_from(["POST", "PUT", "PATCH"]),
    collection=st.sampled_from(["entries", "treatments", "devicestatus", "profile"]),
    changes=st.dictionaries(_fields, _values, max_size=5),
    base=st.booleans(),
    target=st.one_of(
        st.just("known"), st.text(st.characters(exclude_characters="/"), min_size=1, max_size=8)
    ),
)
def test_any_body_is_answered_without_a_server_error_and_refusals_write_nothing(
    tmp_path_factory: pytest.TempPathFactory,
    method: str,
    collection: str,
    changes: dict[str, Any],
    base: bool,
    target: str,
) -> None:
    site = Site(Path(tmp_path_factory.mktemp("v3any")) / "s.db")
    try:
        stored = site.call("POST", "/api/v3/treatments", bolus(0, identifier="known"))
        assert stored.status_code == 201
        body = {**(entry(3) if collection == "entries" else bolus(3)), **changes} if base else changes
        path = f"/api/v3/{collection}" + ("" if method == "POST" else f"/{quote(target, safe='')}")
        before = {c: site.count(c) for c in ("entries", "treatments", "devicestatus", "profile")}
        snapshot = site.call("GET", "/api/v3/treatments/known").json()
        answer = site.call(method, path, body)
        assert answer.status_code < 500, answer.text
        if answer.status_code >= 400:
            assert {c: site.count(c) for c in before} == before
            assert site.call("GET", "/api/v3/treatments/known").json() == snapshot
    finally:
        site.close()
