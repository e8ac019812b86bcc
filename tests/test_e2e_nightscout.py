"""The real CLI against a Nightscout site on a loopback port: a 30-day copy, a copy that survives
SIGKILL, and no secret anywhere the daemon writes (logs, status, the store file)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from connect.records import from_nightscout
from tests.emulators.nightscout import NightscoutEmulator, serve_in_thread, sgv_series

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "connect"]
DAY_MS = 86_400_000
MIN_MS = 60_000
ENTRIES_30_DAYS = 8640

SOURCE_SECRET = "source-site-secret-7f3a9c"
OUTPUT_SECRET = "output-site-secret-b41d2e"
HTTP_SECRET = "local-api-secret-5e8f0a1c"
WRONG_SECRET = "not-the-source-secret-99x"


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    base.update({"CONNECT_LOG_FORMAT": "json", "CONNECT_HTTP_BIND": "0", **extra})
    return base


def cli(*args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env(**extra), capture_output=True, text=True, timeout=timeout)


def start(*args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args], env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str, proc: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the daemon exited ({proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows from the store, read the way a person would (a separate connection); [] before it exists."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # the schema is not there yet
    finally:
        conn.close()


def entry_count(db: Path) -> int:
    rows = query(db, "SELECT count(*) FROM entries")
    return int(rows[0][0]) if rows else 0


def identifiers(docs: list[dict[str, Any]]) -> set[str]:
    return {from_nightscout("entries", d).identifier for d in docs}


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def delayed(emu: NightscoutEmulator, seconds: float, prefix: str = "/api/v1/entries") -> Any:
    """The emulator's app with a fixed latency on reads under ``prefix`` (a slow site)."""
    emu.over_socket = True
    inner = emu.app

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(prefix):
            await asyncio.sleep(seconds)
        await inner(scope, receive, send)

    return app


@pytest.fixture
def site() -> Iterator[Callable[..., tuple[NightscoutEmulator, str]]]:
    """Start emulated Nightscout sites on loopback ports; all are stopped afterwards."""
    stops: list[Callable[[], None]] = []

    def make(secret: str, *, latency: float = 0.0) -> tuple[NightscoutEmulator, str]:
        emu = NightscoutEmulator(secret)
        url, stop = serve_in_thread(delayed(emu, latency) if latency else emu)
        stops.append(stop)
        return emu, url

    yield make
    for stop in stops:
        stop()


def thirty_days(emu: NightscoutEmulator) -> list[dict[str, Any]]:
    """8,640 five-minute readings ending a minute ago, seeded into ``emu``."""
    docs = sgv_series(emu.now() - 30 * DAY_MS + 4 * MIN_MS, ENTRIES_30_DAYS)
    emu.seed_entries(docs)
    return docs


def entry_reads(emu: NightscoutEmulator, since: int = 0) -> list[dict[str, str]]:
    return [dict(parse_qsl(r.query)) for r in emu.requests[since:] if r.path.startswith("/api/v1/entries")]


# --- a. a 30-day copy with `once`, and nothing more the second time --------------------------------


def test_once_copies_thirty_days_and_a_second_once_adds_nothing(site: Any, tmp_path: Path) -> None:
    emu, url = site(SOURCE_SECRET)
    docs = thirty_days(emu)
    db = tmp_path / "copy.db"
    settings = {
        "CONNECT_SOURCE": "nightscout",
        "CONNECT_SOURCE_ENDPOINT": url,
        "CONNECT_SOURCE_API_SECRET": SOURCE_SECRET,
        "CONNECT_STORE_PATH": str(db),
        # CONNECT_BACKFILL_DAYS left at its default, 30: the oldest reading is 4 minutes inside it
    }
    first = cli("once", **settings)
    assert first.returncode == 0, first.stderr
    stored = query(db, "SELECT identifier, date FROM entries")
    assert len(stored) == ENTRIES_30_DAYS
    assert {i for i, _ in stored} == identifiers(docs)
    assert sorted(d for _, d in stored) == [d["date"] for d in docs]
    newest_seq = query(db, "SELECT max(seq) FROM entries")[0][0]

    seen = len(emu.requests)
    started = int(time.time() * 1000)
    second = cli("once", **settings)
    assert second.returncode == 0, second.stderr
    assert entry_count(db) == ENTRIES_30_DAYS
    # nothing was rewritten either: re-read documents are identical, so their rows keep their seq
    assert query(db, "SELECT max(seq) FROM entries")[0][0] == newest_seq
    # the second run read only the recent past (the late-upload margin): one request, and one
    # below its short page, which a fresh process cannot yet trust to be complete
    reads = entry_reads(emu, seen)
    assert len(reads) == 2, reads
    low, high = int(reads[0]["find[date][$gt]"]), int(reads[0]["find[date][$lte]"])
    assert low >= started - 31 * MIN_MS
    assert high - low <= 31 * MIN_MS
    # one request per day of the backfill (and one proving the first short page), then those two
    assert len(entry_reads(emu)) == 30 + 1 + 2


