"""Nightscout's API v3 reads over the store, checked against the answers cgm-remote-monitor
15.0.7 gives (no v3 client is published on PyPI or npm to point at ours, and no real v3 answers
were recorded; the shapes and messages below are those of its ``lib/api3``: ``const.json``'s
messages, ``operationTools.sendJSON``'s ``{status, result}``, ``search/input.js``'s parameters,
``history/operation.js``'s ETag, ``swagger.yaml``'s documents; the requests are those
AndroidAPS's ``NightscoutRemoteService`` sends)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.tokens import LIFETIME_S
from connect.records import DeviceStatus, Entry, iso_from_ms
from store import Store, database
from store.database import object_id
from tests.test_api_support import SECRET, ApiClient, make_app, populate

SHA1 = hashlib.sha1(SECRET.encode()).hexdigest()
#: what v3 adds to a stored document
SERVER_FIELDS = {"identifier", "utcOffset", "sysTime", "srvCreated", "srvModified", "isValid"}
MISSING_TOKEN = {"status": 401, "message": "Missing or bad access token or JWT"}
BAD_TOKEN = {"status": 401, "message": "Bad access token or JWT"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    path = Path(tmp_path_factory.mktemp("v3")) / "store.db"
    info = populate(path, count=300)
    store = Store(path)
    stored = {c: store.docs(c) for c in ("entries", "treatments", "devicestatus", "profile")}
    store.close()
    now = [info["end"]]
    app, reader = make_app(path, clock=lambda: now[0])
    with ApiClient(app) as client:
        issued = client.get(f"/api/v2/authorization/request/{SECRET}").json()
        yield {
            **info,
            "client": client,
            "stored": stored,
            "jwt": issued["token"],
            "issued": issued,
            "now": now,
        }
    reader.close()


def get(world, url: str, *, token: str | None = "jwt", headers: dict | None = None):
    sent = dict(headers or {})
    if token == "jwt":
        sent["Authorization"] = f"Bearer {world['jwt']}"
    response = world["client"].get(url, headers=sent)
    return response.status_code, response.json() if response.content else None


def plain(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in SERVER_FIELDS or k == "identifier"}


# --- the table: request → Nightscout's answer ------------------------------------------------


def _sgvs(world) -> list[dict]:
    return [d for d in world["stored"]["entries"] if d["type"] == "sgv"]


def newest_sgv(world, body):
    docs = body["result"]
    assert [plain(d) for d in docs] == _sgvs(world)  # newest first, all 300 (limit 1000)
    for doc in docs:
        assert doc["isValid"] is True and doc["utcOffset"] == 0 and "_id" not in doc
        assert isinstance(doc["srvModified"], int) and doc["srvCreated"] <= doc["srvModified"]
        assert doc["sysTime"] == doc["dateString"]


def newer_than(world, body):
    threshold = _sgvs(world)[20]["date"]
    assert [d["date"] for d in body["result"]] == sorted(
        d["date"] for d in world["stored"]["entries"] if d["date"] > threshold
    )[:5]


def only(keys):
    def check(world, body):
        assert body["result"] and all(set(d) == set(keys) for d in body["result"])

    return check


def count(n, collection=None, where=None):
    def check(world, body):
        assert len(body["result"]) == n
        if where is not None:
            expected = [d["identifier"] for d in world["stored"][collection] if where(d)]
            assert sorted(d["identifier"] for d in body["result"]) == sorted(expected)

    return check


def error(status, message):
    def check(world, body):
        assert body == {"status": status, "message": message}

    return check


def version_shape(world, body):
    assert body["status"] == 200 and set(body["result"]) == {"version", "apiVersion", "srvDate", "storage"}
    assert body["result"]["version"] == "15.0.7" and body["result"]["apiVersion"] == "3.0.3-alpha"
    assert body["result"]["srvDate"] == world["now"][0]
    assert set(body["result"]["storage"]) == {"storage", "version"}


def status_shape(world, body):
    assert set(body["result"]) == {"version", "apiVersion", "srvDate", "storage", "apiPermissions"}
    # AndroidAPS reads all six; a token of ours may read each
    assert body["result"]["apiPermissions"] == dict.fromkeys(
        ["devicestatus", "entries", "food", "profile", "settings", "treatments"], "r"
    )


def last_modified_shape(world, body):
    result = body["result"]
    assert result["srvDate"] == world["now"][0]
    assert set(result["collections"]) == {"entries", "treatments", "devicestatus", "profile"}
    assert all(isinstance(v, int) and v >= world["end"] for v in result["collections"].values())


def sorted_by_sgv(world, body):
    sgvs = sorted(_sgvs(world), key=lambda d: (d["sgv"], d["identifier"]))[:3]
    assert [d["identifier"] for d in body["result"]] == [d["identifier"] for d in sgvs]


def paged(world, body):
    assert [d["identifier"] for d in body["result"]] == [
        d["identifier"] for d in world["stored"]["entries"][1:3]
    ]


def empty(world, body):
    assert body == {"status": 200, "result": []}


def _iso(world, back_ms: int) -> str:
    return iso_from_ms(world["end"] - back_ms)


def newer_treatments(world, body):
    """AndroidAPS's ``created_at$gt``: an ISO time, compared as v3 normalises it (UTC, ms)."""
    threshold = world["end"] - 2 * 3_600_000 - 1
    expected = sorted(
        (d for d in world["stored"]["treatments"] if d["date"] > threshold), key=lambda d: d["date"]
    )
    assert [d["identifier"] for d in body["result"]] == [d["identifier"] for d in expected]
    assert len(expected) == 4


