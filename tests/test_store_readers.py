"""The API's reader over either backend: the same records written to a SQLite store and to a
PostgreSQL store are served byte for byte the same (``_id``, ``mills``, computed deltas), and
the status, lag, rejected, episodes and webhook figures agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connect.alerting import AlertConfig, evaluate
from connect.records import Batch, DeviceStatus, Entry, Record, Treatment
from store.abc import ReaderStore, WriterStore
from store.database import Store, object_id
from store.postgres import PostgresStore
from store.postgres_reader import PostgresReader
from store.reader import StoreReader
from store.values import Filter

NOW = 1_750_000_000_000
MIN = 60_000


def records() -> list[Record]:
    out: list[Record] = []
    for i in range(40):
        # two CGMs, a gap, one reading carrying its own delta, a meter reading
        out.append(
            Entry(type="sgv", date=NOW - (i * 5 + 1) * MIN, device="cgm-a", sgv=90 + i, direction="Flat")
        )
        if i % 3 == 0:
            out.append(Entry(type="sgv", date=NOW - (i * 5 + 2) * MIN, device="cgm-b", sgv=150 - i))
    out.append(Entry(type="sgv", date=NOW - 400 * MIN, device="cgm-a", sgv=70, delta=-3.0))
    out.append(Entry(type="mbg", date=NOW - 30 * MIN, device="meter", mbg=101))
    out.append(
        Treatment(event_type="Meal Bolus", date=NOW - 50 * MIN, device="pump", insulin=2.0, carbs=30.0)
    )
    out.append(Treatment(event_type="Note", date=NOW - 50 * MIN, device="pump", notes="café"))
    out.append(Treatment(event_type="Temp Basal", date=NOW - 90 * MIN, device="pump", duration=30.0))
    out.append(
        DeviceStatus(device="connect://sim", date=NOW - 5 * MIN, payload={"uploader": {"battery": 80}})
    )
    # the same member as a number, a text, a boolean, JSON null, or missing: v3 compares by type
    uploaders: list[dict[str, Any]] = [
        {"battery": "80", "name": "phone"}, {"battery": 70.5, "charging": True, "name": "Phone"},
        {"battery": None, "note": None}, {"charging": False, "name": "pump"}, {"battery": 12},
    ]  # fmt: skip
    for i, uploader in enumerate(uploaders):
        out.append(DeviceStatus(device=f"dev-{i}", date=NOW - (10 + i) * MIN, payload={"uploader": uploader}))
    return out


def fill(store: WriterStore) -> None:
    batch = records()
    store.persist_frame("sim:alice", "main", Batch.of(batch[:30]))
    store.persist_frame("sim:alice", "main", Batch.of(batch[30:]))
    store.advance("ns", "entries", 10)
    store.set_aside("ns", "treatments", 1, 1, 1, 400, "bad")
    store.save_status("daemon", {"sources": [{"source": "sim"}], "outputs": []})
    evaluate(store, AlertConfig(key="sim:alice", label="alice"), NOW)
    store.log_delivery("hook", "e1", 1, "glucose:new", '{"a":1}', outcome="ok", status=200, at=NOW)


@pytest.fixture
def readers(tmp_path: Path, postgres_url: str) -> list[ReaderStore]:
    sqlite = Store(tmp_path / "s.db")
    fill(sqlite)
    sqlite.close()
    writer = PostgresStore(postgres_url, account="alice")
    fill(writer)
    # another account's records in the same database are not this reader's
    other = PostgresStore(postgres_url, account="bob")
    other.persist_frame("sim:bob", "main", Batch.of(records()[:5]))
    made: list[ReaderStore] = [StoreReader(tmp_path / "s.db"), PostgresReader(writer.pool, account="alice")]
    yield made
    for reader in made:
        reader.close()
    writer.close()
    other.close()


QUERIES: list[tuple[str, tuple[Filter, ...], int]] = [
    ("entries", (), 100),
    ("entries", (), 5),
    ("entries", (Filter("type", "=", "sgv"), Filter("device", "=", "cgm-b")), 50),
    ("entries", (Filter("sgv", ">=", 120),), 50),  # a filter that breaks the runs: per-row lookups
    ("entries", (Filter("date", "<", NOW - 100 * MIN), Filter("date", ">=", NOW - 500 * MIN)), 50),
    ("entries", (Filter("device", ">", "cgm-a"),), 50),
    ("treatments", (), 10),
    ("treatments", (Filter("event_type", "!=", "Note"),), 10),
    ("devicestatus", (), 10),
    ("profile", (), 10),
]


@pytest.mark.parametrize(("collection", "filters", "limit"), QUERIES)
def test_documents_are_served_byte_for_byte_alike(
    readers: list[ReaderStore], collection: str, filters: tuple[Filter, ...], limit: int
) -> None:
    sqlite, postgres = readers
    expected = sqlite.doc_texts(collection, filters, limit)  # type: ignore[arg-type]
    assert postgres.doc_texts(collection, filters, limit) == expected  # type: ignore[arg-type]
    if collection == "entries" and limit == 100:
        assert any('"delta":' in text for text in expected)  # deltas are computed, and agree


def test_ids_values_and_figures_agree(readers: list[ReaderStore]) -> None:
    sqlite, postgres = readers
    newest = sqlite.docs("treatments", limit=1)[0]
    wanted = newest["_id"]
    assert wanted == object_id(newest["identifier"])
    assert postgres.id_filters("treatments", wanted) == sqlite.id_filters("treatments", wanted)
    assert postgres.id_filters("treatments", "f" * 24) is None
    for column in ("event_type", "device"):
        assert sorted(postgres.distinct_values("treatments", column, 100)) == sorted(
            sqlite.distinct_values("treatments", column, 100)
        )
    assert postgres.readings(NOW - 60 * MIN, NOW) == sqlite.readings(NOW - 60 * MIN, NOW)
    assert postgres.latest_reading() == sqlite.latest_reading() is not None
    assert postgres.collections() == sqlite.collections()
    assert postgres.revision() == sqlite.revision() > 0
    assert postgres.outputs() == sqlite.outputs() == ["ns"]
    assert postgres.lag(["ns"]) == sqlite.lag(["ns"])
    assert [(g.output, g.collection, g.records) for g in postgres.rejected()] == [
        (g.output, g.collection, g.records) for g in sqlite.rejected()
    ]
    assert postgres.saved_status() == sqlite.saved_status()
    assert postgres.episodes(0, NOW * 2) == sqlite.episodes(0, NOW * 2) != []
    assert postgres.episodes(0, NOW * 2, account="sim:bob") == []
    assert [{k: v for k, v in e.items() if k != "at"} for e in postgres.webhook_log()["hook"]] == [
        {k: v for k, v in e.items() if k != "at"} for e in sqlite.webhook_log()["hook"]
    ]
    assert postgres.ping() == postgres.verify() > 0


def test_exports_page_through_alike(readers: list[ReaderStore]) -> None:
    sqlite, postgres = readers
    for collection in ("entries", "treatments"):
        expected = list(sqlite.pages_between(collection, NOW - 300 * MIN, NOW, 7))  # type: ignore[arg-type]
        assert list(postgres.pages_between(collection, NOW - 300 * MIN, NOW, 7)) == expected  # type: ignore[arg-type]
        assert sum(len(page) for page in expected) > 7 or collection == "treatments"
        assert postgres.devices(collection) == sqlite.devices(collection)  # type: ignore[arg-type]


def test_v3_reads_by_identifier_and_by_change_agree(readers: list[ReaderStore]) -> None:
    sqlite, postgres = readers

    def seen(rows: list[Any]) -> list[tuple[str, str]]:
        return [(row.identifier, row.json) for row in rows]

    for collection in ("entries", "treatments", "devicestatus"):
        everything = seen(postgres.history(collection, 0, 1000))  # type: ignore[arg-type]
        assert everything == seen(sqlite.history(collection, 0, 1000))  # type: ignore[arg-type]
        # a page ends where its instant ends (the two stores were written at other instants)
        page = seen(postgres.history(collection, 0, 7))  # type: ignore[arg-type]
        assert page and page == everything[: len(page)]
    doc = sqlite.docs("entries", limit=1)[0]
    for key in (doc["identifier"], doc["_id"], doc["_id"].upper()):
        a, b = sqlite.one("entries", key), postgres.one("entries", key)
        assert a is not None and b is not None and (a.identifier, a.json) == (b.identifier, b.json)
    assert postgres.one("entries", "0" * 24) is None and sqlite.one("entries", "0" * 24) is None
    assert (
        set(postgres.last_modified())
        == set(sqlite.last_modified())
        == {"entries", "treatments", "devicestatus"}
    )


def test_a_lost_server_is_a_store_error_the_api_answers_503(postgres_url: str) -> None:
    import httpx
    import psycopg
    import trio

    from api import ApiSettings, create_app
    from connect.errors import StoreError
    from tests.test_api_support import snapshot

    writer = PostgresStore(postgres_url, account="alice")
    writer.persist_frame("sim", "main", Batch.of(records()[:5]))
    reader = PostgresReader(writer.pool, account="alice")
    app = create_app(reader, lambda: snapshot(), ApiSettings(http_secret=None, http_readable=True))

    def lose_the_server() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.get(path)

    assert trio.run(get, "/api/v1/entries.json").status_code == 200
    lose_the_server()
    with pytest.raises(StoreError, match=r"^store postgresql://connect@127\.0\.0\.1:"):
        reader.collections()
    # the pool replaces the broken connection in the background: let it, before the next loss
    writer.pool.wait(timeout=30)
    lose_the_server()
    answer = trio.run(get, "/api/v1/entries.json")
    assert answer.status_code == 503 and "the store cannot be read" in answer.text
    assert trio.run(get, "/api/v1/entries.json").status_code == 200  # a fresh connection
    writer.close()


SEARCHES: list[tuple[str, list[tuple[str, str]]]] = [
    ("entries", []),
    ("entries", [("sgv$gte", "120")]),
    ("entries", [("type", "sgv"), ("sort", "sgv")]),
    ("entries", [("sort$desc", "date"), ("limit", "5")]),
    ("entries", [("device$in", "cgm-a|cgm-b"), ("sort$desc", "sgv")]),
    ("entries", [("direction$ne", "Flat")]),
    ("entries", [("device$re", "^cgm-b"), ("skip", "2"), ("limit", "3")]),
    ("entries", [("delta$lt", "0")]),
    ("entries", [("skip", "3"), ("limit", "4"), ("sort", "dateString")]),
    ("entries", [("sort", "delta")]),
    ("entries", [("mbg$nin", "101|5")]),
    ("treatments", [("eventType", "Note")]),
    ("treatments", [("carbs$gt", "10")]),
    ("treatments", [("notes$re", "caf")]),
    ("treatments", [("sort$desc", "carbs")]),
    ("devicestatus", [("uploader.battery$gte", "50")]),
    ("devicestatus", [("uploader.battery", "80")]),
    ("devicestatus", [("uploader.battery$in", "80|70")]),
    ("devicestatus", [("uploader.charging", "true")]),
    ("devicestatus", [("sort", "uploader.battery")]),
    ("devicestatus", [("sort$desc", "uploader.battery")]),
    ("devicestatus", [("uploader.name$re", "^ph"), ("sort", "uploader.name")]),
    ("devicestatus", [("uploader.battery$ne", "80")]),
    ("devicestatus", [("uploader.charging$nin", "true")]),
    ("devicestatus", [("uploader.name$lt", "phone"), ("sort$desc", "uploader.name")]),
]


@pytest.mark.parametrize(("collection", "params"), SEARCHES)
def test_v3_searches_select_and_order_alike(
    readers: list[ReaderStore], collection: str, params: list[tuple[str, str]]
) -> None:
    from api.v3 import parse_search

    sqlite, postgres = readers
    query = parse_search(collection, params)  # type: ignore[arg-type]
    expected = [(r.identifier, r.json) for r in sqlite.search(query)]
    assert [(r.identifier, r.json) for r in postgres.search(query)] == expected


FINDS: list[tuple[str, list[tuple[str, str]]]] = [
    ("devicestatus", [("find[uploader.battery][$gte]", "50")]),
    ("devicestatus", [("find[uploader.battery]", "80")]),  # the number 80 or the text "80"
    ("devicestatus", [("find[uploader.charging]", "true")]),
    ("devicestatus", [("find[uploader.note][$exists]", "true")]),
    ("devicestatus", [("find[uploader.battery][$exists]", "false")]),
    ("devicestatus", [("find[uploader.name]", "/^ph/"), ("count", "2")]),
    ("devicestatus", [("find[uploader.battery][$in]", "80|12")]),
    ("devicestatus", [("find[uploader.battery][$nin]", "80|12")]),
    ("treatments", [("find[notes]", "/caf/")]),
    ("treatments", [("find[carbs][$gt]", "10")]),
    ("entries", [("find[delta][$lt]", "0"), ("count", "100")]),
    ("entries", [("find[delta][$exists]", "false"), ("find[type]", "sgv"), ("count", "7")]),
]


@pytest.mark.parametrize(("collection", "params"), FINDS)
def test_v1_finds_on_any_field_select_alike(
    readers: list[ReaderStore], collection: str, params: list[tuple[str, str]]
) -> None:
    from api.query import parse_read
    from api.reads import read_texts

    sqlite, postgres = readers
    query = parse_read(collection, params)  # type: ignore[arg-type]
    assert query.conditions, "a find on a field without a column"
    expected = read_texts(sqlite, query)
    assert read_texts(postgres, query) == expected
