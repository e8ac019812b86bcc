"""A private PostgreSQL for the PostgreSQL figures: initdb into a temporary directory, a free
loopback port, trust authentication for one user, stopped and removed after.

Debian's PostgreSQL keeps its programs in ``/usr/lib/postgresql/<version>/bin``; ``PG_BINDIR``
names another directory. initdb refuses to run as root, so as root the cluster is made and run as
the ``postgres`` user (which the Debian package creates). Without PostgreSQL the figures are
reported as not measured.
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
from types import TracebackType
from typing import Any

from bench.broker import _free_port


def postgres_bindir() -> Path:
    named = os.environ.get("PG_BINDIR")
    candidates = [Path(named)] if named else sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    found = None if named else shutil.which("initdb")
    if found is not None:
        return Path(found).parent
    raise FileNotFoundError("PostgreSQL is not installed (apt-get install -y postgresql)")


class Postgres:
    """``with Postgres() as url:`` a server on 127.0.0.1 with an empty database ``connect``
    owned by ``connect`` (no password) for the block's length."""

    def __init__(self, max_connections: int = 100) -> None:
        self.bindir = postgres_bindir()
        self.max_connections = max_connections
        self.root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = _free_port()
        self.url = f"postgresql://connect@127.0.0.1:{self.port}/connect"
        self.process: subprocess.Popen[bytes] | None = None
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("postgres")
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)

    def _as_user(self) -> dict[str, Any]:
        """Popen's arguments that run a program as the ``postgres`` user (as root only)."""
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def __enter__(self) -> str:
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self.url

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

    def _start(self) -> None:
        import psycopg

        subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "connect", "--auth=trust",
             "--encoding=UTF8", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.root,
            **self._as_user(),
        )  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", f"max_connections={self.max_connections}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
                **self._as_user(),
            )  # fmt: skip
        deadline = time.monotonic() + 30
        admin = f"postgresql://connect@127.0.0.1:{self.port}/postgres"
        while True:
            try:
                with psycopg.connect(admin, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("CREATE DATABASE connect")
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def _stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # "fast" shutdown: open sessions end at once
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)
