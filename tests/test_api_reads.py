"""Nightscout v1 reads: routes, ``count`` and ``find`` semantics, document shape, 400s."""

from __future__ import annotations

import hashlib
import operator
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from api.patterns import MAX_PATTERN, MAX_SUBJECT, PatternError, compile_pattern
from api.query import MAX_FIND, QueryError, parse_read
from connect.records import DeviceStatus, Entry, Treatment, iso_from_ms
from store import Store
from store.database import object_id
from store.reader import StoreReader
from store.values import Filter
from tests.test_api_support import FIVE_MIN, ApiClient, make_app, populate


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    path = Path(tmp_path_factory.mktemp("reads")) / "store.db"
    info = populate(path, count=300)
    store = Store(path)
    all_entries = store.docs("entries")  # the ground truth, newest first
    store.close()
    app, reader = make_app(path, secret=None, readable=True)
    with ApiClient(app) as client:
        yield {**info, "client": client, "path": path, "entries": all_entries}
    reader.close()


#: what the API adds to a stored document: Nightscout's server-side fields
SERVED = ("_id", "delta", "mills", "sysTime", "utcOffset")


def strip(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in SERVED}


def get_text(world, url: str) -> str:
    response = world["client"].get(url)
    assert response.status_code == 200, response.text
    return response.text


def get(world, url: str, status: int = 200):
    response = world["client"].get(url)
    assert response.status_code == status, response.text
    return response.json()


# --- routes and defaults ------------------------------------------------------------------------


def test_entries_default_to_the_newest_ten(world):
    docs = get(world, "/api/v1/entries.json")
    assert [strip(d) for d in docs] == world["entries"][:10]
    assert get(world, "/api/v1/entries") == docs  # the suffix-less route answers the same


def test_every_document_has_a_stable_object_id(world):
    docs = get(world, "/api/v1/entries.json?count=50")
    ids = [d["_id"] for d in docs]
    assert len(set(ids)) == 50
    for doc in docs:
        assert len(doc["_id"]) == 24 and int(doc["_id"], 16) >= 0
        # identifiers are UUID v5 (a SHA-1 already): the id is their first 24 hex digits
        assert doc["_id"] == doc["identifier"].replace("-", "")[:24]
    assert [d["_id"] for d in get(world, "/api/v1/entries.json?count=50")] == ids


def test_object_ids_for_identifiers_that_are_not_uuids():
    assert object_id("6f1b4e9c-0d55-5f43-9f3e-2b9a1c7d8e6f") == "6f1b4e9c0d555f439f3e2b9a"
    assert object_id("not-a-uuid") == hashlib.sha1(b"not-a-uuid").hexdigest()[:24]
    assert object_id("6F1B4E9C-0D55-5F43-9F3E-2B9A1C7D8E6F") == "6f1b4e9c0d555f439f3e2b9a"


def test_count_limits_and_caps(world):
    assert len(get(world, "/api/v1/entries.json?count=288")) == 288
    everything = get(world, "/api/v1/entries.json?count=0")  # Mongo's "no limit", within the cap
    assert len(everything) == len(world["entries"]) == 302
    assert get(world, "/api/v1/entries.json?count=99999999") == everything
    dates = [d["date"] for d in everything]
    assert dates == sorted(dates, reverse=True)


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "1e3", "99999999999999999999"])
def test_non_numeric_count_is_a_400_naming_count(world, value):
    body = get(world, f"/api/v1/entries.json?count={value}", 400)
    assert body["status"] == 400 and "count" in body["description"]
    get(world, f"/api/v1/treatments.json?count={value}", 400)


