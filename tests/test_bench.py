"""The benchmark (bench/, not shipped): its Nightscout site answers as the figures need, small
runs of the figures complete, and it stands on its own (nothing from tests/, not in the wheel)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
from setuptools import find_packages

from bench.backfill import bench_backfill
from bench.delivery import bench_nightscout
from bench.nightscout_site import NightscoutSite, sgv_docs

ROOT = Path(__file__).resolve().parent.parent
SECRET = "benchmark-test-secret"
HEADERS = {"api-secret": hashlib.sha1(SECRET.encode()).hexdigest()}
T0 = 1_700_000_000_000


def _client(site: NightscoutSite) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=site.app), base_url="http://site.test")


async def test_site_refuses_a_request_without_the_secret() -> None:
    async with _client(NightscoutSite(SECRET)) as client:
        response = await client.get("/api/v1/verifyauth")
        wrong = await client.get("/api/v1/entries.json", headers={"api-secret": "0" * 40})
        ok = await client.get("/api/v1/verifyauth", headers=HEADERS)
    assert response.status_code == 401
    assert wrong.status_code == 401
    assert ok.json()["message"]["message"] == "OK"


async def test_site_upserts_entries_on_systime_and_type() -> None:
    site = NightscoutSite(SECRET)
    docs = [{"type": "sgv", "date": T0 + i * 300_000, "sgv": 100 + i, "_id": "client-id"} for i in range(3)]
    async with _client(site) as client:
        first = await client.post("/api/v1/entries", json=docs, headers=HEADERS)
        again = await client.post("/api/v1/entries", json=[{**docs[0], "sgv": 150}], headers=HEADERS)
    assert first.status_code == 200
    stored = first.json()
    assert [d["sgv"] for d in stored] == [100, 101, 102]
    assert all(len(d["_id"]) == 24 and d["sysTime"].endswith("Z") for d in stored)
    assert again.json()[0]["_id"] == stored[0]["_id"]
    assert again.json()[0]["sgv"] == 150
    assert site.entry_count == 3


async def test_site_reads_a_date_range_newest_first_up_to_count() -> None:
    site = NightscoutSite(SECRET)
    site.seed_entries(sgv_docs(T0, 10))
    async with _client(site) as client:

        async def dates(**params: str) -> list[int]:
            response = await client.get("/api/v1/entries.json", params=params, headers=HEADERS)
            assert response.status_code == 200
            return [d["date"] for d in response.json()]

        window = {"find[date][$gt]": str(T0), "find[date][$lte]": str(T0 + 3 * 300_000)}
        assert await dates(**window, count="100") == [T0 + k * 300_000 for k in (3, 2, 1)]
        assert await dates(**window, count="2") == [T0 + 900_000, T0 + 600_000]
        assert await dates(**{"find[date][$gte]": str(T0), "find[date][$lt]": str(T0 + 600_000)}) == [
            T0 + 300_000,
            T0,
        ]
        assert len(await dates()) == 10  # the default count
        refused = await client.get("/api/v1/entries.json", params={"find[date][$gt]": "x"}, headers=HEADERS)
        missing = await client.get("/api/v1/treatments.json", headers=HEADERS)
    assert refused.status_code == 400
    assert missing.status_code == 404


def test_small_backfill_and_delivery_runs_complete() -> None:
    backfill = bench_backfill(days=2, rounds=1)
    delivery = bench_nightscout(records=600, chunk_size=200, rounds=1)
    for figures in (backfill, delivery):
        assert figures["ours"] > 0
        assert figures["ceiling"] > 0
        assert figures["ratio"] > 0


def test_bench_needs_nothing_from_tests_and_is_not_shipped() -> None:
    script = (
        "import sys, bench.__main__; "
        "sys.exit(any(m == 'tests' or m.startswith('tests.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=False).returncode == 0
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"
    ]
    shipped = find_packages(where=str(ROOT), include=include)
    assert "connect" in shipped
    assert not [p for p in shipped if p == "bench" or p.startswith("bench.")]


def test_json_report_has_every_figure() -> None:
    # the shape only: at this size the figures mean nothing, and timings are never asserted
    import json

    done = subprocess.run(
        [sys.executable, "-m", "bench", "--json", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    figures = report["figures"]
    assert set(figures) >= {"store", "api", "accounts", "backfill", "delivery_nightscout", "delivery_mqtt"}
    for key, figure in figures.items():
        if figure is None:  # e.g. no mosquitto on this machine: said why
            assert report["not_measured"][key]
            continue
        assert set(figure) == {"ours", "ceiling", "ratio", "time"}
        assert figure["time"] in ("cpu", "wall")
        assert all(isinstance(figure[k], float) and figure[k] > 0 for k in ("ours", "ceiling", "ratio"))
    assert isinstance(report["rss_kib_per_account"], int | float)
    assert isinstance(report["idle_cpu_percent_100_loops"], int | float)
    assert report["machines"]["events_per_frame"] == 7
    for key in (
        "startup_seconds_1000_accounts",
        "running_seconds_1000_accounts",
        "rss_kib_per_account_1000",
        "fds_per_account_1000",
    ):
        assert isinstance(report[key], int | float) or report["not_measured"]["many"]
    for key in (
        "startup_seconds_1000_accounts_postgres",
        "running_seconds_1000_accounts_postgres",
        "restart_seconds_1000_accounts_postgres",
        "rss_kib_per_account_1000_postgres",
        "fds_per_account_1000_postgres",
    ):  # without PostgreSQL on this machine: said why
        assert isinstance(report[key], int | float) or report["not_measured"]["many_postgres"]
    for key in (
        "startup_seconds_1000_accounts_fleet",
        "running_seconds_1000_accounts_fleet",
        "startup_cpu_seconds_1000_accounts_fleet",
    ):
        assert isinstance(report[key], int | float) or report["not_measured"]["many_fleet"]


def test_store_ceiling_writes_the_rows_we_write() -> None:
    from bench.store import bare_rows, readings
    from store.database import row_for

    entries = readings(300)
    assert bare_rows(entries, "bench", 0, 5) == [row_for(e, "bench", i + 1, 5) for i, e in enumerate(entries)]