def sgv_range(world, body):
    expected = [d for d in _sgvs(world) if 200 <= d["sgv"] < 210]
    assert expected and sorted(d["identifier"] for d in body["result"]) == sorted(
        d["identifier"] for d in expected
    )


CASES = [
    # the routes and their envelopes
    ("/api/v3/version", None, 200, version_shape),
    ("/api/v3/status", "jwt", 200, status_shape),
    ("/api/v3/lastModified", "jwt", 200, last_modified_shape),
    # AndroidAPS's reads
    ("/api/v3/entries?sort$desc=date&type=sgv", "jwt", 200, newest_sgv),
    ("/api/v3/entries?sort=date&date$gt={sgv20}&limit=5", "jwt", 200, newer_than),
    ("/api/v3/treatments?sort=created_at&created_at$gt={iso2h}&limit=10", "jwt", 200, newer_treatments),
    ("/api/v3/profile?sort$desc=date&limit=1", "jwt", 200, count(1)),
    # filters as v3 defines them
    ("/api/v3/treatments?carbs$gt=0", "jwt", 200, count(5, "treatments", lambda d: d.get("carbs", 0) > 0)),
    ("/api/v3/treatments?insulin$gte=2.5&carbs$lte=30", "jwt", 200, count(5)),
    ("/api/v3/treatments?eventType=Temp%20Basal", "jwt", 200, count(1, "treatments", lambda d: d["eventType"] == "Temp Basal")),
    ("/api/v3/treatments?eventType$ne=Temp%20Basal", "jwt", 200, count(5)),
    ("/api/v3/treatments?eventType$re=^Meal", "jwt", 200, count(5)),
    ("/api/v3/treatments?eventType$in=Temp%20Basal|Note", "jwt", 200, count(1)),
    ("/api/v3/treatments?eventType$nin=Meal%20Bolus|Note", "jwt", 200, count(1)),
    ("/api/v3/entries?type$in=mbg|cal", "jwt", 200, count(2, "entries", lambda d: d["type"] in ("mbg", "cal"))),
    ("/api/v3/entries?type$nin=sgv", "jwt", 200, count(2)),
    ("/api/v3/entries?sgv$gte=200&sgv$lt=210", "jwt", 200, sgv_range),
    ("/api/v3/entries?sgv='120'", "jwt", 200, empty),  # a quoted number is text: never a number
    ("/api/v3/entries?date$gte=abc", "jwt", 200, empty),  # no date is text
    ("/api/v3/entries?noise$gt=0", "jwt", 200, empty),  # a field no document has
    ("/api/v3/entries?noise$ne=1", "jwt", 200, count(302)),  # ... which $ne matches
    ("/api/v3/entries?device$ne=share2", "jwt", 200, count(1, "entries", lambda d: d["device"] != "share2")),
    ("/api/v3/devicestatus?pump.reservoir$lt=100", "jwt", 200, count(2)),
    ("/api/v3/devicestatus?pump.reservoir=100&fields=pump", "jwt", 200, only(["pump"])),
    ("/api/v3/entries?fields=date,sgv&type=sgv&limit=3", "jwt", 200, only(["date", "sgv"])),
    ("/api/v3/entries?sort$desc=date&limit=2&skip=1", "jwt", 200, paged),
    ("/api/v3/entries?sort=sgv&type=sgv&limit=3", "jwt", 200, sorted_by_sgv),
    ("/api/v3/entries?now=123&sort$desc=date&limit=1", "jwt", 200, count(1)),  # now: reserved
    ("/api/v3/food", "jwt", 200, empty),
    ("/api/v3/settings?limit=100", "jwt", 200, empty),
    # what v3 refuses, with its messages
    ("/api/v3/entries?limit=0", "jwt", 400, error(400, "Parameter limit out of tolerance")),
    ("/api/v3/entries?limit=1001", "jwt", 400, error(400, "Parameter limit out of tolerance")),
    ("/api/v3/entries?limit=abc", "jwt", 400, error(400, "Parameter limit out of tolerance")),
    ("/api/v3/entries?skip=-1", "jwt", 400, error(400, "Parameter skip out of tolerance")),
    ("/api/v3/entries?skip=9223372036854775808", "jwt", 400, error(400, "Parameter skip out of tolerance")),
    ("/api/v3/entries?skip=9223372036854775807", "jwt", 200, empty),
    ("/api/v3/entries?sort=date&sort$desc=date", "jwt", 400, error(400, "Parameters sort and sort_desc cannot be combined")),
    ("/api/v3/entries?date$exists=1", "jwt", 400, error(400, "Unsupported filter operator exists")),
    ("/api/v3/entries/history/abc", "jwt", 400, error(400, "Bad or missing Last-Modified header/parameter")),
    ("/api/v3/entries/history", "jwt", 400, error(400, "Bad or missing Last-Modified header/parameter")),
    ("/api/v3/nothing", "jwt", 404, error(404, "Bad operation or collection")),
    ("/api/v3/entries/0123456789abcdef01234567", "jwt", 404, lambda w, b: b == {"status": 404}),
    # credentials as v3 takes them
    ("/api/v3/entries?limit=1", None, 401, error(*MISSING_TOKEN.values())),
    (f"/api/v3/entries?limit=1&secret={SHA1}", None, 401, error(*MISSING_TOKEN.values())),
    (f"/api/v3/entries?limit=1&token={SECRET}", None, 200, count(1)),
]  # fmt: skip


