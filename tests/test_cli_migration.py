"""Coming from nightscout-connect (Node) or the bridges before it: the same variables work.

A Nightscout site that ran nightscout-connect as its plugin, or the Dexcom bridge plugin before
that, has an environment of old names only. Moved as it is, that environment must drive this
daemon: ``check`` says what it recognised (by the names the user set) and what it ignored, and
``once`` reads the vendor and writes to the same site. Typos and settings that have no meaning
here are listed as ignored, with a hint.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connect import peers
from connect.settings import (
    apply_legacy_env,
    apply_node_values,
    installed_legacy_env,
    legacy_env_for,
)
from tests.emulators.dexcom import ShareEmulator
from tests.emulators.nightscout import NightscoutEmulator
from tests.emulators.nightscout import serve_in_thread as serve_site
from tests.emulators.serve import serve_in_thread

CLI = [sys.executable, "-m", "connect"]
ROOT = Path(__file__).resolve().parent.parent
HOUR_MS = 3_600_000
SITE_SECRET = "old-site-api-secret-81"
FOREIGN = re.compile(
    r"^(CONNECT_|BRIDGE_|LINK_UP_|CARELINK_|MMCONNECT_|GLOOKO_|API_SECRET$|BASE_URL$|MONGO_)"
)


def run(cwd: Path, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """The CLI with exactly ``variables`` of ours or anybody's (nothing from the test runner)."""
    env = {k: v for k, v in os.environ.items() if not FOREIGN.match(k)}
    env.update(variables)
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def line(output: str, prefix: str) -> str:
    found = [ln for ln in output.splitlines() if ln.startswith(prefix)]
    assert len(found) == 1, output
    return found[0]


@pytest.fixture
def share() -> Iterator[tuple[ShareEmulator, Any, str]]:
    emu = ShareEmulator()
    account = emu.add_account(
        "migrating.publisher@example.org",
        "bridge-era-password",
        first_reading_ms=int(time.time() * 1000) - 2 * HOUR_MS,
    )
    with serve_in_thread(emu) as url:
        yield emu, account, url


@pytest.fixture
def site() -> Iterator[tuple[NightscoutEmulator, str]]:
    emu = NightscoutEmulator(SITE_SECRET)
    url, stop = serve_site(emu)
    try:
        yield emu, url
    finally:
        stop()


ENVIRONMENTS = {
    # Nightscout with the share2nightscout bridge plugin: the bridge's names and the site's own
    "bridge plugin": lambda a, share_url, site_url: {
        "BRIDGE_USER_NAME": a.account_name,
        "BRIDGE_PASSWORD": a.password,
        "BRIDGE_SERVER": share_url,
        "BASE_URL": site_url,
        "API_SECRET": SITE_SECRET,
    },
    # nightscout-connect standalone: its CONNECT_* names, CONNECT_DEBUG included
    "nightscout-connect": lambda a, share_url, site_url: {
        "CONNECT_SOURCE": "dexcomshare",
        "CONNECT_SHARE_ACCOUNT_NAME": a.account_name,
        "CONNECT_SHARE_PASSWORD": a.password,
        "CONNECT_SHARE_REGION": "us",
        "CONNECT_SHARE_SERVER": share_url,
        "CONNECT_NIGHTSCOUT_ENDPOINT": site_url,
        "CONNECT_API_SECRET": SITE_SECRET,
        "CONNECT_DEBUG": "true",
    },
}


