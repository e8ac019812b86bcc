"""``nightscout-connect capture DIR`` against each vendor emulator on a loopback port.

Each test runs the real command as a subprocess, then reads every file it wrote as bytes and
looks for every secret the run involved: the password, the e-mail or user name, the tokens,
session ids and cookies the emulator issued (taken from the emulator's own state), account and
patient ids, and the people's names. None may be there. The files must still be worth sending:
the URLs, the statuses and the glucose values the emulator served are in them, and a session
can be followed because the same secret always has the same placeholder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connect.capture import CaptureWriter, Scrubber
from connect.capture import Exchange as CapturedExchange
from sources.carelink.tokens import TokenData, write_token_file
from tests.emulators.carelink import CareLinkEmulator
from tests.emulators.dexcom import FIVE_MIN_MS, ShareEmulator
from tests.emulators.glooko import COOKIE_NAME, GlookoEmulator
from tests.emulators.linkup import LinkUpEmulator
from tests.emulators.serve import serve_in_thread

CLI = [sys.executable, "-m", "connect"]
HOUR_MS = 3_600_000
#: variables of the person running the tests that would change what the CLI reads
FOREIGN = re.compile(r"^(CONNECT_|BRIDGE_|LINK_UP_|CARELINK_|MMCONNECT_|GLOOKO_|API_SECRET$|BASE_URL$)")


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not FOREIGN.match(k)}
    base.update({"CONNECT_LOG_FORMAT": "json", "CONNECT_HTTP_BIND": "0", **extra})
    return base


def capture(directory: Path, **settings: str) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    result = subprocess.run(
        [*CLI, "capture", str(directory)], env=env(**settings), capture_output=True, text=True, timeout=60
    )
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    return result, files


def load(files: Iterable[Path]) -> list[dict[str, Any]]:
    return [json.loads(f.read_text(encoding="utf-8")) for f in files]


def assert_no_secret(files: list[Path], secrets: Iterable[str], words: Iterable[str] = ()) -> None:
    """No secret anywhere in the bytes of any file; ``words`` (short names) as whole words."""
    assert files
    secrets = [s for s in secrets if s]
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"a secret ({secret[:3]}…) is in {path.name}"
            assert secret.lower().encode() not in data.lower(), f"a secret ({secret[:3]}…) is in {path.name}"
        for word in words:
            pattern = rb"(?<![A-Za-z0-9])" + re.escape(word.encode()) + rb"(?![A-Za-z0-9])"
            assert not re.search(pattern, data), f"the name {word!r} is in {path.name}"


def by_path(docs: list[dict[str, Any]], fragment: str) -> list[dict[str, Any]]:
    return [d for d in docs if fragment in d["request"]["url"]]


def header(doc: dict[str, Any], side: str, name: str) -> list[str]:
    return [
        line.split(": ", 1)[1]
        for line in doc[side]["headers"]
        if line.lower().startswith(name.lower() + ": ")
    ]


PLACEHOLDER = re.compile(r"<[a-z]+-\d+(?::sha1|:sha256)?>")


# --- Dexcom Share ------------------------------------------------------------------------------


@pytest.fixture
def dexcom() -> Iterator[tuple[ShareEmulator, Any, str]]:
    emu = ShareEmulator()
    now = int(time.time() * 1000)
    account = emu.add_account(
        "share.publisher.walsh@example.org", "Tr1cky!pass word", first_reading_ms=now - 3 * HOUR_MS
    )
    with serve_in_thread(emu) as url:
        yield emu, account, url


def test_dexcom_capture_has_the_readings_and_no_secret(dexcom: Any, tmp_path: Path) -> None:
    emu, account, url = dexcom
    result, files = capture(
        tmp_path / "cap",
        CONNECT_SOURCE="dexcomshare",
        CONNECT_SHARE_ACCOUNT_NAME=account.account_name,
        CONNECT_SHARE_PASSWORD=account.password,
        CONNECT_SHARE_SERVER=url,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert [f.name for f in files] == [
        "0001-POST-AuthenticatePublisherAccount.json",
        "0002-POST-LoginPublisherAccountById.json",
        "0003-POST-ReadPublisherLatestGlucoseValues.json",
    ]
    assert f"captured 3 HTTP exchanges of dexcomshare into {tmp_path / 'cap'}" in result.stdout

    sessions = list(emu.issued)
    assert sessions
    assert_no_secret(files, [account.password, account.account_name, account.account_id, *sessions])

    auth, login, read = load(files)
    assert all(d["response"]["status"] == 200 for d in (auth, login, read))
    assert read["request"]["url"].startswith(url + "/ShareWebServices/Services/Publisher/")
    # the values the emulator served, newest first, as it sent them
    first = account.first_reading_ms
    served = sorted(emu.served(account), reverse=True)
    assert [r["Value"] for r in read["response"]["body"]] == [
        account.value((t - first) // FIVE_MIN_MS) for t in served
    ]
    # one secret, one placeholder: the account id the first call answers is the one the second
    # call sends; the session id the second answers is the one every read carries
    account_id = auth["response"]["body"]
    assert PLACEHOLDER.fullmatch(account_id)
    assert login["request"]["body"]["accountId"] == account_id
    assert login["request"]["body"]["password"].startswith("<password-")
    session = login["response"]["body"]
    assert PLACEHOLDER.fullmatch(session) and session != account_id
    assert f"sessionId={session}" in read["request"]["url"]


# --- LibreLinkUp -------------------------------------------------------------------------------


def test_linkup_capture_has_the_readings_and_no_secret(tmp_path: Path) -> None:
    emu = LinkUpEmulator(default_region="eu")
    account = emu.add_account(
        "follower.quimby@example.net", "link-up-Secret-77", region="eu",
        first_name="Florentine", last_name="Quimby",
    )  # fmt: skip
    patient = account.patients[0]
    patient.first_name, patient.last_name = "Zebulon", "Marchetti"
    with serve_in_thread(emu) as url:
        result, files = capture(
            tmp_path / "cap",
            CONNECT_SOURCE="linkup",
            CONNECT_LINK_UP_USERNAME=account.email,
            CONNECT_LINK_UP_PASSWORD=account.password,
            CONNECT_LINK_UP_SERVER=url,
        )
    assert result.returncode == 0, result.stderr
    tokens = list(emu.tickets)
    assert tokens
    assert_no_secret(
        files,
        [account.email, account.password, account.user_id, account.account_id, patient.patient_id,
         patient.connection_id, patient.sensor_serial, *tokens, "Florentine", "Quimby", "Zebulon",
         "Marchetti"],
    )  # fmt: skip

    docs = load(files)
    login = by_path(docs, "/llu/auth/login")[0]
    graph = by_path(docs, "/graph")[-1]
    assert login["response"]["status"] == 200 and graph["response"]["status"] == 200
    # the patient id in the graph's path is replaced, and by the placeholder its answer uses
    patient_ph = graph["response"]["body"]["data"]["connection"]["patientId"]
    assert PLACEHOLDER.fullmatch(patient_ph)
    assert f"/llu/connections/{patient_ph}/graph" in graph["request"]["url"]
    # the token the login answered is the Bearer token every later call sends
    token_ph = login["response"]["body"]["data"]["authTicket"]["token"]
    assert PLACEHOLDER.fullmatch(token_ph)
    assert header(graph, "request", "authorization") == [f"Bearer {token_ph}"]
    account_ids = header(graph, "request", "account-id")
    assert len(account_ids) == 1 and PLACEHOLDER.fullmatch(account_ids[0])
    # the readings are all there, with their values
    body = graph["response"]["body"]["data"]
    values = {item["FactoryTimestamp"]: item["ValueInMgPerDl"] for item in body["graphData"]}
    served = emu.served_times(patient)
    assert len(values) == len(served) - 1  # the graph holds every reading but the current one
    assert sorted(values.values()) == sorted(patient.value(t) for t in served if t != max(served))
    assert body["connection"]["glucoseMeasurement"]["ValueInMgPerDl"] == patient.value(max(served))


# --- CareLink ------------------------------------------------------------------------------------


def test_carelink_capture_has_the_readings_and_no_secret(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    emu = CareLinkEmulator(first_reading_ms=now - 4 * HOUR_MS)
    token_file = tmp_path / "carelink.json"
    # an access token about to expire: the frame refreshes it first, and that exchange (the
    # refresh token sent, the new access, refresh and id tokens answered) is captured too
    issued = emu.issue_tokens(ttl_s=60)
    write_token_file(token_file, TokenData.from_json(issued, what="test"))
    with serve_in_thread(emu) as url:
        result, files = capture(
            tmp_path / "cap",
            CONNECT_SOURCE="minimedcarelink",
            CONNECT_CARELINK_TOKEN_FILE=str(token_file),
            CONNECT_CARELINK_SERVER=url,
            CONNECT_COUNTRY_CODE="GB",
        )
    assert result.returncode == 0, result.stderr
    every_token = [issued["access_token"], issued["refresh_token"], *emu.access, *emu.families]
    assert len(emu.families) == 2  # the file's refresh token and the one the refresh rotated in
    serials = [emu.pump_serial, emu.conduit_serial]
    assert_no_secret(
        files, [*every_token, *serials, emu.username, *emu.patients], words=["Anna", "Ben", "Example"]
    )

    docs = load(files)
    (refresh,) = by_path(docs, "/oauth/token")
    assert refresh["response"]["status"] == 200
    sent = dict(pair.split("=", 1) for pair in refresh["request"]["body"].split("&"))
    assert sent["grant_type"] == "refresh_token" and PLACEHOLDER.fullmatch(sent["refresh_token"])
    answered = refresh["response"]["body"]
    for name in ("access_token", "refresh_token", "id_token"):
        assert PLACEHOLDER.fullmatch(answered[name]), name
    assert answered["refresh_token"] != sent["refresh_token"]  # rotated, and told apart
    data = by_path(docs, "/display/message")
    assert len(data) == 1 and data[0]["response"]["status"] == 200
    request = data[0]["request"]["body"]
    assert PLACEHOLDER.fullmatch(request["username"]) and PLACEHOLDER.fullmatch(request["patientId"])
    payload = data[0]["response"]["body"]["patientData"]
    assert payload["firstName"].startswith("<name-") and payload["lastName"].startswith("<name-")
    assert PLACEHOLDER.fullmatch(payload["medicalDeviceSerialNumber"])
    assert PLACEHOLDER.fullmatch(payload["conduitSerialNumber"])
    assert payload["medicalDeviceSerialNumber"] != payload["conduitSerialNumber"]
    served = next(r.served for r in emu.log if r.endpoint == "data" and r.status == 200)
    first = emu.first_reading_ms
    assert [s["sg"] for s in payload["sgs"] if s["sg"]] == [emu.value((t - first) // 300_000) for t in served]
    # the patient chosen from the links is the one the data call names
    patients = by_path(docs, "/links/patients")[0]["response"]["body"]
    assert patients[0]["username"] == request["patientId"]
    bearer = header(data[0], "request", "authorization")
    # the access token the refresh answered is the one the data call sends
    assert bearer == [f"Bearer {answered['access_token']}"]


# --- Glooko --------------------------------------------------------------------------------------


def test_glooko_capture_has_the_readings_and_no_secret(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    emu = GlookoEmulator(
        email="glooko.owner.haddock@example.com", password="glooko pass phrase 9",
        code="velvet-harbour-4411", first_ms=now - 10 * HOUR_MS,
    )  # fmt: skip
    with serve_in_thread(emu) as url:
        result, files = capture(
            tmp_path / "cap",
            CONNECT_SOURCE="glooko",
            CONNECT_GLOOKO_EMAIL=emu.email,
            CONNECT_GLOOKO_PASSWORD=emu.password,
            CONNECT_GLOOKO_SERVER=url,
            CONNECT_GLOOKO_TIMEZONE="Europe/Berlin",
        )
    assert result.returncode == 0, result.stderr
    cookies = list(emu.sessions)
    assert cookies
    assert_no_secret(files, [emu.email, emu.password, emu.code, *cookies], words=["Pat", "Example"])

    docs = load(files)
    sign_in = by_path(docs, "/users/sign_in")[0]
    assert sign_in["response"]["status"] == 200
    assert sign_in["request"]["body"]["userLogin"]["password"].startswith("<password-")
    set_cookie = header(sign_in, "response", "set-cookie")[0]
    match = re.match(rf"{re.escape(COOKIE_NAME)}=(<cookie-\d+>); path=/", set_cookie)
    assert match, set_cookie
    readings = by_path(docs, "/cgm/readings")
    assert readings and all(d["response"]["status"] == 200 for d in readings)
    for doc in docs[1:]:
        # the session cookie the sign-in set is the one every later call sends
        assert f"{COOKIE_NAME}={match.group(1)}" in header(doc, "request", "cookie")[0]
        assert "patient=<account-" in doc["request"]["url"]
    got = [r["value"] for d in readings for r in d["response"]["body"]["readings"] if not r["softDeleted"]]
    served = sorted(t for r in emu.log if r.endpoint == "readings" and r.status == 200 for t in r.served)
    expected = emu.expected_entries(emu.now())
    assert got == [expected[t] for t in served]
    assert len(got) >= 100  # ten hours of five-minute readings


# --- the scrubber on its own, and the command's guards -------------------------------------------


def test_scrubber_finds_secrets_by_name_in_any_case_and_by_value_anywhere() -> None:
    exchange = CapturedExchange(
        index=1,
        started=0.0,
        method="POST",
        url="https://vendor.test/api/users/u-7731/data?Session_ID=sess-0042x&units=mgdl",
        request_headers=[("X-API-Key", "k-99-secret"), ("Cookie", "a=alpha-cookie; b=beta-cookie")],
        request_body=json.dumps(
            {"ACCESS_TOKEN": "tok-3141592", "PassWord": "hunter22!", "note": "sent by hunter22! at noon"}
        ).encode(),
        status=200,
        response_headers=[("content-type", "application/json")],
        response_body=json.dumps(
            {
                "user": {"id": "u-7731", "FirstName": "Ottoline", "email": "Otto@Example.COM"},
                "echo": "token tok-3141592 for otto@example.com, session sess-0042x",
                "digest": hashlib.sha1(b"hunter22!").hexdigest(),
                "glucose": 123,
            }
        ).encode(),
    )
    writer = CaptureWriter(Scrubber())
    writer.learn([exchange])
    doc = writer.render(exchange)
    text = json.dumps(doc)
    for secret in ("u-7731", "sess-0042x", "k-99-secret", "alpha-cookie", "beta-cookie", "tok-3141592",
                   "hunter22!", "Ottoline", "otto@example.com", hashlib.sha1(b"hunter22!").hexdigest()):  # fmt: skip
        assert secret.lower() not in text.lower(), secret
    body = doc["response"]["body"]
    assert body["glucose"] == 123
    token = doc["request"]["body"]["ACCESS_TOKEN"]
    assert body["echo"].startswith(f"token {token} for ")
    assert doc["request"]["body"]["note"] == f"sent by {doc['request']['body']['PassWord']} at noon"
    assert body["digest"] == doc["request"]["body"]["PassWord"][:-1] + ":sha1>"
    assert "/users/" in doc["request"]["url"] and "units=mgdl" in doc["request"]["url"]


def test_scrubber_hides_device_serial_numbers_under_any_name() -> None:
    """A pump's, phone's or sensor's serial number names one person: replaced by name wherever
    it is found, and then by value everywhere else, each with its own stable placeholder."""
    exchange = CapturedExchange(
        index=1,
        started=0.0,
        method="GET",
        url="https://vendor.test/patient/connect/data?cpSerialNumber=NG1234567H&msgType=last24hours",
        request_headers=[],
        request_body=b"",
        status=200,
        response_headers=[("content-type", "application/json")],
        response_body=json.dumps(
            {
                "medicalDeviceSerialNumber": "NG1234567H",
                "conduitSerialNumber": "7F3A9C21-5B8E-4D0A-A1C3-9E2B4F6D8A10",
                "sensor": {"sn": "0M0008B8CD", "serial": "GT123456"},
                "device": {"serialNumber": "SN-99-4455", "SERIAL_NO": "X-7781-QQ"},
                "note": "pump NG1234567H paired with 7F3A9C21-5B8E-4D0A-A1C3-9E2B4F6D8A10",
                "legacy": {"conduitSerialNumber": "0"},
                "sg": 123,
            }
        ).encode(),
    )
    writer = CaptureWriter(Scrubber())
    writer.learn([exchange])
    doc = writer.render(exchange)
    text = json.dumps(doc)
    serials = ("NG1234567H", "7F3A9C21-5B8E-4D0A-A1C3-9E2B4F6D8A10", "0M0008B8CD", "GT123456",
               "SN-99-4455", "X-7781-QQ")  # fmt: skip
    for serial in serials:
        assert serial.lower() not in text.lower(), serial
    body = doc["response"]["body"]
    pump, conduit = body["medicalDeviceSerialNumber"], body["conduitSerialNumber"]
    assert re.fullmatch(r"<serial-\d+>", pump) and re.fullmatch(r"<serial-\d+>", conduit) and pump != conduit
    assert body["note"] == f"pump {pump} paired with {conduit}"
    assert f"cpSerialNumber={pump}&msgType=last24hours" in doc["request"]["url"]
    assert body["legacy"]["conduitSerialNumber"] == "<serial>"  # too short to learn, still hidden
    assert body["sg"] == 123


def test_capture_refuses_a_directory_holding_another_capture(tmp_path: Path) -> None:
    directory = tmp_path / "cap"
    directory.mkdir()
    (directory / "0001-GET-old.json").write_text("{}")
    result = subprocess.run(
        [*CLI, "capture", str(directory)], env=env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "already holds 1 captured exchanges" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in directory.iterdir()) == ["0001-GET-old.json"]