@pytest.mark.parametrize(("url", "token", "status", "check"), CASES, ids=[c[0] for c in CASES])
def test_v3_answers_as_nightscout_does(world, url, token, status, check):
    filled = url.format(sgv20=_sgvs(world)[20]["date"], iso2h=quote(_iso(world, 2 * 3_600_000 + 1)))
    got, body = get(world, filled, token=token)
    assert got == status, body
    check(world, body)


def test_api_secret_is_not_a_v3_credential_and_a_wrong_token_is_named(world):
    assert get(world, "/api/v3/status", token=None, headers={"api-secret": SHA1}) == (401, MISSING_TOKEN)
    for wrong in ("Bearer nope", f"Bearer {world['jwt']}x", f"Bearer {SECRET}x"):
        assert get(world, "/api/v3/status", token=None, headers={"Authorization": wrong}) == (401, BAD_TOKEN)
    for good in (f"Bearer {SECRET}", f"Bearer {world['jwt']}"):
        assert get(world, "/api/v3/status", token=None, headers={"Authorization": good})[0] == 200
    assert get(world, f"/api/v3/status?token={world['jwt']}", token=None)[0] == 200
    # Nightscout's v1 takes the JWT too
    assert (
        world["client"]
        .get("/api/v1/entries.json", headers={"Authorization": f"Bearer {world['jwt']}"})
        .status_code
        == 200
    )


