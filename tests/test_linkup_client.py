"""The linkup driver against the emulator (in-process): logins, regions, steps, patients, every
documented error answer and injected fault, settings, scheduling — and no secret in any message."""

from __future__ import annotations

import email.utils
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import structlog

from connect.builder import Builder
from connect.contract import Grant, LastKnown
from connect.errors import (
    AccountLocked,
    AuthRejected,
    ConfigError,
    ConnectError,
    ProtocolError,
    RateLimited,
    RequestRejected,
    SessionExpired,
    StepRequired,
    TransientError,
)
from connect.httpkit import sha256_hex
from connect.settings import apply_legacy_env, load_source
from sources.linkup import SOURCE, LinkUp, LinkUpSettings, Session, endpoint_for, make, redirect_endpoint
from tests.emulators.linkup import Account, LinkUpEmulator

T0 = 1_700_000_000_000
PASSWORD = "s3cret-Passw0rd"


class Clock:
    def __init__(self, start: int = T0) -> None:
        self.ms = start

    def __call__(self) -> int:
        return self.ms


def settings(**kw: Any) -> LinkUpSettings:
    values: dict[str, Any] = {"link_up_username": "follower@example.com", "link_up_password": PASSWORD}
    values.update(kw)
    return LinkUpSettings(**values)


def known(now: int = T0, **values: int) -> LastKnown:
    return LastKnown(values=values, backfill_from=now - 30 * 86_400_000, now=now)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emu(clock: Clock) -> LinkUpEmulator:
    return LinkUpEmulator(now=clock)


def secrets_of(account: Account, emu: LinkUpEmulator) -> list[str]:
    values = [PASSWORD, account.user_id, account.account_id, account.email]
    values += [p.patient_id for p in account.patients]
    values += list(emu.tickets)
    return values


def assert_clean(text: str, account: Account, emu: LinkUpEmulator) -> None:
    for secret in secrets_of(account, emu):
        assert secret not in text, "a secret reached a message"


async def connect(emu: LinkUpEmulator, client: httpx.AsyncClient, **kw: Any) -> tuple[LinkUp, Session]:
    driver = make(settings(**kw), client)
    grant = await driver.authorize(await driver.authenticate())
    assert isinstance(grant, Grant) and isinstance(grant.value, Session)
    return driver, grant.value


# --- the happy path ---------------------------------------------------------------------------


async def test_login_connections_graph(emu: LinkUpEmulator, clock: Clock) -> None:
    account = emu.add_account("follower@example.com", PASSWORD, region="eu")
    async with emu.client() as client:
        driver, session = await connect(emu, client)
        raw = await driver.fetch(session, known())
    batch = driver.transform(raw, known())
    assert [r.kind for r in emu.requests] == ["login", "connections", "graph"]
    login, conns, graph = emu.requests
    assert login.headers["version"] == "4.16.0" and login.headers["product"] == "llu.android"
    for r in (conns, graph):
        assert r.status == 200
        assert r.headers["account-id"] == sha256_hex(account.user_id)
        assert r.headers["authorization"].startswith("Bearer ")
    patient = account.patients[0]
    assert graph.path == f"/llu/connections/{patient.patient_id}/graph"
    # 12 h of history before the current reading, plus the current one with its arrow
    assert 140 <= len(batch.entries) <= 145
    served = emu.served_times(patient)
    assert {e.date for e in batch.entries} == set(served)
    newest = batch.entries[-1]
    assert newest.direction is not None and newest.direction != "NOT COMPUTABLE"
    assert all(e.direction is None for e in batch.entries[:-1])
    assert newest.date <= clock.ms - emu.publish_delay_ms
    assert newest.sgv == patient.value(newest.date)


async def test_grant_carries_token_lifetime(emu: LinkUpEmulator) -> None:
    emu.add_account("follower@example.com", PASSWORD, token_duration_ms=2 * 3_600_000)
    async with emu.client() as client:
        driver = make(settings(), client)
        grant = await driver.authorize(await driver.authenticate())
    assert grant.expires_in == 7200.0


async def test_expired_token_is_session_expired(emu: LinkUpEmulator, clock: Clock) -> None:
    emu.add_account("follower@example.com", PASSWORD, token_duration_ms=3_600_000)
    async with emu.client() as client:
        driver, session = await connect(emu, client)
        clock.ms += 3_600_000
        with pytest.raises(SessionExpired):
            await driver.fetch(session, known(clock.ms))
    assert emu.requests[-1].status == 401


