"""The store through the real CLI: one daemon per store, and each store a daemon cannot use
refused at start in one line (exit 2), the file left as it was."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from store import Store
from store.lock import lock_path
from store.schema import SCHEMA_VERSION
from tests.clirun import CLI, env
from tests.test_api_support import populate

pytestmark = pytest.mark.e2e

SECRET = "store-cli-secret-value"
SECRET_SHA1 = hashlib.sha1(SECRET.encode()).hexdigest()
#: a daemon over the simulator that writes a small backfill and serves no API
SIM = {"CONNECT_SOURCE": "sim", "CONNECT_BACKFILL_DAYS": "0.2", "CONNECT_HTTP_BIND": "0"}
#: as an unprivileged user: root reads and writes any file whatever its mode
AS_USER = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []


def cli(
    *args: str, prefix: list[str] | None = None, timeout: float = 60, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(prefix or []), *CLI, *args], env=env(**extra), capture_output=True, text=True, timeout=timeout
    )


def start(*args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args], env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stop(proc: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the process did not stop:\n{err[-3000:]}") from None
    return proc.returncode, err


def wait_for(
    condition: Callable[[], bool], proc: subprocess.Popen[str], what: str, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"exited ({proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start prints (asserting there is exactly one, and no traceback)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("nightscout-connect: store ")
    return lines[0]


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file of the store (the file, its journal, its lock) by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")) if p.is_file()}


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's own is private to its user)."""
    path = Path(tempfile.mkdtemp(prefix="store-cli-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for sub in [path, *path.rglob("*")]:
            if sub.is_dir():
                sub.chmod(0o755)
        shutil.rmtree(path)


def made_store(path: Path) -> Path:
    Store(path).close()
    return path


# --- one daemon per store --------------------------------------------------------------------------


def test_a_second_daemon_on_a_store_exits_2_and_serve_reads_beside_the_first(tmp_path: Path) -> None:
    db = tmp_path / "one.db"
    first = start("run", CONNECT_STORE_PATH=str(db), **SIM)
    serve: subprocess.Popen[str] | None = None
    try:
        lock = Path(lock_path(str(db)))
        wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), first, "the lock")
        wait_for(lambda: db.exists() and _entries(db) > 0, first, "the first frame")

        for command in ("run", "once"):
            second = cli(command, CONNECT_STORE_PATH=str(db), **SIM)
            line = one_line(second)
            assert repr(str(db)) in line and f"pid {first.pid}" in line, line
            assert "in use by another daemon" in line
        # each account of --accounts-dir takes its store's lock too
        accounts = tmp_path / "accounts"
        accounts.mkdir()
        (accounts / "alice.env").write_text(f"CONNECT_SOURCE=sim\nCONNECT_STORE_PATH={db}\n")
        line = one_line(cli("once", "--accounts-dir", str(accounts), CONNECT_BACKFILL_DAYS="0.2"))
        assert f"pid {first.pid}" in line
        assert first.poll() is None, "the first daemon must keep running"

        # readers are welcome: serve beside the running daemon
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        serve = start(
            "serve",
            CONNECT_STORE_PATH=str(db),
            CONNECT_HTTP_BIND=f"127.0.0.1:{port}",
            CONNECT_HTTP_SECRET=SECRET,
        )
        wait_for(lambda: _answers(f"{base}/healthz"), serve, "serve")
        with httpx.Client(base_url=base, timeout=5, headers={"api-secret": SECRET_SHA1}) as client:
            entries = client.get("/api/v1/entries.json", params={"count": "3"})
            assert entries.status_code == 200 and len(entries.json()) == 3
            assert client.get("/readyz").status_code == 200
        code, err = stop(serve)
        serve = None
        assert code == 0, err[-3000:]
        assert first.poll() is None
    finally:
        if serve is not None:
            stop(serve)
        # killed, not stopped: the lock goes with the process, whatever ends it
        stop(first, signal.SIGKILL)
    again = cli("once", CONNECT_STORE_PATH=str(db), **SIM)
    assert again.returncode == 0, again.stderr[-3000:]