def test_typed_entry_routes(world):
    sgv = get(world, "/api/v1/entries/sgv.json?count=1000")
    assert len(sgv) == 300 and {d["type"] for d in sgv} == {"sgv"}
    mbg = get(world, "/api/v1/entries/mbg.json")
    assert [(d["type"], d["mbg"]) for d in mbg] == [("mbg", 123)]
    cal = get(world, "/api/v1/entries/cal")
    assert [d["type"] for d in cal] == ["cal"] and cal[0]["slope"] == 900.0
    # the route's type and a find on another type: nothing matches both
    assert get(world, "/api/v1/entries/sgv.json?find[type]=mbg") == []


def test_current_is_the_newest_entry(world):
    current = get(world, "/api/v1/entries/current.json")
    assert [strip(d) for d in current] == world["entries"][:1]
    assert get(world, "/api/v1/entries/current.json?count=5") == current
    assert get(world, "/api/v1/entries/current") == current


def test_treatments_devicestatus_profile(world, tmp_path):
    treatments = get(world, "/api/v1/treatments.json")
    assert len(treatments) == 6
    created = [t["created_at"] for t in treatments]
    assert created == sorted(created, reverse=True)
    assert {t["eventType"] for t in treatments} == {"Meal Bolus", "Temp Basal"}
    temp = get(world, "/api/v1/treatments.json?find[eventType]=Temp Basal")
    assert [t["rate"] for t in temp] == [0.5]
    statuses = get(world, "/api/v1/devicestatus.json")
    assert [s["pump"]["reservoir"] for s in statuses] == [100, 99, 98]
    assert all(s["device"] == "pump" and s["created_at"].endswith("Z") for s in statuses)
    profiles = get(world, "/api/v1/profile.json")
    assert profiles[0]["defaultProfile"] == "Default" and profiles[0]["store"]["Default"]["dia"] == "4"
    assert get(world, "/api/v1/profile") == profiles


def test_treatments_default_to_one_hundred_or_a_thousand_with_a_find(tmp_path):
    path = tmp_path / "many.db"
    store = Store(path)
    base = 1_750_000_000_000
    store.upsert(
        [Treatment(event_type="Note", date=base + i * 60_000, device="x", notes=f"n{i}") for i in range(1100)]
        + [DeviceStatus(device="x", date=base + i * 60_000, payload={}) for i in range(20)]
    )
    store.close()
    app, reader = make_app(path, secret=None, readable=True)
    with ApiClient(app) as client:
        docs = client.get("/api/v1/treatments.json").json()
        assert len(docs) == 100 and docs[0]["notes"] == "n1099"
        # Nightscout: 1000 once a find is given, whatever it finds
        found = client.get("/api/v1/treatments.json?find[eventType]=Note").json()
        assert len(found) == 1000 and found[0]["notes"] == "n1099"
        since = client.get(f"/api/v1/treatments.json?find[created_at][$gte]={iso_from_ms(base)}").json()
        assert len(since) == 1000
        assert len(client.get("/api/v1/treatments.json?find[eventType]=Note&count=7").json()) == 7
        # only treatments: the other collections keep 10 with a find
        assert len(client.get("/api/v1/devicestatus.json?find[device]=x").json()) == 10
        assert len(client.get("/api/v1/entries.json?find[device]=x").json()) == 0
    reader.close()


# --- find --------------------------------------------------------------------------------------


def test_find_on_date_range(world):
    entries = world["entries"]
    lo, hi = entries[40]["date"], entries[10]["date"]
    docs = get(world, f"/api/v1/entries.json?count=1000&find[date][$gte]={lo}&find[date][$lt]={hi}")
    assert [strip(d) for d in docs] == [e for e in entries if lo <= e["date"] < hi]
    assert len(docs) == 30