@pytest.mark.parametrize("kind", sorted(ENVIRONMENTS))
def test_an_old_environment_as_it_is_runs_check_and_once(
    share: Any, site: Any, tmp_path: Path, kind: str
) -> None:
    emu, account, share_url = share
    ns, site_url = site
    variables = ENVIRONMENTS[kind](account, share_url, site_url)

    check = run(tmp_path, "check", **variables)
    assert check.returncode == 0, check.stdout + check.stderr
    assert line(check.stdout, "source: ").startswith("source: dexcomshare")
    assert line(check.stdout, "recognised variables: ") == "recognised variables: " + ", ".join(
        sorted(variables)
    )
    assert line(check.stdout, "ignored variables: ") == "ignored variables: none"
    assert "login: ok" in check.stdout
    assert not (tmp_path / "nightscout-connect.db").exists()  # check writes nothing

    once = run(tmp_path, "once", **variables)
    assert once.returncode == 0, once.stderr
    first = account.first_reading_ms
    served = {t: account.value((t - first) // 300_000) for t in emu.served(account)}
    assert len(served) >= 23  # two hours of readings
    conn = sqlite3.connect(tmp_path / "nightscout-connect.db")
    try:
        assert dict(conn.execute("SELECT date, sgv FROM entries").fetchall()) == served
    finally:
        conn.close()
    # the site the old environment named got them, with its secret
    assert {e["date"]: e["sgv"] for e in ns.entries} == served
    if kind == "nightscout-connect":
        assert '"level": "debug"' in once.stderr  # CONNECT_DEBUG=true: debug logs
    else:
        assert '"level": "debug"' not in once.stderr
        assert "(chosen by BRIDGE_PASSWORD, BRIDGE_SERVER, BRIDGE_USER_NAME" in check.stdout


def test_a_typo_is_listed_as_ignored_with_the_name_it_missed(share: Any, tmp_path: Path) -> None:
    _, account, share_url = share
    variables = {
        "CONNECT_SOURCE": "dexcomshare",
        "CONNECT_SHARE_ACCOUNT_NAME": account.account_name,
        "CONNECT_SHARE_SERVER": share_url,
        "CONNECT_SHARE_PASWORD": account.password,
    }
    # the password only under the typo: the setting is missing, and check says why
    failed = run(tmp_path, "check", **variables)
    assert failed.returncode == 2
    assert "--share-password / CONNECT_SHARE_PASSWORD: required but not set" in failed.stderr
    assert line(failed.stdout, "ignored variables: ") == "ignored variables: CONNECT_SHARE_PASWORD"
    assert "CONNECT_SHARE_PASWORD: nothing reads it; did you mean CONNECT_SHARE_PASSWORD?" in failed.stdout
    assert "Traceback" not in failed.stderr
    assert account.password not in failed.stdout + failed.stderr

    # the bridge's name still holds the password: the run works, the typo is still reported
    working = run(tmp_path, "check", BRIDGE_PASSWORD=account.password, **variables)
    assert working.returncode == 0, working.stdout + working.stderr
    assert line(working.stdout, "recognised variables: ") == (
        "recognised variables: BRIDGE_PASSWORD, CONNECT_SHARE_ACCOUNT_NAME, CONNECT_SHARE_SERVER, CONNECT_SOURCE"
    )
    assert line(working.stdout, "ignored variables: ") == "ignored variables: CONNECT_SHARE_PASWORD"
    assert "login: ok" in working.stdout

    # a misspelt prefix is caught the same way; the rest of the environment is not listed
    prefix = run(tmp_path, "check", CONECT_BACKFILL_DAYS="3", OTHER_TOOL_SETTING="x", **variables)
    assert line(prefix.stdout, "ignored variables: ") == (
        "ignored variables: CONECT_BACKFILL_DAYS, CONNECT_SHARE_PASWORD"
    )
    assert "CONECT_BACKFILL_DAYS: nothing reads it; did you mean CONNECT_BACKFILL_DAYS?" in prefix.stdout


def test_an_old_name_beside_ours_is_ignored_and_ours_is_used(share: Any, tmp_path: Path) -> None:
    _, account, share_url = share
    check = run(
        tmp_path,
        "check",
        CONNECT_SOURCE="dexcomshare",
        BRIDGE_USER_NAME="someone.else@example.org",
        BRIDGE_PASSWORD="not-the-password",
        CONNECT_SHARE_ACCOUNT_NAME=account.account_name,
        CONNECT_SHARE_PASSWORD=account.password,
        CONNECT_SHARE_SERVER=share_url,
        LINK_UP_USERNAME="follower@example.org",
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "login: ok" in check.stdout  # with our names' account, not the bridge's
    assert line(check.stdout, "ignored variables: ") == (
        "ignored variables: BRIDGE_PASSWORD, BRIDGE_USER_NAME, LINK_UP_USERNAME"
    )
    assert "BRIDGE_USER_NAME: CONNECT_SHARE_ACCOUNT_NAME is set too and wins" in check.stdout
    assert "LINK_UP_USERNAME: read by the linkup source (CONNECT_SOURCE=linkup)" in check.stdout


def test_nightscout_connect_carelink_environment_says_what_is_new(tmp_path: Path) -> None:
    """nightscout-connect's CareLink settings: most carry over; the password has no use any more
    (CareLink's login needs a browser now) and the token file is the one new setting."""
    check = run(
        tmp_path,
        "check",
        CONNECT_SOURCE="minimedcarelink",
        CONNECT_CARELINK_USERNAME="carepartner.anna",
        CONNECT_CARELINK_PASSWORD="old-carelink-password",
        CONNECT_CARELINK_REGION="eu",
        CONNECT_CARELINK_PATIENT_USERNAME="patient.ben",
        CONNECT_COUNTRY_CODE="GB",
        CONNECT_LANGUAGE_CODE="en",
    )
    assert check.returncode == 2
    assert "--carelink-token-file / CONNECT_CARELINK_TOKEN_FILE: required but not set" in check.stderr
    assert line(check.stdout, "recognised variables: ") == (
        "recognised variables: CONNECT_CARELINK_PATIENT_USERNAME, CONNECT_CARELINK_REGION, "
        "CONNECT_CARELINK_USERNAME, CONNECT_COUNTRY_CODE, CONNECT_SOURCE"
    )
    assert line(check.stdout, "ignored variables: ") == (
        "ignored variables: CONNECT_CARELINK_PASSWORD, CONNECT_LANGUAGE_CODE"
    )
    assert "CONNECT_CARELINK_PASSWORD: CareLink's login needs a person at a browser" in check.stdout
    assert "old-carelink-password" not in check.stdout + check.stderr


def test_values_spelled_differently_by_nightscout_connect_are_translated() -> None:
    env = {"CONNECT_DEBUG": "true", "CONNECT_CARELINK_SERVER": "carelink.minimed.eu"}
    assert sorted(apply_node_values(env)) == ["CONNECT_CARELINK_SERVER", "CONNECT_DEBUG"]
    # its CareLink server was the portal of a region; here the variable would redirect everything
    assert env == {"CONNECT_DEBUG": "true", "CONNECT_LOG_LEVEL": "debug", "CONNECT_CARELINK_REGION": "eu"}

    mine = {"CONNECT_DEBUG": "false", "CONNECT_CARELINK_SERVER": "http://127.0.0.1:8080"}
    assert apply_node_values(mine) == []
    assert mine == {"CONNECT_DEBUG": "false", "CONNECT_CARELINK_SERVER": "http://127.0.0.1:8080"}

    ours_win = {"CONNECT_DEBUG": "1", "CONNECT_LOG_LEVEL": "warning"}
    apply_node_values(ours_win)
    assert ours_win["CONNECT_LOG_LEVEL"] == "warning"


def test_a_share_region_set_the_new_way_wins_over_the_bridge_server() -> None:
    from sources.dexcomshare import SOURCE

    env = {"BRIDGE_SERVER": "EU", "CONNECT_SHARE_REGION": "us", "BRIDGE_USER_NAME": "u"}
    assert apply_legacy_env(SOURCE.legacy_env, env) == ["BRIDGE_USER_NAME"]
    assert "CONNECT_SHARE_SERVER" not in env
    alone = {"BRIDGE_SERVER": "EU"}
    apply_legacy_env(SOURCE.legacy_env, alone)
    assert alone["CONNECT_SHARE_SERVER"] == "EU"


def test_the_readme_table_lists_every_old_name_read() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Coming from nightscout-connect")
    section = readme[start : readme.index("\n## ", start + 1)]
    names = set(legacy_env_for(None))  # the site's own names: its address, secret and thresholds
    for legacy in installed_legacy_env().values():
        names.update(legacy)
    names |= peers.all_names()  # the other bridges' names, read or not
    for name in sorted(names):
        assert f"`{name}`" in section, name
