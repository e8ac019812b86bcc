"""The emulator speaks the real protocol: pydexcom 0.5.1, an independent client, accepts it.

pydexcom uses ``requests``, so the emulator is served on a loopback port from a thread; its
hard-coded base URLs are pointed at that port (protocols/06-python-clients.md).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydexcom
import pydexcom.dexcom
import pytest
import requests
from pydexcom.errors import AccountError, AccountErrorEnum, ServerError, ServerErrorEnum, SessionError

from connect.clock import wall_ms
from connect.contract import LastKnown
from connect.errors import AuthRejected
from sources.dexcomshare import DexcomShareSettings, make, read_window
from tests.emulators.dexcom import (
    APPLICATION_IDS,
    CODES,
    HOSTS,
    PATH_PREFIX,
    TRENDS,
    ZERO_UUID,
    Account,
    ShareEmulator,
)
from tests.emulators.serve import serve_in_thread

PASSWORD = "p@$$w0rd"


class ManualClock:
    """The emulator's time: starts at the wall clock, then moves only when a test moves it."""

    def __init__(self) -> None:
        self.ms = wall_ms()

    def __call__(self) -> int:
        return self.ms


class Served:
    def __init__(self, emulator: ShareEmulator, url: str, clock: ManualClock) -> None:
        self.emulator = emulator
        self.url = url
        self.clock = clock


