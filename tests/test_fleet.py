"""``accounts``, ``fleet`` and ``run --fleet``: the real command line over a real PostgreSQL.

The fleet tests run two and three daemon processes over one database with a hundred simulated
accounts, each delivering to its own emulated Nightscout site. Which process runs an account is
observed from outside, as an operator would: the account's store file is open in that process
(``/proc/PID/fd``). One process is then killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.clirun import cli_in_process
from tests.emulators.asgi import Receive, Send, not_http
from tests.emulators.nightscout import NightscoutEmulator, serve_in_thread

CLI = [sys.executable, "-m", "connect"]
ROOT = Path(__file__).resolve().parent.parent
SITE_SECRET = "fleet-site-secret-5b1d9e"
SHARE_PASSWORD = "fleet-share-password-8c2f"
#: short, so a killed process's accounts move within seconds (and long enough for a loaded CI
#: machine to renew in time)
LEASE_S = 4
#: which process runs an account is read from its open files
needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/PID/fd (Linux)")


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    base.update({"CONNECT_LOG_FORMAT": "json", **extra})
    return base


cli = cli_in_process


def write(directory: Path, name: str, **settings: str) -> None:
    lines = [f"# {name}"] + [f"{key}={value}" for key, value in settings.items()]
    (directory / f"{name}.env").write_text("\n".join(lines) + "\n")


# --- accounts and fleet ----------------------------------------------------------------------------


def test_accounts_import_list_remove_and_the_fleet_table(tmp_path: Path, postgres_url: str) -> None:
    accounts = tmp_path / "accounts"
    accounts.mkdir()
    write(accounts, "alice", CONNECT_SOURCE="sim", CONNECT_SIM_SEED="1")
    write(
        accounts,
        "bob",
        CONNECT_SOURCE="dexcomshare",
        CONNECT_SHARE_ACCOUNT_NAME="bob",
        CONNECT_SHARE_PASSWORD=SHARE_PASSWORD,
    )
    result = cli("accounts", "import", str(accounts), CONNECT_STORE_URL=postgres_url)
    assert result.returncode == 0, result.stderr
    assert "imported 2 accounts (2 new, 0 updated)" in result.stdout
    # kept as given: the operator's file, comments and credentials included
    with psycopg.connect(postgres_url) as conn:
        stored = dict(conn.execute("SELECT name, settings FROM fleet_accounts").fetchall())
    assert stored["bob"] == (accounts / "bob.env").read_text()
    # importing again updates in place
    result = cli("accounts", "import", str(accounts), "--store-url", postgres_url)
    assert "(0 new, 2 updated)" in result.stdout

    listed = cli("accounts", "list", "--json", CONNECT_STORE_URL=postgres_url)
    assert [row["account"] for row in json.loads(listed.stdout)] == ["alice", "bob"]

    table = cli("fleet", "--json", CONNECT_STORE_URL=postgres_url)
    assert table.returncode == 0, table.stderr
    assert json.loads(table.stdout) == [
        {"account": name, "holder": None, "state": "unclaimed", "last_success": None, "last_error": None}
        for name in ("alice", "bob")
    ]
    text = cli("fleet", CONNECT_STORE_URL=postgres_url)
    assert text.stdout.splitlines()[0].split() == [
        "ACCOUNT",
        "HOLDER",
        "STATE",
        "LAST",
        "SUCCESS",
        "LAST",
        "ERROR",
    ]

    assert cli("accounts", "remove", "bob", CONNECT_STORE_URL=postgres_url).returncode == 0
    gone = cli("accounts", "remove", "bob", CONNECT_STORE_URL=postgres_url)
    assert gone.returncode == 1 and "no account 'bob'" in gone.stderr
    listed = cli("accounts", "list", CONNECT_STORE_URL=postgres_url)
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["alice"]
    for output in (result, listed, table, text):
        assert SHARE_PASSWORD not in output.stdout + output.stderr


def test_an_import_with_a_bad_file_imports_nothing(tmp_path: Path, postgres_url: str) -> None:
    accounts = tmp_path / "accounts"
    accounts.mkdir()
    write(accounts, "alice", CONNECT_SOURCE="sim")
    write(accounts, "bob", CONNECT_SOURCE="dexcomshare", CONNECT_SHARE_PASSWORD=SHARE_PASSWORD)  # no user
    result = cli("accounts", "import", str(accounts), CONNECT_STORE_URL=postgres_url)
    assert result.returncode == 2
    assert result.stderr.startswith("nightscout-connect: bob.env: ")
    assert SHARE_PASSWORD not in result.stderr
    listed = cli("accounts", "list", "--json", CONNECT_STORE_URL=postgres_url)
    assert json.loads(listed.stdout) == []


@pytest.mark.parametrize(
    ("args", "settings", "problems"),
    [
        (["fleet"], {}, ["--store-url / CONNECT_STORE_URL: required (postgresql://USER@HOST/DB)"]),
        (
            ["fleet"],
            {"CONNECT_STORE_URL": "mysql://root:hunter2-value@db/x"},
            ["--store-url / CONNECT_STORE_URL: must be a postgresql:// URL"],
        ),
        (
            ["run", "--fleet"],
            {
                "CONNECT_STORE_URL": "postgresql://x@127.0.0.1:1/db",
                "CONNECT_FLEET_LEASE_SECONDS": "hunter2-value",
                "CONNECT_FLEET_MAX_ACCOUNTS": "0",
            },
            [
                "CONNECT_FLEET_LEASE_SECONDS: must be a number of seconds",
                "CONNECT_FLEET_MAX_ACCOUNTS: must be at least 1",
            ],
        ),
        (["accounts", "rename"], {}, ["accounts: import DIR, list [--json] or remove NAME"]),
        (
            ["run", "--fleet", "--accounts-dir", "/etc"],
            {},
            ["--fleet: the accounts come from the database, not --accounts-dir"],
        ),
        (
            ["accounts", "import", "/etc", "--backfill-days", "2"],
            {"CONNECT_STORE_URL": "postgresql://x@h/db"},
            ["accounts import: takes DIR alone; an account's settings go in its NAME.env file"],
        ),  # fmt: skip
    ],
)
def test_bad_fleet_settings_exit_2_one_line_each_without_values(
    args: list[str], settings: dict[str, str], problems: list[str]
) -> None:
    result = cli(*args, **settings)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(problems)
    for line, problem in zip(lines, problems, strict=True):
        assert line.startswith(f"nightscout-connect: {problem}")
    assert "hunter2-value" not in result.stderr


def test_an_unreachable_database_is_one_line_without_its_password() -> None:
    result = cli("fleet", CONNECT_STORE_URL="postgresql://me:hunter2-value@127.0.0.1:1/db")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "hunter2-value" not in result.stderr


@pytest.mark.e2e
@needs_proc
def test_a_fleet_process_reports_its_accounts_and_follows_the_database(
    tmp_path: Path, postgres_url: str
) -> None:
    """A running process publishes each account's state; an account whose settings cannot work
    is shown failed (its secret not shown) and given back; a removed account stops."""
    from store.fleet import FleetStore

    stores = tmp_path / "stores"
    stores.mkdir()
    with FleetStore.open(postgres_url) as db:
        db.upsert_account("alice", "CONNECT_SOURCE=sim\nCONNECT_SIM_SEED=3\nCONNECT_BACKFILL_DAYS=1\n")
        db.upsert_account("carol", "CONNECT_SOURCE=sim\nCONNECT_BACKFILL_DAYS=1\n")
        # written straight into the database (an import would have refused it): no account name
        db.upsert_account("bob", f"CONNECT_SOURCE=dexcomshare\nCONNECT_SHARE_PASSWORD={SHARE_PASSWORD}\n")
    log = tmp_path / "fleet.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*CLI, "run", "--fleet"],
            env=env(
                CONNECT_STORE_URL=postgres_url,
                CONNECT_FLEET_LEASE_SECONDS=str(LEASE_S),
                CONNECT_FLEET_STORE_DIR=str(stores),
            ),  # fmt: skip
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )

    def table() -> dict[str, dict[str, Any]]:
        result = cli("fleet", "--json", CONNECT_STORE_URL=postgres_url)
        return {row["account"]: row for row in json.loads(result.stdout)}

    try:
        wait_for(
            lambda: (
                (rows := table())["alice"]["state"] == "running"
                and isinstance(rows["alice"]["last_success"], int)
                and rows["bob"]["state"] == "failed"
            ),
            "alice running and bob failed",
            timeout=60,
        )
        rows = table()
        assert f":{proc.pid}:" in rows["alice"]["holder"]
        assert rows["bob"]["holder"] is None  # given back: another host may do better
        assert "CONNECT_SHARE_ACCOUNT_NAME" in rows["bob"]["last_error"]
        assert SHARE_PASSWORD not in json.dumps(rows)
        assert "carol" in open_stores(proc.pid)
        assert cli("accounts", "remove", "carol", CONNECT_STORE_URL=postgres_url).returncode == 0
        wait_for(lambda: "carol" not in open_stores(proc.pid), "carol stopped", timeout=LEASE_S * 2)
        assert "alice" in open_stores(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert table()["alice"]["holder"] is None  # given back on the way out
    assert SHARE_PASSWORD not in log.read_text()


@pytest.mark.e2e
@needs_proc
def test_an_account_stops_before_its_lease_lapses_when_the_database_does_not_answer(
    tmp_path: Path, postgres_url: str
) -> None:
    """The leases table locked (a database that hangs): the renewals get no answer, and the
    process stops the account while the database still counts the lease as its own, so no other
    process could have started it yet; once the database answers the account runs again."""
    from store.fleet import FleetStore

    stores = tmp_path / "stores"
    stores.mkdir()
    with FleetStore.open(postgres_url) as db:
        db.upsert_account("alice", "CONNECT_SOURCE=sim\nCONNECT_BACKFILL_DAYS=1\n")
    log = tmp_path / "fleet.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*CLI, "run", "--fleet"],
            env=env(
                CONNECT_STORE_URL=postgres_url,
                CONNECT_FLEET_LEASE_SECONDS=str(LEASE_S),
                CONNECT_FLEET_STORE_DIR=str(stores),
            ),  # fmt: skip
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
    try:
        wait_for(lambda: "alice" in open_stores(proc.pid), "alice running", timeout=60)
        with psycopg.connect(postgres_url) as conn:
            conn.execute("LOCK TABLE fleet_leases IN ACCESS EXCLUSIVE MODE")
            wait_for(lambda: "alice" not in open_stores(proc.pid), "alice stopped", timeout=LEASE_S * 2)
            row = conn.execute(
                "SELECT expires_at > clock_timestamp() FROM fleet_leases WHERE account = 'alice'"
            ).fetchone()
            assert row == (True,), "stopped only after its lease had lapsed"
            conn.commit()
        wait_for(lambda: "alice" in open_stores(proc.pid), "alice running again", timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert "leases lost" in log.read_text()


# --- many processes, one database ----------------------------------------------------------------


class Sites:
    """One emulated Nightscout site per account, all on one server: ``/s/NAME/…`` is NAME's site."""

    def __init__(self, names: list[str]) -> None:
        self.sites = {name: NightscoutEmulator(SITE_SECRET) for name in names}
        for site in self.sites.values():
            site.over_socket = True

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if await not_http(scope, receive, send):
            return
        _, _, name, rest = (scope["path"] + "/").split("/", 3)
        path = "/" + rest.rstrip("/")
        await self.sites[name].app({**scope, "path": path, "raw_path": path.encode()}, receive, send)


