"""The command line, end to end, against the LibreLinkUp emulator on a loopback port.

``python -m connect check`` and ``once`` run as the user runs them — a subprocess with nothing
but environment variables — with ``CONNECT_SOURCE=linkup``. ``check`` logs in and writes
nothing; ``once`` stores exactly the readings the emulator served; a wrong password is one
refused login and exit status 1. No password, token or account id reaches the output or the
status the daemon saves in the store.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulators.linkup import Account, LinkUpEmulator, serve_in_thread

CLI = [sys.executable, "-m", "connect"]
EMAIL = "cli.follower@example.org"
PASSWORD = "cli-Passw0rd-llu-93"
#: variables of ours, of the bridges and of the Nightscout site: none may leak in from the runner
FOREIGN = re.compile(
    r"^(CONNECT_|BRIDGE_|LINK_UP_|CARELINK_|MMCONNECT_|GLOOKO_|API_SECRET$|BASE_URL$|MONGO_)"
)


def run(cwd: Path, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """The CLI with exactly ``variables`` (nothing of ours from the test runner's environment)."""
    env = {k: v for k, v in os.environ.items() if not FOREIGN.match(k)}
    env.update(variables)
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def served() -> Iterator[tuple[LinkUpEmulator, Account, str]]:
    emulator = LinkUpEmulator()  # wall-clock time: the subprocess lives in it too
    account = emulator.add_account(EMAIL, PASSWORD, region="eu")
    with serve_in_thread(emulator) as url:
        yield emulator, account, url


def secrets(emulator: LinkUpEmulator, account: Account) -> list[str]:
    return [
        PASSWORD,
        account.user_id,
        account.account_id,
        *emulator.tickets,
        *(p.patient_id for p in account.patients),
    ]


def assert_clean(text: str, emulator: LinkUpEmulator, account: Account) -> None:
    for secret in secrets(emulator, account):
        assert secret not in text, "a secret reached the output or the store's status"


@pytest.mark.parametrize("names", ["ours", "nightscout-librelink-up"])
def test_check_and_once_store_what_the_emulator_served(
    served: tuple[LinkUpEmulator, Account, str], tmp_path: Path, names: str
) -> None:
    emulator, account, url = served
    store = tmp_path / "linkup.db"
    credentials = (
        {"CONNECT_LINK_UP_USERNAME": EMAIL, "CONNECT_LINK_UP_PASSWORD": PASSWORD}
        if names == "ours"
        else {"LINK_UP_USERNAME": EMAIL, "LINK_UP_PASSWORD": PASSWORD}
    )
    variables = {
        "CONNECT_SOURCE": "linkup",
        "CONNECT_STORE_PATH": str(store),
        "CONNECT_BACKFILL_DAYS": "1",
        "CONNECT_LOG_FORMAT": "json",
        # written as the API's own URLs read: the /llu prefix must not be doubled
        "CONNECT_LINK_UP_SERVER": f"{url}/llu",
        **credentials,
    }

    check = run(tmp_path, "check", **variables)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "source: linkup" in check.stdout and "login: ok" in check.stdout
    assert not store.exists(), "check wrote a store"
    assert [r.kind for r in emulator.requests] == ["login", "connections"]
    assert_clean(check.stdout + check.stderr, emulator, account)

    once = run(tmp_path, "once", **variables)
    assert once.returncode == 0, once.stdout + once.stderr
    assert [r.kind for r in emulator.requests][2:] == ["login", "connections", "graph"]
    assert all(r.status == 200 for r in emulator.requests)
    patient = account.patients[0]
    readings = emulator.served_times(patient)
    assert len(readings) >= 130  # about 12 h of history and the current reading
    conn = sqlite3.connect(store)
    try:
        rows = conn.execute("SELECT date, sgv, direction FROM entries ORDER BY date").fetchall()
        statuses = [doc for (doc,) in conn.execute("SELECT json FROM machine_status")]
    finally:
        conn.close()
    assert [d for d, _, _ in rows] == sorted(readings)
    assert all(sgv == patient.value(d) for d, sgv, _ in rows)
    # the current reading came with its arrow, the history without
    (current,) = emulator.served_current_times(patient)
    assert [d for d, _, direction in rows if direction is not None] == [current]
    assert statuses, "once saved no status"
    json.loads(statuses[0])
    assert_clean(once.stdout + once.stderr + "\n".join(statuses), emulator, account)


def test_a_wrong_password_is_one_refused_login_and_exit_1(
    served: tuple[LinkUpEmulator, Account, str], tmp_path: Path
) -> None:
    emulator, account, url = served
    wrong = "not-the-llu-password"
    variables = {
        "CONNECT_SOURCE": "linkup",
        "CONNECT_STORE_PATH": str(tmp_path / "refused.db"),
        "CONNECT_LOG_FORMAT": "json",
        "CONNECT_LINK_UP_SERVER": url,
        "CONNECT_LINK_UP_USERNAME": EMAIL,
        "CONNECT_LINK_UP_PASSWORD": wrong,
    }
    check = run(tmp_path, "check", **variables)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "login: failed" in check.stdout and "CONNECT_LINK_UP_PASSWORD" in check.stdout
    once = run(tmp_path, "once", **variables)
    assert once.returncode == 1, once.stdout + once.stderr
    assert [(r.kind, r.refused) for r in emulator.requests] == [("login", True), ("login", True)]
    assert account.locked_until == 0  # two refusals a minute apart at most: no lockout
    text = check.stdout + check.stderr + once.stdout + once.stderr
    assert wrong not in text
    assert_clean(text, emulator, account)
    conn = sqlite3.connect(tmp_path / "refused.db")
    try:
        assert conn.execute("SELECT count(*) FROM entries").fetchone() == (0,)
        statuses = "\n".join(doc for (doc,) in conn.execute("SELECT json FROM machine_status"))
    finally:
        conn.close()
    assert wrong not in statuses
    assert_clean(statuses, emulator, account)
