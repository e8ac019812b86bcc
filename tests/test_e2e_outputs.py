"""The real daemon (``python -m connect``) with the sim source, delivering to the Nightscout
emulator on a loopback port and to a real mosquitto: SIGKILL in the middle of delivery, ``once``
waiting for delivery, gap analysis on an empty store, and secrets kept out of logs and status."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.emulators.nightscout import NightscoutEmulator, serve_in_thread, sgv_series
from tests.mosquitto import Broker, Subscriber, Throttle, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "connect"]
SECRET = "e2e-site-api-secret"
MQTT_USER = "connect"
MQTT_PASSWORD = "mqtt-pass-for-e2e"
FIVE_MIN = 300_000
DAY_MS = 86_400_000
CHUNK = 50


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    base.update({"CONNECT_LOG_FORMAT": "json", "CONNECT_SOURCE": "sim", "CONNECT_HTTP_BIND": "0", **extra})
    return base


def run(*args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env(**extra), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def start(log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """``run`` in the background, its output into ``log`` (a pipe nobody reads would fill up)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [*CLI, "run"], env=env(**extra), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )


def stop(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows from the store the daemon writes (empty while it does not exist yet)."""
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return []
    finally:
        conn.close()


def stored(db: Path, collection: str) -> list[dict[str, Any]]:
    return [json.loads(doc) for (doc,) in query(db, f"SELECT json FROM {collection} ORDER BY date")]


def saved_status(db: Path) -> dict[str, Any]:
    rows = query(db, "SELECT json FROM machine_status WHERE key = 'daemon'")
    assert rows, "no status row"
    status: dict[str, Any] = json.loads(rows[0][0])
    return status


def output_status(db: Path, name: str) -> dict[str, Any]:
    (found,) = [o for o in saved_status(db)["outputs"] if o["name"] == name]
    return found


def wait_for(
    predicate: Callable[[], Any],
    what: str,
    *,
    timeout: float = 60,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the daemon exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def identifiers(docs: list[dict[str, Any]]) -> list[str]:
    return [d["identifier"] for d in docs]


def assert_no_secrets(texts: list[str], *secrets: str) -> None:
    for secret in secrets:
        for variant in (secret, hashlib.sha1(secret.encode()).hexdigest()):
            for text in texts:
                assert variant not in text


@pytest.fixture
def site() -> Iterator[tuple[NightscoutEmulator, str]]:
    emulator = NightscoutEmulator(SECRET)
    url, stop_server = serve_in_thread(emulator)
    try:
        yield emulator, url
    finally:
        stop_server()


def nightscout_env(url: str, db: Path, **extra: str) -> dict[str, str]:
    return {
        "CONNECT_STORE_PATH": str(db), "CONNECT_NIGHTSCOUT_ENDPOINT": url, "CONNECT_API_SECRET": SECRET,
        "CONNECT_NIGHTSCOUT_CHUNK_SIZE": str(CHUNK), **extra,
    }  # fmt: skip


def test_sigkill_during_delivery_then_restart_delivers_everything_once(
    tmp_path: Path, site: tuple[NightscoutEmulator, str], mosquitto_factory: Callable[..., Broker]
) -> None:
    emulator, url = site
    broker = mosquitto_factory(users={MQTT_USER: MQTT_PASSWORD})
    # the daemon reaches the broker over a slow link: publishing takes seconds, not a blink
    link = Throttle(broker.port, rate=600_000)
    sub = Subscriber(broker.port, "nightscout/#", username=MQTT_USER, password=MQTT_PASSWORD).start()
    db = tmp_path / "store.db"
    settings = nightscout_env(
        url, db, CONNECT_BACKFILL_DAYS="10", CONNECT_LOG_LEVEL="debug",
        CONNECT_MQTT_URL=f"mqtt://{MQTT_USER}:{MQTT_PASSWORD}@127.0.0.1:{link.port}",
    )  # fmt: skip
    logs = [tmp_path / f"run-{i}.log" for i in range(3)]

    def mqtt_cursor() -> int:
        rows = query(db, "SELECT seq FROM cursors WHERE output = 'mqtt' AND collection = 'entries'")
        return int(rows[0][0]) if rows else 0

    def unanswered() -> int:
        return sum(1 for r in emulator.requests_to("/api/v1/entries", "POST") if r.status == 0)

    def killed_during(kind: str, expect_unanswered: int, ready: Callable[[], bool], log: Path) -> None:
        """Run the daemon until the sixth upload of this run hangs (``kind``), then SIGKILL it."""
        emulator.fail_next(1, kind, path="/api/v1/entries", method="POST", skip=5)
        proc = start(log, **settings)
        try:
            wait_for(lambda: unanswered() == expect_unanswered and ready(), f"a {kind} upload", proc=proc)
        finally:
            stop(proc, signal.SIGKILL)
        assert proc.returncode == -signal.SIGKILL

    try:
        # 1. killed while an upload is on its way that the site has not stored
        killed_during("timeout", 1, lambda: mqtt_cursor() >= 300, logs[0])
        entries_at_kill = stored(db, "entries")
        assert len(entries_at_kill) >= 10 * 288  # the backfill is stored; delivery is not done
        assert emulator.count("entries") == emulator.received["entries"] == 5 * CHUNK
        assert 0 < mqtt_cursor() < max(int(seq) for (seq,) in query(db, "SELECT seq FROM entries"))
        # 2. killed while the answer to an upload the site has stored is on its way
        killed_during("lost", 2, lambda: True, logs[1])
        assert emulator.count("entries") == emulator.received["entries"] == 11 * CHUNK
        # 3. runs until everything has arrived, then stops cleanly
        proc = start(logs[2], **settings)
        try:

            def caught_up() -> bool:
                # records only: the events go to nightscout/events/… (see test_outputs_mqtt)
                seen = set(identifiers([json.loads(p) for t, p, _ in sub.snapshot() if "/events/" not in t and t != "nightscout/status"]))
                for collection in ("entries", "treatments"):
                    ours = identifiers(stored(db, collection))
                    if sorted(identifiers(emulator.docs(collection))) != sorted(ours):
                        return False
                    if not seen.issuperset(ours):
                        return False
                return True

            wait_for(caught_up, "every record at the site and the broker", proc=proc)
        finally:
            assert stop(proc) == 0
    finally:
        sub.stop()
        link.close()

    entries, treatments = stored(db, "entries"), stored(db, "treatments")
    assert len(entries) >= 10 * 288 and len(treatments) >= 30
    site_entries, site_treatments = emulator.entries, emulator.treatments
    # exactly the store's records, none twice by the site's own keys
    assert sorted(identifiers(site_entries)) == sorted(identifiers(entries))
    assert len({(d["sysTime"], d["type"]) for d in site_entries}) == len(entries)
    assert sorted(identifiers(site_treatments)) == sorted(identifiers(treatments))
    assert len({(d["created_at"], d["eventType"]) for d in site_treatments}) == len(treatments)
    # the site's upserts hide resends: only the chunk whose answer was lost went twice
    assert emulator.received["entries"] == len(entries) + CHUNK
    assert emulator.received["treatments"] == len(treatments)
    # in date order per collection
    assert [d["date"] for d in site_entries] == sorted(d["date"] for d in site_entries)
    assert [d["created_at"] for d in site_treatments] == sorted(d["created_at"] for d in site_treatments)
    # the subscriber saw every record at least once, on its collection's topic
    by_topic: dict[str, set[str]] = {}
    for topic, payload, _ in sub.snapshot():
        if "/events/" not in topic and topic != "nightscout/status":
            by_topic.setdefault(topic.split("/")[1], set()).add(json.loads(payload)["identifier"])
    assert by_topic["entries"] == set(identifiers(entries))
    assert by_topic["treatments"] == set(identifiers(treatments))

    status = saved_status(db)
    assert [o["name"] for o in status["outputs"]] == ["nightscout", "mqtt"]
    assert all(o["last_error"] is None for o in status["outputs"]), status["outputs"]
    texts = [log.read_text() for log in logs]
    assert all('"delivered"' in text for text in texts)  # debug logs of delivery were captured
    rows = [doc for (doc,) in query(db, "SELECT json FROM machine_status")]
    assert_no_secrets([*texts, *rows], SECRET, MQTT_PASSWORD)


def test_once_exits_after_delivery_is_done(tmp_path: Path, site: tuple[NightscoutEmulator, str]) -> None:
    emulator, url = site
    emulator.latency = 0.02
    db = tmp_path / "store.db"
    result = run("once", **nightscout_env(url, db, CONNECT_BACKFILL_DAYS="2"))
    assert result.returncode == 0, result.stderr
    # read at once: the process did not leave before the site had everything
    for collection in ("entries", "treatments"):
        ours = stored(db, collection)
        assert ours and sorted(identifiers(emulator.docs(collection))) == sorted(identifiers(ours))
    assert len(emulator.requests_to("/api/v1/entries", "POST")) >= 576 // CHUNK
    ns = output_status(db, "nightscout")
    assert ns["lag"] == 0 and ns["state"] == "idle" and ns["last_error"] is None
    assert ns["delivered"] == len(stored(db, "entries")) + len(stored(db, "treatments"))


def test_once_with_the_site_unreachable_fails_and_shows_the_error(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    filled = run("once", CONNECT_STORE_PATH=str(db), CONNECT_BACKFILL_DAYS="1")  # no outputs yet
    assert filled.returncode == 0, filled.stderr
    count = len(stored(db, "entries")) + len(stored(db, "treatments"))
    dead = f"http://127.0.0.1:{free_port()}"
    result = run("once", **nightscout_env(dead, db))
    assert result.returncode == 1, result.stderr
    ns = output_status(db, "nightscout")
    assert ns["state"] == "backoff" and ns["lag"] >= count
    assert ns["last_error"].startswith("Unreachable: POST /api/v1/entries: ConnectError")
    assert query(db, "SELECT count(*) FROM cursors WHERE output = 'nightscout'") == [(0,)]


def test_once_on_an_empty_store_with_the_site_unreachable_keeps_the_data_and_names_the_site(
    tmp_path: Path,
) -> None:
    db = tmp_path / "store.db"
    dead = f"http://127.0.0.1:{free_port()}"
    result = run("once", **nightscout_env(dead, db, CONNECT_BACKFILL_DAYS="1"))
    assert result.returncode == 1, result.stderr
    # gap analysis could not ask the site; the vendor's data is kept anyway (the whole backfill),
    # waiting for the site in the store
    assert len(stored(db, "entries")) == 288
    assert "gap analysis failed" in result.stderr
    ns = output_status(db, "nightscout")
    assert ns["last_error"].startswith("Unreachable: GET /api/v1/entries.json: ConnectError") or ns[
        "last_error"
    ].startswith("Unreachable: POST /api/v1/entries: ConnectError")
    assert ns["lag"] >= 288
    (loop,) = saved_status(db)["sources"][0]["loops"].values()
    assert loop["frames_failed"] == 0 and loop["frames_ok"] == 1


def test_first_backfill_starts_where_the_site_already_is(
    tmp_path: Path, site: tuple[NightscoutEmulator, str]
) -> None:
    emulator, url = site
    newest = (int(time.time() * 1000) - DAY_MS) // FIVE_MIN * FIVE_MIN  # T: a day ago
    emulator.seed_entries(sgv_series(newest - 287 * FIVE_MIN, 288, device="nightscout-connect-sim"))
    # another uploader's newer readings are not where this source left off
    emulator.seed_entries(sgv_series(newest + FIVE_MIN + 60_000, 12, device="xDrip-DexcomG6"))
    db = tmp_path / "store.db"
    result = run("once", **nightscout_env(url, db, CONNECT_BACKFILL_DAYS="10"))
    assert result.returncode == 0, result.stderr
    entries = stored(db, "entries")
    # not ten days back: the first reading after the site's newest, and none before it
    assert entries[0]["date"] == newest + FIVE_MIN
    assert 287 <= len(entries) <= 289
    assert all(t["date"] > newest for t in stored(db, "treatments"))
    assert emulator.received["entries"] == len(entries)  # nothing the site had was uploaded
    assert emulator.count("entries") == 288 + 12 + len(entries)


def test_refused_credentials_show_in_status_and_no_secret_is_written(
    tmp_path: Path, site: tuple[NightscoutEmulator, str], mosquitto_factory: Callable[..., Broker]
) -> None:
    emulator, url = site
    broker = mosquitto_factory(users={MQTT_USER: MQTT_PASSWORD})
    db = tmp_path / "store.db"
    filled = run("once", CONNECT_STORE_PATH=str(db), CONNECT_BACKFILL_DAYS="1")
    assert filled.returncode == 0, filled.stderr
    wrong_secret = "not-the-site-api-secret"
    wrong_password = "not-the-broker-password"
    settings = nightscout_env(url, db, CONNECT_LOG_LEVEL="debug")
    settings["CONNECT_API_SECRET"] = wrong_secret
    settings["CONNECT_MQTT_URL"] = f"mqtt://{MQTT_USER}:{wrong_password}@127.0.0.1:{broker.port}"
    result = run("once", **settings)
    assert result.returncode == 1, result.stderr
    ns, mq = output_status(db, "nightscout"), output_status(db, "mqtt")
    assert ns["state"] == "paused_auth" and "HTTP 401" in ns["last_error"]
    assert mq["state"] == "paused_auth" and "refused the login" in mq["last_error"]
    # refused credentials end the try at once: one request, no retries
    assert emulator.auth_failures == 1 and len(emulator.requests) == 1
    assert emulator.count("entries") == 0
    rows = [doc for (doc,) in query(db, "SELECT json FROM machine_status")]
    assert "paused_auth" in result.stderr
    assert_no_secrets([result.stdout, result.stderr, *rows], wrong_secret, wrong_password, SECRET)