def test_the_token_exchange_answers_as_nightscout(world):
    issued = world["issued"]
    assert set(issued) == {"token", "sub", "permissionGroups", "iat", "exp"}
    assert issued["sub"] == "api-secret" and issued["permissionGroups"] == [["*:*:read"]]
    assert issued["exp"] - issued["iat"] == LIFETIME_S == 8 * 3600
    head, payload, _sig = issued["token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert json.loads(base64.urlsafe_b64decode(head + "==="))["alg"] == "HS256"
    assert SECRET not in json.dumps(claims) and SHA1 not in json.dumps(claims)
    # a token still valid is exchanged for a fresh one; anything else is Nightscout's 401
    again = world["client"].get(f"/api/v2/authorization/request/{issued['token']}")
    assert again.status_code == 200 and again.json()["sub"] == "api-secret"
    refused = world["client"].get("/api/v2/authorization/request/not-the-secret")
    assert refused.status_code == 401
    assert refused.json() == {"status": 401, "message": "Unauthorized", "description": "Invalid/Missing"}


def test_tokens_expire_and_cannot_be_forged(world, tmp_path):
    token = world["jwt"]
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    longer = base64.urlsafe_b64encode(json.dumps({**claims, "exp": claims["exp"] + 10**6}).encode()).rstrip(
        b"="
    )
    none_head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    forged = [
        f"{head}.{longer.decode()}.{sig}",
        f"{none_head}.{payload}.",
        f"{head}.{payload}.{sig[:-2]}AA",
        "a.b.c",
    ]
    # signed for another secret
    other_path = tmp_path / "other.db"
    populate(other_path, count=1)
    other_app, other_reader = make_app(other_path, secret="another-secret-entirely")
    with ApiClient(other_app) as other:
        forged.append(other.get("/api/v2/authorization/request/another-secret-entirely").json()["token"])
    other_reader.close()
    for bad in forged:
        assert (
            get(world, "/api/v3/status", token=None, headers={"Authorization": f"Bearer {bad}"})[0] == 401
        ), bad
    now = world["now"]
    start = now[0]
    try:
        now[0] = start + LIFETIME_S * 1000 - 1000
        assert get(world, "/api/v3/status")[0] == 200
        now[0] = start + LIFETIME_S * 1000 + 1000
        assert get(world, "/api/v3/status") == (401, BAD_TOKEN)
    finally:
        now[0] = start


def test_without_a_secret_no_token_is_issued_and_open_reading_needs_none(tmp_path):
    path = tmp_path / "s.db"
    populate(path, count=3)
    app, reader = make_app(path, secret=None, readable=True)
    with ApiClient(app) as client:
        assert client.get("/api/v2/authorization/request/anything").status_code == 401
        assert client.get("/api/v3/entries?limit=1").json()["status"] == 200
    reader.close()
    app, reader = make_app(path, secret=None, readable=False)
    with ApiClient(app) as client:
        body = client.get("/api/v3/entries").json()
        assert body["status"] == 401 and "CONNECT_HTTP_READABLE" in body["description"]
    reader.close()


def test_one_document_by_identifier_or_by_the_id_v1_serves(world):
    target = world["stored"]["treatments"][2]
    status, body = get(world, f"/api/v3/treatments/{target['identifier']}")
    assert status == 200 and body["status"] == 200 and plain(body["result"]) == target
    by_id = get(world, f"/api/v3/treatments/{object_id(target['identifier'])}")
    assert by_id == (status, body)
    response = world["client"].get(
        f"/api/v3/treatments/{target['identifier']}?fields=eventType",
        headers={"Authorization": f"Bearer {world['jwt']}"},
    )
    assert response.json()["result"] == {"eventType": target["eventType"]}
    assert response.headers["last-modified"].endswith(" GMT")
    assert get(world, f"/api/v3/entries/{target['identifier']}") == (404, {"status": 404})
    assert get(world, "/api/v3/food/anything") == (404, {"status": 404})


def test_history_lists_changes_oldest_first_with_the_etag_clients_resume_from(world):
    response = world["client"].get(
        "/api/v3/treatments/history/0", headers={"Authorization": f"Bearer {world['jwt']}"}
    )
    docs = response.json()["result"]
    assert len(docs) == len(world["stored"]["treatments"])
    modified = [d["srvModified"] for d in docs]
    assert modified == sorted(modified)
    # AndroidAPS: eTag.substring(3, length - 1).toLong()
    etag = response.headers["etag"]
    assert etag.startswith('W/"') and int(etag[3:-1]) == max(modified)
    assert response.headers["last-modified"].endswith(" GMT")
    nothing = world["client"].get(
        f"/api/v3/treatments/history/{max(modified)}", headers={"Authorization": f"Bearer {world['jwt']}"}
    )
    assert nothing.json() == {"status": 200, "result": []} and int(nothing.headers["etag"][3:-1]) == max(
        modified
    )
    # epoch seconds and ISO name the same instant
    seconds = get(world, f"/api/v3/treatments/history/{max(modified) // 1000 - 1}")[1]["result"]
    assert len(seconds) == len(docs)
    # the header form: changes at or after the second it names
    by_header = world["client"].get(
        "/api/v3/treatments/history",
        headers={"Authorization": f"Bearer {world['jwt']}", "Last-Modified": "Thu, 01 Jan 2004 00:00:00 GMT"},
    )
    assert by_header.json()["result"] == docs


def test_history_pages_never_split_an_instant(tmp_path, monkeypatch):
    """Resuming after the newest srvModified of a page loses nothing, even when a page would end
    among records written in the same millisecond."""
    path = tmp_path / "s.db"
    now = [1_800_000_000_000]
    monkeypatch.setattr(database, "_now_ms", lambda: now[0])
    store = Store(path)
    t = 1_750_000_000_000
    written = 0
    for size in (2, 2, 4, 1, 3, 2):  # frames, each written in one millisecond
        store.upsert(
            [Entry(type="sgv", date=t + (written + i) * 300_000, device="d", sgv=100) for i in range(size)]
        )
        written += size
        now[0] += 1
    store.close()
    app, reader = make_app(path)
    seen: list[str] = []
    pages = []
    with ApiClient(app) as client:
        since = 0
        while True:
            response = client.get(
                f"/api/v3/entries/history/{since}?limit=3", headers={"Authorization": f"Bearer {SECRET}"}
            )
            page = response.json()["result"]
            if not page:
                break
            pages.append(len(page))
            seen.extend(d["identifier"] for d in page)
            since = int(response.headers["etag"][3:-1])
    reader.close()
    assert len(seen) == len(set(seen)) == written
    assert pages == [2, 2, 4, 1, 3, 2]  # the four written together come whole, beyond the limit


# --- filters against a model of their semantics ---------------------------------------------------


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory):
    path = Path(tmp_path_factory.mktemp("mixed")) / "store.db"
    store = Store(path)
    t = 1_750_000_000_000
    records = []
    for i in range(40):
        kind = ("sgv", "sgv", "mbg", "cal")[i % 4]
        records.append(
            Entry(
                type=kind,
                date=t + i * 300_000,
                device=("a", "b", "120")[i % 3],
                sgv=60 + (i * 37) % 200 if kind == "sgv" else None,
                mbg=100 + i if kind == "mbg" else None,
                direction=("Flat", "SingleUp", None)[i % 3] if kind == "sgv" else None,
                noise=i % 5 if i % 2 else None,
            )
        )
    records += [
        DeviceStatus(device="p", date=t + i, payload={"pump": {"reservoir": i * 10, "ok": i % 2 == 0}})
        for i in range(6)
    ]
    store.upsert(records)
    docs = {c: store.docs(c) for c in ("entries", "devicestatus")}
    store.close()
    app, reader = make_app(path, secret=None, readable=True)
    with ApiClient(app) as client:
        yield client, docs
    reader.close()


