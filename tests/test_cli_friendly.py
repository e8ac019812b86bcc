"""The command line for a person at a terminal: --version, each command's --help naming its
settings by flag and variable with defaults in words, and `status` in plain words."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.clirun import env

CLI = [sys.executable, "-m", "connect"]
ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
    variables = env(PYTHONPATH=str(ROOT), **extra)
    return subprocess.run([*CLI, *args], env=variables, cwd=cwd, capture_output=True, text=True, timeout=90)


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("nightscout-connect ")


def test_a_commands_help_lists_its_settings_by_flag_and_variable() -> None:
    result = run("check", "--help", CONNECT_SOURCE="dexcomshare")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("usage: nightscout-connect check")
    assert "{SecretStr,null}" not in out and "SecretStr" not in out
    lines = out.splitlines()
    password = next(ln for ln in lines if ln.strip().startswith("--share-password "))
    assert "CONNECT_SHARE_PASSWORD" in password and password.rstrip().endswith("required")
    region = next(ln for ln in lines if ln.strip().startswith("--share-region "))
    assert "CONNECT_SHARE_REGION" in region and region.rstrip().endswith("us")
    assert any("CONNECT_MQTT_DISCOVERY" in ln and ln.rstrip().endswith("false") for ln in lines)
    # without a source, the source's settings are not guessed
    bare = run("run", "--help")
    assert bare.returncode == 0 and "CONNECT_SHARE_PASSWORD" not in bare.stdout
    assert "name a source" in bare.stdout


def test_status_says_in_words_what_the_daemon_last_saved(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    once = run("once", CONNECT_SOURCE="sim", CONNECT_STORE_PATH=str(db), CONNECT_BACKFILL_DAYS="0.1")
    assert once.returncode == 0, once.stderr
    result = run("status", CONNECT_STORE_PATH=str(db))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "saved now by the daemon on this store"
    assert "sim: no login needed" in lines
    assert any(ln.startswith("  SimEntries: 1 frames ok") for ln in lines)
    assert lines[-1].startswith("newest reading: ") and "mg/dL" in lines[-1]
    missing = run("status", CONNECT_STORE_PATH=str(tmp_path / "none.db"))
    assert missing.returncode == 2 and "no store at" in missing.stderr
    assert not os.path.exists(tmp_path / "none.db")


def test_a_closed_pipe_is_no_traceback() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `diagram | head` after head has gone
    try:
        result = subprocess.run(
            [*CLI, "diagram"],
            env=env(PYTHONPATH=str(ROOT)),
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 0
    assert b"Traceback" not in result.stderr and b"BrokenPipe" not in result.stderr