# --- regions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("configured", ["EU", "GLOBAL", "us"])
async def test_redirect_to_account_region(emu: LinkUpEmulator, configured: str) -> None:
    emu.add_account("follower@example.com", PASSWORD, region="eu2")
    with structlog.testing.capture_logs() as logs:
        async with emu.client() as client:
            driver, session = await connect(emu, client, link_up_region=configured)
            await driver.fetch(session, known())
            await driver.authenticate()
    hosts = [(r.kind, r.host) for r in emu.requests]
    assert hosts[0][1] != "api-eu2.libreview.io"
    assert hosts[1:] == [
        ("login", "api-eu2.libreview.io"),
        ("connections", "api-eu2.libreview.io"),
        ("graph", "api-eu2.libreview.io"),
        ("login", "api-eu2.libreview.io"),  # remembered: no second redirect
    ]
    assert any("CONNECT_LINK_UP_REGION=EU2" in str(entry) for entry in logs)


async def test_account_moved_between_logins(emu: LinkUpEmulator) -> None:
    account = emu.add_account("follower@example.com", PASSWORD, region="eu")
    async with emu.client() as client:
        driver, _ = await connect(emu, client)
        emu.move_account(account, "de")
        _, session = await connect(emu, client)
    assert session.login.endpoint.base_url == "https://api-de.libreview.io"
    assert [r.host for r in emu.requests if r.kind == "login"][-2:] == [
        "api-eu.libreview.io",
        "api-de.libreview.io",
    ]


async def test_data_at_the_wrong_region_is_refused(emu: LinkUpEmulator) -> None:
    emu.add_account("follower@example.com", PASSWORD, region="eu")
    async with emu.client() as client:
        _, session = await connect(emu, client)
        response = await client.get(
            f"https://api-us.libreview.io/llu/connections/{session.patient_id}/graph",
            headers={
                "version": "4.16.0", "product": "llu.android",
                "authorization": f"Bearer {session.login.token}", "account-id": session.login.account_id,
            },
        )  # fmt: skip
    assert response.status_code == 401


def test_endpoints_and_redirect_targets() -> None:
    assert endpoint_for(None, "EU").base_url == "https://api-eu.libreview.io"
    assert endpoint_for(None, "RU").base_url == "https://api.libreview.ru"
    assert endpoint_for("127.0.0.1:8080", "EU").base_url == "https://127.0.0.1:8080"
    local = endpoint_for("http://127.0.0.1:8080/", "EU")
    assert (local.base_url, local.custom) == ("http://127.0.0.1:8080", True)
    assert endpoint_for("http://[::1]:9/proxy/", "EU").base_url == "http://[::1]:9/proxy"
    # the API's own /llu prefix in a configured server is not doubled by the request paths
    for server in ("http://127.0.0.1:8080/llu", "http://127.0.0.1:8080/llu/", "127.0.0.1:8080/llu"):
        assert endpoint_for(server, "EU").base_url.endswith("127.0.0.1:8080"), server
    assert endpoint_for("https://proxy.example/libre/llu", "EU").base_url == "https://proxy.example/libre"
    assert (
        endpoint_for("https://proxy.example/llu-mirror", "EU").base_url == "https://proxy.example/llu-mirror"
    )
    assert redirect_endpoint(endpoint_for(None, "EU"), "eu2").base_url == "https://api-eu2.libreview.io"
    assert redirect_endpoint(endpoint_for(None, "EU"), "xx").base_url == "https://api-xx.libreview.io"
    own = endpoint_for("api-eu.libreview.io", "EU")
    assert redirect_endpoint(own, "us").base_url == "https://api-us.libreview.io"
    with pytest.raises(ConfigError, match="CONNECT_LINK_UP_REGION=EU2"):
        redirect_endpoint(local, "eu2")
    for bad in (None, "", "../x", 7, "e u"):
        with pytest.raises(ProtocolError):
            redirect_endpoint(endpoint_for(None, "EU"), bad)


