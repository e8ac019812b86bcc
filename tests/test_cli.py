"""The real command line as a subprocess: settings errors, once, check, diagram, stopping."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "connect"]


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    base.update({"CONNECT_LOG_FORMAT": "json", **extra})
    return base


def run(*args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env(**extra), capture_output=True, text=True, timeout=timeout)


def test_bad_settings_exit_2_with_one_line_per_problem(tmp_path: Path) -> None:
    result = run(
        "once", "--log-format", "xml", CONNECT_SOURCE="sim", CONNECT_BACKFILL_DAYS="-3",
        CONNECT_STORE_PATH=str(tmp_path / "s.db"),
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert any("--backfill-days / CONNECT_BACKFILL_DAYS" in line for line in lines)
    assert any("--log-format / CONNECT_LOG_FORMAT" in line for line in lines)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s.db").exists()


def test_contradicting_settings_are_one_plain_line(tmp_path: Path) -> None:
    result = run(
        "once", CONNECT_SOURCE="dexcomshare", CONNECT_SHARE_ACCOUNT_NAME="someone",
        CONNECT_SHARE_PASSWORD="pw-not-shown", CONNECT_SHARE_SERVER="share.dexcom.jp",
        CONNECT_SHARE_REGION="us", CONNECT_STORE_PATH=str(tmp_path / "s.db"),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "nightscout-connect: CONNECT_SHARE_SERVER 'share.dexcom.jp' is Dexcom's jp deployment "
        "but CONNECT_SHARE_REGION is us; set one of them"
    ]


def test_unknown_source_and_unknown_command_exit_2() -> None:
    result = run("once", CONNECT_SOURCE="nosuch")
    assert result.returncode == 2
    assert "--source / CONNECT_SOURCE: unknown source (known: dexcomshare, glooko, " in result.stderr
    assert "nosuch" not in result.stderr  # no value is quoted back
    assert run("frobnicate").returncode == 2


def test_once_with_sim_fills_the_store_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    first = run("once", "--store-path", str(db), "--backfill-days", "1", CONNECT_SOURCE="sim")
    assert first.returncode == 0, first.stderr
    conn = sqlite3.connect(db)
    count = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    assert 287 <= count <= 289
    again = run("once", "--source", "sim", "--store-path", str(db), "--backfill-days", "1")
    assert again.returncode == 0
    assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] - count <= 1  # at most a new reading
    status = conn.execute("SELECT json FROM machine_status").fetchone()[0]
    assert '"frames_ok": 1' in status


def test_check_names_recognised_and_ignored_variables(tmp_path: Path) -> None:
    result = run(
        "check", CONNECT_SOURCE="sim", CONNECT_SIM_SEED="3", CONNECT_SIM_SEEED="4",
        CONNECT_STORE_PATH=str(tmp_path / "s.db"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        "recognised variables: CONNECT_LOG_FORMAT, CONNECT_SIM_SEED, CONNECT_SOURCE, CONNECT_STORE_PATH"
        in result.stdout
    )
    assert "ignored variables: CONNECT_SIM_SEEED" in result.stdout
    assert not (tmp_path / "s.db").exists()  # check writes no data


@pytest.mark.parametrize("fmt", ["mermaid", "md", "dot"])
def test_diagram_prints_every_machine(fmt: str) -> None:
    result = run("diagram", "--format", fmt)
    assert result.returncode == 0
    text = result.stdout.lower().replace(" ", "_")
    for state in ("authenticating", "rejected", "determine_gaps", "operating", "stopping"):
        assert state in text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_cleanly_on_signals(tmp_path: Path, signum: int) -> None:
    db = tmp_path / "s.db"
    proc = subprocess.Popen(
        [*CLI, "run", "--store-path", str(db), "--backfill-days", "60"],
        env=env(CONNECT_HTTP_BIND="0", CONNECT_SOURCE="sim"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if db.exists():
            try:
                if sqlite3.connect(db).execute("SELECT count(*) FROM entries").fetchone()[0] > 0:
                    break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert '"stopped"' in err or "stopped" in err
    conn = sqlite3.connect(db)
    count = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    # frames are all or nothing: the checkpoint and the rows agree
    newest = conn.execute("SELECT max(date) FROM entries").fetchone()[0]
    checkpoint = conn.execute("SELECT last_known FROM checkpoints WHERE collection = 'entries'").fetchone()[0]
    assert count > 0 and checkpoint >= newest
    assert checkpoint - newest < 300_000


def test_demo_serves_its_page_and_readings_without_any_setting(tmp_path: Path) -> None:
    """The README's first command: the simulated CGM into a store, the page open on loopback."""
    import httpx

    from tests.mosquitto import free_port

    port = free_port()
    db = tmp_path / "demo.db"
    proc = subprocess.Popen(
        [*CLI, "demo"],
        env=env(
            CONNECT_HTTP_BIND=f"127.0.0.1:{port}",
            CONNECT_STORE_PATH=str(db),
            CONNECT_DEMO_SUMMARY_SECONDS="1",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        entries: list[dict[str, object]] = []
        while time.monotonic() < deadline and not entries:
            time.sleep(0.2)
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/v1/entries.json?count=5", timeout=5)
            except httpx.TransportError:
                continue
            if response.status_code == 200:
                entries = response.json()
        assert len(entries) == 5, "the demo's API served no readings"
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200 and "<svg" in page.text
        time.sleep(2.5)  # a summary line a second (a minute unless told otherwise)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "frame stored" in err
    assert out.splitlines()[0] == f"nightscout-connect demo: open http://127.0.0.1:{port}/ (Ctrl-C stops it)"
    summaries = [ln for ln in out.splitlines()[1:] if ln.startswith("demo: ")]
    assert summaries and "readings stored" in summaries[-1] and "newest " in summaries[-1], out
