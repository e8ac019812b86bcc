"""Nightscout parity of the v1 reads (issue "Nightscout parity"): the requests real Nightscout
(cgm-remote-monitor 15.0.7) answered and we did not, answered as it does; and ``find`` on any
field agreeing with a small evaluator of MongoDB's semantics.

The real answers these rows rely on are Nightscout's documented behaviour: a ``find`` is handed
to MongoDB, so ``find[carbs][$gt]=0`` selects the treatments whose ``carbs`` is a number above
0, ``$in`` takes the values given as ``find[f][$in][]=…``, and a missing field never satisfies a
comparison but does satisfy ``$ne``/``$nin``.
"""

from __future__ import annotations

import hashlib
import operator
import random
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connect.records import DeviceStatus, Treatment, from_nightscout, to_nightscout
from store import Store
from tests.test_api_support import SECRET, ApiClient, make_app, populate

BASE = 1_750_000_000_000


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    path = Path(tmp_path_factory.mktemp("parity")) / "store.db"
    info = populate(path, count=60)
    end = info["end"]
    store = Store(path)
    store.upsert(
        [
            Treatment(
                event_type="Correction Bolus",
                date=end - 20 * 60_000,
                device="pump",
                insulin=1.5,
                entered_by="x",
            ),
            Treatment(
                event_type="Carb Correction", date=end - 25 * 60_000, device="phone", carbs=12, entered_by="y"
            ),
            Treatment(
                event_type="Note", date=end - 26 * 60_000, device="phone", notes="walk", entered_by="x"
            ),
        ],
        source="test",
    )
    store.close()
    app, reader = make_app(path, secret=None, readable=True)
    with ApiClient(app) as client:
        yield {**info, "client": client}
    reader.close()


def get(world: dict[str, Any], url: str, status: int = 200) -> Any:
    response = world["client"].get(url)
    assert response.status_code == status, response.text
    return response.json()


# --- the issue's table: each row as real Nightscout answers it ------------------------------


def _events(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["eventType"] for d in docs)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # a number compares as a number: the five meal boluses and the carb correction
        ("find[carbs][$gt]=0", ["Carb Correction"] + ["Meal Bolus"] * 5),
        ("find[insulin][$gte]=2", ["Meal Bolus"] * 5),
        ("find[insulin][$lt]=2", ["Correction Bolus"]),
        ("find[enteredBy]=x", ["Correction Bolus", "Note"]),
        ("find[enteredBy][$ne]=x", ["Carb Correction"] + ["Meal Bolus"] * 5 + ["Temp Basal"]),
        (
            "find[eventType][$in][]=Note&find[eventType][$in][]=Temp Basal",
            ["Note", "Temp Basal"],
        ),
        (
            "find[eventType][$nin][]=Meal Bolus&find[eventType][$nin][]=Note",
            ["Carb Correction", "Correction Bolus", "Temp Basal"],
        ),
        ("find[notes][$exists]=true", ["Note"]),
        ("find[rate][$exists]=false&find[carbs][$exists]=false", ["Correction Bolus", "Note"]),
        ("find[enteredBy]=/^X$/i", ["Correction Bolus", "Note"]),
        ("find[carbs]=30&find[device]=pump", ["Meal Bolus"] * 5),
        ("find[carbs]=30.0", ["Meal Bolus"] * 5),
    ],
)
def test_treatment_finds_answer_the_matching_documents(world, query, expected):
    assert _events(get(world, f"/api/v1/treatments.json?{query}")) == sorted(expected)


def test_entries_find_on_direction_and_nested_devicestatus_members(world):
    flat = get(world, "/api/v1/entries/sgv.json?find[direction]=Flat&count=100")
    expected = [e for e in world["entries"] if e.direction == "Flat"]
    assert len(flat) == len(expected) > 0 and {d["direction"] for d in flat} == {"Flat"}
    assert get(world, "/api/v1/entries.json?find[direction]=Flat&count=100") == flat
    # sgv compared as a number (the indexed column)
    high = get(world, "/api/v1/entries.json?find[sgv][$gte]=200&count=100")
    assert high and all(d["sgv"] >= 200 for d in high)
    assert len(high) == sum(1 for e in world["entries"] if e.sgv is not None and e.sgv >= 200)
    low = get(world, "/api/v1/devicestatus.json?find[pump.reservoir][$lt]=100")
    assert [d["pump"]["reservoir"] for d in low] == [99, 98]
    assert get(world, "/api/v1/profile.json?find[units]=mg/dl")[0]["units"] == "mg/dl"