def test_find_on_iso_times_compares_times_not_strings(world):
    entries = world["entries"]
    target = entries[20]["date"]
    # the same instant written with an offset: a string comparison would get this wrong
    from datetime import UTC, datetime, timedelta, timezone

    local = datetime.fromtimestamp(target / 1000, tz=UTC).astimezone(timezone(timedelta(hours=5)))
    text = local.isoformat(timespec="milliseconds").replace("+", "%2B")
    docs = get(world, f"/api/v1/entries.json?count=1000&find[dateString][$gte]={text}")
    assert [d["date"] for d in docs] == [e["date"] for e in entries if e["date"] >= target]
    # the same, with the "+" of the offset left unencoded (it arrives as a space)
    spaced = get(world, f"/api/v1/entries.json?count=1000&find[dateString][$gte]={text.replace('%2B', '+')}")
    assert spaced == docs
    exact = get(world, f"/api/v1/entries.json?find[dateString]={iso_from_ms(target)}")
    assert [d["date"] for d in exact] == [target]
    eq = get(world, f"/api/v1/entries.json?find[date][$eq]={target}")
    assert eq == exact


def test_find_on_type_and_device(world):
    assert [d["device"] for d in get(world, "/api/v1/entries.json?find[device]=meter")] == ["meter"]
    not_sgv = get(world, "/api/v1/entries.json?find[type][$ne]=sgv")
    assert sorted(d["type"] for d in not_sgv) == ["cal", "mbg"]


def test_find_on_treatment_created_at(world):
    end = world["end"]
    since = iso_from_ms(end - 2 * 3_600_000)
    docs = get(world, f"/api/v1/treatments.json?find[created_at][$gte]={since}")
    assert sorted(d["created_at"] for d in docs) == sorted(
        iso_from_ms(t.date) for t in world["treatments"] if t.date >= end - 2 * 3_600_000
    )


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("find[date][$regex]=1", "$regex"),
        ("find[date][$gte]=2024-01-18T00:00:00Z", "find[date][$gte]"),
        ("find[date][$gte]=soon", "find[date][$gte]"),
        ("find[dateString][$gte]=yesterday", "find[dateString][$gte]"),
        ("find[dateString][$lt]=2024-13-45", "find[dateString][$lt]"),
        ("find[col our]=red", "col our"),
        ("find[colour][$exists]=maybe", "$exists"),
        ("find[colour]=/re(d)%2B/", "find[colour]"),
        ("find[date][$gte][x]=1", "find[date][$gte][x]"),
        ("find=1", "find"),
        ("find[date][$gte]=99999999999999999999", "find[date][$gte]"),
        ("find[sgv][$gt][0]=1", "find[sgv][$gt][0]"),
    ],
)
def test_bad_find_is_a_400_naming_the_problem(world, query, named):
    body = get(world, f"/api/v1/entries.json?{query}", 400)
    assert body["status"] == 400 and body["message"] == "Bad Request"
    assert named in body["description"]


@pytest.mark.parametrize("conditions", [MAX_FIND + 1, 2000])
def test_more_find_conditions_than_the_cap_is_a_400_not_a_503(world, conditions):
    # about a thousand conditions exceed SQLite's expression limit: the store was reported
    # unavailable (503) for what is a client's mistake
    params = urlencode([("find[date][$gte]", str(i)) for i in range(conditions)])
    with capture_logs() as logs:
        body = get(world, f"/api/v1/entries.json?{params}", 400)
    assert body["status"] == 400
    assert f"{conditions} conditions" in body["description"]
    assert f"at most {MAX_FIND}" in body["description"]
    assert not [e for e in logs if e.get("event") == "store unavailable"]


def test_as_many_find_conditions_as_the_cap_are_answered(world):
    lo = world["entries"][-1]["date"]
    params = [("find[date][$gte]", str(lo + i)) for i in range(MAX_FIND - 1)]
    docs = get(world, f"/api/v1/entries.json?count=5&{urlencode([*params, ('find[type]', 'sgv')])}")
    assert len(docs) == 5
    assert all(d["type"] == "sgv" for d in docs)
    # patterns and ids count too
    mixed = [("find[eventType]", "/^Temp/")] * MAX_FIND + [("find[_id]", "0" * 24)]
    get(world, f"/api/v1/treatments.json?{urlencode(mixed)}", 400)


