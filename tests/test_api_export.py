"""Exports of a time range (the CLI's ``export``, ``/api/connect/export.csv`` and ``.ndjson``),
inclusive at both ends and read a page at a time, and the newest records per device."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest

from api import ApiSettings, create_app
from connect.records import DeviceStatus, Entry, Treatment, ms_from_iso
from store import Store
from store.export import CSV_COLUMNS, export_chunks, time_bound
from store.reader import StoreReader
from tests.clirun import cli
from tests.test_api_support import SECRET, ApiClient, snapshot

AUTH = {"api-secret": hashlib.sha1(SECRET.encode()).hexdigest()}
DAY = 86_400_000
NOW = ms_from_iso("2024-03-01T12:00:00Z")
#: around the day the tests export (2024-01-31, UTC): its first and last millisecond and the
#: ones just outside
EDGES = [
    "2024-01-30T23:59:59.999Z",
    "2024-01-31T00:00:00.000Z",
    "2024-01-31T23:59:59.999Z",
    "2024-02-01T00:00:00.000Z",
]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(tmp_path_factory.mktemp("export")) / "store.db"
    store = Store(path)
    start = ms_from_iso("2024-01-31T00:00:00Z")
    records: list = [
        Entry(type="sgv", date=ms_from_iso(t), device="edge", sgv=100 + i) for i, t in enumerate(EDGES)
    ]
    # a day of readings every five minutes, between the edges
    records += [
        Entry(type="sgv", date=start + 1000 + i * 300_000, device="share2", sgv=90 + i % 100)
        for i in range(287)
    ]
    records += [
        Entry(type="sgv", date=NOW - 60_000, device="share2", sgv=120, direction="Flat"),
        Entry(type="mbg", date=NOW - 10 * DAY, device="meter", mbg=131),
        Entry(type="sgv", date=NOW - 40 * DAY, device="old-cgm", sgv=99),
        Entry(type="sgv", date=NOW - 2 * DAY, device="openaps://phone", sgv=111),
        Treatment(event_type="Meal Bolus", date=start + 3_600_000, device="pump", insulin=2.5, carbs=30, notes='say "hi", then, go'),
        Treatment(event_type="Temp Basal", date=start + 7_200_000, device="pump", rate=0.5, duration=30),
        DeviceStatus(device="pump", date=start + 60_000, payload={"pump": {"reservoir": 80}}),
    ]  # fmt: skip
    store.upsert(records)
    store.close()
    return path


def app_for(path: Path, **settings):
    reader = StoreReader(path)
    config = ApiSettings(http_secret=SECRET, **settings)
    return create_app(reader, snapshot, config, clock=lambda: NOW), reader


@pytest.fixture(scope="module")
def client(store_path: Path):
    app, reader = app_for(store_path)
    with ApiClient(app) as client:
        yield client
    reader.close()


def stored(path: Path, collection: str) -> list[dict]:
    store = Store(path)
    try:
        return store.docs(collection, newest_first=False)
    finally:
        store.close()


# --- the range ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "end", "expected"),
    [
        ("2024-01-31", False, "2024-01-31T00:00:00.000Z"),
        ("2024-01-31", True, "2024-01-31T23:59:59.999Z"),  # a day as the end: all of it
        ("2024-01-31T12:00:00Z", True, "2024-01-31T12:00:00.000Z"),  # a time as the end: itself
        ("2024-01-31T13:00:00+01:00", False, "2024-01-31T12:00:00.000Z"),
        ("2024-01-31T13:00:00 01:00", False, "2024-01-31T12:00:00.000Z"),  # "+" unencoded in a URL
        ("1706702400000", True, "2024-01-31T12:00:00.000Z"),
    ],
)
def test_range_bounds(text, end, expected):
    assert time_bound(text, end=end) == ms_from_iso(expected)


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "31/01/2024", ""])
def test_a_bound_that_is_no_time_is_refused(text):
    with pytest.raises(ValueError, match="expected a day"):
        time_bound(text, end=False)


# --- over HTTP ---------------------------------------------------------------------------------


def test_csv_has_a_header_and_a_line_per_record_oldest_first(client, store_path):
    response = client.get("/api/connect/export.csv?from=2024-01-31&to=2024-01-31", headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == 'attachment; filename="entries.csv"'
    rows = list(csv.reader(io.StringIO(response.text)))
    assert tuple(rows[0]) == CSV_COLUMNS["entries"]
    body = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    # both ends included, the instants just outside left out
    assert [r["dateString"] for r in body if r["device"] == "edge"] == EDGES[1:3]
    assert len(body) == 2 + 287
    assert [int(r["date"]) for r in body] == sorted(int(r["date"]) for r in body)
    assert all(r["type"] == "sgv" and r["sgv"].isdigit() and r["identifier"] for r in body)


def test_csv_of_treatments_quotes_what_needs_it(client):
    text = client.get("/api/connect/export.csv?collection=treatments", headers=AUTH).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["eventType"] for r in rows] == ["Meal Bolus", "Temp Basal"]
    assert rows[0]["notes"] == 'say "hi", then, go' and rows[0]["carbs"] == "30"
    status = list(
        csv.DictReader(
            io.StringIO(client.get("/api/connect/export.csv?collection=devicestatus", headers=AUTH).text)
        )
    )
    assert json.loads(status[0]["document"])["pump"] == {"reservoir": 80}


def test_ndjson_is_a_stored_document_per_line(client, store_path):
    response = client.get("/api/connect/export.ndjson?from=2024-01-30T23:59:59.999Z", headers=AUTH)
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = response.text.splitlines()
    docs = [json.loads(line) for line in lines]
    everything = stored(store_path, "entries")
    assert docs == [d for d in everything if d["date"] >= ms_from_iso(EDGES[0])]
    assert response.text.endswith("\n")


def test_an_export_is_streamed_a_page_at_a_time(store_path, client):
    reader = StoreReader(store_path)
    chunks = list(export_chunks(reader, "entries", "ndjson", -(2**62), 2**62, page=7))
    reader.close()
    # one chunk per page, none longer than a page
    assert len(chunks) == -(-len(stored(store_path, "entries")) // 7)
    assert all(chunk.count(b"\n") <= 7 for chunk in chunks)
    assert b"".join(chunks) == client.get("/api/connect/export.ndjson", headers=AUTH).content


@pytest.mark.parametrize(
    "query",
    ["from=yesterday", "to=2024-02-30", "collection=food", "collection=entries&from=1e3"],
)
def test_bad_export_parameters_are_400s(client, query):
    response = client.get(f"/api/connect/export.csv?{query}", headers=AUTH)
    assert response.status_code == 400 and response.json()["status"] == 400


def test_an_export_needs_the_secret(client):
    assert client.get("/api/connect/export.ndjson").status_code == 401


# --- the command line ----------------------------------------------------------------------------


def test_cli_exports_to_stdout_and_to_a_file(store_path, tmp_path):
    run = cli(
        "export",
        "--from",
        "2024-01-31",
        "--to",
        "2024-01-31",
        "--format",
        "ndjson",
        "--store-path",
        str(store_path),
    )
    assert run.returncode == 0, run.stderr
    docs = [json.loads(line) for line in run.stdout.splitlines()]
    assert [d["dateString"] for d in docs if d["device"] == "edge"] == EDGES[1:3] and len(docs) == 289

    out = tmp_path / "t.json"
    run = cli(
        "export",
        "--collection",
        "treatments",
        "--format",
        "json",
        "--output",
        str(out),
        CONNECT_STORE_PATH=str(store_path),
    )
    assert run.returncode == 0, run.stderr
    assert [d["eventType"] for d in json.loads(out.read_text())] == ["Meal Bolus", "Temp Basal"]
    assert not (tmp_path / "t.json.part").exists()

    run = cli("export", "--to", "2024-01-30", "--store-path", str(store_path))  # csv by default
    header, *lines = run.stdout.splitlines()
    assert header == ",".join(CSV_COLUMNS["entries"])
    assert [line.split(",")[8] for line in lines] == ["old-cgm", "edge"]  # everything up to the 30th


def test_cli_help_says_the_end_is_inclusive():
    run = cli("export", "--help")
    assert run.returncode == 0 and "inclusive" in run.stdout and "--to 2024-01-31" in run.stdout
    assert "export" in cli("--help").stdout


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--from", "soon"], "--from: expected a day"),
        (["--format", "xml"], "--format: must be csv, json or ndjson"),
        (["--collection", "food"], "--collection"),
        (["--colection", "entries"], "unknown argument"),
        (["--store-path", "/nonexistent/store.db"], "no store at"),
    ],
)
def test_cli_refuses_bad_arguments_with_exit_2(store_path, args, said):
    extra = [] if "--store-path" in args else ["--store-path", str(store_path)]
    run = cli("export", *args, *extra)
    assert run.returncode == 2 and said in run.stderr and run.stdout == ""


# --- the newest records per device -------------------------------------------------------------


def devices(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [d["device"] for d in response.json()]


def test_latest_is_the_newest_record_of_each_device_hiding_silent_ones(client):
    docs = client.get("/api/connect/latest", headers=AUTH).json()
    # newest first; old-cgm has been silent for 40 days (more than 30), edge for 29.5
    assert [d["device"] for d in docs] == ["share2", "openaps://phone", "meter", "edge"]
    assert docs[0]["sgv"] == 120 and docs[0]["_id"] and docs[0]["sysTime"]  # served as v1 serves it
    everything = devices(client.get("/api/connect/latest?all=true", headers=AUTH))
    assert everything == ["share2", "openaps://phone", "meter", "edge", "old-cgm"]
    # the pump's last treatment is 30.5 days old
    assert devices(client.get("/api/connect/latest?collection=treatments", headers=AUTH)) == []
    assert devices(client.get("/api/connect/latest?collection=treatments&all=1", headers=AUTH)) == ["pump"]
    assert client.get("/api/connect/latest?all=maybe", headers=AUTH).status_code == 400


@pytest.mark.parametrize(("days", "shown"), [(0, 5), (5, 2), (20, 3), (30, 4), (45, 5)])
def test_how_long_a_device_may_be_silent_is_a_setting(store_path, days, shown):
    app, reader = app_for(store_path, hide_inactive_after_days=days)
    with ApiClient(app) as client:
        assert len(devices(client.get("/api/connect/latest", headers=AUTH))) == shown
    reader.close()


def test_the_setting_is_read_from_the_environment(monkeypatch):
    assert ApiSettings().hide_inactive_after_days == 30
    monkeypatch.setenv("CONNECT_HIDE_INACTIVE_AFTER_DAYS", "7")
    assert ApiSettings().hide_inactive_after_days == 7


def test_a_devices_newest_records(client, store_path):
    docs = client.get("/api/connect/devices/share2/latest?count=3", headers=AUTH).json()
    share2 = [d for d in reversed(stored(store_path, "entries")) if d["device"] == "share2"]
    assert [d["date"] for d in docs] == [d["date"] for d in share2[:3]]
    assert len(client.get("/api/connect/devices/share2/latest", headers=AUTH).json()) == 1
    # a device name with slashes in it, encoded or not
    for path in ("openaps://phone", "openaps%3A%2F%2Fphone"):
        assert devices(client.get(f"/api/connect/devices/{path}/latest", headers=AUTH)) == ["openaps://phone"]
    assert client.get("/api/connect/devices/nobody/latest", headers=AUTH).json() == []
    assert client.get("/api/connect/devices/share2/latest?count=x", headers=AUTH).status_code == 400
    pump = client.get("/api/connect/devices/pump/latest?collection=devicestatus", headers=AUTH).json()
    assert pump[0]["pump"] == {"reservoir": 80}