async def test_a_server_written_with_the_llu_prefix_reaches_the_api(emu: LinkUpEmulator) -> None:
    """``CONNECT_LINK_UP_SERVER=http://host:port/llu`` (how the API's URLs read) just works."""
    emu.add_account("follower@example.com", PASSWORD)
    async with emu.client() as client:
        driver, session = await connect(emu, client, link_up_server="http://127.0.0.1:8080/llu/")
        await driver.fetch(session, known())
    assert [r.path for r in emu.requests] == [
        "/llu/auth/login",
        "/llu/connections",
        f"/llu/connections/{session.patient_id}/graph",
    ]
    assert all(r.status == 200 for r in emu.requests)


async def test_redirect_from_a_custom_server_is_a_clear_config_error(emu: LinkUpEmulator) -> None:
    emu.add_account("follower@example.com", PASSWORD, region="eu2")
    async with emu.client() as client:
        with pytest.raises(ConfigError, match="CONNECT_LINK_UP_REGION=EU2"):
            await make(settings(link_up_server="http://127.0.0.1:8080"), client).authenticate()


# --- login failures ----------------------------------------------------------------------------------


async def test_bad_password_is_auth_rejected(emu: LinkUpEmulator) -> None:
    account = emu.add_account("follower@example.com", "the-real-one")
    async with emu.client() as client:
        with pytest.raises(AuthRejected) as caught:
            await make(settings(), client).authenticate()
    assert type(caught.value) is AuthRejected and not caught.value.retryable
    assert "CONNECT_LINK_UP_PASSWORD" in str(caught.value)
    assert_clean(str(caught.value), account, emu)


async def test_repeated_failures_lock_the_account(emu: LinkUpEmulator, clock: Clock) -> None:
    account = emu.add_account("follower@example.com", "the-real-one")
    async with emu.client() as client:
        driver = make(settings(), client)
        for _ in range(2):
            with pytest.raises(AuthRejected):
                await driver.authenticate()
            clock.ms += 10_000
        with pytest.raises(AccountLocked) as caught:
            await driver.authenticate()
        assert caught.value.retry_after == 300
        # locked: even the right password gets the lock body until it runs out
        good = make(settings(link_up_password="the-real-one"), client)
        with pytest.raises(AccountLocked):
            await good.authenticate()
        clock.ms += 300_000
        await good.authenticate()
    assert_clean(str(caught.value), account, emu)


async def test_outdated_version_names_the_minimum(emu: LinkUpEmulator) -> None:
    emu.add_account("follower@example.com", PASSWORD)
    async with emu.client() as client:
        with pytest.raises(ConfigError) as caught:
            await make(settings(link_up_version="4.12.0"), client).authenticate()
    message = str(caught.value)
    assert "4.16.0" in message and "CONNECT_LINK_UP_VERSION" in message and "920" in message
    assert not caught.value.retryable and caught.value.retry_after and caught.value.retry_after >= 3600
    assert emu.requests[0].status == 403


@pytest.mark.parametrize("auto", [False, True])
async def test_terms_then_policy_steps(emu: LinkUpEmulator, auto: bool) -> None:
    account = emu.add_account("follower@example.com", PASSWORD, steps=["tou", "pp"])
    async with emu.client() as client:
        driver = make(settings(link_up_auto_accept_terms=auto), client)
        if not auto:
            with pytest.raises(StepRequired, match="CONNECT_LINK_UP_AUTO_ACCEPT_TERMS") as caught:
                await driver.authenticate()
            assert '"tou"' in str(caught.value)
            assert account.steps == ["tou", "pp"]
            assert_clean(str(caught.value), account, emu)
            return
        login = await driver.authenticate()
        await driver.authorize(login)
    assert account.steps == []
    assert [(r.kind, r.path, r.status) for r in emu.requests] == [
        ("login", "/llu/auth/login", 200),
        ("step", "/auth/continue/tou", 200),
        ("step", "/auth/continue/pp", 200),
        ("connections", "/llu/connections", 200),
    ]


async def test_verify_email_step_is_never_accepted(emu: LinkUpEmulator) -> None:
    emu.add_account("follower@example.com", PASSWORD, steps=["verifyEmail"])
    async with emu.client() as client:
        with pytest.raises(StepRequired, match="e-mail"):
            await make(settings(link_up_auto_accept_terms=True), client).authenticate()
    assert emu.count("step") == 0


# --- patients ----------------------------------------------------------------------------------------


