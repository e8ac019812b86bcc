"""``run`` / ``once --accounts-dir DIR``: one process, one daemon and one store per NAME.env file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connect.accounts import account_environ, parse_env_file
from tests.emulators.nightscout import NightscoutEmulator, serve_in_thread, sgv_series

CLI = [sys.executable, "-m", "connect"]
DAY_MS = 86_400_000
SOURCE_SECRET = "accounts-site-secret-3c8e1f"
WRONG_SECRET = "not-the-site-secret-7d2a9b"


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    base.update({"CONNECT_LOG_FORMAT": "json", **extra})
    return base


def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env(**extra), capture_output=True, text=True, timeout=60)


def write_account(directory: Path, name: str, **settings: str) -> None:
    lines = [f"# {name}'s account", ""] + [f"{key}={value}" for key, value in settings.items()]
    (directory / f"{name}.env").write_text("\n".join(lines) + "\n")


def sim_account(directory: Path, name: str, seed: int) -> None:
    write_account(
        directory,
        name,
        CONNECT_SOURCE="sim",
        CONNECT_SIM_SEED=str(seed),
        CONNECT_SIM_DEVICE=f"{name}-cgm",
        CONNECT_BACKFILL_DAYS="1",
    )


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=5)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def devices(db: Path) -> set[str]:
    return {row[0] for row in query(db, "SELECT DISTINCT device FROM entries")}


def saved_status(db: Path) -> dict[str, Any]:
    (row,) = query(db, "SELECT json FROM machine_status WHERE key = 'daemon'")
    status: dict[str, Any] = json.loads(row[0])
    return status


@pytest.fixture
def site() -> Iterator[tuple[NightscoutEmulator, str]]:
    emulator = NightscoutEmulator(SOURCE_SECRET)
    emulator.seed_entries(sgv_series(emulator.now() - DAY_MS, 288, device="carol-uploader"))
    url, stop = serve_in_thread(emulator)
    try:
        yield emulator, url
    finally:
        stop()


def test_once_polls_every_account_and_one_refusal_affects_no_other(
    tmp_path: Path, site: tuple[NightscoutEmulator, str]
) -> None:
    emulator, url = site
    sim_account(tmp_path, "alice", 1)
    sim_account(tmp_path, "bob", 2)
    nightscout = {
        "CONNECT_SOURCE": "nightscout",
        "CONNECT_SOURCE_ENDPOINT": url,
        "CONNECT_BACKFILL_DAYS": "2",
    }
    write_account(tmp_path, "carol", **nightscout, CONNECT_SOURCE_API_SECRET=SOURCE_SECRET)
    write_account(tmp_path, "dave", **nightscout, CONNECT_SOURCE_API_SECRET=WRONG_SECRET)

    result = cli("once", "--accounts-dir", str(tmp_path))

    assert result.returncode == 1, result.stderr[-3000:]
    assert devices(tmp_path / "alice.db") == {"alice-cgm"}
    assert devices(tmp_path / "bob.db") == {"bob-cgm"}
    assert devices(tmp_path / "carol.db") == {"carol-uploader"}
    assert query(tmp_path / "dave.db", "SELECT count(*) FROM entries") == [(0,)]
    (dave,) = saved_status(tmp_path / "dave.db")["sources"]
    assert dave["source"] == "nightscout:dave"
    assert dave["session"]["state"] == "rejected"
    assert "AuthRejected" in (dave["session"]["last_error"] or "")
    (carol,) = saved_status(tmp_path / "carol.db")["sources"]
    assert carol["session"]["state"] != "rejected"
    assert emulator.auth_failures == 1
    # the logs name each account through the runtime's key
    sources = {json.loads(line).get("source") for line in result.stderr.splitlines() if line.startswith("{")}
    assert {"sim:alice", "sim:bob", "nightscout:carol", "nightscout:dave"} <= sources
    for secret in (SOURCE_SECRET, WRONG_SECRET):
        assert secret not in result.stdout and secret not in result.stderr


def test_run_polls_every_account_until_sigterm(tmp_path: Path) -> None:
    sim_account(tmp_path, "alice", 1)
    sim_account(tmp_path, "bob", 2)
    stores = [tmp_path / "alice.db", tmp_path / "bob.db"]
    proc = subprocess.Popen(
        [*CLI, "run", "--accounts-dir", str(tmp_path)],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def filled(db: Path) -> bool:
        try:
            return db.exists() and query(db, "SELECT count(*) FROM entries")[0][0] > 0
        except sqlite3.OperationalError:
            return False

    try:
        deadline = time.monotonic() + 15
        while not all(filled(db) for db in stores) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        assert all(filled(db) for db in stores)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    for name, db in zip(("alice", "bob"), stores, strict=True):
        assert devices(db) == {f"{name}-cgm"}
        (status,) = saved_status(db)["sources"]
        assert status["source"] == f"sim:{name}"
        assert {loop["state"] for loop in status["loops"].values()} == {"stopped"}


def test_with_strict_a_bad_setting_in_one_file_stops_every_account_before_start(tmp_path: Path) -> None:
    sim_account(tmp_path, "alice", 1)
    write_account(tmp_path, "bob", CONNECT_SOURCE="sim", CONNECT_BACKFILL_DAYS="-1")

    result = cli("once", "--accounts-dir", str(tmp_path), "--strict")

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "bob.env: --backfill-days / CONNECT_BACKFILL_DAYS" in lines[0]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.db"))


def test_two_accounts_may_not_bind_one_address(tmp_path: Path) -> None:
    for name in ("alice", "bob"):
        write_account(tmp_path, name, CONNECT_SOURCE="sim", CONNECT_HTTP_BIND="127.0.0.1:1")
    result = cli("run", "--accounts-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "nightscout-connect: bob.env: --http-bind / CONNECT_HTTP_BIND: 127.0.0.1:1 is bound by alice.env"
    ]
    assert not list(tmp_path.glob("*.db"))


def test_an_empty_directory_exits_2(tmp_path: Path) -> None:
    for command in ("run", "once"):
        result = cli(command, "--accounts-dir", str(tmp_path))
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1
        assert "no NAME.env files" in result.stderr


def test_env_files_and_the_environment_they_are_read_in(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "# comment\n\nCONNECT_SOURCE=sim\nexport CONNECT_SIM_SEED = 4\nCONNECT_SIM_DEVICE='a b'\n"
    assert parse_env_file(text) == {
        "CONNECT_SOURCE": "sim",
        "CONNECT_SIM_SEED": "4",
        "CONNECT_SIM_DEVICE": "a b",
    }
    with pytest.raises(ValueError, match="line 2"):
        parse_env_file("A=1\nnot a setting\n")
    # a comment after a value is a comment; a $ is a $
    assert parse_env_file("CONNECT_SHARE_REGION=us # or ous\nP=a $b c\n") == {
        "CONNECT_SHARE_REGION": "us",
        "P": "a $b c",
    }
    monkeypatch.setenv("CONNECT_SIM_SEED", "9")
    monkeypatch.setenv("BRIDGE_USER_NAME", "someone")
    monkeypatch.setenv("CONNECT_LOG_LEVEL", "debug")
    before = dict(os.environ)
    with account_environ(
        {"CONNECT_SOURCE": "sim", "CONNECT_HTTP_BIND": ""}, defaults={"CONNECT_ACCOUNT": "x", "CONNECT_HTTP_BIND": "0"}
    ):
        assert "CONNECT_SIM_SEED" not in os.environ and "BRIDGE_USER_NAME" not in os.environ
        assert os.environ["CONNECT_SOURCE"] == "sim" and os.environ["CONNECT_ACCOUNT"] == "x"
        assert os.environ["CONNECT_LOG_LEVEL"] == "debug"
        # an empty value in a file is no value: the account's default stays
        assert os.environ["CONNECT_HTTP_BIND"] == "0"
    assert dict(os.environ) == before