def _entries(db: Path) -> int:
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# --- a store a daemon cannot use -------------------------------------------------------------------


def _not_a_database(path: Path) -> Path:
    path.write_bytes(b"these are my notes, not a database\n" * 50)
    return path


def _newer_schema(path: Path) -> Path:
    made_store(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    return path


def _another_programs_database(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_not_a_database, "is not a SQLite database"),
        (_newer_schema, f"written by a newer version of nightscout-connect (schema {SCHEMA_VERSION + 1}"),
        (_another_programs_database, "is a SQLite database of something else"),
    ],
    ids=["not-a-database", "newer-schema", "another-programs-database"],
)
@pytest.mark.parametrize("command", ["once", "run"])
def test_a_store_that_is_not_ours_is_refused_and_left_as_it_is(
    tmp_path: Path, make: Callable[[Path], Path], says: str, command: str
) -> None:
    db = make(tmp_path / "s.db")
    before = db.read_bytes()
    line = one_line(cli(command, CONNECT_STORE_PATH=str(db), **SIM))
    assert says in line and repr(str(db)) in line, line
    assert db.read_bytes() == before
    assert not Path(f"{db}-wal").exists()


def test_a_directory_as_the_store_is_refused(tmp_path: Path) -> None:
    line = one_line(cli("once", CONNECT_STORE_PATH=str(tmp_path), **SIM))
    assert "is a directory" in line
    assert list(tmp_path.iterdir()) == []


def test_a_missing_directory_is_refused_not_created(tmp_path: Path) -> None:
    db = tmp_path / "typo" / "s.db"
    line = one_line(cli("once", CONNECT_STORE_PATH=str(db), **SIM))
    assert f"the directory {str(db.parent)!r} does not exist" in line
    assert not db.parent.exists()


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="needs an unprivileged user")
@pytest.mark.parametrize(
    ("mode", "says"), [(0o444, "is read-only"), (0o000, "cannot be read")], ids=["read-only", "unreadable"]
)
def test_a_store_the_daemon_cannot_write_or_read_is_refused(shared_dir: Path, mode: int, says: str) -> None:
    db = made_store(shared_dir / "s.db")
    populate(db, count=20)
    before = snapshot(db)
    db.chmod(mode)
    line = one_line(cli("once", prefix=AS_USER, CONNECT_STORE_PATH=str(db), **SIM))
    assert says in line and repr(str(db)) in line, line
    db.chmod(0o644)
    assert snapshot(db) == before


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="needs an unprivileged user")
def test_a_store_in_a_read_only_directory_is_refused(shared_dir: Path) -> None:
    # as a read-only mount looks to the daemon: the file could be written, its journal not
    folder = shared_dir / "ro"
    folder.mkdir()
    db = made_store(folder / "s.db")
    db.chmod(0o666)
    before = snapshot(db)
    folder.chmod(0o555)
    line = one_line(cli("once", prefix=AS_USER, CONNECT_STORE_PATH=str(db), **SIM))
    assert f"the directory {str(folder)!r} is read-only" in line
    assert snapshot(db) == before


# --- serve refuses what it cannot serve faithfully ------------------------------------------------------


def _damaged(path: Path) -> Path:
    populate(path, count=2000)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'entries'").fetchone()
    conn.close()
    with path.open("r+b") as handle:  # scribble over the entries table's first page
        handle.seek((int(root) - 1) * page_size)
        handle.write(b"\xa5" * page_size)
    return path


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_damaged, "is damaged (quick_check:"),
        (_not_a_database, "is not a SQLite database"),
        (_newer_schema, "written by a newer version"),
    ],
    ids=["damaged", "not-a-database", "newer-schema"],
)
def test_serve_refuses_a_store_it_cannot_serve(
    tmp_path: Path, make: Callable[[Path], Path], says: str
) -> None:
    db = make(tmp_path / "s.db")
    before = db.read_bytes()
    line = one_line(cli("serve", CONNECT_STORE_PATH=str(db), CONNECT_HTTP_BIND=f"127.0.0.1:{free_port()}"))
    assert says in line and repr(str(db)) in line, line
    assert db.read_bytes() == before
