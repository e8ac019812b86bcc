"""The dexcomshare driver against the emulator, request by request: logins, reads, every fault."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import httpx
import pydantic
import pytest
import trio
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

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
from sources.dexcomshare.faults import list_answer, uuid_answer
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
        # share2nightscout-bridge's own names
        "DEXCOM_ACCOUNT_NAME": "CONNECT_SHARE_ACCOUNT_NAME",
        "DEXCOM_PASSWORD": "CONNECT_SHARE_PASSWORD",
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
        # a Dexcom host names its deployment, whatever the (default) region says: Japan's host
        # with the US application id is refused like a wrong password
        ("share.dexcom.jp", "us", "https://share.dexcom.jp/ShareWebServices/Services/", "jp"),
        ("SHAREOUS1.dexcom.com", "us", "https://shareous1.dexcom.com/ShareWebServices/Services/", "ous"),
    ],
)
def test_server_setting_forms(server: str | None, region: str, base: str, app: str) -> None:
    endpoint = endpoint_for(server, region)
    assert endpoint.base_url == base
    assert endpoint.region.application_id == APPLICATION_IDS[app]


def test_legacy_bridge_server_naming_the_japan_host_uses_its_application_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {"BRIDGE_USER_NAME": "u", "BRIDGE_PASSWORD": "p", "BRIDGE_SERVER": "share.dexcom.jp"}
    apply_legacy_env(SOURCE.legacy_env, env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = DexcomShareSettings()  # type: ignore[call-arg]
    assert endpoint_for(s.share_server, s.share_region).region.application_id == APPLICATION_IDS["jp"]


def test_a_server_contradicting_an_explicit_region_is_a_settings_error() -> None:
    with pytest.raises(pydantic.ValidationError, match="jp deployment but CONNECT_SHARE_REGION is ous"):
        settings(share_server="share.dexcom.jp", share_region="ous")
    assert settings(share_server="share.dexcom.jp", share_region="jp").share_region == "jp"


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


def test_unknown_region_is_refused() -> None:
    with pytest.raises(pydantic.ValidationError):
        settings(share_region="mars")
    # an empty value is no value: the default region
    assert settings(share_region="").share_region == "us"


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
        ("SSO_AuthenticateMaxAttemptsExceeed", "read", AccountLocked),
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
    if session:
        await driver.fetch(session, last_known(NOW - FIVE_MIN))  # a session that served a read
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
    for step in ("authenticate", "login"):
        world.emulator.inject(kind, endpoint=step)
        with pytest.raises(ProtocolError):
            await world.session(world.driver())  # a new driver: it knows no account id yet


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

    assert json.loads(seen[0].content) == {
        "accountName": "publisher", "password": PASSWORD, "applicationId": APPLICATION_IDS["us"],
    }  # fmt: skip
    assert set(json.loads(seen[1].content)) == {"accountId", "password", "applicationId"}
    assert json.loads(seen[2].content) == {}
    assert set(seen[2].url.params) == {"sessionId", "minutes", "maxCount"}


async def test_internal_error_by_account_id_from_the_server_is_rejected_credentials(world: World) -> None:
    driver = world.driver()
    account_id = await driver.authenticate()
    world.emulator.inject("code", code="SSO_InternalError", endpoint="login",
                          message="Cannot Authenticate by AccountId")  # fmt: skip
    with pytest.raises(AuthRejected) as info:
        await driver.authorize(account_id)
    assert type(info.value) is AuthRejected
    world.emulator.inject("code", code="SSO_InternalError", endpoint="login", message="Database unavailable")
    with pytest.raises(TransientError):
        await driver.authorize(account_id)
    assert [r.code for r in world.emulator.requests[-2:]] == ["SSO_InternalError"] * 2


# --- sessions: log in again once, and with step 2 only ------------------------------------------


async def test_logging_in_again_skips_step_one(world: World) -> None:
    driver = world.driver()
    first = await world.session(driver)
    second = await world.session(driver)
    assert first != second
    assert [r.endpoint for r in world.emulator.requests] == ["authenticate", "login", "login"]


@pytest.mark.parametrize("how", ["password", "zero_uuid", "lockout"])
async def test_a_refused_login_forgets_the_account_id(world: World, how: str) -> None:
    driver = world.driver()
    await world.session(driver)
    if how == "password":
        world.emulator.change_password(world.account, NOW, NOW + 1)
    else:
        world.emulator.inject(how, endpoint="login")
    with pytest.raises(AuthRejected):
        await world.session(driver)
    world.now += 1 if how != "lockout" else world.emulator.lockout_ms
    await world.session(driver)  # the next attempt starts from the account name again
    endpoints = [r.endpoint for r in world.emulator.requests]
    assert endpoints == ["authenticate", "login", "login", "authenticate", "login"]


async def test_a_transient_login_failure_keeps_the_account_id(world: World) -> None:
    driver = world.driver()
    await world.session(driver)
    world.emulator.inject("html500", endpoint="login")
    with pytest.raises(TransientError):
        await world.session(driver)
    await world.session(driver)
    assert [r.endpoint for r in world.emulator.requests] == ["authenticate", "login", "login", "login"]


@pytest.mark.parametrize("code", ["SessionIdNotFound", "SessionNotValid", "InvalidArgument"])
async def test_a_session_error_is_a_retryable_session_expired_used_or_fresh(world: World, code: str) -> None:
    """The driver reports what the server said; whether the next login follows at once is the
    Session machine's decision (it knows whether the session ever served a read)."""
    driver = world.driver()
    used = await world.session(driver)
    await driver.fetch(used, last_known(NOW - FIVE_MIN))
    world.emulator.inject("code", code=code, endpoint="read")
    with pytest.raises(SessionExpired) as info:
        await driver.fetch(used, last_known(NOW - FIVE_MIN))
    assert type(info.value) is SessionExpired and info.value.retryable
    fresh = await world.session(driver)
    world.emulator.inject("code", code=code, endpoint="read")
    with pytest.raises(SessionExpired) as info:
        await driver.fetch(fresh, last_known(NOW - FIVE_MIN))
    assert type(info.value) is SessionExpired and info.value.retryable
    assert code in str(info.value) and fresh not in str(info.value)


