"""Benchmark: many accounts in one process, as ``run --accounts-dir`` starts them.

``accounts`` simulated accounts, one ``NAME.env`` file each (an hour of backfill, each its own
SQLite store file), run by the real command line in a process of its own. Start-up is the wall
time from starting that process until every account logged its first stored frame, first over
new files (every store created) and then again over the stores that run left (a restart). Then, with
every account waiting for its next reading, the process's resident set and its open file
descriptors are read from ``/proc``; the same run with one account is the baseline, so the
per-account figures are what each further account adds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from bench.timing import Figures

HOUR_DAYS = 1 / 24
#: how long the accounts may take to start before the figure is given up on
GIVE_UP_S = 300.0


def _write_accounts(directory: Path, accounts: int, store_url: str | None = None, prefix: str = "a") -> None:
    """``accounts`` files; with ``store_url`` each names that database (the account is the
    file's name), otherwise each stores into ``DIR/NAME.db``."""
    store = "" if store_url is None else f"CONNECT_STORE_URL={store_url}\n"
    for i in range(accounts):
        (directory / f"{prefix}{i:05d}.env").write_text(
            f"CONNECT_SOURCE=sim\nCONNECT_SIM_SEED={i}\nCONNECT_SIM_DEVICE=acct-{i}\n"
            f"CONNECT_BACKFILL_DAYS={HOUR_DAYS}\n{store}",
            encoding="utf-8",
        )


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _cpu_seconds(pid: int) -> float:
    """CPU time (user and system, every thread) the process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _first_frames(log: IO[str], accounts: int, started: float) -> tuple[float, float, float]:
    """Seconds from ``started`` until the first account ran (every file read and every store
    open), until every account ran (its daemon started: its loops polling), and until
    ``accounts`` distinct sources logged a stored frame."""
    stored: set[str] = set()
    opened = 0.0
    running = 0
    everyone = 0.0
    for line in log:
        if time.perf_counter() - started > GIVE_UP_S:
            break
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "running":
            running += 1
            if not opened:
                opened = time.perf_counter() - started
            if running == accounts:
                everyone = time.perf_counter() - started
        if event.get("event") == "frame stored":
            stored.add(str(event.get("source")))
            if len(stored) == accounts:
                return opened, everyone or time.perf_counter() - started, time.perf_counter() - started
    raise RuntimeError(f"only {len(stored)} of {accounts} accounts stored a frame")


@contextlib.contextmanager
def _daemon(args: list[str], env: dict[str, str], accounts: int) -> Iterator[tuple[int, dict[str, float]]]:
    """The command line ``args`` in a process of its own, until every one of ``accounts``
    stored its first frame: (its pid, the seconds until the first account ran, until every
    account ran and until every first frame, and the CPU seconds so far). Stopped (SIGTERM)
    once the block ends."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "connect", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        opened, everyone, startup = _first_frames(process.stdout, accounts, started)
        yield (
            process.pid,
            {
                "opened_seconds": opened,
                "running_seconds": everyone,
                "startup_seconds": startup,
                "startup_cpu": _cpu_seconds(process.pid),
            },
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def run_accounts(
    accounts: int,
    directory: Path | None = None,
    *,
    store_url: str | None = None,
    prefix: str = "a",
    memory: bool = True,
) -> dict[str, float]:
    """Start-up seconds (wall and CPU), RSS bytes and open descriptors of one ``run
    --accounts-dir`` process: over new account files (in ``store_url``'s database when given),
    or the ``directory`` given (a restart when its stores exist)."""
    with tempfile.TemporaryDirectory() as tmp:
        if directory is None:
            directory = Path(tmp)
            _write_accounts(directory, accounts, store_url, prefix)
        env = {**os.environ, "CONNECT_LOG_FORMAT": "json", "CONNECT_LOG_LEVEL": "info"}
        with _daemon(["run", "--accounts-dir", str(directory)], env, accounts) as (pid, figures):
            rss = fds = 0
            if memory:  # (a restart's start is all it is measured for)
                time.sleep(2.0)  # the status rows written, every account waiting
                rss, fds = _rss_bytes(pid), _fds(pid)
    return {**figures, "rss": rss, "fds": fds}


def bench_many(accounts: int = 1000) -> Figures:
    """Start-up time of ``accounts`` accounts (new, and again over the stores the first run
    left: a restart), and RSS and descriptors per account above one."""
    one = run_accounts(1)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        _write_accounts(directory, accounts)
        many = run_accounts(accounts, directory)
        again = run_accounts(accounts, directory, memory=False)
    return {
        **_figures(accounts, one, many, again),
        # when the last store was open (every file read, every store checked and migrated)
        "opened_seconds": round(many["opened_seconds"], 2),
    }


def _figures(
    accounts: int, one: dict[str, float], many: dict[str, float], again: dict[str, float]
) -> Figures:
    """The figures of a start (``many``), a restart (``again``) and a one-account baseline."""
    extra = max(1, accounts - 1)
    return {
        "accounts": accounts,
        "startup_seconds": round(many["startup_seconds"], 2),
        # every account's daemon started (its loops polling), before their first frames
        "running_seconds": round(many["running_seconds"], 2),
        # the same start as CPU time (steadier on a shared machine)
        "startup_cpu_seconds": round(many["startup_cpu"], 2),
        "restart_seconds": round(again["startup_seconds"], 2),
        "restart_cpu_seconds": round(again["startup_cpu"], 2),
        "rss_kib_per_account": round((many["rss"] - one["rss"]) / extra / 1024, 1),
        "fds_per_account": round((many["fds"] - one["fds"]) / extra, 2),
        "baseline_rss_mib": round(one["rss"] / 2**20, 1),
    }


def bench_many_databases(accounts: int = 1000) -> tuple[Figures, Figures]:
    """:func:`bench_many_postgres` and :func:`bench_many_fleet` on one private server."""
    from bench.postgres import Postgres

    with Postgres() as url:
        return bench_many_postgres(accounts, url), bench_many_fleet(accounts, url)


def bench_many_postgres(accounts: int = 1000, url: str | None = None) -> Figures:
    """The same figures with every account in one PostgreSQL database (``url``, else a private
    server of its own, :mod:`bench.postgres`): account files naming ``CONNECT_STORE_URL``, so
    the process shares one pool for all of them. Start-up over an empty database, then again
    (a restart)."""
    if url is None:
        from bench.postgres import Postgres

        with Postgres() as own:
            return bench_many_postgres(accounts, own)
    with tempfile.TemporaryDirectory() as tmp:
        # the baseline's account is one of its own, so the thousand all start empty
        one = run_accounts(1, store_url=url, prefix="base")
        directory = Path(tmp)
        _write_accounts(directory, accounts, url)
        many = run_accounts(accounts, directory)
        again = run_accounts(accounts, directory, memory=False)
    return _figures(accounts, one, many, again)


def bench_many_fleet(accounts: int = 1000, url: str | None = None) -> Figures:
    """``run --fleet`` over ``accounts`` simulated accounts imported into one PostgreSQL database
    (``url``, else a private server of its own; their data in it too): wall and CPU seconds
    from the process's start until every account stored its first frame (the start includes
    the fleet's look, twice, at who else is running), and the moment the first account ran."""
    if url is None:
        from bench.postgres import Postgres

        with Postgres() as own:
            return bench_many_fleet(accounts, own)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        _write_accounts(directory, accounts, prefix="f")  # beside another figure's accounts
        env = {
            **os.environ,
            "CONNECT_STORE_URL": url,
            "CONNECT_LOG_FORMAT": "json",
            "CONNECT_LOG_LEVEL": "info",
        }
        imported = subprocess.run(
            [sys.executable, "-m", "connect", "accounts", "import", str(directory)],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if imported.returncode != 0:
            raise RuntimeError(f"accounts import: {imported.stderr.strip()[-300:]}")
        with _daemon(["run", "--fleet"], env, accounts) as (_, figures):
            pass
    return {
        "accounts": accounts,
        "startup_seconds": round(figures["startup_seconds"], 2),
        "startup_cpu_seconds": round(figures["startup_cpu"], 2),
        "first_running_seconds": round(figures["opened_seconds"], 2),
        "running_seconds": round(figures["running_seconds"], 2),
    }


if __name__ == "__main__":
    sizes = [a for a in sys.argv[1:] if a.isdigit()]
    count = int(sizes[0]) if sizes else 1000
    if "--fleet" in sys.argv:
        print(json.dumps(bench_many_fleet(count)))
    else:
        print(json.dumps(bench_many_postgres(count) if "--postgres" in sys.argv else bench_many(count)))