def test_served_documents_carry_mills_and_whole_numbers(world):
    (entry,) = get(world, "/api/v1/entries.json?count=1")
    assert entry["mills"] == entry["date"]
    meals = get(world, "/api/v1/treatments.json?find[eventType]=Meal Bolus")
    assert all(t["mills"] == t["date"] for t in meals)
    response = world["client"].get("/api/v1/treatments.json?find[eventType]=Meal Bolus")
    assert '"carbs":30,' in response.text or '"carbs":30}' in response.text


# --- every row of the issue's table, each request sent with the secret ----------------------

SHA1 = hashlib.sha1(SECRET.encode()).hexdigest()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    path = Path(tmp_path_factory.mktemp("table")) / "store.db"
    info = populate(path, count=30)
    store = Store(path)
    store.upsert(
        [
            Treatment(
                event_type="Note", date=info["end"] - 7 * 60_000, device="phone", notes="x", entered_by="x"
            ),
            DeviceStatus(device="phone", date=info["end"] - 60_000, payload={"uploader": {"battery": 87}}),
        ],
        source="test",
    )
    store.close()
    app, reader = make_app(path)
    with ApiClient(app, headers={"api-secret": SHA1}) as client:
        yield client
    reader.close()


def _lines(text: str, separator: str) -> list[list[str]]:
    return [line.split(separator) for line in text.splitlines()]


def _check_text(separator: str, count: int):
    def check(response: Any) -> None:
        rows = _lines(response.text, separator)
        assert len(rows) == count and all(len(r) == 5 for r in rows)
        date_string, date, sgv, direction, device = rows[0]
        assert date_string.startswith('"20') and date.isdigit() and sgv.isdigit()
        assert direction.startswith('"') and device == '"share2"'

    return check


def _check_pebble(response: Any) -> None:
    body = response.json()
    assert set(body) == {"status", "bgs", "cals"} and len(body["bgs"]) == 3
    newest = body["bgs"][0]
    assert isinstance(newest["sgv"], str) and isinstance(newest["trend"], int)
    assert {"direction", "datetime", "bgdelta"} <= set(newest) and newest["battery"] == "87"
    assert body["cals"][0]["slope"] == 900.0


def _check_properties(response: Any) -> None:
    body = response.json()
    assert set(body) == {"bgnow", "delta", "direction"}
    assert body["bgnow"]["last"] == body["bgnow"]["sgvs"][0]["mgdl"]
    assert isinstance(body["delta"]["mgdl"], (int, float)) and body["direction"]["value"]


TABLE: list[tuple[str, dict[str, str], Any]] = [
    ("/api/v1/treatments.json?find[carbs][$gt]=0", {}, lambda r: len(r.json()) == 5),
    (
        "/api/v1/treatments.json?find[insulin][$gte]=2",
        {},
        lambda r: {t["insulin"] for t in r.json()} == {2.5},
    ),
    ("/api/v1/treatments.json?find[enteredBy]=x", {}, lambda r: [t["notes"] for t in r.json()] == ["x"]),
    (
        "/api/v1/treatments.json?find[eventType][$in][]=Note&find[eventType][$in][]=Temp%20Basal",
        {},
        lambda r: sorted(t["eventType"] for t in r.json()) == ["Note", "Temp Basal"],
    ),
    (
        "/api/v1/entries/sgv.json?find[direction]=Flat&count=30",
        {},
        lambda r: r.json() and {e["direction"] for e in r.json()} == {"Flat"},
    ),
    ("/api/v1/profile/current.json", {}, lambda r: r.json()["defaultProfile"] == "Default"),
    ("/api/v1/entries/sgv.txt?count=3", {}, _check_text("\t", 3)),
    ("/api/v1/entries.csv?count=4&find[type]=sgv", {}, _check_text(",", 4)),
    ("/api/v1/entries.tsv?count=2&find[type]=sgv", {}, _check_text("\t", 2)),
    ("/pebble?count=3", {}, _check_pebble),
    ("/api/v2/properties/bgnow,delta,direction", {}, _check_properties),
    ("/api/v1/entries.json?token=wrong-token-entirely", {}, lambda r: len(r.json()) == 10),
    ("/api/v1/entries.json?count=1", {}, lambda r: r.json()[0]["mills"] == r.json()[0]["date"]),
    (
        "/api/v1/treatments.json?find[carbs]=30",
        {},
        lambda r: '"carbs":30,' in r.text and "30.0" not in r.text,
    ),
    (
        "/api/v3/entries?limit=1",
        {"Authorization": f"Bearer {SECRET}"},
        lambda r: len(r.json()["result"]) == 1,
    ),
]