def test_other_parameters_are_ignored(world):
    # cache busters and Nightscout parameters this API does not need
    assert get(world, "/api/v1/entries.json?_=123&findings=x&units=mmol") == get(
        world, "/api/v1/entries.json"
    )


OPS = {"$gte": operator.ge, "$gt": operator.gt, "$lte": operator.le, "$lt": operator.lt, "$eq": operator.eq}


@given(
    conditions=st.lists(
        st.tuples(st.sampled_from(sorted(OPS)), st.integers(min_value=0, max_value=305)),
        min_size=1,
        max_size=3,
    ),
    count=st.integers(min_value=1, max_value=400),
)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_find_matches_a_model(world, conditions, count):
    entries = world["entries"]
    # thresholds on and between stored times
    newest = entries[0]["date"]
    params = [f"count={count}"]
    bounds = []
    for op, steps in conditions:
        value = newest - steps * FIVE_MIN // 2
        params.append(f"find[date][{op}]={value}")
        bounds.append((OPS[op], value))
    docs = get(world, "/api/v1/entries.json?" + "&".join(params))
    expected = [e for e in entries if all(fn(e["date"], v) for fn, v in bounds)][:count]
    assert [d["date"] for d in docs] == [e["date"] for e in expected]


# --- documents ---------------------------------------------------------------------------------


def test_readings_carry_a_delta_from_the_previous_reading(tmp_path):
    path = tmp_path / "delta.db"
    store = Store(path)
    t0 = 1_750_000_000_000
    store.upsert(
        [
            Entry(type="sgv", date=t0, device="a", sgv=100),  # first: no previous reading
            Entry(type="sgv", date=t0 + FIVE_MIN, device="a", sgv=108),
            Entry(type="sgv", date=t0 + 3 * FIVE_MIN, device="a", sgv=128),  # one reading missed
            Entry(type="sgv", date=t0 + 3 * FIVE_MIN + 1000, device="b", sgv=90),  # another device
            Entry(type="sgv", date=t0 + 10 * FIVE_MIN, device="a", sgv=150),  # after a long gap
            Entry(type="sgv", date=t0 + 11 * FIVE_MIN, device="a", sgv=149, delta=-1.5),  # its own delta
        ]
    )
    store.close()
    app, reader = make_app(path, secret=None, readable=True)
    with ApiClient(app) as client:
        docs = {(d["device"], d["date"]): d for d in client.get("/api/v1/entries.json?count=0").json()}
    reader.close()
    assert "delta" not in docs[("a", t0)]
    assert docs[("a", t0 + FIVE_MIN)]["delta"] == 8
    assert docs[("a", t0 + 3 * FIVE_MIN)]["delta"] == 10.0  # 20 over ten minutes, per five
    assert "delta" not in docs[("b", t0 + 3 * FIVE_MIN + 1000)]
    assert "delta" not in docs[("a", t0 + 10 * FIVE_MIN)]
    assert docs[("a", t0 + 11 * FIVE_MIN)]["delta"] == -1.5


def test_status_json_has_nightscouts_shape(world):
    status = get(world, "/api/v1/status.json")
    assert status["status"] == "ok" and status["apiEnabled"] is True and status["authorized"] is None
    assert status["name"] == "nightscout-connect"
    # clients parse major.minor.patch of a Nightscout version (uploaders warn below 0.10.2):
    # ours must read as the Nightscout release whose reads we follow, our own beside it
    major, minor, patch = (int(part) for part in status["version"].split("."))
    assert (major, minor, patch) >= (15, 0, 0)
    assert status["connectVersion"] and status["connectVersion"] != status["version"]
    assert isinstance(status["serverTimeEpoch"], int) and status["serverTime"].endswith("Z")
    assert status["settings"]["units"] == "mg/dl"
    assert status["settings"]["thresholds"] == {
        "bgHigh": 260,
        "bgTargetTop": 180,
        "bgTargetBottom": 80,
        "bgLow": 55,
    }
    plain = get(world, "/api/v1/status")
    timeless = {"serverTime", "serverTimeEpoch"}
    assert {k: v for k, v in plain.items() if k not in timeless} == {
        k: v for k, v in status.items() if k not in timeless
    }


