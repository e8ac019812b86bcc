"""The HTTP API of the real CLI: `run` serving the store it fills, `serve` over a store a daemon
left behind, and the settings that must stop either from starting."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "connect"]
READINGS_PER_DAY = 288
SECRET = "e2e-serve-secret-value"
SECRET_SHA1 = hashlib.sha1(SECRET.encode()).hexdigest()


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    base.update({"CONNECT_LOG_FORMAT": "json", **extra})
    return base


def cli(*args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env(**extra), capture_output=True, text=True, timeout=timeout)


def start(*args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args], env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM, then the exit code and stderr (killed if it does not stop)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the process did not stop on SIGTERM:\n{err[-3000:]}") from None
    return proc.returncode, err


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen[str], *, what: str, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"exited ({proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def answers(base: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def newest(db: Path, n: int) -> list[tuple[str, int, int]]:
    """The newest ``n`` readings in the store: (identifier, date, sgv), newest first."""
    rows = query(db, "SELECT identifier, date, sgv FROM entries ORDER BY date DESC LIMIT ?", (n,))
    return [(str(i), int(d), int(s)) for i, d, s in rows]


def served(docs: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(str(d["identifier"]), int(d["date"]), int(d["sgv"])) for d in docs]


def saved_status(db: Path) -> dict[str, Any]:
    (doc,) = query(db, "SELECT json FROM machine_status WHERE key = 'daemon'")[0]
    loaded: dict[str, Any] = json.loads(doc)
    return loaded


# --- a. `run` with the API -----------------------------------------------------------------------


def test_run_serves_the_store_it_fills_and_its_own_status(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(
        "run",
        CONNECT_SOURCE="sim",
        CONNECT_STORE_PATH=str(db),
        CONNECT_BACKFILL_DAYS="1",
        CONNECT_HTTP_BIND=f"127.0.0.1:{port}",
        CONNECT_HTTP_READABLE="true",
    )
    try:
        wait_for(answers(base), proc, what="the API")
        with httpx.Client(base_url=base, timeout=5) as client:
            assert client.get("/healthz").json() == {"status": "ok"}

            def first_frame_done() -> bool:
                doc = client.get("/api/connect/status").json()
                sources = doc.get("sources") or [{}]
                return bool(sources[0].get("loops", {}).get("SimEntries", {}).get("frames_ok"))

            wait_for(first_frame_done, proc, what="the first frame")
            status = client.get("/api/connect/status").json()
            (sim,) = status["sources"]
            assert sim["source"] == "sim"
            assert sim["poller"] == "running"
            assert set(sim["loops"]) == {"SimEntries"}
            assert sim["loops"]["SimEntries"]["frames_ok"] >= 1
            assert sim["loops"]["SimEntries"]["frames_failed"] == 0
            assert status["store"]["collections"]["entries"]["records"] >= READINGS_PER_DAY - 1

            # what the API serves is what the store holds (read again if a reading landed between)
            for _ in range(5):
                before = query(db, "SELECT count(*), max(seq) FROM entries")
                response = client.get("/api/v1/entries.json", params={"count": "1000"})
                if query(db, "SELECT count(*), max(seq) FROM entries") == before:
                    break
            assert response.status_code == 200
            docs = response.json()
            count = before[0][0]
            assert READINGS_PER_DAY - 1 <= count <= READINGS_PER_DAY + 2
            assert served(docs) == newest(db, count)
            assert {d["type"] for d in docs} == {"sgv"}
            assert [d["date"] for d in docs] == sorted((d["date"] for d in docs), reverse=True)
    finally:
        code, err = stop(proc)
    assert code == 0, err[-3000:]
    assert "stopped" in err
    # the status the daemon saved on its way out says it stopped
    assert saved_status(db)["sources"][0]["poller"] == "stopped"


# --- b. `serve` over an existing store -------------------------------------------------------------


def test_serve_shows_an_existing_store_and_the_status_its_daemon_saved(tmp_path: Path) -> None:
    db = tmp_path / "made.db"
    once = cli(
        "once",
        CONNECT_SOURCE="sim",
        CONNECT_STORE_PATH=str(db),
        CONNECT_BACKFILL_DAYS="1",
        CONNECT_HTTP_BIND="0",
    )
    assert once.returncode == 0, once.stderr[-3000:]
    saved = saved_status(db)
    stored = query(db, "SELECT count(*), max(seq) FROM entries")[0]
    assert stored[0] >= READINGS_PER_DAY - 1

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(
        "serve", CONNECT_STORE_PATH=str(db), CONNECT_HTTP_BIND=f"127.0.0.1:{port}", CONNECT_HTTP_SECRET=SECRET
    )
    try:
        wait_for(answers(base), proc, what="the API")
        assert httpx.get(f"{base}/api/v1/entries.json", timeout=5).status_code == 401
        with httpx.Client(base_url=base, timeout=5, headers={"api-secret": SECRET_SHA1}) as client:
            five = client.get("/api/v1/entries.json", params={"count": "5"})
            assert five.status_code == 200
            assert served(five.json()) == newest(db, 5)

            status = client.get("/api/connect/status").json()
            assert status["sources"] == saved["sources"]
            assert status["outputs"] == saved["outputs"]
            (sim,) = status["sources"]
            assert sim["source"] == "sim" and sim["loops"]["SimEntries"]["frames_ok"] == 1
            assert status["store"]["collections"]["entries"]["records"] == stored[0]

            bad = client.get("/api/v1/entries.json", params={"count": "abc"})
            assert bad.status_code == 400
            assert bad.json()["status"] == 400
            assert "count" in bad.json()["description"]
            assert client.get("/api/v1/entries.json", params={"find[date][$gte]": "soon"}).status_code == 400
    finally:
        code, err = stop(proc)
    assert code == 0, err[-3000:]
    assert SECRET not in err and SECRET_SHA1 not in err
    # serving is reading: the store and the daemon's status are as the daemon left them
    assert query(db, "SELECT count(*), max(seq) FROM entries")[0] == stored
    assert saved_status(db) == saved


def test_without_a_secret_or_readable_the_api_says_how_to_read(tmp_path: Path) -> None:
    db = tmp_path / "closed.db"
    once = cli("once", CONNECT_SOURCE="sim", CONNECT_STORE_PATH=str(db), CONNECT_HTTP_BIND="0")
    assert once.returncode == 0, once.stderr[-3000:]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start("serve", CONNECT_STORE_PATH=str(db), CONNECT_HTTP_BIND=f"127.0.0.1:{port}")
    try:
        wait_for(answers(base), proc, what="the API")
        with httpx.Client(base_url=base, timeout=5) as client:
            assert client.get("/readyz").status_code == 200
            for path in ("/api/v1/entries.json", "/api/v1/status.json", "/api/connect/status", "/metrics"):
                refused = client.get(path)
                assert refused.status_code == 401, path
                hint = refused.json()["description"]
                assert "CONNECT_HTTP_SECRET" in hint and "CONNECT_HTTP_READABLE=true" in hint
            page = client.get("/")
            assert page.status_code == 401 and "CONNECT_HTTP_READABLE=true" in page.text
            assert "text/html" in page.headers["content-type"]
    finally:
        code, err = stop(proc)
    assert code == 0, err[-3000:]


def test_serve_without_a_store_exits_2_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"
    result = cli("serve", CONNECT_STORE_PATH=str(missing), CONNECT_HTTP_BIND=f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "CONNECT_STORE_PATH" in lines[0] and "no store" in lines[0]
    assert not missing.exists()  # serve never creates a store

    disabled = cli("serve", CONNECT_STORE_PATH=str(missing), CONNECT_HTTP_BIND="0")
    assert disabled.returncode == 2
    assert len(disabled.stderr.strip().splitlines()) == 1
    assert "CONNECT_HTTP_BIND" in disabled.stderr


def test_run_on_a_public_address_without_a_secret_exits_2(tmp_path: Path) -> None:
    db = tmp_path / "open.db"
    result = cli("run", CONNECT_SOURCE="sim", CONNECT_STORE_PATH=str(db), CONNECT_HTTP_BIND="0.0.0.0:1338")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "CONNECT_HTTP_BIND" in lines[0] and "CONNECT_HTTP_SECRET" in lines[0]
    assert "reachable from other machines" in lines[0]
    assert "Traceback" not in result.stderr
    assert not db.exists()  # refused before anything started
