"""A private PostgreSQL cluster for tests: initdb in a temporary directory, a free loopback port,
trust authentication for one user, stopped and removed afterwards.

Debian's PostgreSQL keeps its programs in ``/usr/lib/postgresql/<version>/bin``; ``PG_BINDIR``
names another directory. initdb refuses to run as root, so as root the cluster is created and run
as the ``postgres`` user (which the Debian package creates). A missing PostgreSQL skips the tests
that need it on a developer machine and fails them when ``CI`` is set (conftest.py).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.mosquitto import free_port


def find_bindir() -> Path | None:
    override = os.environ.get("PG_BINDIR")
    if override:
        return Path(override) if (Path(override) / "initdb").is_file() else None
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for directory in candidates:
        if (directory / "initdb").is_file():
            return directory
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class Cluster:
    """One postgres server on 127.0.0.1:``port`` with a database ``connect`` owned by ``connect``."""

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL is not installed (apt-get install -y postgresql)")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="connect-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._run_as = pwd.getpwnam("postgres")
            os.chown(self.root, self._run_as.pw_uid, self._run_as.pw_gid)
        self.log = self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://connect@127.0.0.1:{self.port}/connect"

    def database_url(self, name: str) -> str:
        return f"postgresql://connect@127.0.0.1:{self.port}/{name}"

    def _demote(self) -> None:
        if self._run_as is not None:
            os.setgid(self._run_as.pw_gid)
            os.setuid(self._run_as.pw_uid)

    def _run(self, *args: str) -> None:
        subprocess.run(
            args,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=self._demote if self._run_as else None,  # noqa: PLW1509 - only as root
            cwd=self.root,
        )

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "connect",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.root}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=self._demote if self._run_as else None,  # noqa: PLW1509 - only as root
            cwd=self.root,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(
                    self.database_url("postgres"), connect_timeout=2, autocommit=True
                ) as conn:
                    conn.execute("CREATE DATABASE connect")
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        """A fresh, empty database on this cluster; its URL."""
        with psycopg.connect(self.database_url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT is PostgreSQL's "fast" shutdown: it ends open sessions (SIGTERM would wait)
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