def test_unknown_paths_and_methods(world):
    body = get(world, "/api/v1/nothing.json", 404)
    assert body == {"status": 404, "message": "Not Found"}
    # writes exist, but never without the secret (this API has none, and only reads)
    response = world["client"].post("/api/v1/entries.json", json=[])
    assert response.status_code == 401
    response = world["client"].patch("/api/v1/entries.json", json=[])
    assert response.status_code == 405


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory: pytest.TempPathFactory):
    """Two devices with gaps, meter values between readings, some readings with their own delta."""
    path = Path(tmp_path_factory.mktemp("mixed")) / "store.db"
    store = Store(path)
    t0 = 1_750_000_000_000
    records = []
    for i in range(120):
        if i % 17 in (5, 6) or i % 41 == 0:  # missed readings and longer gaps
            continue
        records.append(Entry(type="sgv", date=t0 + i * FIVE_MIN, device="a", sgv=80 + (i * 13) % 150))
        if i % 3 == 0:
            records.append(
                Entry(
                    type="sgv",
                    date=t0 + i * FIVE_MIN + 90_000,
                    device="b",
                    sgv=100 + i % 60,
                    delta=(i % 5) - 2.0,
                )
            )
        if i % 11 == 0:
            records.append(Entry(type="mbg", date=t0 + i * FIVE_MIN + 30_000, device="a", mbg=110))
    store.upsert(records)
    store.close()
    reader = StoreReader(path)
    yield reader, t0
    reader.close()


FILTERS = st.lists(
    st.one_of(
        st.tuples(st.just("date"), st.sampled_from([">=", ">", "<=", "<", "=", "!="]), st.integers(-5, 125)),
        st.tuples(st.just("type"), st.sampled_from(["=", "!="]), st.sampled_from(["sgv", "mbg"])),
        st.tuples(st.just("device"), st.sampled_from(["=", "!="]), st.sampled_from(["a", "b"])),
        st.tuples(st.just("sgv"), st.sampled_from([">", "<"]), st.integers(80, 230)),
    ),
    max_size=3,
)