async def test_first_patient_by_default_and_by_id(emu: LinkUpEmulator) -> None:
    account = emu.add_account("follower@example.com", PASSWORD, patients=3)
    second = account.patients[1]
    async with emu.client() as client:
        with structlog.testing.capture_logs() as logs:
            _, session = await connect(emu, client)
        assert session.patient_id == account.patients[0].patient_id and session.patients == 3
        assert any("CONNECT_LINK_UP_PATIENT_ID" in str(e) for e in logs)
        _, chosen = await connect(emu, client, link_up_patient_id=second.patient_id.upper())
        assert chosen.patient_id == second.patient_id
        with pytest.raises(ConfigError, match="matches none of the 3") as caught:
            await connect(emu, client, link_up_patient_id="0d3f0000-0000-0000-0000-000000000000")
    assert_clean(str(caught.value), account, emu)
    assert_clean(json.dumps([str(e) for e in logs]), account, emu)


async def test_no_patients_is_a_step_for_a_person(emu: LinkUpEmulator) -> None:
    emu.add_account("follower@example.com", PASSWORD, patients=0)
    async with emu.client() as client:
        with pytest.raises(StepRequired, match="follows no patient"):
            await connect(emu, client)


async def test_unknown_patient_on_graph(emu: LinkUpEmulator) -> None:
    emu.add_account("follower@example.com", PASSWORD)
    async with emu.client() as client:
        driver, session = await connect(emu, client)
        other = Session(login=session.login, patient_id="0d3f0000-0000-0000-0000-000000000000")
        with pytest.raises(RequestRejected, match="couldNotLoadPatient"):
            await driver.fetch(other, known())


@pytest.mark.parametrize("use", ["user", "connection"])
async def test_a_follower_id_for_the_patient_is_rejected_with_a_hint(emu: LinkUpEmulator, use: str) -> None:
    """``MissingCachedUser`` (a status other than 0 or 4) is a person's to fix, not a retry's."""
    account = emu.add_account("follower@example.com", PASSWORD)
    wrong = account.user_id if use == "user" else account.patients[0].connection_id
    async with emu.client() as client:
        driver, session = await connect(emu, client)
        with pytest.raises(RequestRejected) as caught:
            await driver.fetch(Session(login=session.login, patient_id=wrong), known())
    error = caught.value
    assert type(error) is RequestRejected and not error.retryable
    assert "MissingCachedUser" in str(error) and "CONNECT_LINK_UP_PATIENT_ID" in str(error)
    assert "follower" in str(error)
    assert_clean(str(error), account, emu)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"status": 1, "error": {"message": "somethingElse"}}, RequestRejected),
        ({"status": 7}, ProtocolError),  # no word of why: perhaps passing, so retried
        ({"status": 4, "error": {}}, RequestRejected),
    ],
)
async def test_graph_status_answers(body: dict[str, Any], error: type[ConnectError]) -> None:
    from sources.linkup import LinkUpClient, Login, endpoint_for

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        client = LinkUpClient(settings(), http)
        login = Login(token="t", account_id="a", endpoint=endpoint_for(None, "EU"), lifetime_s=None)
        with pytest.raises(error) as caught:
            await client.graph(Session(login=login, patient_id="p-1"))
    assert type(caught.value) is error
    if error is RequestRejected:
        assert "CONNECT_LINK_UP_PATIENT_ID" in str(caught.value)


# --- faults on the data call ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kw", "error", "retry_after"),
    [
        ("http500", {}, TransientError, None),
        ("html502", {}, TransientError, None),
        ("http429", {"retry_after": 120}, RateLimited, 120),
        ("http429", {"retry_after": None}, RateLimited, 60),
        ("lock", {}, RateLimited, 300),
        ("ban", {"status": 403}, RateLimited, 900),
        ("ban", {"status": 430}, RateLimited, 900),
        ("nonjson", {}, RateLimited, 900),
        ("truncated", {}, ProtocolError, None),
        ("timeout", {"after_s": 0}, TransientError, None),
        ("expire", {}, SessionExpired, None),
        ("version", {}, ConfigError, 3600),
    ],
)
async def test_graph_faults_map_to_the_error_tree(
    emu: LinkUpEmulator, fault: str, kw: dict[str, Any], error: type[ConnectError], retry_after: float | None
) -> None:
    account = emu.add_account("follower@example.com", PASSWORD)
    async with emu.client() as client:
        driver, session = await connect(emu, client)
        emu.inject(fault, on="graph", **kw)
        with pytest.raises(error) as caught:
            await driver.fetch(session, known())
        assert type(caught.value) is error
        assert caught.value.retry_after == retry_after
        assert_clean(str(caught.value), account, emu)
        assert "libreview.io" not in str(caught.value)  # no URLs in messages
        if fault != "expire":  # the next request is answered normally
            await driver.fetch(session, known())
    assert bool(emu.served_times(account.patients[0])) == (fault != "expire")


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("http500", TransientError),
        ("ban", RateLimited),
        ("truncated", ProtocolError),
        ("timeout", TransientError),
    ],
)
async def test_login_faults(emu: LinkUpEmulator, fault: str, error: type[ConnectError]) -> None:
    emu.add_account("follower@example.com", PASSWORD)
    emu.inject(fault, on="login", after_s=0)
    async with emu.client() as client:
        driver = make(settings(), client)
        with pytest.raises(error):
            await driver.authenticate()
        await driver.authenticate()


