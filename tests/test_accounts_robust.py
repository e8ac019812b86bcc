"""``--accounts-dir`` with bad files: a bad file holds back only its own account (unless
``--strict``)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_accounts import cli, devices, saved_status, sim_account, write_account


def bad_and_good(directory: Path) -> None:
    sim_account(directory, "alice", 1)
    sim_account(directory, "carol", 3)
    write_account(directory, "bob", CONNECT_SOURCE="sim", CONNECT_BACKFILL_DAYS="-1")
    (directory / "dave.env").write_bytes(b"CONNECT_SOURCE=sim\nCONNECT_SIM_DEVICE=\xff\xfe\n")


def test_a_bad_file_is_reported_and_the_other_accounts_start(tmp_path: Path) -> None:
    bad_and_good(tmp_path)

    result = cli("once", "--accounts-dir", str(tmp_path))

    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert devices(tmp_path / "alice.db") == {"alice-cgm"}
    assert devices(tmp_path / "carol.db") == {"carol-cgm"}
    assert not (tmp_path / "bob.db").exists() and not (tmp_path / "dave.db").exists()
    logs = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    refused = {entry["account"]: entry for entry in logs if entry.get("event") == "account not started"}
    assert set(refused) == {"bob", "dave"}
    assert refused["bob"]["level"] == "error"
    assert "bob.env: --backfill-days / CONNECT_BACKFILL_DAYS" in refused["bob"]["problems"][0]
    assert refused["dave"]["problems"] == ["dave.env: cannot be read (not UTF-8 text)"]
    # every started account's status names the ones that did not start
    accounts = saved_status(tmp_path / "alice.db")["accounts"]
    assert accounts["started"] == 2
    assert [(r["account"], r["file"], r["state"]) for r in accounts["refused"]] == [
        ("bob", "bob.env", "refused"),
        ("dave", "dave.env", "refused"),
    ]
    assert saved_status(tmp_path / "carol.db")["accounts"] == accounts


def test_with_strict_a_bad_file_refuses_every_account(tmp_path: Path) -> None:
    bad_and_good(tmp_path)

    result = cli("once", "--accounts-dir", str(tmp_path), "--strict")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "nightscout-connect: bob.env: --backfill-days / CONNECT_BACKFILL_DAYS: Input should be greater than 0",
        "nightscout-connect: dave.env: cannot be read (not UTF-8 text)",
    ]
    assert not list(tmp_path.glob("*.db"))


def test_when_no_file_is_good_nothing_starts_and_the_exit_is_2(tmp_path: Path) -> None:
    write_account(tmp_path, "bob", CONNECT_SOURCE="sim", CONNECT_BACKFILL_DAYS="-1")
    result = cli("run", "--accounts-dir", str(tmp_path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.db"))


def test_files_sharing_a_store_are_both_refused_and_the_others_start(tmp_path: Path) -> None:
    shared = str(tmp_path / "shared.db")
    sim_account(tmp_path, "alice", 1)
    write_account(
        tmp_path, "bob", CONNECT_SOURCE="sim", CONNECT_STORE_PATH=shared, CONNECT_BACKFILL_DAYS="0.01"
    )
    write_account(
        tmp_path, "zoe", CONNECT_SOURCE="sim", CONNECT_STORE_PATH=shared, CONNECT_BACKFILL_DAYS="0.01"
    )

    result = cli("once", "--accounts-dir", str(tmp_path))

    assert result.returncode == 1, result.stderr[-3000:]
    assert devices(tmp_path / "alice.db") == {"alice-cgm"}
    assert not Path(shared).exists(), "which file owns a shared store is not decided by name order"
    refused = saved_status(tmp_path / "alice.db")["accounts"]["refused"]
    assert [r["account"] for r in refused] == ["bob", "zoe"]
    assert refused[0]["problems"] == refused[1]["problems"]
    assert "zoe.env: --store-path / CONNECT_STORE_PATH" in refused[0]["problems"][0]


def test_check_reports_each_account_and_fails_on_a_bad_file(tmp_path: Path) -> None:
    sim_account(tmp_path, "alice", 1)
    sim_account(tmp_path, "carol", 3)

    good = cli("check", "--accounts-dir", str(tmp_path))

    assert good.returncode == 0, good.stderr[-3000:]
    lines = good.stdout.strip().splitlines()
    assert "alice: source sim — login: not needed" in lines
    assert lines[-1] == "accounts: 2 ready, 0 refused, 0 login(s) failed"

    bad_and_good(tmp_path)
    bad = cli("check", "--accounts-dir", str(tmp_path))

    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert "bob: not started — 1 problem(s) in bob.env" in bad.stdout
    assert bad.stdout.strip().splitlines()[-1] == "accounts: 2 ready, 2 refused, 0 login(s) failed"
    problems = [line for line in bad.stderr.splitlines() if line.startswith("nightscout-connect: ")]
    assert problems == [
        "nightscout-connect: bob.env: --backfill-days / CONNECT_BACKFILL_DAYS: Input should be greater than 0",
        "nightscout-connect: dave.env: cannot be read (not UTF-8 text)",
    ]
    assert not list(tmp_path.glob("*.db")), "check writes nothing"


def test_strict_needs_an_accounts_directory() -> None:
    result = cli("once", "--strict")
    assert result.returncode == 2
    assert result.stderr.strip() == "nightscout-connect: --strict: only with --accounts-dir DIR"
