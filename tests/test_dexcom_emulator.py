"""The emulator speaks the real protocol: pydexcom 0.5.1, an independent client, accepts it.

pydexcom uses ``requests``, so the emulator is served on a loopback port from a thread; its
hard-coded base URLs are pointed at that port (protocols/06-python-clients.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pydexcom
import pydexcom.dexcom
import pytest
import requests
from pydexcom.errors import AccountError, AccountErrorEnum, ServerError, ServerErrorEnum, SessionError

from connect.clock import wall_ms
from connect.contract import LastKnown
from connect.errors import AuthRejected
from sources.dexcomshare import DexcomShareSettings, make
from tests.emulators.dexcom import PATH_PREFIX, TRENDS, Account, ShareEmulator
from tests.emulators.serve import serve_in_thread

PASSWORD = "p@$$w0rd"


class Served:
    def __init__(self, emulator: ShareEmulator, url: str) -> None:
        self.emulator = emulator
        self.url = url


@pytest.fixture(params=["us", "ous", "jp"])
def served(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    region = request.param
    emulator = ShareEmulator(default_region=region)
    with serve_in_thread(emulator) as url:
        # pydexcom reads its base URL from this dict when a Dexcom object is built
        monkeypatch.setitem(pydexcom.dexcom.DEXCOM_BASE_URLS, pydexcom.Region(region), url + PATH_PREFIX)
        yield Served(emulator, url)


def add_publisher(served: Served) -> Account:
    return served.emulator.add_account(
        "u$ern@me", PASSWORD, served.emulator.default_region, first_reading_ms=wall_ms() - 86_400_000
    )


def region_of(served: Served) -> pydexcom.Region:
    return pydexcom.Region(served.emulator.default_region)


def test_pydexcom_logs_in_and_reads_readings(served: Served) -> None:
    account = add_publisher(served)
    dexcom = pydexcom.Dexcom(username="u$ern@me", password=PASSWORD, region=region_of(served))
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
    served.emulator.expire_sessions(account, at_ms=wall_ms() + 1)
    import time

    time.sleep(0.01)
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
    add_publisher(served)
    settings = DexcomShareSettings(
        share_account_name="u$ern@me",
        share_password=PASSWORD,
        share_server=served.url,  # type: ignore[arg-type]
    )
    now = wall_ms()
    async with httpx.AsyncClient(timeout=10) as client:
        driver = make(settings, client)
        grant = await driver.authorize(await driver.authenticate())
        known = LastKnown(values={"entries": now - 3_600_000}, backfill_from=0, now=now)
        batch = driver.transform(await driver.fetch(grant.value, known), known)
        assert 12 <= len(batch.entries) <= 15
        assert datetime.fromtimestamp(batch.entries[-1].date / 1000, tz=UTC) <= datetime.now(tz=UTC)
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

    batch = transform(raw, LastKnown(values={}, backfill_from=0, now=wall_ms()))
    by_time = {int(r["WT"][len("/Date(") : -len(")/")]): r for r in raw}
    assert [e.date for e in batch.entries] == sorted(by_time)
    for entry in batch.entries:
        reading = by_time[entry.date]
        assert entry.sgv == reading["Value"] and entry.trend == reading["Trend"]