# --- b. SIGKILL in the middle of the backfill --------------------------------------------------------


def assert_a_prefix(db: Path, docs: list[dict[str, Any]]) -> int:
    """The store holds the site's oldest readings up to some point, each once, and its checkpoint
    agrees with them: a frame is all or nothing. Returns how many it holds."""
    dates = [d for (d,) in query(db, "SELECT date FROM entries ORDER BY date")]
    assert len(dates) == len(set(dates))
    assert dates == [d["date"] for d in docs[: len(dates)]]
    if dates:
        (checkpoint,) = query(db, "SELECT last_known FROM checkpoints WHERE collection = 'entries'")[0]
        assert checkpoint >= dates[-1]
        if len(dates) < len(docs):
            assert checkpoint < docs[len(dates)]["date"]  # nothing after the checkpoint was skipped
    return len(dates)


def test_a_backfill_killed_twice_ends_with_exactly_the_sites_entries(site: Any, tmp_path: Path) -> None:
    # a slow and flaky site: every fourth read fails, so the backfill commits three days per frame
    emu, url = site(SOURCE_SECRET, latency=0.08)
    docs = thirty_days(emu)
    for _ in range(20):
        emu.fail_next(1, 500, path="/api/v1/entries", skip=3)
    db = tmp_path / "killed.db"
    settings = {
        "CONNECT_SOURCE": "nightscout",
        "CONNECT_SOURCE_ENDPOINT": url,
        "CONNECT_SOURCE_API_SECRET": SOURCE_SECRET,
        "CONNECT_SOURCE_COLLECTIONS": "entries",
        "CONNECT_STORE_PATH": str(db),
        "CONNECT_BACKFILL_DAYS": "31",
    }

    held = 0
    for round_ in range(2):
        proc = start("run", **settings)
        try:
            wait_for(
                lambda: entry_count(db) > held,
                timeout=30,
                what=f"progress in run {round_ + 1}",
                proc=proc,
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        count = assert_a_prefix(db, docs)
        assert held < count < ENTRIES_30_DAYS, "the backfill was not interrupted in its middle"
        held = count

    proc = start("run", **settings)
    try:
        wait_for(lambda: entry_count(db) >= ENTRIES_30_DAYS, timeout=60, what="the whole copy", proc=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]

    stored = query(db, "SELECT identifier, date FROM entries")
    assert len(stored) == ENTRIES_30_DAYS
    assert len({i for i, _ in stored}) == len({d for _, d in stored}) == ENTRIES_30_DAYS
    assert {i for i, _ in stored} == identifiers(docs)
    assert {d for _, d in stored} == {d["date"] for d in docs}
    assert emu.auth_failures == 0


# --- c. no secret in anything the daemon writes --------------------------------------------------


def secret_forms(*values: str) -> dict[str, str]:
    """Every value and its SHA-1 (as Nightscout's api-secret header carries it), by a label."""
    forms: dict[str, str] = {}
    for value in values:
        forms[value] = value
        forms[f"sha1({value})"] = sha1(value)
        forms[f"SHA1({value})"] = sha1(value).upper()
    return forms


def assert_no_secret(forms: dict[str, str], **texts: str | bytes) -> None:
    for where, text in texts.items():
        blob = text.encode() if isinstance(text, str) else text
        for label, form in forms.items():
            assert form.encode() not in blob, f"{label} appears in {where}"


def store_bytes(db: Path) -> bytes:
    """The store file and its WAL and shared-memory files, as they lie on disk."""
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))


def status_rows(db: Path) -> str:
    return "\n".join(f"{key} {doc}" for key, doc in query(db, "SELECT key, json FROM machine_status"))


def saved_since(db: Path, ms: int) -> bool:
    rows = query(db, "SELECT updated_at FROM machine_status WHERE key = 'daemon'")
    return bool(rows) and rows[0][0] >= ms