@pytest.mark.parametrize(("url", "headers", "check"), TABLE, ids=[row[0] for row in TABLE])
def test_the_issue_table_is_answered_as_nightscout_does(site, url, headers, check):
    response = site.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert check(response) in (None, True)


def test_text_formats_media_types(site):
    assert site.get("/api/v1/entries.txt").headers["content-type"].startswith("text/plain")
    assert site.get("/api/v1/entries.tsv").headers["content-type"].startswith("text/tab-separated-values")
    assert site.get("/api/v1/entries.csv").headers["content-type"].startswith("text/csv")
    assert site.get("/api/v1/entries.txt", headers={"api-secret": "0" * 40}).status_code == 401


def test_properties_absent_and_pebble_in_mmol(site):
    assert site.get("/api/v2/properties/iob,cob").json() == {}
    assert set(site.get("/api/v2/properties").json()) >= {"bgnow", "delta", "direction", "buckets"}
    mmol = site.get("/pebble?units=mmol").json()["bgs"][0]
    assert "." in mmol["sgv"]


# --- any field against an evaluator of the same semantics ----------------------------------

MISSING = object()
FIELDS = (
    "device",
    "carbs",
    "insulin",
    "notes",
    "enteredBy",
    "eventType",
    "pump.reservoir",
    "flag",
    "meta.level",
    "absent",
)
RAWS = ("0", "2", "2.5", "30", "-1", "5", "x", "A", "abc", "true", "false", "")
_NUM = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
RANGE = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def _generated() -> list[Treatment]:
    rng = random.Random(13)
    pool: list[Any] = [0, 2, 2.5, 30, -1, 5, "5", "x", "A", "abc", "", True, False, None]
    docs = []
    for i in range(40):
        extra: dict[str, Any] = {}
        if rng.random() < 0.6:
            extra["pump"] = {"reservoir": rng.choice(pool)}
        if rng.random() < 0.5:
            extra["flag"] = rng.choice(pool)
        if rng.random() < 0.4:
            extra["meta"] = {"level": rng.choice(pool)} if rng.random() < 0.8 else "flat"
        if rng.random() < 0.5:
            extra["notes"] = rng.choice(pool)  # any JSON type, not only text
        docs.append(
            Treatment(
                event_type=rng.choice(["A", "B", "x", "Note", "5"]),
                date=BASE + i * 60_000,
                device=rng.choice(["gen", "x", "5", "A"]),
                carbs=rng.choice([None, 0, 2, 30, 2.5]),
                insulin=rng.choice([None, 0, 2, 2.5, 5]),
                entered_by=rng.choice([None, "x", "A", "abc", "5"]),
                extra=extra,
            )
        )
    return docs


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory):
    path = Path(tmp_path_factory.mktemp("generated")) / "store.db"
    store = Store(path)
    store.upsert(_generated(), source="test")
    store.close()
    app, reader = make_app(path, secret=None, readable=True)
    with ApiClient(app) as client:
        docs = client.get("/api/v1/treatments.json?count=0").json()
        assert len(docs) == 40
        yield client, docs
    reader.close()


def _lookup(doc: Any, field: str) -> Any:
    for part in field.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return MISSING
        doc = doc[part]
    return doc


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "text" if isinstance(value, str) else None


