"""The dexcomshare driver against the emulator, request by request: logins, reads, every fault."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pydantic
import pytest
import trio

from connect.contract import Grant, LastKnown
from connect.errors import (
    AccountLocked,
    AuthRejected,
    ConnectError,
    ProtocolError,
    RateLimited,
    SessionExpired,
    TransientError,
)
from connect.settings import apply_legacy_env, describe_validation
from sources.dexcomshare import SOURCE, DexcomShareSettings, endpoint_for, make, read_window
from sources.dexcomshare.client import DexcomShare
from sources.dexcomshare.const import MAX_COUNT, MAX_MINUTES
from tests.emulators.dexcom import APPLICATION_IDS, BASE_URLS, ShareEmulator, TimeoutTransport

NOW = 1_750_000_000_000
FIVE_MIN = 300_000
PASSWORD = "correct horse battery"


def settings(**kw: Any) -> DexcomShareSettings:
    values = {"share_account_name": "publisher", "share_password": PASSWORD, **kw}
    return DexcomShareSettings(**values)


def last_known(since: int | None = None, now: int = NOW) -> LastKnown:
    return LastKnown(
        values={} if since is None else {"entries": since}, backfill_from=now - 30 * 86_400_000, now=now
    )


class World:
    def __init__(self, emulator: ShareEmulator, client: httpx.AsyncClient) -> None:
        self.emulator = emulator
        self.client = client
        self.now = NOW
        emulator.now = lambda: self.now
        self.account = emulator.add_account("publisher", PASSWORD, "us", first_reading_ms=NOW - 86_400_000)

    def driver(self, **kw: Any) -> DexcomShare:
        return make(settings(**kw), self.client)

    async def session(self, driver: DexcomShare) -> str:
        grant = await driver.authorize(await driver.authenticate())
        assert isinstance(grant, Grant)
        return str(grant.value)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    emulator = ShareEmulator()
    async with httpx.AsyncClient(transport=TimeoutTransport(emulator, timeout_s=30)) as client:
        yield World(emulator, client)


# --- settings and endpoints ----------------------------------------------------------------


def test_source_info_names_settings_and_legacy_variables() -> None:
    assert SOURCE.name == "dexcomshare"
    assert SOURCE.legacy_env == {
        "BRIDGE_USER_NAME": "CONNECT_SHARE_ACCOUNT_NAME",
        "BRIDGE_PASSWORD": "CONNECT_SHARE_PASSWORD",
        "BRIDGE_SERVER": "CONNECT_SHARE_SERVER",
    }
    assert SOURCE.settings is DexcomShareSettings


def test_settings_from_connect_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECT_SHARE_ACCOUNT_NAME", "someone@example.org")
    monkeypatch.setenv("CONNECT_SHARE_PASSWORD", "pw-from-env")
    monkeypatch.setenv("CONNECT_SHARE_REGION", "OUS")
    s = DexcomShareSettings()  # type: ignore[call-arg]
    assert s.share_account_name == "someone@example.org"
    assert s.share_password.get_secret_value() == "pw-from-env"
    assert "pw-from-env" not in repr(s)
    assert s.share_region == "ous"
    assert endpoint_for(s.share_server, s.share_region).base_url == BASE_URLS["ous"]


def test_legacy_bridge_variables_work(monkeypatch: pytest.MonkeyPatch) -> None:
    legacy = {"BRIDGE_USER_NAME": "olduser", "BRIDGE_PASSWORD": "oldpass", "BRIDGE_SERVER": "EU"}
    env = dict(legacy)
    assert sorted(apply_legacy_env(SOURCE.legacy_env, env)) == sorted(legacy)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = DexcomShareSettings()  # type: ignore[call-arg]
    endpoint = endpoint_for(s.share_server, s.share_region)
    assert (s.share_account_name, s.share_password.get_secret_value()) == ("olduser", "oldpass")
    assert endpoint.base_url == BASE_URLS["ous"]


@pytest.mark.parametrize(
    ("server", "region", "base", "app"),
    [
        (None, "us", "https://share2.dexcom.com/ShareWebServices/Services/", "us"),
        (None, "ous", "https://shareous1.dexcom.com/ShareWebServices/Services/", "ous"),
        (None, "jp", "https://share.dexcom.jp/ShareWebServices/Services/", "jp"),
        ("US", "jp", "https://share2.dexcom.com/ShareWebServices/Services/", "us"),
        ("EU", "us", "https://shareous1.dexcom.com/ShareWebServices/Services/", "ous"),
        ("share.example.net", "us", "https://share.example.net/ShareWebServices/Services/", "us"),
        ("share.example.net:8443", "jp", "https://share.example.net:8443/ShareWebServices/Services/", "jp"),
        ("http://127.0.0.1:8080", "us", "http://127.0.0.1:8080/ShareWebServices/Services/", "us"),
        ("http://127.0.0.1:8080/", "us", "http://127.0.0.1:8080/ShareWebServices/Services/", "us"),
        ("https://proxy.local/dex", "ous", "https://proxy.local/dex/ShareWebServices/Services/", "ous"),
        (
            "https://share2.dexcom.com/ShareWebServices/Services/",
            "us",
            "https://share2.dexcom.com/ShareWebServices/Services/",
            "us",
        ),
    ],
)
def test_server_setting_forms(server: str | None, region: str, base: str, app: str) -> None:
    endpoint = endpoint_for(server, region)
    assert endpoint.base_url == base
    assert endpoint.region.application_id == APPLICATION_IDS[app]


@pytest.mark.parametrize(
    "server", ["ftp://share.example.net", "https://user:hunter22@share.example.net", "http://"]
)
def test_bad_server_settings_are_refused_without_echoing_credentials(server: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        settings(share_server=server)
    # what the CLI prints: one line per problem, without the input value
    lines = describe_validation(info.value)
    assert len(lines) == 1 and "CONNECT_SHARE_SERVER" in lines[0]
    assert "hunter22" not in lines[0]


@pytest.mark.parametrize("region", ["mars", ""])
def test_unknown_region_is_refused(region: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        settings(share_region=region)


def test_empty_password_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError):
        settings(share_password="")


# --- read window -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gap_ms", "count"),
    [(-FIVE_MIN, 3), (0, 3), (1, 4), (FIVE_MIN + 20_000, 5), (3_600_000, 15), (2 * 86_400_000, MAX_COUNT)],
)
def test_read_window_follows_the_gap(gap_ms: int, count: int) -> None:
    minutes, max_count = read_window(last_known(NOW - gap_ms))
    assert max_count == count
    assert minutes == min(MAX_MINUTES, 5 * count)
    assert 1 <= max_count <= MAX_COUNT and 1 <= minutes <= MAX_MINUTES


def test_read_window_without_checkpoint_is_the_whole_day() -> None:
    assert read_window(last_known()) == (MAX_MINUTES, MAX_COUNT)


# --- the protocol ---------------------------------------------------------------------------


async def test_three_step_login_and_read(world: World) -> None:
    driver = world.driver()
    account_id = await driver.authenticate()
    assert account_id == world.account.account_id
    grant = await driver.authorize(account_id)
    assert isinstance(grant, Grant) and grant.expires_in and grant.expires_in < 86_400
    raw = await driver.fetch(grant.value, last_known(NOW - 3 * FIVE_MIN))
    batch = driver.transform(raw, last_known(NOW - 3 * FIVE_MIN))
    expected = [t for t in world.account.published(NOW) if t >= NOW - 6 * FIVE_MIN]
    assert [e.date for e in batch.entries] == expected[-6:]
    assert [e.sgv for e in batch.entries] == [
        world.account.value((t - world.account.first_reading_ms) // FIVE_MIN) for t in expected[-6:]
    ]
    reads = [r for r in world.emulator.requests if r.endpoint == "read"]
    assert reads[0].params["minutes"] == "30" and reads[0].params["maxCount"] == "6"
    assert [r.endpoint for r in world.emulator.requests] == ["authenticate", "login", "read"]


async def test_backfill_reads_the_whole_day(world: World) -> None:
    driver = world.driver()
    raw = await driver.fetch(await world.session(driver), last_known())
    assert len(driver.transform(raw, last_known()).entries) == 288


@pytest.mark.parametrize("region", ["ous", "jp"])
async def test_accounts_in_other_regions(world: World, region: str) -> None:
    other = world.emulator.add_account("abroad", "pw-abroad", region, first_reading_ms=NOW - 3_600_000)
    driver = world.driver(share_account_name="abroad", share_password="pw-abroad", share_region=region)
    session = await world.session(driver)
    raw = await driver.fetch(session, last_known(NOW - 600_000))
    assert len(raw) >= 1 and world.emulator.requests[-1].account_id == other.account_id
    # the same account through the US host is unknown there, which Share reports as a bad password
    with pytest.raises(AuthRejected):
        await world.driver(share_account_name="abroad", share_password="pw-abroad").authenticate()


async def test_loopback_server_setting_reaches_the_default_region(world: World) -> None:
    driver = world.driver(share_server="http://127.0.0.1:9")
    assert driver.endpoint.base_url == "http://127.0.0.1:9/ShareWebServices/Services/"
    await world.session(driver)  # the in-process transport ignores the port; the Host is loopback


# --- errors ------------------------------------------------------------------------------------


async def test_wrong_password_is_rejected(world: World) -> None:
    with pytest.raises(AuthRejected) as info:
        await world.driver(share_password="wrong password").authenticate()
    assert type(info.value) is AuthRejected and "AccountPasswordInvalid" in str(info.value)


async def test_repeated_bad_passwords_lock_the_account(world: World) -> None:
    driver = world.driver(share_password="wrong password")
    for _ in range(world.emulator.lockout_after - 1):
        with pytest.raises(AuthRejected):
            await driver.authenticate()
    with pytest.raises(AccountLocked) as info:
        await driver.authenticate()
    assert info.value.retry_after is not None and info.value.retry_after >= 1800
    # locked even for the right password, until the lock ends
    with pytest.raises(AccountLocked):
        await world.driver().authenticate()
    world.now += world.emulator.lockout_ms
    assert await world.driver().authenticate() == world.account.account_id


@pytest.mark.parametrize(
    ("code", "endpoint", "error"),
    [
        ("SessionIdNotFound", "read", SessionExpired),
        ("SessionNotValid", "read", SessionExpired),
        ("AccountPasswordInvalid", "authenticate", AuthRejected),
        ("AccountPasswordInvalid", "login", AuthRejected),
        ("SSO_AuthenticatePasswordInvalid", "authenticate", AuthRejected),
        ("SSO_AuthenticateAccountNotFound", "authenticate", AuthRejected),
        ("SSO_AuthenticateMaxAttemptsExceeed", "authenticate", AccountLocked),
        ("SSO_AuthenticateMaxAttemptsExceeded", "login", AccountLocked),  # newer pydexcom's spelling
        ("SSO_InternalError", "authenticate", AuthRejected),  # "Cannot Authenticate by AccountName"
        ("InvalidArgument", "authenticate", AuthRejected),
        ("InvalidArgument", "read", SessionExpired),
        ("SomethingNobodyDocumented", "read", TransientError),
    ],
)
async def test_every_vendor_code_maps_to_one_error(
    world: World, code: str, endpoint: str, error: type[ConnectError]
) -> None:
    driver = world.driver()
    session = await world.session(driver) if endpoint == "read" else ""
    world.emulator.inject("code", code=code, endpoint=endpoint)
    with pytest.raises(ConnectError) as info:
        if endpoint == "read":
            await driver.fetch(session, last_known(NOW - FIVE_MIN))
        elif endpoint == "authenticate":
            await driver.authenticate()
        else:
            await driver.authorize(world.account.account_id)
    assert type(info.value) is error
    assert session not in str(info.value) or not session
    assert world.account.account_id not in str(info.value)


async def test_internal_error_without_credential_hint_is_transient() -> None:
    from sources.dexcomshare.faults import error_for_code

    assert type(error_for_code("SSO_InternalError", "database unavailable", step="login")) is TransientError
    assert (
        type(error_for_code("SSO_InternalError", "Cannot Authenticate by AccountId", step="login"))
        is AuthRejected
    )


async def test_expired_session_mid_stream(world: World) -> None:
    driver = world.driver()
    session = await world.session(driver)
    await driver.fetch(session, last_known(NOW - FIVE_MIN))
    world.now += 1
    world.emulator.expire_sessions(world.account)
    with pytest.raises(SessionExpired):
        await driver.fetch(session, last_known(NOW - FIVE_MIN))
    # and a session past its lifetime is "not valid"
    fresh = await world.session(driver)
    world.now += world.emulator.session_ttl_ms
    with pytest.raises(SessionExpired):
        await driver.fetch(fresh, last_known(NOW - FIVE_MIN))


async def test_malformed_session_id_is_a_400_and_means_log_in_again(world: World) -> None:
    driver = world.driver()
    with pytest.raises(SessionExpired) as info:
        await driver.fetch("bad-session-id", last_known(NOW - FIVE_MIN))
    assert "400" in str(info.value)


@pytest.mark.parametrize("step", ["authenticate", "login"])
async def test_all_zero_uuid_is_a_failed_login(world: World, step: str) -> None:
    driver = world.driver()
    world.emulator.inject("zero_uuid", endpoint=step)
    with pytest.raises(AuthRejected):
        await world.session(driver)


async def test_429_is_rate_limited_with_retry_after(world: World) -> None:
    driver = world.driver()
    session = await world.session(driver)
    world.emulator.inject("http429", endpoint="read", retry_after=120)
    with pytest.raises(RateLimited) as info:
        await driver.fetch(session, last_known(NOW - FIVE_MIN))
    assert info.value.retry_after == 120


async def test_html_ban_page_is_rate_limited_never_a_relogin(world: World) -> None:
    driver = world.driver()
    session = await world.session(driver)
    world.emulator.inject("ban", endpoint="read")
    with pytest.raises(RateLimited) as info:
        await driver.fetch(session, last_known(NOW - FIVE_MIN))
    assert info.value.retry_after and info.value.retry_after >= 600


@pytest.mark.parametrize("kind", ["truncated", "nonjson"])
async def test_bodies_that_are_not_json_are_protocol_errors(world: World, kind: str) -> None:
    driver = world.driver()
    session = await world.session(driver)
    world.emulator.inject(kind, endpoint="read")
    with pytest.raises(ProtocolError):
        await driver.fetch(session, last_known(NOW - FIVE_MIN))
    world.emulator.inject(kind, endpoint="authenticate")
    with pytest.raises(ProtocolError):
        await driver.authenticate()


async def test_cdn_error_pages_are_transient(world: World) -> None:
    driver = world.driver()
    session = await world.session(driver)
    world.emulator.inject("html500", endpoint="read")
    with pytest.raises(TransientError):
        await driver.fetch(session, last_known(NOW - FIVE_MIN))


@pytest.mark.parametrize("kind", ["timeout", "hang"])
async def test_timeouts_are_transient(world: World, kind: str, autojump_clock: trio.abc.Clock) -> None:
    driver = world.driver()
    session = await world.session(driver)
    world.emulator.inject(kind, endpoint="read")
    start = trio.current_time()
    with pytest.raises(TransientError) as info:
        await driver.fetch(session, last_known(NOW - FIVE_MIN))
    assert "timed out" in str(info.value)
    assert trio.current_time() - start == pytest.approx(30, abs=1)


async def test_hang_without_a_client_timeout_ends_with_the_cdn_timeout_page(
    autojump_clock: trio.abc.Clock,
) -> None:
    emulator = ShareEmulator(now=lambda: NOW)
    emulator.add_account("publisher", PASSWORD, first_reading_ms=NOW - 3_600_000)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator)) as client:
        driver = make(settings(), client)
        session = str((await driver.authorize(await driver.authenticate())).value)
        emulator.inject("hang", endpoint="read")
        with pytest.raises(TransientError) as info:
            await driver.fetch(session, last_known(NOW - FIVE_MIN))
        assert "524" in str(info.value)


async def test_requests_have_the_protocol_shape(world: World) -> None:
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request)

    world.client.event_hooks["request"].append(record)
    driver = world.driver()
    await driver.fetch(await world.session(driver), last_known(NOW - FIVE_MIN))
    assert [r.method for r in seen] == ["POST"] * 3
    assert all(r.headers["accept"] == "application/json" for r in seen)
    assert all(r.headers["content-type"] == "application/json" for r in seen)
    import json

    assert json.loads(seen[0].content) == {
        "accountName": "publisher", "password": PASSWORD, "applicationId": APPLICATION_IDS["us"],
    }  # fmt: skip
    assert set(json.loads(seen[1].content)) == {"accountId", "password", "applicationId"}
    assert json.loads(seen[2].content) == {}
    assert set(seen[2].url.params) == {"sessionId", "minutes", "maxCount"}