@given(filters=FILTERS, limit=st.integers(min_value=1, max_value=200))
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_deltas_from_the_page_equal_deltas_looked_up(mixed_store, filters, limit):
    reader, t0 = mixed_store
    built = [
        Filter(column, op, t0 + value * FIVE_MIN // 2 if column == "date" else value)
        for column, op, value in filters
    ]
    fast = reader.doc_texts("entries", built, limit)
    looked_up = reader.doc_texts("entries", built, limit, page_deltas=False)
    assert fast == looked_up


READ_PATHS = [
    "/api/v1/entries.json",
    "/api/v1/entries/sgv.json",
    "/api/v1/entries/current.json",
    "/api/v1/entries/0123456789abcdef01234567",
    "/api/v1/treatments.json",
    "/api/v1/devicestatus.json",
    "/api/v1/profile.json",
    "/api/v1/status.json",
    "/api/connect/status",
    "/metrics",
    "/",
]
_KEYS = st.one_of(
    st.sampled_from(
        [
            "count",
            "find",
            "find[date]",
            "find[type]",
            "find[device]",
            "find[created_at]",
            "find[_id]",
            "find[eventType]",
        ]
    ),
    st.builds(
        lambda field, op: f"find[{field}][{op}]",
        st.sampled_from(
            ["date", "dateString", "created_at", "type", "device", "sgv", "_id", "eventType", "x", ""]
        ),
        st.sampled_from(["$gte", "$gt", "$lte", "$lt", "$eq", "$ne", "$in", "$where", "", "[x]"]),
    ),
    st.text(max_size=20),
)
_VALUES = st.one_of(
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.sampled_from(["", " ", "2024-01-18T00:00:00Z", "2024-01-18T00:00:00 02:00", "nan", "1e309", "0x10"]),
    st.sampled_from(["/Meal/i", "/(/", "/(a+)+b/", "//", "/a/z", "0123456789abcdef01234567"]),
    st.builds(
        lambda body, flags: f"/{body}/{flags}", st.text(max_size=12), st.sampled_from(["", "i", "gu", "x"])
    ),
    st.text(max_size=30),
)


@given(
    path=st.sampled_from(READ_PATHS),
    params=st.lists(st.tuples(_KEYS, _VALUES), max_size=4),
)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_query_string_gets_a_500(world, path, params):
    response = world["client"].get(path, params=params)
    assert response.status_code in (200, 400), (path, params, response.text)
    if response.status_code == 400:
        body = response.json()
        assert body["status"] == 400 and body["message"] == "Bad Request" and body["description"]


# --- Nightscout's server fields, _id lookups, /pattern/ values ------------------------------------


def test_entries_carry_nightscouts_sys_time_and_utc_offset(world):
    for url in (
        "/api/v1/entries.json?count=50",
        "/api/v1/entries/sgv.json",
        "/api/v1/entries/mbg.json",
        "/api/v1/entries/current.json",
        "/api/v1/entries/cal",
    ):
        docs = get(world, url)
        assert docs, url
        for doc in docs:
            assert doc["sysTime"] == doc["dateString"] == iso_from_ms(doc["date"]), url
            assert doc["utcOffset"] == 0  # the store keeps UTC
    # only entries: Nightscout computes sysTime for entries alone
    assert all("sysTime" not in t for t in get(world, "/api/v1/treatments.json"))


@pytest.mark.parametrize("collection", ["entries", "treatments", "devicestatus", "profile"])
def test_find_by_the_id_we_serve(world, collection):
    docs = get(world, f"/api/v1/{collection}.json?count=0")
    target = docs[len(docs) // 2]
    for query in (f"find[_id]={target['_id']}", f"find[_id][$eq]={target['_id'].upper()}"):
        found = get(world, f"/api/v1/{collection}.json?{query}")
        assert found == [target], query
    # every condition must hold
    assert (
        get(world, f"/api/v1/{collection}.json?find[_id]={target['_id']}&find[date][$gt]={target['date']}")
        == []
    )
    assert (
        get(world, f"/api/v1/{collection}.json?find[_id]={target['_id']}&find[_id]=0123456789abcdef01234567")
        == []
    )
    # an id nothing was served with
    assert get(world, f"/api/v1/{collection}.json?find[_id]=0123456789abcdef01234567") == []


def test_an_entry_by_its_id_in_the_path(world):
    docs = get(world, "/api/v1/entries.json?count=0")
    for target in (docs[0], docs[7], docs[-1]):
        assert get(world, f"/api/v1/entries/{target['_id']}") == [target]
        assert get(world, f"/api/v1/entries/{target['_id']}.json") == [target]
        # the delta is the one every other read serves
        assert get(world, f"/api/v1/entries/{target['_id'].upper()}") == [target]
    assert get(world, "/api/v1/entries/0123456789abcdef01234567") == []
    # Nightscout's /entries/<type> for the types without a route of their own
    assert get(world, "/api/v1/entries/sensor") == []
    assert [d["type"] for d in get(world, "/api/v1/entries/mbg?count=5")] == ["mbg"]


@pytest.mark.parametrize(
    "query",
    [
        "find[_id]=abc",
        "find[_id]=0123456789abcdef0123456g",
        "find[_id][$gt]=0123456789abcdef01234567",
        "find[_id][$ne]=0123456789abcdef01234567",
    ],
)
def test_a_bad_id_is_a_400(world, query):
    body = get(world, f"/api/v1/entries.json?{query}", 400)
    assert "find[_id]" in body["description"]


def test_a_path_that_is_neither_an_id_nor_a_type_is_a_400(world):
    for spec in ("a.b", "0123456789abcdef0123456", "x" * 40, "sgv.xml", "sgv.csv.json"):
        get(world, f"/api/v1/entries/{spec}", 400)
    # Nightscout's text formats are routes of their own
    assert get_text(world, "/api/v1/entries/sgv.csv").count("\n") == 10


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/temp/i", ["Temp Basal"]),
        ("/^Meal/", ["Meal Bolus"] * 5),
        ("/Bolus$|Basal/", ["Meal Bolus"] * 2 + ["Temp Basal"] + ["Meal Bolus"] * 3),
        ("/Not/i", []),
        ("/m.*l b/i", ["Meal Bolus"] * 5),
        ("/[TX]emp\\s+Basal/", ["Temp Basal"]),
    ],
)
def test_event_type_as_a_regular_expression(world, value, expected):
    docs = get(world, "/api/v1/treatments.json?" + urlencode({"find[eventType]": value}))
    assert [d["eventType"] for d in docs] == expected
    created = [d["created_at"] for d in docs]
    assert created == sorted(created, reverse=True)