def _values(raw: str) -> list[Any]:
    """What a query value means: its text, and the number or boolean it reads as."""
    out: list[Any] = [raw]
    if _NUM.match(raw):
        out.append(float(raw))
    elif raw in ("true", "false"):
        out.append(raw == "true")
    return out


def _equal(value: Any, wanted: Any) -> bool:
    return _kind(value) is not None and _kind(value) == _kind(wanted) and value == wanted


def _holds(doc: dict[str, Any], field: str, op: str, raws: list[str]) -> bool:
    value = _lookup(doc, field)
    if op == "$exists":
        return (value is not MISSING) == (raws[0] == "true")
    if op == "re":
        return isinstance(value, str) and re.search(raws[0][1:-1], value) is not None
    wanted = [v for raw in raws for v in _values(raw)]
    if op in ("$eq", "$in"):
        return any(_equal(value, w) for w in wanted)
    if op in ("$ne", "$nin"):
        return not any(_equal(value, w) for w in wanted)
    return any(
        _kind(w) in ("number", "text") and _kind(value) == _kind(w) and RANGE[op](value, w) for w in wanted
    )


condition = st.one_of(
    st.tuples(
        st.sampled_from(FIELDS),
        st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"]),
        st.lists(st.sampled_from(RAWS), min_size=1, max_size=1),
    ),
    st.tuples(
        st.sampled_from(FIELDS),
        st.sampled_from(["$in", "$nin"]),
        st.lists(st.sampled_from(RAWS), min_size=1, max_size=3),
    ),
    st.tuples(
        st.sampled_from(FIELDS),
        st.just("$exists"),
        st.lists(st.sampled_from(["true", "false"]), min_size=1, max_size=1),
    ),
    st.tuples(
        st.sampled_from(FIELDS),
        st.just("re"),
        st.lists(st.sampled_from(["/^a/", "/b/", "/^x$/", "/5/"]), min_size=1, max_size=1),
    ),
)


def _params(field: str, op: str, raws: list[str]) -> list[tuple[str, str]]:
    if op == "re":
        return [(f"find[{field}]", raws[0])]
    if op in ("$in", "$nin"):
        return [(f"find[{field}][{op}][]", raw) for raw in raws]
    if op == "$eq" and raws[0] != "":
        return [(f"find[{field}]", raws[0])]
    return [(f"find[{field}][{op}]", raws[0])]


@given(conditions=st.lists(condition, min_size=1, max_size=3))
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_find_agrees_with_mongodb_semantics(generated, conditions):
    client, docs = generated
    if any(op in ("$in", "$nin") for _, op, _ in conditions):
        # the lists of one field and operator are one condition, as in a query string
        merged: dict[tuple[str, str], list[str]] = {}
        for field, op, raws in conditions:
            merged.setdefault((field, op), []).extend(raws)
        conditions = [(field, op, raws) for (field, op), raws in merged.items()]
    params = [p for c in conditions for p in _params(*c)]
    response = client.get("/api/v1/treatments.json?" + urlencode([*params, ("count", "0")]))
    assert response.status_code == 200, response.text
    got = sorted(d["_id"] for d in response.json())
    expected = sorted(d["_id"] for d in docs if all(_holds(d, *c) for c in conditions))
    assert got == expected, params


@given(
    key=st.text(alphabet="find[]$abc.0123_-", max_size=30),
    value=st.text(max_size=20),
)
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_find_gives_a_server_error(generated, key, value):
    client, _ = generated
    for path in ("/api/v1/treatments.json", "/api/v1/entries/sgv.json", "/api/v1/devicestatus.json"):
        response = client.get(path + "?" + urlencode([(key, value)]))
        assert response.status_code in (200, 400), (key, value, response.text)


def test_whole_numbers_stay_whole_from_the_source_to_the_answer():
    doc = {"eventType": "Meal Bolus", "created_at": "2024-01-01T00:00:00Z", "carbs": 30, "insulin": "2"}
    served = to_nightscout(from_nightscout("treatments", {**doc, "glucose": 5.5}))
    assert type(served["carbs"]) is int and served["carbs"] == 30
    assert type(served["insulin"]) is int and served["glucose"] == 5.5