def test_no_secret_in_output_status_or_store(site: Any, tmp_path: Path) -> None:
    source, source_url = site(SOURCE_SECRET)
    token = source.add_subject("follower", ["readable"])
    docs = sgv_series(source.now() - DAY_MS + 4 * MIN_MS, 288)
    source.seed_entries(docs)
    target, target_url = site(OUTPUT_SECRET)
    db = tmp_path / "secrets.db"
    port = free_port()
    settings = {
        "CONNECT_SOURCE": "nightscout",
        "CONNECT_SOURCE_ENDPOINT": f"{source_url}/?token={token}",
        "CONNECT_SOURCE_API_SECRET": SOURCE_SECRET,
        "CONNECT_NIGHTSCOUT_ENDPOINT": target_url,
        "CONNECT_API_SECRET": OUTPUT_SECRET,
        "CONNECT_HTTP_SECRET": HTTP_SECRET,
        "CONNECT_STORE_PATH": str(db),
        "CONNECT_BACKFILL_DAYS": "2",
        "CONNECT_LOG_LEVEL": "debug",  # every transition and request the daemon logs
    }
    forms = secret_forms(SOURCE_SECRET, OUTPUT_SECRET, HTTP_SECRET, token)

    once = cli("once", **settings)
    assert once.returncode == 0, once.stderr[-3000:]
    assert entry_count(db) == 288
    assert len(target.entries) == 288  # the output's secret was used, and worked
    assert_no_secret(forms, once_stdout=once.stdout, once_stderr=once.stderr)

    launched = int(time.time() * 1000)
    proc = start("run", **{**settings, "CONNECT_HTTP_BIND": f"127.0.0.1:{port}"})
    api = f"http://127.0.0.1:{port}"
    bodies: list[str] = []
    try:

        def answers() -> bool:
            try:
                return httpx.get(f"{api}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, timeout=20, what="the API", proc=proc)
        with httpx.Client(base_url=api, timeout=5) as client:
            ok = client.get("/api/connect/status", params={"token": HTTP_SECRET})
            assert ok.status_code == 200
            reads = client.get("/api/v1/entries.json", params={"token": HTTP_SECRET, "count": "3"})
            assert reads.status_code == 200 and len(reads.json()) == 3
            header = client.get("/api/v1/entries.json", headers={"api-secret": sha1(HTTP_SECRET)})
            assert header.status_code == 200
            assert client.get("/api/v1/entries.json", params={"token": WRONG_SECRET}).status_code == 401
            odd = client.get(
                "/api/v1/entries.json", params={"token": HTTP_SECRET, f"find[{HTTP_SECRET}][$gte]": "x"}
            )
            bodies += [ok.text, reads.text, header.text, odd.text]
        wait_for(lambda: saved_since(db, launched), timeout=20, what="a saved status", proc=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-3000:]
    assert_no_secret(forms, run_stdout=out, run_stderr=err, api_answers="\n".join(bodies))

    check = cli("check", **settings)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "login: ok" in check.stdout
    assert_no_secret(forms, check_stdout=check.stdout, check_stderr=check.stderr)

    rows = status_rows(db)
    assert "NightscoutEntries" in rows
    assert_no_secret(forms, machine_status=rows, store_file=store_bytes(db))


def test_a_wrong_source_secret_is_reported_without_the_secret(site: Any, tmp_path: Path) -> None:
    source, url = site(SOURCE_SECRET)
    source.seed_entries(sgv_series(source.now() - DAY_MS, 288))
    db = tmp_path / "wrong.db"
    settings = {
        "CONNECT_SOURCE": "nightscout",
        "CONNECT_SOURCE_ENDPOINT": url,
        "CONNECT_SOURCE_API_SECRET": WRONG_SECRET,
        "CONNECT_STORE_PATH": str(db),
        "CONNECT_BACKFILL_DAYS": "2",
        "CONNECT_LOG_LEVEL": "debug",
    }
    forms = secret_forms(WRONG_SECRET, SOURCE_SECRET)

    once = cli("once", **settings)
    assert once.returncode == 1, once.stderr[-3000:]
    assert entry_count(db) == 0
    assert "refused the credentials" in once.stderr
    saved = json.loads(query(db, "SELECT json FROM machine_status WHERE key = 'daemon'")[0][0])
    (status,) = saved["sources"]
    assert status["session"]["state"] == "rejected"
    assert "AuthRejected" in (status["session"]["last_error"] or "")
    assert all(loop["frames_failed"] == 1 for loop in status["loops"].values())
    assert source.auth_failures == 1  # one login for every loop, not one each

    check = cli("check", **settings)
    assert check.returncode == 1
    assert "login: failed" in check.stdout and "AuthRejected" in check.stdout

    assert_no_secret(
        forms,
        once_stdout=once.stdout,
        once_stderr=once.stderr,
        check_stdout=check.stdout,
        check_stderr=check.stderr,
        machine_status=status_rows(db),
        store_file=store_bytes(db),
    )