@pytest.fixture(params=["us", "ous", "jp"])
def served(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    region = request.param
    clock = ManualClock()
    emulator = ShareEmulator(default_region=region, now=clock)
    with serve_in_thread(emulator) as url:
        # pydexcom reads its base URL from this dict when a Dexcom object is built
        monkeypatch.setitem(pydexcom.dexcom.DEXCOM_BASE_URLS, pydexcom.Region(region), url + PATH_PREFIX)
        yield Served(emulator, url, clock)


def add_publisher(served: Served) -> Account:
    return served.emulator.add_account(
        "u$ern@me", PASSWORD, served.emulator.default_region, first_reading_ms=served.clock.ms - 86_400_000
    )


def region_of(served: Served) -> pydexcom.Region:
    return pydexcom.Region(served.emulator.default_region)


def test_pydexcom_logs_in_and_reads_readings(served: Served) -> None:
    account = add_publisher(served)
    dexcom = pydexcom.Dexcom(username="u$ern@me", password=PASSWORD, region=region_of(served))
    # the client really talks to the emulator over a socket, not to Dexcom and not to a mock
    assert dexcom._base_url == served.url + PATH_PREFIX and served.url.startswith("http://127.0.0.1:")
    assert [r.endpoint for r in served.emulator.requests] == ["authenticate", "login"]
    assert dexcom.account_id == account.account_id
    readings = dexcom.get_glucose_readings(minutes=60, max_count=12)
    assert 11 <= len(readings) <= 12
    (read,) = [r for r in served.emulator.requests if r.endpoint == "read"]
    assert read.params["minutes"] == "60" and read.params["maxCount"] == "12"
    assert [int(r.datetime.timestamp() * 1000) for r in readings] == list(read.served)
    for reading, t in zip(readings, read.served, strict=True):
        index = (t - account.first_reading_ms) // 300_000
        assert reading.value == account.value(index)
        assert reading.trend_direction == TRENDS[account.trend_index(index)]
        assert reading.datetime.utcoffset() is not None  # built from DT's offset
    # newest first, five minutes apart
    times = [r.datetime for r in readings]
    assert times == sorted(times, reverse=True)
    assert all((a - b).total_seconds() == 300 for a, b in zip(times, times[1:], strict=False))
    assert dexcom.get_current_glucose_reading() is not None
    latest = dexcom.get_latest_glucose_reading()
    assert latest is not None and latest.datetime == times[0]
    assert len(dexcom.get_glucose_readings()) in (287, 288)  # a day, depending on the phase


def test_pydexcom_logs_in_by_account_id(served: Served) -> None:
    account = add_publisher(served)
    dexcom = pydexcom.Dexcom(account_id=account.account_id, password=PASSWORD, region=region_of(served))
    assert dexcom.get_latest_glucose_reading() is not None
    assert [r.endpoint for r in served.emulator.requests] == ["login", "read"]


def test_pydexcom_logs_in_again_when_the_session_dies(served: Served) -> None:
    account = add_publisher(served)
    dexcom = pydexcom.Dexcom(username="u$ern@me", password=PASSWORD, region=region_of(served))
    served.emulator.expire_sessions(account, at_ms=served.clock.ms + 1)
    served.clock.ms += 1
    assert dexcom.get_latest_glucose_reading() is not None
    endpoints = [r.endpoint for r in served.emulator.requests]
    assert endpoints == ["authenticate", "login", "read", "login", "read"]
    assert [r.status for r in served.emulator.requests][2] == 500


def test_pydexcom_sees_session_errors_as_session_errors(served: Served) -> None:
    add_publisher(served)
    dexcom = pydexcom.Dexcom(username="u$ern@me", password=PASSWORD, region=region_of(served))
    served.emulator.inject("code", code="SessionNotValid", endpoint="read", times=2)
    with pytest.raises(SessionError):
        dexcom.get_latest_glucose_reading()  # retried once after a new login, which fails again


def test_pydexcom_refuses_a_bad_password(served: Served) -> None:
    add_publisher(served)
    with pytest.raises(AccountError) as info:
        pydexcom.Dexcom(username="u$ern@me", password="not it", region=region_of(served))
    assert info.value.enum is AccountErrorEnum.FAILED_AUTHENTICATION


def test_pydexcom_meets_the_lockout_spelling_it_does_not_know(served: Served) -> None:
    add_publisher(served)
    for _ in range(served.emulator.lockout_after - 1):
        with pytest.raises(AccountError):
            pydexcom.Dexcom(username="u$ern@me", password="not it", region=region_of(served))
    # the server spells the code "...Exceeed"; pydexcom 0.5.1 only knows "...Exceeded", so it
    # reports an unknown code (we match the prefix instead)
    with pytest.raises(ServerError) as info:
        pydexcom.Dexcom(username="u$ern@me", password="not it", region=region_of(served))
    assert info.value.enum is ServerErrorEnum.UNKNOWN_CODE
    assert len(served.emulator.lockouts) == 1
    with pytest.raises(ServerError):  # locked: even the right password is refused
        pydexcom.Dexcom(username="u$ern@me", password=PASSWORD, region=region_of(served))


def test_raw_wire_format(served: Served) -> None:
    account = add_publisher(served)
    base = served.url + PATH_PREFIX
    app_id = {"us": "d89443d2-327c-4a6f-89e5-496bbb0317db", "ous": "d89443d2-327c-4a6f-89e5-496bbb0317db",
              "jp": "d8665ade-9673-4e27-9ff6-92db4ce13d13"}[served.emulator.default_region]  # fmt: skip
    body = {"accountName": "u$ern@me", "password": PASSWORD, "applicationId": app_id}
    auth = requests.post(base + "General/AuthenticatePublisherAccount", json=body, timeout=10)
    assert auth.status_code == 200 and auth.headers["content-type"] == "application/json"
    assert auth.text == json.dumps(account.account_id)
    login = requests.post(
        base + "General/LoginPublisherAccountById",
        json={"accountId": account.account_id, "password": PASSWORD, "applicationId": app_id},
        timeout=10,
    )
    session = login.json()
    # the bridges' spelling, an empty body and Content-Length: 0
    read = requests.post(
        base + "Publisher/ReadPublisherLatestGlucoseValues",
        params={"sessionID": session, "minutes": 1440, "maxCount": 1},
        data=b"",
        timeout=10,
    )
    (reading,) = read.json()
    assert set(reading) == {"WT", "ST", "DT", "Value", "Trend"}
    assert reading["DT"].startswith(reading["WT"][:-1]) and reading["DT"].endswith("-0400)")
    assert requests.post(base + "Publisher/ReadPublisherLatestGlucoseValues",
                         params={"sessionId": session, "minutes": 0, "maxCount": 0}, json={},
                         timeout=10).json() == []  # fmt: skip
    bad = requests.post(
        base + "Publisher/ReadPublisherLatestGlucoseValues",
        params={"sessionID": "bad-session-id", "minutes": 10, "maxCount": 1},
        timeout=10,
    )
    assert bad.status_code == 400
    unknown = requests.post(
        base + "Publisher/ReadPublisherLatestGlucoseValues",
        params={"sessionId": "33333333-3333-3333-3333-333333333333", "minutes": 10, "maxCount": 1},
        json={},
        timeout=10,
    )
    assert unknown.status_code == 500 and unknown.json()["Code"] == "SessionIdNotFound"
    assert set(unknown.json()) == {"Code", "Message", "SubCode", "TypeName"}
    assert requests.get(base + "General/AuthenticatePublisherAccount", timeout=10).status_code == 405


@pytest.mark.parametrize("served", ["us"], indirect=True)
async def test_our_driver_over_a_loopback_port(served: Served) -> None:
    account = add_publisher(served)
    settings = DexcomShareSettings(
        share_account_name="u$ern@me",
        share_password=PASSWORD,
        share_server=served.url,  # type: ignore[arg-type]
    )
    now = served.clock.ms
    async with httpx.AsyncClient(timeout=10) as client:
        driver = make(settings, client)
        grant = await driver.authorize(await driver.authenticate())
        known = LastKnown(values={"entries": now - 3_600_000}, backfill_from=0, now=now)
        batch = driver.transform(await driver.fetch(grant.value, known), known)
        minutes, count = read_window(known)
        expected = [t for t in account.published(now) if t >= now - minutes * 60_000][-count:]
        assert [e.date for e in batch.entries] == expected and 12 <= len(expected) <= 15
        with pytest.raises(AuthRejected):
            await make(
                DexcomShareSettings(
                    share_account_name="u$ern@me",
                    share_password="wrong",  # type: ignore[arg-type]
                    share_server=served.url,
                ),
                client,  # fmt: skip
            ).authenticate()


@pytest.mark.parametrize("served", ["us"], indirect=True)
def test_legacy_wire_forms_parse_in_our_transform(served: Served) -> None:
    account = add_publisher(served)
    account.trend_as_number = True
    account.legacy_dates = True
    dexcom = pydexcom.Dexcom(username="u$ern@me", password=PASSWORD, region=pydexcom.Region.US)
    raw = dexcom._get_glucose_readings(minutes=30, max_count=6)  # the JSON, before pydexcom parses it
    assert raw[0]["WT"].startswith("/Date(") and isinstance(raw[0]["Trend"], int)
    from sources.dexcomshare.payload import transform

    batch = transform(raw, LastKnown(values={}, backfill_from=0, now=served.clock.ms))
    by_time = {int(r["WT"][len("/Date(") : -len(")/")]): r for r in raw}
    assert [e.date for e in batch.entries] == sorted(by_time)
    for entry in batch.entries:
        reading = by_time[entry.date]
        assert entry.sgv == reading["Value"] and entry.trend == reading["Trend"]


# --- every documented answer shape, on the wire ---------------------------------------------------


@pytest.mark.parametrize("served", ["us"], indirect=True)
@pytest.mark.parametrize("code", sorted(CODES))
def test_every_documented_fault_has_the_recorded_shape(served: Served, code: str) -> None:
    add_publisher(served)
    served.emulator.inject("code", code=code, endpoint="authenticate")
    answer = requests.post(
        served.url + PATH_PREFIX + "General/AuthenticatePublisherAccount",
        json={"accountName": "u$ern@me", "password": PASSWORD, "applicationId": APPLICATION_IDS["us"]},
        timeout=10,
    )
    assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert list(body) == ["Code", "Message", "SubCode", "TypeName"]
    assert body["Code"] == code and body["TypeName"] == "FaultException" and body["Message"]
    if code == "SessionNotValid":  # late-2025 servers: a JSON-encoded string
        assert json.loads(body["SubCode"])["OnlineException"]["TypeString"] == "SessionNotValid"
    else:
        assert body["SubCode"].startswith("<OnlineException ") and f'ErrorCode="{code}"' in body["SubCode"]
    assert served.emulator.requests[-1].code == code
    # the server spells its lockout with three "e"; asking for it locks the account for real
    assert (len(served.emulator.lockouts) == 1) is code.startswith("SSO_AuthenticateMaxAttempts")


def _post(served: Served, endpoint: str, body: object, **params: str) -> requests.Response:
    return requests.post(served.url + PATH_PREFIX + endpoint, json=body, params=params, timeout=10)


@pytest.mark.parametrize("served", ["us"], indirect=True)
def test_injected_faults_on_the_wire(served: Served) -> None:
    account = add_publisher(served)
    em = served.emulator
    auth = {"accountName": "u$ern@me", "password": PASSWORD, "applicationId": APPLICATION_IDS["us"]}
    em.inject("http429", endpoint="authenticate", retry_after=120)
    limited = _post(served, "General/AuthenticatePublisherAccount", auth)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "120"
    em.inject("ban", endpoint="authenticate")
    ban = _post(served, "General/AuthenticatePublisherAccount", auth)
    assert ban.status_code == 403 and ban.headers["content-type"].startswith("text/html")
    assert "Cloudflare" in ban.text and ban.headers["server"].startswith("cloudflare")
    em.inject("html500", endpoint="authenticate")
    assert _post(served, "General/AuthenticatePublisherAccount", auth).status_code == 500
    em.inject("truncated", endpoint="authenticate")
    truncated = _post(served, "General/AuthenticatePublisherAccount", auth)
    assert truncated.status_code == 200 and json.dumps(account.account_id).startswith(truncated.text)
    assert truncated.text != json.dumps(account.account_id)
    em.inject("nonjson", endpoint="authenticate")
    assert _post(served, "General/AuthenticatePublisherAccount", auth).text == ""
    em.inject("zero_uuid")
    assert _post(served, "General/AuthenticatePublisherAccount", auth).json() == ZERO_UUID
    assert _post(served, "General/AuthenticatePublisherAccount", auth).json() == account.account_id
    # a lockout that arrives as a rate limit: 429, the lockout body, and the account is locked
    em.inject("lockout429", retry_after=None)
    locked = _post(served, "General/AuthenticatePublisherAccount", auth)
    assert locked.status_code == 429 and "retry-after" not in locked.headers
    assert locked.json()["Code"] == "SSO_AuthenticateMaxAttemptsExceeed"
    assert (
        _post(served, "General/AuthenticatePublisherAccount", auth)
        .json()["Code"]
        .startswith("SSO_AuthenticateMaxAttempts")
    )
    assert [n.until_ms - n.told_ms for n in em.lockouts] == [em.lockout_ms, em.lockout_ms]
    kinds = [r.fault for r in em.requests]
    assert kinds == [
        "http429",
        "ban",
        "html500",
        "truncated",
        "nonjson",
        "zero_uuid",
        None,
        "lockout429",
        None,
    ]


@pytest.mark.parametrize("served", ["us"], indirect=True)
def test_session_expiry_and_lifetime_on_the_wire(served: Served) -> None:
    account = add_publisher(served)
    served.emulator.session_ttl_ms = 3_600_000
    auth = {"accountId": account.account_id, "password": PASSWORD, "applicationId": APPLICATION_IDS["us"]}
    session = _post(served, "General/LoginPublisherAccountById", auth).json()
    read = {"sessionId": session, "minutes": "15", "maxCount": "2"}
    assert len(_post(served, "Publisher/ReadPublisherLatestGlucoseValues", {}, **read).json()) == 2
    served.clock.ms += 3_600_000  # past the lifetime: "not valid"
    assert _post(served, "Publisher/ReadPublisherLatestGlucoseValues", {}, **read).json()["Code"] == (
        "SessionNotValid"
    )
    session = _post(served, "General/LoginPublisherAccountById", auth).json()
    read["sessionId"] = session
    served.clock.ms += 1
    served.emulator.expire_sessions(account)  # killed (password change, another login): "not found"
    assert _post(served, "Publisher/ReadPublisherLatestGlucoseValues", {}, **read).json()["Code"] == (
        "SessionIdNotFound"
    )
    # the legacy one-step login still answers a session id
    legacy = _post(served, "General/LoginPublisherAccountByName",
                   {"accountName": "u$ern@me", "password": PASSWORD, "applicationId": APPLICATION_IDS["us"]})  # fmt: skip
    read["sessionId"] = legacy.json()
    assert len(_post(served, "Publisher/ReadPublisherLatestGlucoseValues", {}, **read).json()) == 2
    # the all-zero session: an empty, non-JSON body
    read["sessionId"] = ZERO_UUID
    assert _post(served, "Publisher/ReadPublisherLatestGlucoseValues", {}, **read).text == ""


def test_one_emulator_holds_accounts_in_every_region() -> None:
    emulator = ShareEmulator(now=lambda: 1_750_000_000_000)
    accounts = {
        r: emulator.add_account("same-name", f"pw-{r}", r, first_reading_ms=0) for r in ("us", "ous", "jp")
    }

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as client:
            for host, region in HOSTS.items():
                for app_region, app_id in APPLICATION_IDS.items():
                    answer = await client.post(
                        f"https://{host}{PATH_PREFIX}General/AuthenticatePublisherAccount",
                        json={
                            "accountName": "same-name",
                            "password": f"pw-{region}",
                            "applicationId": app_id,
                        },
                    )
                    if app_id == APPLICATION_IDS[region]:
                        assert answer.json() == accounts[region].account_id, (host, app_region)
                    else:  # Japan's application id on the other hosts, or theirs on Japan's
                        assert answer.json()["Code"] == "AccountPasswordInvalid"

    import trio

    trio.run(main)


# --- the command line, end to end ---------------------------------------------------------------


@pytest.mark.parametrize("served", ["us"], indirect=True)
def test_cli_once_with_the_bridge_variables(served: Served, tmp_path: Path) -> None:
    """``CONNECT_SOURCE=dexcomshare`` with the old ``BRIDGE_*`` names, against the emulator."""
    account = add_publisher(served)
    store = tmp_path / "share.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECT_", "BRIDGE_"))}
    env.update(
        CONNECT_SOURCE="dexcomshare", CONNECT_STORE_PATH=str(store), CONNECT_BACKFILL_DAYS="2",
        CONNECT_LOG_FORMAT="json", BRIDGE_USER_NAME="u$ern@me", BRIDGE_PASSWORD=PASSWORD,
        BRIDGE_SERVER=served.url,
    )  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "connect", "once"], env=env, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert account.account_id not in result.stdout + result.stderr
    conn = sqlite3.connect(store)
    stored = [row[0] for row in conn.execute("SELECT date FROM entries ORDER BY date")]
    assert stored == sorted(served.emulator.served(account)) and len(stored) >= 287
    assert [r.endpoint for r in served.emulator.requests] == ["authenticate", "login", "read"]
    # a wrong password: one refused login, exit status 1, nothing stored
    env.update(BRIDGE_PASSWORD="not the password", CONNECT_STORE_PATH=str(tmp_path / "other.db"))
    refused = subprocess.run([sys.executable, "-m", "connect", "once"], env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert "AccountPasswordInvalid" in refused.stdout + refused.stderr
    assert [r.endpoint for r in served.emulator.requests][3:] == ["authenticate"]