def test_event_type_patterns_combine_with_other_conditions(world):
    def event_types(params: dict[str, str]) -> list[str]:
        return [d["eventType"] for d in get(world, "/api/v1/treatments.json?" + urlencode(params))]

    assert event_types({"find[eventType][$ne]": "/meal/i"}) == ["Temp Basal"]
    assert event_types({"find[eventType][$eq]": "/meal/i", "count": "2"}) == ["Meal Bolus"] * 2
    assert event_types({"find[eventType]": "/e/", "find[eventType][$ne]": "/Meal/"}) == ["Temp Basal"]
    since = iso_from_ms(world["end"] - 2 * 3_600_000)
    assert event_types({"find[eventType]": "/Bolus/", "find[created_at][$gte]": since}) == ["Meal Bolus"] * 3
    # a value that only looks like a path stays a plain value
    assert event_types({"find[eventType]": "Meal Bolus/2"}) == []
    # any field takes a /pattern/ (Nightscout hands it to MongoDB as a regular expression)
    typed = get(world, "/api/v1/entries.json?" + urlencode({"find[type]": "/^s.v$/"}))
    assert typed and {d["type"] for d in typed} == {"sgv"}


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("/(/", "not a valid regular expression"),
        ("/[a-/", "not a valid regular expression"),
        ("/(a+)+b/", "group"),
        ("/(a|aa)*b/", "group"),
        ("/(?:ab){2,}/", "group"),
        ("/(a)\\1/", "backreference"),
        ("/[[a]]/", "class"),
        ("/[a--b]/", "class"),
        ("/(?P<x>a)(?P=x)/", "backreference"),
        ("/a*a*a*a*b/", "quantifiers"),
        ("/(a|a)(a|a)(a|a)(a|a)(a|a)a*b/", "alternatives"),
        ("/" + "a" * (MAX_PATTERN + 1) + "/", "characters"),
        ("/Meal/q", "flag"),
        ("/usr/bin", "flag"),
    ],
)
def test_a_refused_pattern_is_a_400_saying_why(world, value, why):
    body = get(world, "/api/v1/treatments.json?" + urlencode({"find[eventType]": value}), 400)
    assert "find[eventType]" in body["description"] and why in body["description"]


def test_a_pattern_with_a_range_operator_is_the_text_it_is(world):
    # MongoDB puts no text above or below a regular expression; here the value compares as text
    # ("/" sorts before every letter, so every event type is above it)
    above = get(world, "/api/v1/treatments.json?" + urlencode({"find[eventType][$gt]": "/Meal/"}))
    assert len(above) == 6
    assert get(world, "/api/v1/treatments.json?" + urlencode({"find[eventType][$lt]": "/Meal/"})) == []