def open_stores(pid: int) -> set[str]:
    """The accounts whose store file process ``pid`` has open (empty once it has ended)."""
    names = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return names
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.endswith(".db"):
            names.add(Path(target).stem)
    return names


def locked_accounts(
    url: str, accounts: Collection[str], procs: list[subprocess.Popen[bytes]]
) -> dict[int, set[str]]:
    """The accounts whose one-daemon lock each process holds, as the server sees it: its
    advisory locks, by the lock session each process names after its pid."""
    from store.postgres import account_lock_key

    by_key = {account_lock_key(name) & (2**64 - 1): name for name in accounts}
    pids = {f":{proc.pid}": proc.pid for proc in procs}
    held: dict[int, set[str]] = {pid: set() for pid in pids.values()}
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT a.application_name, (l.classid::bigint << 32) | l.objid::bigint "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
        ).fetchall()
    for application, key in rows:
        pid = next((p for suffix, p in pids.items() if str(application).endswith(suffix)), None)
        name = by_key.get(int(key) & (2**64 - 1))
        if pid is not None and name is not None:
            held[pid].add(name)
    return held


class Sampler(threading.Thread):
    """Which process runs which account, sampled every few tens of milliseconds (``observe``:
    each running process's accounts); every moment an account ran in two processes at once is
    kept."""

    def __init__(
        self,
        procs: list[subprocess.Popen[bytes]],
        observe: Callable[[list[subprocess.Popen[bytes]]], dict[int, set[str]]],
    ) -> None:
        super().__init__(daemon=True)
        self.procs = procs
        self.observe = observe
        self.samples = 0
        self.overlaps: list[tuple[str, list[int]]] = []
        self.latest: dict[int, set[str]] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            seen = self.observe([proc for proc in self.procs if proc.poll() is None])
            owners: dict[str, list[int]] = {}
            for pid, names in seen.items():
                for name in names:
                    owners.setdefault(name, []).append(pid)
            self.overlaps.extend((name, pids) for name, pids in owners.items() if len(pids) > 1)
            self.latest = seen
            self.samples += 1
            time.sleep(0.03)

    def running(self, procs: list[subprocess.Popen[bytes]]) -> set[str]:
        return {name for proc in procs for name in self.latest.get(proc.pid, set())}