# --- rate limits and lockouts -------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", [None, 60, 7200])
async def test_429_with_a_lockout_body_is_a_lockout(world: World, retry_after: int | None) -> None:
    driver = world.driver()
    world.emulator.inject("lockout429", endpoint="authenticate", retry_after=retry_after)
    with pytest.raises(AccountLocked) as info:
        await driver.authenticate()
    assert info.value.retry_after == max(1800, retry_after or 0)
    assert world.emulator.requests[-1].status == 429
    assert world.emulator.requests[-1].code == "SSO_AuthenticateMaxAttemptsExceeed"
    assert len(world.emulator.lockouts) == 1  # the emulator locked the account too
    with pytest.raises(AccountLocked):
        await world.driver().authenticate()


def _response(status: int, body: bytes, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=body, headers={"content-type": "application/json", **headers})


@pytest.mark.parametrize(
    ("status", "code", "header", "error", "retry_after"),
    [
        (500, "ServiceUnavailable", "120", TransientError, 120),
        (500, "Unknown", None, TransientError, None),
        (500, "SessionNotValid", "30", SessionExpired, 30),
        (500, "SSO_AuthenticateMaxAttemptsExceeded", "60", AccountLocked, 1800),
        (500, "SSO_AuthenticateMaxAttemptsExceeed", "86400", AccountLocked, 21600),  # bounded
        (429, "SSO_AuthenticateMaxAttemptsExceeed", None, AccountLocked, 1800),
        (429, "SessionIdNotFound", "45", RateLimited, 45),  # a 429 is a rate limit whatever it says
        (429, "AccountPasswordInvalid", None, RateLimited, None),
        (503, None, "inf", TransientError, None),  # a nonsense header is ignored
        (429, None, "nan", RateLimited, None),
        (429, None, "999999999", RateLimited, 21600),
        (403, None, None, RateLimited, 900),  # a ban page: stay away, never log in again
    ],
)
def test_retry_after_travels_with_the_mapped_error(
    status: int, code: str | None, header: str | None, error: type[ConnectError], retry_after: float | None
) -> None:
    from tests.emulators.dexcom import fault_body

    body = b"<html>blocked</html>" if code is None else json.dumps(fault_body(code, NOW)).encode()
    response = _response(status, body, **({} if header is None else {"retry-after": header}))
    with pytest.raises(ConnectError) as info:
        list_answer(response, step="read")
    assert type(info.value) is error
    assert info.value.retry_after == retry_after


