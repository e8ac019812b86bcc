"""The other bridges' environments, moved as they are: share2nightscout-bridge, Nightscout's
bridge plugin, nightscout-librelink-up and minimed-connect-to-nightscout.

Each test starts the real CLI with one bridge's own variables (plus the one setting that points
the vendor at its emulator) and an emulated Nightscout site: ``check`` names what each variable
became and why the others have no effect, and ``once`` delivers the vendor's readings to the
site the bridge's variables name, with the credential they carry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connect import peers
from connect.settings import apply_legacy_env, apply_node_values, legacy_env_for
from outputs.settings import nightscout_target
from tests.emulators.carelink import CareLinkEmulator
from tests.emulators.dexcom import ShareEmulator
from tests.emulators.linkup import LinkUpEmulator
from tests.emulators.linkup import serve_in_thread as serve_linkup
from tests.emulators.nightscout import NightscoutEmulator
from tests.emulators.nightscout import serve_in_thread as serve_site
from tests.emulators.serve import serve_in_thread

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "connect"]
HOUR_MS = 3_600_000
SITE_SECRET = "bridge-era-site-secret-7d"
FOREIGN = re.compile(
    r"^(CONNECT_|BRIDGE_|LINK_UP_|CARELINK_|MMCONNECT_|GLOOKO_|DEXCOM_|NIGHTSCOUT_|SHARE_INTERVAL$|NS$"
    r"|WEBSITE_HOSTNAME$|API_SECRET$|BASE_URL$|MONGO_|LOG_LEVEL$|DEVICE_NAME$|SINGLE_SHOT$|CUSTOMCONNSTR_)"
)


def run(cwd: Path, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not FOREIGN.match(k)}
    env.update(variables)
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=90)


def line(output: str, prefix: str) -> str:
    found = [ln for ln in output.splitlines() if ln.startswith(prefix)]
    assert len(found) == 1, output
    return found[0]


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


@pytest.fixture
def site() -> Iterator[tuple[NightscoutEmulator, str]]:
    emu = NightscoutEmulator(SITE_SECRET)
    url, stop = serve_site(emu)
    try:
        yield emu, url
    finally:
        stop()


@pytest.fixture
def share() -> Iterator[tuple[ShareEmulator, Any, str]]:
    emu = ShareEmulator()
    account = emu.add_account(
        "bridge.publisher", "share-Passw0rd $ with spaces", first_reading_ms=int(time.time() * 1000) - HOUR_MS
    )
    with serve_in_thread(emu) as url:
        yield emu, account, url


def delivered_share(ns: NightscoutEmulator, emu: ShareEmulator, account: Any) -> None:
    first = account.first_reading_ms
    served = {t: account.value((t - first) // 300_000) for t in emu.served(account)}
    assert len(served) >= 11
    assert {e["date"]: e["sgv"] for e in ns.entries} == served


def test_share2nightscout_bridge_environment(site: Any, share: Any, tmp_path: Path) -> None:
    ns, site_url = site
    emu, account, share_url = share
    variables = {
        "DEXCOM_ACCOUNT_NAME": account.account_name,
        "DEXCOM_PASSWORD": account.password,
        "NS": site_url,
        "WEBSITE_HOSTNAME": "not-used.example.org",  # NS wins, as in the bridge
        "API_SECRET": SITE_SECRET,
        "SHARE_INTERVAL": "150000",
        "maxCount": "1",
        # the bridge only knew Dexcom's US server; this points the source at the emulator
        "CONNECT_SHARE_SERVER": share_url,
    }
    check = run(tmp_path, "check", **variables)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "(chosen by DEXCOM_ACCOUNT_NAME, DEXCOM_PASSWORD" in check.stdout
    assert line(check.stdout, "recognised variables: ") == (
        "recognised variables: API_SECRET, CONNECT_SHARE_SERVER, DEXCOM_ACCOUNT_NAME, DEXCOM_PASSWORD, NS"
    )
    assert line(check.stdout, "ignored variables: ") == (
        "ignored variables: SHARE_INTERVAL, WEBSITE_HOSTNAME, maxCount"
    )
    assert "WEBSITE_HOSTNAME: NS is set too and wins" in check.stdout
    assert f"SHARE_INTERVAL: {peers.NOT_NEEDED_POLL}" in check.stdout
    report = line(check.stdout, "names of share2nightscout-bridge: ")
    assert "DEXCOM_ACCOUNT_NAME → CONNECT_SHARE_ACCOUNT_NAME" in report
    assert "SHARE_INTERVAL → no effect" in report
    assert "output nightscout " + site_url + ": ok, can write" in check.stdout
    assert account.password not in check.stdout + check.stderr

    once = run(tmp_path, "once", **variables)
    assert once.returncode == 0, once.stderr
    delivered_share(ns, emu, account)


def test_share2nightscout_bridge_on_azure_keeps_its_secrets_in_connection_strings(
    site: Any, share: Any, tmp_path: Path
) -> None:
    ns, site_url = site
    emu, account, share_url = share
    variables = {
        "CUSTOMCONNSTR_DEXCOM_ACCOUNT_NAME": account.account_name,
        "CUSTOMCONNSTR_DEXCOM_PASSWORD": account.password,
        "CUSTOMCONNSTR_API_SECRET": SITE_SECRET,
        "NS": site_url,
        "CONNECT_SHARE_SERVER": share_url,
    }
    check = run(tmp_path, "check", **variables)
    assert check.returncode == 0, check.stdout + check.stderr
    assert line(check.stdout, "source: ").startswith("source: dexcomshare")
    assert "login: ok" in check.stdout
    assert "output nightscout " + site_url + ": ok, can write" in check.stdout
    once = run(tmp_path, "once", **variables)
    assert once.returncode == 0, once.stderr
    delivered_share(ns, emu, account)


def test_nightscout_bridge_plugin_environment(site: Any, share: Any, tmp_path: Path) -> None:
    ns, site_url = site
    emu, account, share_url = share
    variables = {
        "BRIDGE_USER_NAME": account.account_name,
        "BRIDGE_PASSWORD": account.password,
        "BRIDGE_SERVER": share_url,
        "BRIDGE_INTERVAL": "150000",
        "BRIDGE_MAX_COUNT": "1",
        "BASE_URL": site_url,
        "API_SECRET": SITE_SECRET,
    }
    check = run(tmp_path, "check", **variables)
    assert check.returncode == 0, check.stdout + check.stderr
    assert line(check.stdout, "ignored variables: ") == "ignored variables: BRIDGE_INTERVAL, BRIDGE_MAX_COUNT"
    assert f"BRIDGE_INTERVAL: {peers.NOT_NEEDED_POLL}" in check.stdout
    assert f"BRIDGE_MAX_COUNT: {peers.EVERY_READING}" in check.stdout
    report = line(check.stdout, "names of Nightscout's bridge plugin: ")
    assert "BRIDGE_SERVER → CONNECT_SHARE_SERVER" in report and "BRIDGE_MAX_COUNT → no effect" in report

    once = run(tmp_path, "once", **variables)
    assert once.returncode == 0, once.stderr
    delivered_share(ns, emu, account)


def test_nightscout_librelink_up_environment(site: Any, tmp_path: Path) -> None:
    ns, site_url = site
    emu = LinkUpEmulator()
    email, password = "follower@example.org", "llu pass $HOME word"
    account = emu.add_account(email, password, region="eu")
    patient = account.patients[0]
    host = site_url.removeprefix("http://")
    variables = {
        "LINK_UP_USERNAME": email,
        "LINK_UP_PASSWORD": password,
        "LINK_UP_CONNECTION": patient.patient_id,
        "LINK_UP_TIME_INTERVAL": "5",
        "LINK_UP_VERSION": "4.16.0",
        "NIGHTSCOUT_URL": host,  # a bare host, as its README asks
        "NIGHTSCOUT_DISABLE_HTTPS": "true",
        "NIGHTSCOUT_API_TOKEN": sha1(SITE_SECRET),  # already hashed, sent as it is
        "NIGHTSCOUT_DEVICE_NAME": "my-libre",
        "LOG_LEVEL": "info",
        "SINGLE_SHOT": "true",
    }
    with serve_linkup(emu) as url:
        variables["CONNECT_LINK_UP_SERVER"] = url  # the region's host, on loopback
        check = run(tmp_path, "check", **variables)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "(chosen by LINK_UP_CONNECTION, LINK_UP_PASSWORD" in check.stdout
        assert (
            line(check.stdout, "ignored variables: ")
            == "ignored variables: NIGHTSCOUT_DEVICE_NAME, SINGLE_SHOT"
        )
        assert "SINGLE_SHOT: run `nightscout-connect once`" in check.stdout
        recognised = line(check.stdout, "recognised variables: ")
        for name in (
            "NIGHTSCOUT_URL",
            "NIGHTSCOUT_DISABLE_HTTPS",
            "NIGHTSCOUT_API_TOKEN",
            "LINK_UP_VERSION",
            "LOG_LEVEL",
        ):
            assert name in recognised
        report = line(check.stdout, "names of nightscout-librelink-up: ")
        assert "NIGHTSCOUT_API_TOKEN → CONNECT_API_SECRET_SHA1" in report
        assert f"output nightscout http://{host}: ok, can write" in check.stdout
        assert password not in check.stdout + check.stderr

        once = run(tmp_path, "once", **variables)
    assert once.returncode == 0, once.stderr
    readings = emu.served_times(patient)
    assert len(readings) >= 100
    assert {e["date"]: e["sgv"] for e in ns.entries} == {d: patient.value(d) for d in readings}
    assert sha1(SITE_SECRET) not in once.stdout + once.stderr


def test_minimed_connect_to_nightscout_environment(site: Any, tmp_path: Path) -> None:
    ns, site_url = site
    emu = CareLinkEmulator(first_reading_ms=int(time.time() * 1000) - 2 * HOUR_MS)
    logindata = tmp_path / "logindata.json"
    logindata.write_text(json.dumps(emu.issue_tokens()))
    token_file = tmp_path / "carelink.json"
    variables = {
        "CARELINK_USERNAME": "carepartner.anna",
        "CARELINK_PASSWORD": "old-carelink-password",
        "CARELINK_REQUEST_INTERVAL": "60000",
        "MMCONNECT_COUNTRYCODE": "GB",
        "NS": site_url,
        "API_SECRET": SITE_SECRET,
        # the one new setting: CareLink's login needs a browser now (`login carelink`)
        "CONNECT_CARELINK_TOKEN_FILE": str(token_file),
    }
    with serve_in_thread(emu) as url:
        imported = run(tmp_path, "login", "carelink", "--import", str(logindata), **variables)
        assert imported.returncode == 0, imported.stdout + imported.stderr
        variables["CONNECT_CARELINK_SERVER"] = url
        check = run(tmp_path, "check", **variables)
        assert line(check.stdout, "ignored variables: ") == (
            "ignored variables: CARELINK_PASSWORD, CARELINK_REQUEST_INTERVAL"
        )
        assert "CARELINK_PASSWORD: CareLink's login needs a person at a browser" in check.stdout
        report = line(check.stdout, "names of minimed-connect-to-nightscout: ")
        assert "NS → CONNECT_NIGHTSCOUT_ENDPOINT" in report
        assert "CARELINK_REQUEST_INTERVAL → no effect" in report
        assert "CARELINK_PASSWORD → no effect" in report
        once = run(tmp_path, "once", **variables)
    assert once.returncode == 0, once.stderr
    assert len(ns.entries) >= 20


def test_peer_values_are_converted() -> None:
    env = {"NIGHTSCOUT_URL": "ns.example.org", "NIGHTSCOUT_API_TOKEN": "A" * 40}
    assert apply_node_values(env) == ["NIGHTSCOUT_URL", "NIGHTSCOUT_API_TOKEN"]
    assert env["CONNECT_NIGHTSCOUT_ENDPOINT"] == "https://ns.example.org"
    assert env["CONNECT_API_SECRET_SHA1"] == "A" * 40
    plain = {
        "NIGHTSCOUT_URL": "ns.local:1337",
        "NIGHTSCOUT_DISABLE_HTTPS": "true",
        "NIGHTSCOUT_API_TOKEN": "tok-1",
    }
    apply_node_values(plain)
    assert plain["CONNECT_NIGHTSCOUT_ENDPOINT"] == "http://ns.local:1337"
    assert plain["CONNECT_NIGHTSCOUT_TOKEN"] == "tok-1"  # not a SHA-1: a token, hashed when sent
    ours = {"NIGHTSCOUT_URL": "a.example", "CONNECT_NIGHTSCOUT_ENDPOINT": "https://b.example"}
    assert apply_node_values(ours) == []
    # the bare host of WEBSITE_HOSTNAME means https, as the bridges built it
    site = {"WEBSITE_HOSTNAME": "site.azurewebsites.net"}
    apply_legacy_env(legacy_env_for(None), site)
    assert nightscout_target(site["CONNECT_NIGHTSCOUT_ENDPOINT"]).base_url == "https://site.azurewebsites.net"
    both = {"NS": "https://one.example", "WEBSITE_HOSTNAME": "two.example"}
    apply_legacy_env(legacy_env_for(None), both)
    assert both["CONNECT_NIGHTSCOUT_ENDPOINT"] == "https://one.example"


def test_every_peer_name_read_is_really_read() -> None:
    from connect.settings import installed_legacy_env

    read = set(legacy_env_for(None)) | peers.TRANSLATED
    for legacy in installed_legacy_env().values():
        read |= set(legacy)
    for peer in peers.PEERS:
        assert set(peer.read) <= read, peer.name


def test_a_converted_name_beside_ours_is_listed_as_ignored_with_why() -> None:
    from connect.settings import env_notes, recognised_env, settings_model

    environ = {
        "NIGHTSCOUT_URL": "ns.example.org",
        "CONNECT_NIGHTSCOUT_ENDPOINT": "https://mine.example.org",
        "CONNECT_API_SECRET": "a-secret-of-twelve+",
        "NIGHTSCOUT_API_TOKEN": "b" * 40,
        "BRIDGE_INTERVAL": "150000",
    }
    models = [settings_model(None)]
    legacy = legacy_env_for(None)
    used, ignored = recognised_env(models, environ, legacy=legacy)
    assert "NIGHTSCOUT_URL" in ignored and "NIGHTSCOUT_API_TOKEN" in ignored and "BRIDGE_INTERVAL" in ignored
    notes = env_notes(ignored, environ, legacy=legacy)
    assert "NIGHTSCOUT_URL: CONNECT_NIGHTSCOUT_ENDPOINT is set too and wins" in notes
    assert any(n.startswith("NIGHTSCOUT_API_TOKEN: CONNECT_API_SECRET") for n in notes)
    assert f"BRIDGE_INTERVAL: {peers.NOT_NEEDED_POLL}" in notes