def wait_for(predicate: Callable[[], bool], what: str, timeout: float) -> float:
    """Seconds until ``predicate`` held."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def store_docs(db: Path, collection: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return [json.loads(doc) for (doc,) in conn.execute(f"SELECT json FROM {collection} ORDER BY date")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def holders(url: str) -> dict[str, str | None]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT account, CASE WHEN expires_at > now() THEN holder END FROM fleet_leases"
        ).fetchall()
    return dict(rows)


@contextlib.contextmanager
def simulated_accounts(count: int, tmp_path: Path, postgres_url: str) -> Iterator[tuple[Sites, Path]]:
    """``count`` simulated accounts imported into the database, each delivering to its own site."""
    names = [f"user{i:03}" for i in range(count)]
    sites = Sites(names)
    url, stop = serve_in_thread(sites)
    accounts = tmp_path / "accounts"
    accounts.mkdir()
    for i, name in enumerate(names):
        write(
            accounts,
            name,
            CONNECT_SOURCE="sim",
            CONNECT_SIM_SEED=str(i + 1),
            CONNECT_SIM_DEVICE=f"{name}-cgm",
            CONNECT_BACKFILL_DAYS="1",
            CONNECT_NIGHTSCOUT_ENDPOINT=f"{url}/s/{name}",
            CONNECT_API_SECRET=SITE_SECRET,
            CONNECT_NIGHTSCOUT_CHUNK_SIZE="50",
        )
    result = cli("accounts", "import", str(accounts), CONNECT_STORE_URL=postgres_url)
    assert result.returncode == 0, result.stderr
    try:
        yield sites, tmp_path
    finally:
        stop()


@pytest.fixture
def hundred(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Sites, Path]]:
    """A hundred simulated accounts in the database, each delivering to its own site."""
    with simulated_accounts(100, tmp_path, postgres_url) as fleet:
        yield fleet


def pg_identifiers(url: str, account: str, collection: str) -> list[str]:
    """The identifiers an account's rows of the PostgreSQL data store hold."""
    with psycopg.connect(url) as conn:
        try:
            rows = conn.execute(
                f"SELECT identifier FROM {collection} WHERE account = %s", (account,)
            ).fetchall()
        except psycopg.errors.UndefinedTable:  # no daemon has created the data store yet
            return []
    return sorted(r[0] for r in rows)


