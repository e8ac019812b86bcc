"""``--accounts-dir`` with many accounts and with bad files: the open-files limit is raised, or
refused in one line; a bad file holds back only its own account (unless ``--strict``)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from connect.accounts import PROCESS_FDS, STORE_FDS, descriptors_needed, read_accounts
from tests.test_accounts import CLI, cli, devices, env, query, saved_status, sim_account, write_account

MANY = 400
#: low enough that 400 accounts cannot fit (the old code died at the 339th with "unable to
#: open database file"), and the usual default soft limit
LOW = 1024


def tiny_accounts(directory: Path, count: int) -> None:
    for i in range(count):
        write_account(
            directory,
            f"a{i:03d}",
            CONNECT_SOURCE="sim",
            CONNECT_SIM_SEED=str(i),
            CONNECT_BACKFILL_DAYS="0.01",
        )


def with_limits(soft: int, hard: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return preexec


def peak_fds_while(proc: subprocess.Popen[str], timeout: float = 180) -> int:
    """The most descriptors the process held at once, sampled from /proc until it ends."""
    peak = 0
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            peak = max(peak, len(os.listdir(f"/proc/{proc.pid}/fd")))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.002)
    return peak


def test_too_many_accounts_for_the_hard_limit_is_one_line_and_exit_2(tmp_path: Path) -> None:
    tiny_accounts(tmp_path, MANY)
    result = subprocess.run(
        [*CLI, "once", "--accounts-dir", str(tmp_path)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=with_limits(LOW, LOW),
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    needed = PROCESS_FDS + MANY * STORE_FDS  # a sim account holds its store only
    assert needed > LOW
    assert line.startswith("nightscout-connect: --accounts-dir: ")
    assert f"{MANY} accounts need about {needed} open files" in line
    assert f"the limit is {LOW}" in line
    assert not list(tmp_path.glob("*.db")), "refused before any store is opened"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors through /proc")
def test_the_soft_limit_is_raised_to_the_hard_one_and_every_account_starts(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * LOW:
        pytest.skip(f"the hard limit of open files here ({hard}) leaves nothing to raise")
    tiny_accounts(tmp_path, MANY)
    log_file = tmp_path / "stderr.log"
    with log_file.open("w") as stderr:  # a file, not a pipe: nothing blocks while fds are counted
        proc = subprocess.Popen(
            [*CLI, "once", "--accounts-dir", str(tmp_path)],
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            preexec_fn=with_limits(LOW, hard),
        )
        try:
            peak = peak_fds_while(proc)
            proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = log_file.read_text()
    assert proc.returncode == 0, err[-3000:]
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    (limits,) = [entry for entry in logs if entry.get("event") == "open files"]
    assert limits["raised_from"] == LOW and limits["limit"] > LOW
    assert limits["accounts"] == MANY
    # the estimate is not below what the accounts really held open
    assert peak > MANY * 3
    assert limits["needed"] >= peak
    assert len(list(tmp_path.glob("*.db"))) == MANY
    for name in ("a000", f"a{MANY - 1:03d}"):
        assert query(tmp_path / f"{name}.db", "SELECT count(*) FROM entries")[0][0] > 0


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
    assert lines[0].startswith("open files: about ")
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


def test_the_estimate_counts_what_an_account_opens(tmp_path: Path) -> None:
    sim_account(tmp_path, "alice", 1)
    write_account(tmp_path, "memory", CONNECT_SOURCE="sim", CONNECT_STORE_PATH=":memory:")
    write_account(
        tmp_path,
        "remote",
        CONNECT_SOURCE="nightscout",
        CONNECT_SOURCE_ENDPOINT="http://127.0.0.1:9",
        CONNECT_NIGHTSCOUT_ENDPOINT="http://127.0.0.1:9",
        CONNECT_API_SECRET="a-secret-of-twelve",
    )
    base = descriptors_needed([])
    by_name = {a.name: descriptors_needed([a]) - base for a in read_accounts(tmp_path, []).accounts}
    assert by_name["memory"] == 0
    assert by_name["alice"] == STORE_FDS
    # and its vendor connections and one per output
    assert by_name["remote"] > by_name["alice"] + 1