async def test_missing_account_id_header(emu: LinkUpEmulator) -> None:
    emu.add_account("follower@example.com", PASSWORD)
    async with emu.client() as client:
        _, session = await connect(emu, client)
        response = await client.get(
            "https://api-eu.libreview.io/llu/connections",
            headers={
                "version": "4.16.0",
                "product": "llu.android",
                "authorization": f"Bearer {session.login.token}",
            },
        )
        assert (response.status_code, response.json()) == (400, {"message": "RequiredHeaderMissing"})
        from sources.linkup import classify

        with pytest.raises(RequestRejected, match="RequiredHeaderMissing"):
            classify(response, what="LibreLinkUp connections")
        response = await client.get(
            "https://api-eu.libreview.io/llu/connections",
            headers={"version": "4.16.0", "product": "llu.android"},
        )
        assert response.status_code == 401


# --- settings, plan and schedule -------------------------------------------------------------------------


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "LINK_UP_USERNAME": "legacy@example.com",
        "CONNECT_LINK_UP_PASSWORD": PASSWORD,
        "CONNECT_LINK_UP_REGION": "gb",
        "CONNECT_LINK_UP_AUTO_ACCEPT_TERMS": "true",
        "CONNECT_LINK_UP_PATIENT_ID": " ",
    }.items():
        monkeypatch.setenv(name, value)
    env: dict[str, str] = {"LINK_UP_USERNAME": "legacy@example.com"}
    assert apply_legacy_env(SOURCE.legacy_env, env) == ["LINK_UP_USERNAME"]
    monkeypatch.setenv("CONNECT_LINK_UP_USERNAME", env["CONNECT_LINK_UP_USERNAME"])
    s = LinkUpSettings()  # type: ignore[call-arg]
    assert s.link_up_username == "legacy@example.com" and s.link_up_region == "EU2"
    assert s.link_up_auto_accept_terms and not s.link_up_sensor_info
    assert s.link_up_patient_id is None and s.link_up_interval == 5
    assert s.link_up_version == "4.16.0" and s.link_up_product == "llu.android"
    assert PASSWORD not in repr(s)
    assert load_source("linkup") is SOURCE