def _same_type(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, (int, float)):
        return isinstance(b, (int, float))
    return type(a) is type(b)


def _member(doc: dict, field: str):
    value = doc
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def model(doc: dict, field: str, op: str, values: list) -> bool:
    """MongoDB's semantics for v3's operators, on one document."""
    have = _member(doc, field)

    def eq(v):
        return have is not None and _same_type(have, v) and have == v

    if op == "eq":
        return eq(values[0])
    if op == "ne":
        return not eq(values[0])
    if op == "in":
        return any(eq(v) for v in values)
    if op == "nin":
        return not any(eq(v) for v in values)
    v = values[0]
    if have is None or not _same_type(have, v):
        return False
    return {"gt": have > v, "gte": have >= v, "lt": have < v, "lte": have <= v}[op]


#: a value as the query string writes it, and what v3 reads it as
VALUES = st.sampled_from(
    [("100", 100), ("120", 120), ("150.5", 150.5), ("0", 0), ("3", 3), ("'120'", "120"), ("Flat", "Flat"),
     ("sgv", "sgv"), ("mbg", "mbg"), ("a", "a"), ("true", True), ("false", False), ("30", 30)]
)  # fmt: skip
FIELDS = st.sampled_from(
    ["sgv", "mbg", "noise", "type", "direction", "device", "trend", "pump.reservoir", "pump.ok", "pump"]
)


@given(
    conditions=st.lists(
        st.tuples(
            FIELDS,
            st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"]),
            st.lists(VALUES, min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=3,
    ),
    collection=st.sampled_from(["entries", "devicestatus"]),
)
@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
def test_filters_agree_with_mongodbs_semantics(mixed, conditions, collection):
    client, docs = mixed
    params = []
    for field, op, values in conditions:
        used = values if op in ("in", "nin") else values[:1]
        key = field if op == "eq" and len(params) % 2 else f"{field}${op}"
        params.append((key, "|".join(text for text, _ in used)))
    response = client.get(f"/api/v3/{collection}?" + urlencode(params) + "&limit=1000")
    assert response.status_code == 200, response.text
    got = sorted(d["identifier"] for d in response.json()["result"])
    expected = sorted(
        d["identifier"]
        for d in docs[collection]
        if all(
            model(d, field, op, [v for _, v in (values if op in ("in", "nin") else values[:1])])
            for field, op, values in conditions
        )
    )
    assert got == expected, params
