"""The real CLI over a PostgreSQL store (a private cluster): ``once`` with the simulator stores
its frames in the database and a Nightscout site receives each record exactly once; two accounts
in one database stay apart; a URL that is not PostgreSQL's, or a server that cannot be reached,
is one line without the password."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.emulators.nightscout import NightscoutEmulator, serve_in_thread
from tests.mosquitto import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "connect"]
SECRET = "e2e-site-api-secret"
PASSWORD = "pg-password-3d9c1b"


def run(*args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update({"CONNECT_LOG_FORMAT": "json", "CONNECT_SOURCE": "sim", "CONNECT_HTTP_BIND": "0", **extra})
    # PYTHONPATH keeps the code under test importable from another working directory
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180)


def with_password(url: str) -> str:
    # the private cluster trusts its user: any password is accepted, and must never be shown
    return url.replace("postgresql://connect@", f"postgresql://connect:{PASSWORD}@")


def rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql.encode(), params).fetchall()


@pytest.fixture
def sites() -> Iterator[list[tuple[NightscoutEmulator, str]]]:
    made = []
    for _ in range(2):
        emulator = NightscoutEmulator(SECRET)
        url, stop = serve_in_thread(emulator)
        made.append((emulator, url, stop))
    try:
        yield [(emulator, url) for emulator, url, _ in made]
    finally:
        for _, _, stop in made:
            stop()


def once(url: str, site: str, account: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run(
        "once", cwd=cwd, CONNECT_STORE_URL=with_password(url), CONNECT_ACCOUNT=account,
        CONNECT_NIGHTSCOUT_ENDPOINT=site, CONNECT_API_SECRET=SECRET, CONNECT_BACKFILL_DAYS="1",
    )  # fmt: skip


def test_once_stores_in_postgresql_and_the_site_gets_each_record_once(
    postgres_url: str, sites: list[tuple[NightscoutEmulator, str]], tmp_path: Path
) -> None:
    (emulator, site), (other, other_site) = sites
    result = once(postgres_url, site, "alice", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = rows(postgres_url, "SELECT identifier, json FROM entries WHERE account = 'alice'")
    assert len(stored) >= 200  # a day of readings every five minutes
    sent = [d["identifier"] for d in emulator.docs("entries")]
    assert sorted(sent) == sorted(i for i, _ in stored) and emulator.received["entries"] == len(stored)
    # what the site received is what the store keeps (the stored JSON is sent as it is)
    by_id = {i: json.loads(text) for i, text in stored}
    for doc in emulator.docs("entries")[:20]:
        assert {k: v for k, v in doc.items() if k in by_id[doc["identifier"]]} == by_id[doc["identifier"]]
    assert not list(tmp_path.glob("*.db")), "no SQLite file beside the PostgreSQL store"

    # again: nothing new to send, nothing sent twice
    received = dict(emulator.received)
    assert once(postgres_url, site, "alice", tmp_path).returncode == 0
    assert emulator.received["entries"] == received["entries"] + (
        len(rows(postgres_url, "SELECT 1 FROM entries WHERE account = 'alice'")) - len(stored)
    )
    assert len({d["identifier"] for d in emulator.docs("entries")}) == len(emulator.docs("entries"))

    # a second account in the same database: its own rows, cursors, status and site
    assert once(postgres_url, other_site, "bob", tmp_path).returncode == 0
    counts = dict(rows(postgres_url, "SELECT account, count(*) FROM entries GROUP BY account"))
    assert set(counts) == {"alice", "bob"} and counts["bob"] >= 200
    assert other.received["entries"] == counts["bob"]
    assert emulator.received["entries"] == counts["alice"]  # bob's records never reach alice's site
    cursors = rows(postgres_url, "SELECT account, seq FROM cursors WHERE collection = 'entries'")
    assert sorted(a for a, _ in cursors) == ["alice", "bob"]
    statuses = rows(postgres_url, "SELECT account, json FROM machine_status WHERE key = 'daemon'")
    assert sorted(a for a, _ in statuses) == ["alice", "bob"]
    for _, text in statuses:
        assert PASSWORD not in text and SECRET not in text
    everything = result.stdout + result.stderr
    assert PASSWORD not in everything and SECRET not in everything


def test_a_store_url_that_is_not_postgresql_is_one_line_and_not_echoed(tmp_path: Path) -> None:
    result = run("once", cwd=tmp_path, CONNECT_STORE_URL=f"mysql://connect:{PASSWORD}@db.example/x")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "STORE_URL" in line]
    assert lines == [lines[0]] and "postgresql://" in lines[0]
    assert PASSWORD not in result.stdout + result.stderr and "db.example" not in result.stdout + result.stderr


def test_an_unreachable_server_stops_the_daemon_in_one_line_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql://connect:{PASSWORD}@127.0.0.1:{free_port()}/connect"
    result = run("once", cwd=tmp_path, CONNECT_STORE_URL=url)
    assert result.returncode != 0
    assert "cannot connect" in result.stderr and PASSWORD not in result.stdout + result.stderr
    assert not list(tmp_path.glob("*.db"))
    checked = run("check", cwd=tmp_path, CONNECT_STORE_URL=url)
    assert checked.returncode != 0 and PASSWORD not in checked.stdout + checked.stderr
    assert [line for line in checked.stdout.splitlines() if line.startswith("store postgresql://connect@")]


def test_check_says_whether_the_store_can_be_used(postgres_url: str, tmp_path: Path) -> None:
    url = with_password(postgres_url)
    empty = run("check", cwd=tmp_path, CONNECT_STORE_URL=url)
    assert empty.returncode == 0, empty.stdout + empty.stderr
    assert "store postgresql://connect@127.0.0.1:" in empty.stdout and ": ok, empty" in empty.stdout
    assert rows(postgres_url, "SELECT to_regclass('entries') IS NULL") == [(True,)]  # check wrote nothing
    assert run("once", cwd=tmp_path, CONNECT_STORE_URL=url, CONNECT_BACKFILL_DAYS="1").returncode == 0
    assert ": ok, schema 1" in run("check", cwd=tmp_path, CONNECT_STORE_URL=url).stdout


def test_the_api_serves_one_account_of_the_database(postgres_url: str, tmp_path: Path) -> None:
    import signal
    import time

    import httpx

    # two accounts in the database; the API of one serves its own records only
    for account in ("alice", "bob"):
        filled = run(
            "once", cwd=tmp_path, CONNECT_STORE_URL=with_password(postgres_url), CONNECT_ACCOUNT=account,
            CONNECT_BACKFILL_DAYS="1" if account == "alice" else "2",
        )  # fmt: skip
        assert filled.returncode == 0, filled.stderr[-3000:]
    shown = run(
        "status", cwd=tmp_path, CONNECT_STORE_URL=with_password(postgres_url), CONNECT_ACCOUNT="alice"
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "newest reading: " in shown.stdout and "none yet" not in shown.stdout
    assert PASSWORD not in shown.stdout + shown.stderr
    nobody = run(
        "status", cwd=tmp_path, CONNECT_STORE_URL=with_password(postgres_url), CONNECT_ACCOUNT="carol"
    )
    assert "no daemon has saved its status" in nobody.stdout and "none yet" in nobody.stdout
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update({
        "CONNECT_LOG_FORMAT": "json", "CONNECT_STORE_URL": with_password(postgres_url), "CONNECT_ACCOUNT": "alice",
        "CONNECT_HTTP_BIND": f"127.0.0.1:{port}", "CONNECT_HTTP_READABLE": "true",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    })  # fmt: skip
    proc = subprocess.Popen(
        [*CLI, "serve"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not answer"
            time.sleep(0.05)
        stored = rows(
            postgres_url,
            "SELECT identifier FROM entries WHERE account = 'alice' ORDER BY date DESC, srv_created DESC, seq DESC",
        )
        docs = httpx.get(f"{base}/api/v1/entries.json", params={"count": "1000"}, timeout=10).json()
        assert [d["identifier"] for d in docs] == [i for (i,) in stored]
        assert all("_id" in d and "mills" in d for d in docs)
        one = httpx.get(f"{base}/api/v1/entries/{docs[3]['_id']}.json", timeout=10).json()
        assert [d["identifier"] for d in one] == [docs[3]["identifier"]]
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200
        # API v3's search serves the same account's documents
        found = httpx.get(f"{base}/api/v3/entries", params={"limit": "1000"}, timeout=10).json()["result"]
        assert sorted(d["identifier"] for d in found) == sorted(i for (i,) in stored)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert PASSWORD not in err


def test_run_serves_what_it_stores_in_postgresql(postgres_url: str, tmp_path: Path) -> None:
    import signal
    import time

    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update({
        "CONNECT_LOG_FORMAT": "json", "CONNECT_SOURCE": "sim", "CONNECT_BACKFILL_DAYS": "1",
        "CONNECT_STORE_URL": with_password(postgres_url), "CONNECT_ACCOUNT": "alice",
        "CONNECT_HTTP_BIND": f"127.0.0.1:{port}", "CONNECT_HTTP_READABLE": "true",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    })  # fmt: skip
    proc = subprocess.Popen(
        [*CLI, "run"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        docs: list[dict[str, Any]] = []
        while len(docs) < 250:
            assert proc.poll() is None and time.monotonic() < deadline, "run did not serve a day of readings"
            try:
                docs = httpx.get(f"{base}/api/v1/entries.json", params={"count": "1000"}, timeout=5).json()
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        stored = {i for (i,) in rows(postgres_url, "SELECT identifier FROM entries WHERE account = 'alice'")}
        assert {d["identifier"] for d in docs} <= stored
        status = httpx.get(f"{base}/api/connect/status", timeout=5).json()
        assert status["store"]["state"] == "ok" and PASSWORD not in json.dumps(status)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert PASSWORD not in err


def test_accounts_dir_over_one_database(postgres_url: str, tmp_path: Path) -> None:
    accounts = tmp_path / "accounts"
    accounts.mkdir()
    for name in ("alice", "bob"):
        (accounts / f"{name}.env").write_text("CONNECT_SOURCE=sim\nCONNECT_BACKFILL_DAYS=1\n")
    url = with_password(postgres_url)
    result = run("once", "--accounts-dir", str(accounts), "--store-url", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(rows(postgres_url, "SELECT account, count(*) FROM entries GROUP BY account"))
    assert set(counts) == {"alice", "bob"} and min(counts.values()) >= 200
    assert not list(accounts.glob("*.db")), "no SQLite file per account"
    assert PASSWORD not in result.stdout + result.stderr
    # two files naming the same account of the database are refused, as a shared store file is
    (accounts / "carol.env").write_text("CONNECT_SOURCE=sim\nCONNECT_ACCOUNT=alice\n")
    refused = run("once", "--accounts-dir", str(accounts), "--store-url", url, "--strict", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--account / CONNECT_ACCOUNT: alice of postgresql://connect@" in refused.stderr
    assert PASSWORD not in refused.stdout + refused.stderr


def test_a_fleet_keeps_its_accounts_data_in_the_same_database(postgres_url: str, tmp_path: Path) -> None:
    import signal
    import time

    from store.fleet import FleetStore

    url = with_password(postgres_url)
    with FleetStore.open(postgres_url) as db:
        for name in ("alice", "bob"):
            db.upsert_account(name, f"CONNECT_SOURCE=sim\nCONNECT_BACKFILL_DAYS=1\nCONNECT_STORE_URL={url}\n")
    stores = tmp_path / "stores"
    stores.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update({
        "CONNECT_LOG_FORMAT": "json", "CONNECT_STORE_URL": url, "CONNECT_FLEET_LEASE_SECONDS": "4",
        "CONNECT_FLEET_STORE_DIR": str(stores),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    })  # fmt: skip
    proc = subprocess.Popen(
        [*CLI, "run", "--fleet"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            made = rows(postgres_url, "SELECT to_regclass('entries') IS NOT NULL") == [(True,)]
            counts = (
                dict(rows(postgres_url, "SELECT account, count(*) FROM entries GROUP BY account"))
                if made
                else {}
            )
            if len(counts) == 2 and min(counts.values()) >= 200:
                break
            assert proc.poll() is None and time.monotonic() < deadline, f"the fleet stored {counts}"
            time.sleep(0.2)
        assert set(counts) == {"alice", "bob"}
        assert not list(stores.iterdir()), "no SQLite file: the data is in the database"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert PASSWORD not in err


def test_accounts_dir_files_naming_a_database_store_their_rows_there(
    postgres_url: str, tmp_path: Path
) -> None:
    accounts = tmp_path / "accounts"
    accounts.mkdir()
    for name in ("alice", "bob"):
        (accounts / f"{name}.env").write_text(
            f"CONNECT_SOURCE=sim\nCONNECT_SIM_DEVICE=sim-{name}\nCONNECT_BACKFILL_DAYS=0.05\n"
            f"CONNECT_STORE_URL={with_password(postgres_url)}\n"
        )
    result = run("once", "--accounts-dir", str(accounts), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # each account's rows in the database, under its file's name; no store file beside the files
    stored = dict(rows(postgres_url, "SELECT account, count(*) FROM entries GROUP BY account"))
    assert set(stored) == {"alice", "bob"} and all(n > 0 for n in stored.values())
    assert sorted(p.name for p in accounts.iterdir()) == ["alice.env", "bob.env"]


def test_export_reads_one_account_named_by_flags_or_settings(postgres_url: str, tmp_path: Path) -> None:
    """``export`` names its store as every command does: ``--store-url`` / ``--account`` (or
    their variables, checked alike), and a ``--store-path`` file wins over a database the
    environment names."""
    for account in ("alice", "bob"):
        made = run("once", cwd=tmp_path, CONNECT_STORE_URL=postgres_url, CONNECT_ACCOUNT=account,
                   CONNECT_SIM_SEED=str(len(account)), CONNECT_BACKFILL_DAYS="0.1")  # fmt: skip
        assert made.returncode == 0, made.stderr[-2000:]
    stored = {a: n for a, n in rows(postgres_url, "SELECT account, count(*) FROM entries GROUP BY account")}
    by_flags = run("export", "--format", "ndjson", "--store-url", with_password(postgres_url), "--account", "bob",
                   cwd=tmp_path)  # fmt: skip
    assert by_flags.returncode == 0, by_flags.stderr
    docs = [json.loads(line) for line in by_flags.stdout.splitlines()]
    assert len(docs) == stored["bob"] > 0
    by_env = run("export", "--format", "ndjson", cwd=tmp_path, CONNECT_STORE_URL=postgres_url,
                 CONNECT_ACCOUNT="alice")  # fmt: skip
    assert len(by_env.stdout.splitlines()) == stored["alice"]
    assert PASSWORD not in by_flags.stdout + by_flags.stderr
    bad = run("export", "--store-url", "mysql://x@h/db", cwd=tmp_path)
    assert bad.returncode == 2 and "--store-url / CONNECT_STORE_URL" in bad.stderr
    a_file = run(
        "export", "--store-path", str(tmp_path / "none.db"), cwd=tmp_path, CONNECT_STORE_URL=postgres_url
    )
    assert a_file.returncode == 2 and "no store at" in a_file.stderr