@pytest.mark.parametrize(
    "kw",
    [
        {"link_up_region": "mars"},
        {"link_up_password": ""},
        {"link_up_server": "ftp://x"},
        {"link_up_server": "http://user:pw@host"},
        {"link_up_interval": 0},
        {"link_up_version": "4.1\x006.0"},
    ],
)
def test_bad_settings(kw: dict[str, Any]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        settings(**kw)
    # what the CLI prints (connect.settings.describe_validation) never echoes the value
    from connect.settings import describe_validation

    lines = describe_validation(caught.value)
    assert lines and all("--link-up-" in line and "CONNECT_LINK_UP_" in line for line in lines)
    assert "pw@" not in " ".join(lines)


def test_plan_declares_session_and_loop() -> None:
    async def never(*_: Any) -> Any:
        raise AssertionError

    for sensor_info, collections in (
        (False, ("entries",)),
        (True, ("entries", "treatments", "devicestatus")),
    ):
        builder = Builder("linkup")
        make(settings(link_up_sensor_info=sensor_info), httpx.AsyncClient()).generate_driver(builder)
        plan = builder.build()
        assert plan.session is not None and plan.session.refresh is None
        (loop,) = plan.loops
        assert loop.name == "LibreLinkUp" and loop.collections == collections
        assert loop.expected_interval == timedelta(minutes=5) and loop.align_schedule is not None


def test_align_schedule() -> None:
    driver = make(settings(), httpx.AsyncClient())
    spread = driver.spread_ms
    assert 0 <= spread < 10_000
    lag = driver.planner.lag_ms
    assert lag == 15_000
    last = T0
    # no reading yet: one interval (plus the planner's lag and this account's offset)
    assert driver.align_schedule(known(T0), T0) == T0 + 300_000 + lag + spread
    # just stored a reading: the next one's time plus the lag and the offset
    due = last + 300_000 + lag + spread
    assert driver.align_schedule(known(T0 + 30_000, entries=last), T0 + 30_000) == due
    # the same account always gets the same offset; another account (usually) another one
    assert make(settings(), httpx.AsyncClient()).spread_ms == spread
    others = {
        make(settings(link_up_username=f"f{n}@example.com"), httpx.AsyncClient()).spread_ms for n in range(8)
    }
    assert len(others) > 1
    # polled at due and the reading was not there yet: one recheck half a minute later
    driver.planner.observe(polled_at=due, before=last, times=[last - 300_000, last])
    assert driver.align_schedule(known(due, entries=last), due) == due + 30_000 + spread
    # the recheck found it: the lag grows to the middle of the two polls
    found = due + 30_000 + spread
    driver.planner.observe(polled_at=found, before=last, times=[last, last + 300_000])
    assert driver.planner.lag_ms == ((due - (last + 300_000)) + (found - (last + 300_000))) // 2
    new_last = last + 300_000
    assert driver.align_schedule(known(found, entries=new_last), found) == (
        new_last + 300_000 + driver.planner.lag_ms + spread
    )
    # a long gap: one request per slot, no extra retries
    late = new_last + 3_600_000 + 5_000
    due_late = driver.align_schedule(known(late, entries=new_last), late)
    assert due_late > late and (due_late - new_last) % 300_000 == driver.planner.lag_ms + spread
    for now in range(T0, T0 + 4_000_000, 7_777):
        assert driver.align_schedule(known(now, entries=new_last), now) > now


# --- login answers the service sends when it is unhappy -------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kw", "error", "retry_after"),
    [
        ("lock", {}, AccountLocked, 1234),  # the lockout body: its own seconds, not a default
        ("http429", {"retry_after": 77}, RateLimited, 77),  # Retry-After honoured
        ("http429", {"retry_after": None}, RateLimited, 60),
        ("nonjson", {}, RateLimited, 900),  # an HTML page with HTTP 200: blocked, back off
        ("ban", {"status": 430}, RateLimited, 900),
        ("version", {}, ConfigError, 3600),
    ],
)
async def test_login_refusals_carry_their_wait(
    emu: LinkUpEmulator,
    clock: Clock,
    fault: str,
    kw: dict[str, Any],
    error: type[ConnectError],
    retry_after: float,
) -> None:
    emu.lock_seconds = 1234
    account = emu.add_account("follower@example.com", PASSWORD)
    emu.inject(fault, on="login", **kw)
    async with emu.client() as client:
        driver = make(settings(), client)
        with pytest.raises(error) as caught:
            await driver.authenticate()
        assert type(caught.value) is error and caught.value.retry_after == retry_after
        assert_clean(str(caught.value), account, emu)
        if fault == "lock":
            assert "1234 s" in str(caught.value) and not caught.value.retryable
            clock.ms += 1_234_000
        await driver.authenticate()  # once the wait is over, the login goes through


@pytest.mark.parametrize("login", [True, False])
@pytest.mark.parametrize("http_status", [429, 200])
@pytest.mark.parametrize(
    ("inner", "header", "wait"),
    [
        ({"failures": 3, "interval": 60, "lockout": 300}, "45", 300.0),  # the body's own seconds win
        ({"failures": 3, "interval": 60}, "45", 45.0),  # no seconds in the body: the header
        ({}, "in 600 s", None),  # an HTTP date: the time until then
        ({}, None, "default"),
        ({"lockout": "300"}, "nan", "default"),  # neither says anything usable
    ],
)
def test_lock_body_wait_comes_from_body_then_header_then_default(
    login: bool, http_status: int, inner: dict[str, Any], header: str | None, wait: float | str | None
) -> None:
    from sources.linkup import classify

    body = {"status": 429, "data": {"code": 60, "data": inner, "message": "locked"}}
    if header == "in 600 s":
        header = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=600), usegmt=True)
    headers = {} if header is None else {"retry-after": header}
    response = httpx.Response(http_status, json=body, headers=headers)
    expected_type = AccountLocked if login else RateLimited
    with pytest.raises(expected_type) as caught:
        classify(response, what="LibreLinkUp call", login=login)
    got = caught.value.retry_after
    if wait == "default":
        assert got == (900.0 if login else 60.0)
    elif wait is None:
        assert got is not None and 500 < got <= 600
    else:
        assert got == wait