# --- any answer at all is a value or a typed error ----------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
_codes = st.sampled_from(
    ["AccountPasswordInvalid", "SSO_AuthenticatePasswordInvalid", "SSO_AuthenticateAccountNotFound",
     "SSO_AuthenticateMaxAttemptsExceeed", "SSO_AuthenticateMaxAttemptsExceeded", "SSO_InternalError",
     "InvalidArgument", "SessionIdNotFound", "SessionNotValid"]
) | st.text(max_size=40)  # fmt: skip
_fault_bodies = st.builds(
    lambda code, message: {"Code": code, "Message": message, "SubCode": "<OnlineException />",
                           "TypeName": "FaultException"},
    _codes, st.sampled_from(["", "Cannot Authenticate by AccountName", "Session not active"]) | st.text(max_size=20),
)  # fmt: skip
_reading = st.fixed_dictionaries(
    {"WT": st.integers(946_684_800_000, 4_102_444_800_000).map(lambda ms: f"Date({ms})"),
     "Value": st.integers(39, 401) | _json_values},
    optional={"Trend": st.sampled_from(["Flat", "DoubleUp", 4, "?"]) | _json_values, "DT": _json_values},
)  # fmt: skip
_documents = st.one_of(
    _json_values,
    _fault_bodies,
    st.lists(_reading, max_size=4),
    st.uuids().map(str),
    st.just("00000000-0000-0000-0000-000000000000"),
)


@st.composite
def _answers(draw: st.DrawFn) -> httpx.Response:
    status = draw(st.sampled_from([200, 204, 301, 400, 401, 403, 404, 408, 429, 500, 502, 503, 524]))
    body = json.dumps(draw(_documents)).encode()
    how = draw(st.sampled_from(["json", "json", "truncated", "bytes", "html"]))
    if how == "truncated":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif how == "bytes":
        body = draw(st.binary(max_size=40))
    elif how == "html":
        body = b"<!DOCTYPE html><html><title>Just a moment...</title></html>"
    headers = {"content-type": draw(st.sampled_from(["application/json", "text/html", "text/plain"]))}
    retry_after = draw(
        st.none() | st.integers(-10, 10**9).map(str) | st.sampled_from(["inf", "-inf", "nan", "soon", ""])
    )
    if retry_after is not None:
        headers["retry-after"] = retry_after
    return httpx.Response(status, content=body, headers=headers)


@hsettings(max_examples=300, deadline=None)
@given(_answers(), st.sampled_from(["authenticate", "login", "read"]))
def test_any_answer_is_a_value_or_a_typed_error(response: httpx.Response, step: str) -> None:
    from sources.dexcomshare.payload import transform

    try:
        if step == "read":
            value = list_answer(response, step="read")
            transform(value, last_known(NOW - FIVE_MIN))
        else:
            value = uuid_answer(response, step=step)  # type: ignore[arg-type]
            assert isinstance(value, str) and len(value) == 36
    except ConnectError as error:
        if response.status_code < 300:
            assert type(error) is ProtocolError  # a 2xx can only be malformed
        delay = error.retry_after
        assert delay is None or 0 <= delay <= 6 * 3600, delay
        if isinstance(error, AccountLocked):
            assert delay is not None and delay >= 1800
        return
    assert response.status_code < 300  # only a success gives a value