def test_accepted_patterns_stay_fast_on_long_values(tmp_path):
    """The worst accepted shapes against values of the longest length tried, and longer."""
    path = tmp_path / "long.db"
    store = Store(path)
    base = 1_750_000_000_000
    store.upsert(
        [
            Treatment(event_type="a" * length, date=base + length, device="x")
            for length in (MAX_SUBJECT - 1, MAX_SUBJECT, 500, 5000)
        ]
    )
    store.close()
    app, reader = make_app(path, secret=None, readable=True)
    worst = [
        "/a*a*a*b/",
        "/.*a.*a.*b/",
        "/[ab]*[ab]*[ab]*c/",
        "/a{1,30}a*a?$b/",
        "/(a|a)(a|a)(a|a)(a|a)a*a*a*b/",
        "/" + "(a|a)" * 12 + "b/",
    ]
    with ApiClient(app) as client:
        started = time.perf_counter()
        for value in worst:
            response = client.get("/api/v1/treatments.json?" + urlencode({"find[eventType]": value}))
            assert response.status_code == 200 and response.json() == [], value
        matched = client.get("/api/v1/treatments.json?" + urlencode({"find[eventType]": "/^a+$/"})).json()
    reader.close()
    assert time.perf_counter() - started < 2.0
    # values longer than MAX_SUBJECT never match a pattern
    assert sorted(len(d["eventType"]) for d in matched) == [MAX_SUBJECT - 1, MAX_SUBJECT]


@pytest.mark.parametrize(
    "value",
    [
        "/Meal Bolus/",
        "/A|B|C|D|E|F|G/",
        "/^(Meal|Snack) Bolus$/i",
        "/[A-Z]\\w+ \\(x\\)/",
        "/a{2}b?c*?/",
        "/x|y|z/gu",
        "/(?i)temp/",
    ],
)
def test_ordinary_patterns_compile(value):
    assert compile_pattern(value).regex.pattern == value[1 : value.rindex("/")]


def test_the_query_carries_patterns_and_ids_apart_from_store_filters():
    query = parse_read(
        "treatments",
        [("find[eventType]", "/meal/i"), ("find[_id]", "0123456789ABCDEF01234567"), ("find[device]", "pump")],
    )
    assert [(f.column, f.op, f.value) for f in query.filters] == [("device", "=", "pump")]
    assert query.object_ids == ("0123456789abcdef01234567",)
    (match,) = query.matches
    assert match.column == "event_type" and match.holds("Meal Bolus") and not match.holds("Note")
    assert query.limit == 1000
    # a pattern on any other field is a condition on the document
    (condition,) = parse_read("treatments", [("find[notes]", "/x/")]).conditions
    assert condition.field == "notes" and condition.op == "re"
    with pytest.raises(QueryError):
        parse_read("treatments", [("find[notes]", "/(x)+/")])
    # a path is a value, not a pattern with flags "profile"
    (literal,) = parse_read("entries", [("find[type]", "/api/v1/profile")]).filters
    assert (literal.column, literal.op, literal.value) == ("type", "=", "/api/v1/profile")
    (other,) = parse_read("entries", [("find[notes]", "/api/v1/profile")]).conditions
    assert other.op == "in" and other.values == ("/api/v1/profile",)


@given(body=st.text(alphabet=st.sampled_from("ab()[]{}|*+?.^$\\-,:=!<>P0123456789x"), max_size=40))
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_any_pattern_compiles_or_is_refused_and_stays_fast(body):
    try:
        pattern = compile_pattern(f"/{body}/i")
    except PatternError:
        return
    started = time.perf_counter()
    for length in range(0, MAX_SUBJECT + 1, 16):
        pattern.matches("a" * length)
        pattern.matches("ab" * (length // 2))
    assert time.perf_counter() - started < 0.5, body
