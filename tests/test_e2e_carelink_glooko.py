"""CareLink and Glooko end to end through the real CLI, on loopback ports.

CareLink: a person's token file (as another CareLink tool writes ``logindata.json``) is
brought in with ``login carelink --import`` (or made by ``login carelink`` at a terminal, the
emulator playing the person at the browser); then ``once`` reads the CareLink emulator, stores
the readings and therapy markers, and delivers them to an emulated Nightscout site. Glooko:
``once`` signs in to the Glooko emulator, reads its feeds, stores and delivers them. Both
times the store and the site must hold exactly what the vendor served.
"""

from __future__ import annotations

import json
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import CLI, cli, env, iso_ms, rows
from tests.emulators.carelink import FIVE_MIN, CareLinkEmulator
from tests.emulators.glooko import GlookoEmulator
from tests.emulators.nightscout import NightscoutEmulator
from tests.emulators.nightscout import serve_in_thread as serve_site
from tests.emulators.serve import serve_in_thread

pytestmark = pytest.mark.e2e

HOUR_MS = 3_600_000
SITE_SECRET = "site-api-secret-2f9c41"


#: CareLink's lastSGTrend → Nightscout's (direction, trend number), written out here on purpose
#: rather than taken from the source's table
CARELINK_TRENDS = {
    "NONE": ("Flat", 4),
    "UP": ("SingleUp", 2),
    "UP_DOUBLE": ("DoubleUp", 1),
    "UP_TRIPLE": ("TripleUp", 1),
    "DOWN": ("SingleDown", 6),
    "DOWN_DOUBLE": ("DoubleDown", 7),
    "DOWN_TRIPLE": ("TripleDown", 7),
}


@pytest.fixture
def site() -> Iterator[tuple[NightscoutEmulator, str]]:
    emu = NightscoutEmulator(SITE_SECRET)
    url, stop = serve_site(emu)
    try:
        yield emu, url
    finally:
        stop()


# --- login carelink ------------------------------------------------------------------------------


def test_login_import_writes_a_private_token_file(tmp_path: Path) -> None:
    emu = CareLinkEmulator(first_reading_ms=int(time.time() * 1000) - HOUR_MS)
    issued = emu.issue_tokens()
    source = tmp_path / "logindata.json"
    source.write_text(json.dumps(issued))
    source.chmod(0o644)
    target = tmp_path / "state" / "carelink.json"

    result = cli("login", "carelink", "--import", str(source), CONNECT_CARELINK_TOKEN_FILE=str(target))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Imported the CareLink tokens into {target}" in result.stdout
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert json.loads(target.read_text()) == issued
    for token in (issued["access_token"], issued["refresh_token"]):
        assert token not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("this is not json {", "is not JSON"),
        (json.dumps({"access_token": "a.b.c", "client_id": "cp"}), "has no refresh_token"),
        (json.dumps(["a", "list"]), "does not hold a JSON object"),
    ],
)
def test_login_import_of_a_bad_file_fails_with_one_clear_line(
    tmp_path: Path, content: str, says: str
) -> None:
    bad = tmp_path / "logindata.json"
    bad.write_text(content)
    target = tmp_path / "carelink.json"
    result = cli("login", "carelink", "--import", str(bad), CONNECT_CARELINK_TOKEN_FILE=str(target))
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("CareLink login failed:") and says in lines[0], lines
    assert not target.exists()


def test_login_names_what_is_wrong_and_exits_2(tmp_path: Path) -> None:
    missing = cli("login", "carelink", "--import", str(tmp_path / "nope.json"),
                  CONNECT_CARELINK_TOKEN_FILE=str(tmp_path / "t.json"))  # fmt: skip
    assert missing.returncode == 2 and "--import: no file at" in missing.stderr
    other = cli("login", "dexcomshare")
    assert other.returncode == 2 and "only carelink needs one" in other.stderr
    bare = cli("login")
    assert bare.returncode == 2 and "login carelink" in bare.stderr
    (tmp_path / "logindata.json").write_text("{}")
    unset = cli("login", "carelink", "--import", str(tmp_path / "logindata.json"))
    assert unset.returncode == 2 and "CONNECT_CARELINK_TOKEN_FILE: required but not set" in unset.stderr
    for result in (missing, other, bare, unset):
        assert "Traceback" not in result.stderr


# --- CareLink → store → Nightscout ----------------------------------------------------------------