@pytest.mark.e2e
@needs_proc
@pytest.mark.parametrize("data", ["database", "files"])
def test_a_fleet_runs_each_account_once_and_survives_killed_processes(
    hundred: tuple[Sites, Path], postgres_url: str, data: str
) -> None:
    """Three processes, then two (one killed), then one (another killed): at every sampled
    moment each account runs in one process at most; after each kill the others run every
    account within the lease and 30 s; every site ends up with exactly its account's records,
    which the store holds once. ``database``: the accounts' data in the fleet's own database
    (who runs an account is read from the server's advisory locks); ``files``: in SQLite files
    (CONNECT_FLEET_STORE_DIR; read from each process's open files)."""
    sites, tmp_path = hundred
    stores = tmp_path / "stores"
    stores.mkdir()
    settings = {
        "CONNECT_STORE_URL": postgres_url,
        "CONNECT_FLEET_LEASE_SECONDS": str(LEASE_S),
        "CONNECT_LOG_LEVEL": "warning",
    }
    if data == "files":
        settings["CONNECT_FLEET_STORE_DIR"] = str(stores)

    def observe(alive: list[subprocess.Popen[bytes]]) -> dict[int, set[str]]:
        if data == "files":
            return {proc.pid: open_stores(proc.pid) for proc in alive}
        return locked_accounts(postgres_url, sites.sites, alive)

    def stored(name: str, collection: str) -> list[str]:
        """The identifiers the account's store holds."""
        if data == "files":
            return sorted(d["identifier"] for d in store_docs(stores / f"{name}.db", collection))
        return pg_identifiers(postgres_url, name, collection)

    logs = [tmp_path / f"fleet-{i}.log" for i in range(3)]
    procs = []
    for log in logs:
        with log.open("ab") as out:
            procs.append(
                subprocess.Popen(
                    [*CLI, "run", "--fleet"], env=env(**settings), cwd=ROOT, stdout=out, stderr=out
                )
            )
    sampler = Sampler(procs, observe)
    sampler.start()

    def run_everything(alive: list[subprocess.Popen[bytes]], dead: list[int]) -> Callable[[], bool]:
        def check() -> bool:
            if len(sampler.running(alive)) != 100:
                return False
            held = holders(postgres_url).values()
            return all(h is not None and not any(f":{pid}:" in h for pid in dead) for h in held)

        return check

    def delivered() -> bool:
        for name, site in sites.sites.items():
            for collection in ("entries", "treatments"):
                ours = stored(name, collection)
                if not ours and collection == "entries":
                    return False
                if sorted(d["identifier"] for d in site.docs(collection)) != ours:
                    return False
        return True

    try:
        wait_for(run_everything(procs, []), "every account running", timeout=90)
        # spread over the processes: each runs some (the first to start hands back the others')
        wait_for(lambda: all(sampler.latest.get(p.pid) for p in procs), "every process running accounts", 60)
        alive = list(procs)
        dead: list[int] = []
        for victim in procs[:2]:  # three processes, then two
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            alive.remove(victim)
            dead.append(victim.pid)
            moved = wait_for(run_everything(alive, dead), f"{len(alive)} running every account", LEASE_S + 30)
            assert moved < LEASE_S + 30
        wait_for(delivered, "every record at its site", timeout=60)
    finally:
        sampler.halt.set()
        sampler.join()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=30) for proc in procs]
    assert codes == [-signal.SIGKILL, -signal.SIGKILL, 0]
    assert sampler.samples > 50
    assert sampler.overlaps == [], sampler.overlaps[:5]
    # nothing lost and nothing twice at any site: exactly its account's records
    for name, site in sites.sites.items():
        entries = stored(name, "entries")
        assert len(entries) >= 288 and len(set(entries)) == len(entries)
        assert all(d["device"] == f"{name}-cgm" for d in site.entries)
        assert sorted(d["identifier"] for d in site.entries) == entries
        assert len({(d["sysTime"], d["type"]) for d in site.entries}) == len(entries)
    if data == "database":
        assert not list(stores.glob("*.db")) and not list(ROOT.glob("user*.db")), "no SQLite store was made"
    # the last process gave its leases back when it stopped
    assert set(holders(postgres_url).values()) == {None}
    for log in logs:
        assert SITE_SECRET not in log.read_text()
