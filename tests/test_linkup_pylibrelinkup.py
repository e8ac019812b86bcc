"""The emulator speaks the real protocol: pylibrelinkup 0.11.2, an independent client built
against the real service, logs in and reads from it over a loopback socket — and our driver,
pointed at the same socket through CONNECT_LINK_UP_SERVER, reads the same readings."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from typing import Any

import httpx
import pylibrelinkup
import pytest
import trio
from pylibrelinkup import APIUrl, PyLibreLinkUp
from pylibrelinkup.exceptions import (
    AuthenticationError,
    EmailVerificationError,
    PatientNotFoundError,
    PrivacyPolicyError,
    RedirectError,
    TermsOfUseError,
)

from connect.contract import LastKnown
from sources.linkup import LinkUpSettings, make
from tests.emulators.linkup import LinkUpEmulator, serve_in_thread

PASSWORD = "pyllu-Passw0rd"


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[LinkUpEmulator, str]]:
    emulator = LinkUpEmulator()  # wall-clock time: the client lives in real time
    with serve_in_thread(emulator) as url:
        yield emulator, url


def client_for(url: str, email: str, password: str = PASSWORD) -> PyLibreLinkUp:
    client = PyLibreLinkUp(email=email, password=password)
    client.api_url = url  # the instance attribute its URLs are built from
    return client


def test_version_is_the_one_checked() -> None:
    from importlib.metadata import version

    assert version("pylibrelinkup") == "0.11.2"
    assert pylibrelinkup.PyLibreLinkUp is PyLibreLinkUp


def test_pylibrelinkup_logs_in_and_reads(served: tuple[LinkUpEmulator, str]) -> None:
    emulator, url = served
    account = emulator.add_account("pyllu@example.com", PASSWORD, region="eu", patients=2)
    client = client_for(url, "pyllu@example.com")
    client.authenticate()
    assert client.token in emulator.tickets

    patients = client.get_patients()
    assert [str(p.patient_id) for p in patients] == [p.patient_id for p in account.patients]
    assert patients[0].first_name == "Pat0"

    patient = account.patients[0]
    history = client.graph(patients[0])
    assert 140 <= len(history) <= 144
    for point in history:
        assert point.factory_timestamp.tzinfo is UTC
        ms = int(point.factory_timestamp.timestamp() * 1000)
        assert point.value_in_mg_per_dl == patient.value(ms)
        # Timestamp is the phone's wall clock (an hour ahead here), without a zone
        assert point.timestamp.tzinfo is None
        assert (point.timestamp - point.factory_timestamp.replace(tzinfo=None)).total_seconds() == 3600
    latest = client.latest(patients[0])
    latest_ms = int(latest.factory_timestamp.timestamp() * 1000)
    assert latest_ms > int(history[-1].factory_timestamp.timestamp() * 1000)
    assert int(latest.trend) == patient.arrow(latest_ms)
    logbook = client.logbook(patients[1])
    assert logbook and all(item.type == 1 for item in logbook)
    assert logbook[0].factory_timestamp > logbook[-1].factory_timestamp  # newest first

    # every authenticated call carried the bearer token and the account-id hash
    calls = [r for r in emulator.requests if r.account is account and r.kind != "login"]
    assert calls and all(r.status == 200 for r in calls)
    assert all(r.headers["account-id"] == account.account_id for r in calls)


def test_pylibrelinkup_sees_the_documented_login_answers(served: tuple[LinkUpEmulator, str]) -> None:
    emulator, url = served
    emulator.add_account("far@example.com", PASSWORD, region="eu2")
    with pytest.raises(RedirectError) as caught:
        client_for(url, "far@example.com").authenticate()
    assert caught.value.region is APIUrl.EU2

    for step, error in (
        ("tou", TermsOfUseError),
        ("pp", PrivacyPolicyError),
        ("verifyEmail", EmailVerificationError),
    ):
        emulator.add_account(f"{step}@example.com", PASSWORD, steps=[step])
        with pytest.raises(error):
            client_for(url, f"{step}@example.com").authenticate()

    emulator.add_account("wrong@example.com", "another-password")
    with pytest.raises(AuthenticationError):
        client_for(url, "wrong@example.com").authenticate()


def test_pylibrelinkup_sees_rate_limits_and_unknown_patients(served: tuple[LinkUpEmulator, str]) -> None:
    emulator, url = served
    emulator.add_account("limits@example.com", PASSWORD)
    client = client_for(url, "limits@example.com")
    client.authenticate()
    emulator.inject("http429", on="connections", retry_after=42)
    with pytest.raises(pylibrelinkup.LLUAPIRateLimitError) as caught:
        client.get_patients()
    assert caught.value.retry_after == 42
    with pytest.raises(PatientNotFoundError):
        client.graph("0d3f0000-0000-0000-0000-000000000000")


def test_our_driver_reads_the_same_socket(served: tuple[LinkUpEmulator, str]) -> None:
    emulator, url = served
    account = emulator.add_account("both@example.com", PASSWORD)
    theirs = client_for(url, "both@example.com")
    theirs.authenticate()
    their_times = {
        int(p.factory_timestamp.timestamp() * 1000) for p in theirs.graph(account.patients[0].patient_id)
    }

    async def ours() -> Any:
        settings = LinkUpSettings(
            link_up_username="both@example.com", link_up_password=PASSWORD, link_up_server=url
        )
        async with httpx.AsyncClient(timeout=10) as client:
            driver = make(settings, client)
            grant = await driver.authorize(await driver.authenticate())
            now = emulator.now()
            last_known = LastKnown(values={}, backfill_from=now - 86_400_000, now=now)
            raw = await driver.fetch(grant.value, last_known)
            return driver.transform(raw, last_known)

    batch = trio.run(ours)
    our_times = {e.date for e in batch.entries}
    # the two reads happened moments apart: the histories agree except at the newest edge
    assert len(their_times & our_times) >= 138
    assert batch.entries[-1].direction not in (None, "NOT COMPUTABLE")
    hosts = {r.host for r in emulator.requests if r.account is account}
    assert hosts == {"127.0.0.1"}
