"""The examples stay runnable: the env files are valid settings, the embedding example polls
several accounts in one process, each into its own store."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from connect.cli import load_settings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def read_env(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.env")))
def test_example_env_files_are_valid_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = read_env(EXAMPLES / name)
    assert env["CONNECT_SOURCE"] != "sim"
    for key in [k for k in os.environ if k.startswith("CONNECT_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings, source = load_settings([])
    assert source.name == env["CONNECT_SOURCE"]
    # every variable in the file landed in a setting
    dumped = {k.upper() for k in settings.model_dump()}
    for key in env:
        assert key.removeprefix("CONNECT_") in dumped, key


def test_one_process_polls_many_accounts_each_into_its_own_store(tmp_path: Path) -> None:
    names = ["alice", "bob", "carol"]
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "embed_many_accounts.py"),
            "--accounts",
            ",".join(names),
            "--seconds",
            "4",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    series = {}
    for name in names:
        with sqlite3.connect(tmp_path / f"{name}.db") as conn:
            devices = {d for (d,) in conn.execute("SELECT DISTINCT device FROM entries")}
            series[name] = [s for (s,) in conn.execute("SELECT sgv FROM entries ORDER BY date")]
            (status,) = conn.execute("SELECT json FROM machine_status WHERE key = 'daemon'").fetchone()
        assert devices == {f"{name}-cgm"}
        assert len(series[name]) >= 288, "a two-day backfill per account"
        assert f'"sim:{name}"' in status
    # different seeds: the accounts are not copies of each other
    assert series["alice"] != series["bob"] != series["carol"]