def test_trend_arrow_table() -> None:
    from sources.linkup import direction_for

    # protocols/02-librelinkup.md §9, written out independently of the driver's table
    table = {
        0: "NOT COMPUTABLE",
        1: "SingleDown",
        2: "FortyFiveDown",
        3: "Flat",
        4: "FortyFiveUp",
        5: "SingleUp",
        6: "NOT COMPUTABLE",
        -1: "NOT COMPUTABLE",
    }
    assert {arrow: direction_for(arrow) for arrow in table} == table
    for missing in (None, True, "3", 3.0):
        assert direction_for(missing) == "NOT COMPUTABLE"


def test_every_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "CONNECT_SOURCE": "linkup",
        "CONNECT_LINK_UP_USERNAME": "f@example.com",
        "CONNECT_LINK_UP_PASSWORD": PASSWORD,
        "CONNECT_LINK_UP_REGION": "us",
        "CONNECT_LINK_UP_SERVER": "http://127.0.0.1:8089/",
        "CONNECT_LINK_UP_PATIENT_ID": "abc-123",
        "CONNECT_LINK_UP_VERSION": "4.17.1",
        "CONNECT_LINK_UP_PRODUCT": "llu.ios",
        "CONNECT_LINK_UP_INTERVAL": "3",
        "CONNECT_LINK_UP_AUTO_ACCEPT_TERMS": "false",
        "CONNECT_LINK_UP_SENSOR_INFO": "true",
    }.items():
        monkeypatch.setenv(name, value)
    s = LinkUpSettings()  # type: ignore[call-arg]
    assert s.link_up_region == "US" and s.link_up_patient_id == "abc-123"
    assert not s.link_up_auto_accept_terms and s.link_up_sensor_info
    driver = make(s, httpx.AsyncClient())
    assert driver.client.endpoint.base_url == "http://127.0.0.1:8089" and driver.client.endpoint.custom
    headers = driver.client._headers("tok", "acc")
    assert headers["version"] == "4.17.1" and headers["product"] == "llu.ios"
    assert headers["authorization"] == "Bearer tok" and headers["account-id"] == "acc"
    assert driver.interval_ms == 180_000 and driver.planner.interval_ms == 180_000
    builder = Builder("linkup")
    driver.generate_driver(builder)
    (loop,) = builder.build().loops
    assert loop.expected_interval == timedelta(minutes=3)
    assert loop.collections == ("entries", "treatments", "devicestatus")
    # without a server the region picks the host; the default version is today's app
    monkeypatch.delenv("CONNECT_LINK_UP_SERVER")
    monkeypatch.delenv("CONNECT_LINK_UP_VERSION")
    s = LinkUpSettings()  # type: ignore[call-arg]
    assert make(s, httpx.AsyncClient()).client.endpoint.base_url == "https://api-us.libreview.io"
    assert s.link_up_version == "4.16.0"


async def test_patient_by_id_reads_that_patients_graph(emu: LinkUpEmulator) -> None:
    account = emu.add_account("follower@example.com", PASSWORD, patients=3)
    wanted = account.patients[2]
    async with emu.client() as client:
        driver, session = await connect(emu, client, link_up_patient_id=wanted.patient_id.upper())
        raw = await driver.fetch(session, known())
    assert session.patient_id == wanted.patient_id and session.patients == 3
    assert emu.requests[-1].path == f"/llu/connections/{wanted.patient_id}/graph"
    batch = driver.transform(raw, known())
    assert batch.entries and all(e.sgv == wanted.value(e.date) for e in batch.entries)
    assert emu.served_times(wanted) and not emu.served_times(account.patients[0])
