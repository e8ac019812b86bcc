"""The real command line as a subprocess, with an environment free of the caller's settings,
and the small readers the end-to-end tests share."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

CLI = [sys.executable, "-m", "connect"]
#: variables of ours, of nightscout-connect and of the older bridges: a developer's own
#: environment must not leak into a test's run
FOREIGN = re.compile(r"^(CONNECT_|BRIDGE_|LINK_UP_|CARELINK_|MMCONNECT_|GLOOKO_|API_SECRET$|BASE_URL$)")


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not FOREIGN.match(k)}
    base.update({"CONNECT_LOG_FORMAT": "json", "CONNECT_HTTP_BIND": "0", **extra})
    return base


def cli(*args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env(**extra), capture_output=True, text=True, timeout=timeout)


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def iso_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def cli_in_process(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """The command line as ``main`` runs it, in this process (for commands that end by
    themselves: a new interpreter per call would cost seconds): an environment of its own
    (``CONNECT_*`` of the caller left out), output captured, the test's log configuration left
    alone."""
    from connect import cli as cli_module

    out, err = io.StringIO(), io.StringIO()
    saved, configure = dict(os.environ), cli_module.configure
    wanted = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    wanted.update({"CONNECT_LOG_FORMAT": "json", **extra})
    try:
        os.environ.clear()
        os.environ.update(wanted)
        cli_module.configure = lambda **_: None  # type: ignore[assignment]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_module.main(list(args))
    finally:
        cli_module.configure = configure  # type: ignore[assignment]
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