def test_carelink_once_fills_the_store_and_the_site(site: Any, tmp_path: Path) -> None:
    ns, ns_url = site
    emu = CareLinkEmulator(first_reading_ms=int(time.time() * 1000) - 4 * HOUR_MS, gaps={4, 11})
    logindata = tmp_path / "logindata.json"
    logindata.write_text(json.dumps(emu.issue_tokens()))
    token_file = tmp_path / "carelink.json"
    db = tmp_path / "store.db"
    settings = {
        "CONNECT_SOURCE": "minimedcarelink",
        "CONNECT_CARELINK_TOKEN_FILE": str(token_file),
        "CONNECT_COUNTRY_CODE": "GB",
        "CONNECT_STORE_PATH": str(db),
        "CONNECT_NIGHTSCOUT_ENDPOINT": ns_url,
        "CONNECT_API_SECRET": SITE_SECRET,
    }
    with serve_in_thread(emu) as url:
        imported = cli("login", "carelink", "--import", str(logindata), **settings)
        assert imported.returncode == 0, imported.stdout
        result = cli("once", CONNECT_CARELINK_SERVER=url, **settings)
    assert result.returncode == 0, result.stderr

    answers = [r for r in emu.log if r.endpoint == "data" and r.status == 200]
    assert len(answers) == 1
    served = {t: emu.value((t - emu.first_reading_ms) // FIVE_MIN) for t in answers[0].served}
    assert 44 <= len(served) <= 47  # four hours of five-minute readings but the two gaps
    assert not {emu.reading_time(k) for k in (4, 11)} & set(served)
    assert dict(rows(db, "SELECT date, sgv FROM entries")) == served
    assert {e["date"]: e["sgv"] for e in ns.entries} == served
    assert len(ns.entries) == len(served)  # each once

    markers = emu.expected_treatments(answers[0].time_ms)
    assert markers  # meals with boluses and automatic corrections
    stored = {(d, e): i for d, e, i in rows(db, "SELECT date, event_type, insulin FROM treatments")}
    assert stored == markers
    delivered = {(iso_ms(t["created_at"]), t["eventType"]): t["insulin"] for t in ns.treatments}
    assert delivered == markers

    # the document the emulator answered (it is a pure function of the time it answered at)
    payload, carried = emu.payload(answers[0].time_ms)
    served_doc = payload["patientData"]
    assert set(carried) == set(served)

    # the newest reading carries lastSGTrend, and only it: in the store and on the site
    newest = max(served)
    direction, trend = CARELINK_TRENDS[served_doc["lastSGTrend"]]
    directions = dict(rows(db, "SELECT date, direction FROM entries"))
    assert directions == {t: (direction if t == newest else None) for t in served}
    (last,) = [e for e in ns.entries if e["date"] == newest]
    assert (last["direction"], last["trend"]) == (direction, trend)
    assert all("direction" not in e or e["direction"] is None for e in ns.entries if e["date"] != newest)

    # one device status: the pump and phone as of the pump's last upload (the server's clock)
    uploaded = served_doc["lastMedicalDeviceDataUpdateServerTime"]
    iob = served_doc["activeInsulin"]
    iob_at = uploaded - 120_000  # the emulator's pump wrote the IOB two minutes before uploading
    statuses = [
        (d, dev, json.loads(doc)) for d, dev, doc in rows(db, "SELECT date, device, json FROM devicestatus")
    ]
    assert [(d, dev) for d, dev, _ in statuses] == [(uploaded, "connect-ngp")]
    for status in (statuses[0][2], *ns.devicestatus):
        assert iso_ms(status["created_at"]) == uploaded
        assert status["device"] == "connect-ngp"
        pump = status["pump"]
        assert pump["iob"]["bolusiob"] == iob["amount"] == 1.25
        assert iso_ms(pump["iob"]["timestamp"]) == iob_at
        assert pump["battery"] == {"percent": served_doc["medicalDeviceBatteryLevelPercent"]}
        assert pump["reservoir"] == served_doc["reservoirRemainingUnits"]
        assert pump["status"]["suspended"] is False
        assert status["uploader"] == {"battery": served_doc["conduitBatteryLevel"]}
        assert status["connect"]["sensorState"] == served_doc["sensorState"]
        assert status["connect"]["therapyAlgorithmState"]["autoModeShieldState"] == "AUTO_BASAL"
    assert len(ns.devicestatus) == 1


# --- Glooko → store → Nightscout ----------------------------------------------------------------


def test_glooko_once_fills_the_store_and_the_site(site: Any, tmp_path: Path) -> None:
    ns, ns_url = site
    emu = GlookoEmulator(first_ms=int(time.time() * 1000) - 12 * HOUR_MS)
    db = tmp_path / "store.db"
    with serve_in_thread(emu) as url:
        result = cli(
            "once",
            CONNECT_SOURCE="glooko",
            CONNECT_GLOOKO_EMAIL=emu.email,
            CONNECT_GLOOKO_PASSWORD=emu.password,
            CONNECT_GLOOKO_SERVER=url,
            CONNECT_GLOOKO_TIMEZONE="Europe/Berlin",
            # a first frame reads the newest 36 hours of each feed: the whole twelve-hour history
            CONNECT_STORE_PATH=str(db),
            CONNECT_NIGHTSCOUT_ENDPOINT=ns_url,
            CONNECT_API_SECRET=SITE_SECRET,
        )
    assert result.returncode == 0, result.stderr

    def served(feed: str) -> set[int]:
        return {t for r in emu.log if r.endpoint == feed and r.status == 200 for t in r.served}

    expected_entries = {t: v for t, v in emu.expected_entries(emu.now()).items() if t in served("readings")}
    assert len(expected_entries) > 100  # twelve hours of five-minute readings, less Glooko's lag
    assert dict(rows(db, "SELECT date, sgv FROM entries")) == expected_entries
    assert {e["date"]: e["sgv"] for e in ns.entries} == expected_entries
    assert len(ns.entries) == len(expected_entries)

    fed = served("normalBoluses") | served("scheduledBasals") | served("foods")
    expected = {k: v for k, v in emu.expected_treatments(emu.now()).items() if k[0] in fed}
    assert {event for _, event in expected} == {
        "Meal Bolus",
        "Correction Bolus",
        "Temp Basal",
        "Carb Correction",
    }
    stored = {(d, e) for d, e in rows(db, "SELECT date, event_type FROM treatments")}
    assert stored == set(expected)
    delivered = {(iso_ms(t["created_at"]), t["eventType"]): t for t in ns.treatments}
    assert set(delivered) == set(expected)
    for key, fields in expected.items():
        for name, value in fields.items():
            assert float(delivered[key][name]) == pytest.approx(value), (key, name)


def test_login_at_a_terminal_writes_tokens_the_daemon_then_uses(site: Any, tmp_path: Path) -> None:
    """The interactive login: the command prints the address to open, the person (here the
    emulator's ``approve``) logs in and pastes the app address back, and the tokens land in the
    file; ``once`` then reads CareLink with them."""
    ns, ns_url = site
    emu = CareLinkEmulator(first_reading_ms=int(time.time() * 1000) - HOUR_MS)
    token_file = tmp_path / "carelink.json"
    settings = {"CONNECT_CARELINK_TOKEN_FILE": str(token_file), "CONNECT_COUNTRY_CODE": "GB"}
    with serve_in_thread(emu) as url:
        proc = subprocess.Popen(
            [*CLI, "login", "carelink"],
            env=env(CONNECT_CARELINK_SERVER=url, PYTHONUNBUFFERED="1", **settings),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdin is not None
        watchdog = threading.Timer(30, proc.kill)  # a hung login must fail the test, not stall it
        watchdog.start()
        address = None
        for printed in proc.stdout:
            if "/authorize?" in printed:
                address = printed.strip()
                break
        assert address is not None, proc.stderr.read() if proc.stderr else ""
        proc.stdin.write(emu.approve(address) + "\n")
        proc.stdin.close()
        rest = proc.stdout.read()
        watchdog.cancel()
        assert proc.wait(timeout=60) == 0, rest
        assert "Logged in." in rest
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        saved = json.loads(token_file.read_text())
        assert saved["refresh_token"] in emu.families and saved["access_token"] in emu.access
        assert saved["refresh_token"] not in rest and saved["access_token"] not in rest

        once = cli(
            "once",
            CONNECT_SOURCE="minimedcarelink",
            CONNECT_CARELINK_SERVER=url,
            CONNECT_STORE_PATH=str(tmp_path / "store.db"),
            CONNECT_NIGHTSCOUT_ENDPOINT=ns_url,
            CONNECT_API_SECRET=SITE_SECRET,
            **settings,
        )
    assert once.returncode == 0, once.stderr
    answers = [r for r in emu.log if r.endpoint == "data" and r.status == 200]
    assert len(answers) == 1 and answers[0].served
    assert {e["date"] for e in ns.entries} == set(answers[0].served)