@hsettings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["SessionIdNotFound", "SessionNotValid"]),
    st.sampled_from([400, 500, 502, 503]),
    st.sampled_from(["authenticate", "login", "read"]),
)
def test_session_codes_always_expire_the_session(code: str, status: int, step: str) -> None:
    from tests.emulators.dexcom import fault_body

    response = _response(status, json.dumps(fault_body(code, NOW, session=str(uuid4()))).encode())
    with pytest.raises(SessionExpired):
        list_answer(response, step=step)  # type: ignore[arg-type]


@hsettings(max_examples=100, deadline=None)
@given(
    st.text(max_size=20), st.sampled_from([400, 429, 500, 503]), st.sampled_from(["authenticate", "login"])
)
def test_lockout_is_matched_by_prefix(suffix: str, status: int, step: str) -> None:
    body = json.dumps({"Code": "SSO_AuthenticateMaxAttempts" + suffix, "Message": ""}).encode()
    with pytest.raises(AccountLocked) as info:
        uuid_answer(_response(status, body), step=step)  # type: ignore[arg-type]
    assert info.value.retry_after is not None and info.value.retry_after >= 1800


# --- the whole configuration path, as the command line reads it ----------------------------------


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith(("CONNECT_", "BRIDGE_"))]:
        monkeypatch.delenv(key)
    for key in SOURCE.legacy_env.values():
        # load_settings copies BRIDGE_* into os.environ itself; setting then deleting makes
        # monkeypatch remember these as unset, so that copy is undone after the test
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        (
            {"CONNECT_SHARE_ACCOUNT_NAME": "pub", "CONNECT_SHARE_PASSWORD": "pw", "CONNECT_SHARE_REGION": "jp"},
            [],
            ("pub", "pw", "https://share.dexcom.jp/ShareWebServices/Services/", "jp"),
        ),
        (
            {"BRIDGE_USER_NAME": "old", "BRIDGE_PASSWORD": "oldpw", "BRIDGE_SERVER": "EU"},
            [],
            ("old", "oldpw", "https://shareous1.dexcom.com/ShareWebServices/Services/", "ous"),
        ),
        (
            {"BRIDGE_USER_NAME": "old", "BRIDGE_PASSWORD": "oldpw", "CONNECT_SHARE_ACCOUNT_NAME": "new",
             "CONNECT_SHARE_SERVER": "http://127.0.0.1:8080"},
            [],
            ("new", "oldpw", "http://127.0.0.1:8080/ShareWebServices/Services/", "us"),
        ),
        (
            {"CONNECT_SHARE_PASSWORD": "pw"},
            ["--share-account-name", "flagged", "--share-region", "ous"],
            ("flagged", "pw", "https://shareous1.dexcom.com/ShareWebServices/Services/", "ous"),
        ),
    ],
)  # fmt: skip
def test_connect_source_dexcomshare_reads_its_settings(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], args: list[str], expected: tuple[str, ...]
) -> None:
    from connect.cli import load_settings

    _clean_env(monkeypatch)
    monkeypatch.setenv("CONNECT_SOURCE", "dexcomshare")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    loaded, source = load_settings(args)
    assert source is SOURCE
    assert all(os.environ.get(k) == v for k, v in env.items())
    driver = make(loaded, httpx.AsyncClient())
    name, password, base, region = expected
    assert (driver.account_name, driver._password) == (name, password)
    assert driver.endpoint.base_url == base
    assert driver.endpoint.region.application_id == APPLICATION_IDS[region]
    assert password not in repr(loaded)


def test_connect_source_dexcomshare_without_credentials_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from connect.cli import UsageError, load_settings

    _clean_env(monkeypatch)
    monkeypatch.setenv("CONNECT_SOURCE", "dexcomshare")
    monkeypatch.setenv("CONNECT_SHARE_REGION", "mars")
    with pytest.raises(UsageError) as info:
        load_settings([])
    text = "\n".join(info.value.lines)
    for name in ("CONNECT_SHARE_ACCOUNT_NAME", "CONNECT_SHARE_PASSWORD", "CONNECT_SHARE_REGION"):
        assert name in text


def test_no_share_setting_leaks_out_of_the_settings_tests() -> None:
    # runs after the tests above (file order): what load_settings copied must be gone again
    assert not [k for k in os.environ if k.startswith("CONNECT_SHARE_")]
