"""The real command line as a subprocess, with an environment free of the caller's settings,
and the small readers the end-to-end tests share."""

from __future__ import annotations

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
