"""The CareLink driver against the emulator: first login, token file, refresh, data, errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import trio

from connect.cli import UsageError, load_settings
from connect.contract import Grant, LastKnown
from connect.errors import (
    AuthRejected,
    ConfigError,
    ProtocolError,
    RateLimited,
    RequestRejected,
    SessionExpired,
    StepRequired,
    TransientError,
)
from connect.redact import describe_error
from connect.settings import apply_legacy_env
from sources.carelink import SOURCE, CareLink, make
from sources.carelink.client import discovery_url
from sources.carelink.login import code_from_redirect, finish_login, import_token_file, run_login, start_login
from sources.carelink.settings import CareLinkSettings, rebase, region_of, server_base
from sources.carelink.tokens import read_token_file, write_token_file
from tests.emulators.carelink import AUTH0_CLIENT_ID, REDIRECT_URI, CareLinkEmulator

T0 = 1_750_000_000_000
SERVER = "http://carelink.test"


class Clock:
    def __init__(self, t: int = T0) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def settings_for(tmp_path: Path, **kw: Any) -> CareLinkSettings:
    values: dict[str, Any] = {
        "carelink_token_file": tmp_path / "carelink" / "token.json",
        "carelink_server": SERVER,
        "country_code": "GB",
    }
    values.update(kw)
    return CareLinkSettings(**values)


def client_for(emu: CareLinkEmulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=emu), follow_redirects=False)


def lk(now: int) -> LastKnown:
    return LastKnown(values={}, backfill_from=now - 86_400_000, now=now)


async def logged_in(emu: CareLinkEmulator, settings: CareLinkSettings, clock: Clock) -> tuple[CareLink, Any]:
    write_token_file(settings.carelink_token_file, read_doc(emu.issue_tokens()))
    driver = make(settings, client_for(emu), clock=clock)
    grant = await driver.authorize(await driver.authenticate())
    assert isinstance(grant, Grant)
    return driver, grant


def read_doc(doc: dict[str, Any]) -> Any:
    from sources.carelink.tokens import TokenData

    return TokenData.from_json(doc, what="test tokens")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the first login --------------------------------------------------------------------------


async def test_interactive_login_writes_a_private_token_file(tmp_path: Path) -> None:
    clock = Clock()
    emu = CareLinkEmulator(now=clock, first_reading_ms=T0 - 86_400_000)
    settings = settings_for(tmp_path)
    async with client_for(emu) as client:
        start = await start_login(settings, client)
        url = httpx.URL(start.authorize_url)
        assert url.host == "carelink.test" and url.path == "/authorize"  # the override applies
        assert url.params["client_id"] == AUTH0_CLIENT_ID
        assert url.params["code_challenge_method"] == "S256"
        assert start.code_verifier not in start.authorize_url
        pasted = emu.approve(start.authorize_url)
        assert pasted.startswith(REDIRECT_URI)
        code = code_from_redirect(f"  {pasted}\n", state=start.state)
        tokens = await finish_login(start, code, settings, client)
        # a code works once
        with pytest.raises(AuthRejected, match="invalid_grant"):
            await finish_login(start, code, settings, client)
    path = settings.carelink_token_file
    assert mode(path) == 0o600
    saved = json.loads(path.read_text())
    assert saved["refresh_token"] == tokens.refresh_token
    assert saved["client_id"] == AUTH0_CLIENT_ID
    # the file names CareLink's own token URL, as other tools' files do
    assert saved["token_url"] == "https://carelink-login.minimed.eu/oauth/token"
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temporary file left
    # the daemon runs on what the login saved
    driver = make(settings, client_for(emu), clock=clock)
    grant = await driver.authorize(await driver.authenticate())
    raw = await driver.fetch(grant.value, lk(clock()))
    assert len(driver.transform(raw, lk(clock())).entries) == 288


async def test_pkce_verifier_is_checked(tmp_path: Path) -> None:
    emu = CareLinkEmulator(now=Clock())
    settings = settings_for(tmp_path)
    async with client_for(emu) as client:
        start = await start_login(settings, client)
        other = await start_login(settings, client)
        code = code_from_redirect(emu.approve(start.authorize_url), state=start.state)
        with pytest.raises(AuthRejected):
            await finish_login(other, code, settings, client)  # another attempt's verifier
    assert not settings.carelink_token_file.exists()


def test_pasted_text_forms() -> None:
    assert (
        code_from_redirect("com.medtronic.carepartner:/sso?code=abc123XYZ&state=s1", state="s1")
        == "abc123XYZ"
    )
    assert (
        code_from_redirect("'com.medtronic.carepartner:/sso?state=s1&code=abc%2Bdef'", state="s1")
        == "abc+def"
    )
    assert code_from_redirect("abcdefgh12345678", state="s1") == "abcdefgh12345678"
    with pytest.raises(ConfigError, match="another login attempt"):
        code_from_redirect("com.medtronic.carepartner:/sso?code=abc&state=other", state="s1")
    with pytest.raises(AuthRejected):
        code_from_redirect("com.medtronic.carepartner:/sso?error=access_denied&state=s1", state="s1")
    for bad in ("", "   ", "https://carelink.minimed.eu/", "two words"):
        with pytest.raises(ConfigError):
            code_from_redirect(bad, state="s1")


async def test_login_refuses_the_older_device_registration_login(tmp_path: Path) -> None:
    emu = CareLinkEmulator(now=Clock(), sso="mag")
    async with client_for(emu) as client:
        with pytest.raises(ConfigError, match="--import"):
            await start_login(settings_for(tmp_path), client)


def test_run_login_command_prints_no_secret(tmp_path: Path) -> None:
    emu = CareLinkEmulator()
    settings = settings_for(tmp_path)
    said: list[str] = []

    def ask(prompt: str) -> str:
        said.append(prompt)
        url = next(line.strip() for text in said for line in text.splitlines() if "/authorize?" in line)
        return emu.approve(url)

    assert run_login(settings, ask=ask, say=said.append, client_factory=lambda: client_for(emu)) == 0
    saved = json.loads(settings.carelink_token_file.read_text())
    output = "\n".join(said)
    for secret in (saved["access_token"], saved["refresh_token"]):
        assert secret not in output
    assert str(settings.carelink_token_file) in output
    assert mode(settings.carelink_token_file) == 0o600

    # a wrong paste fails with one line and leaves the file alone
    before = settings.carelink_token_file.read_text()
    said.clear()
    code = run_login(
        settings, ask=lambda _p: "nonsense text", say=said.append, client_factory=lambda: client_for(emu)
    )
    assert code == 1 and said[-1].startswith("CareLink login failed")
    assert settings.carelink_token_file.read_text() == before


def test_import_a_logindata_file_from_another_tool(tmp_path: Path) -> None:
    emu = CareLinkEmulator(mag=True)
    source = tmp_path / "logindata.json"
    source.write_text(json.dumps(emu.issue_tokens(), indent=4))  # carelink-python-client's format
    source.chmod(0o644)
    settings = settings_for(tmp_path)
    said: list[str] = []
    assert run_login(settings, import_from=source, say=said.append) == 0
    assert mode(settings.carelink_token_file) == 0o600
    assert json.loads(settings.carelink_token_file.read_text())["mag-identifier"] == emu.mag_identifier
    bad = tmp_path / "bad.json"
    bad.write_text('{"access_token": "x"}')
    with pytest.raises(StepRequired, match="refresh_token"):
        import_token_file(bad, settings)


# --- the token file ----------------------------------------------------------------------------


def test_token_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    emu = CareLinkEmulator()
    path = tmp_path / "t.json"
    old = os.umask(0)
    try:
        write_token_file(path, read_doc(emu.issue_tokens()))
        write_token_file(path, read_doc(emu.issue_tokens()))  # replacing keeps it private
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    path.chmod(0o644)  # copied in by hand
    read_token_file(path)
    assert mode(path) == 0o600


def test_token_file_problems_ask_for_a_login(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    with pytest.raises(StepRequired, match="does not exist"):
        read_token_file(path)
    path.write_text("{not json")
    with pytest.raises(StepRequired, match="not JSON"):
        read_token_file(path)
    path.write_text(json.dumps({"access_token": "a", "refresh_token": "", "client_id": "c"}))
    with pytest.raises(StepRequired, match="refresh_token"):
        read_token_file(path)


def test_token_data_repr_hides_secrets() -> None:
    emu = CareLinkEmulator(mag=True)
    doc = emu.issue_tokens()
    shown = repr(read_doc(doc))
    for key in ("access_token", "refresh_token", "client_secret", "mag-identifier"):
        assert doc[key] not in shown


# --- refresh ----------------------------------------------------------------------------------


async def test_refresh_rotates_and_saves_the_refresh_token(tmp_path: Path) -> None:
    clock = Clock()
    emu = CareLinkEmulator(now=clock, first_reading_ms=T0 - 3_600_000, access_ttl_s=3600)
    settings = settings_for(tmp_path)
    # a file whose access token is nearly spent: the login refreshes
    write_token_file(settings.carelink_token_file, read_doc(emu.issue_tokens(ttl_s=300)))
    first_refresh = json.loads(settings.carelink_token_file.read_text())["refresh_token"]
    driver = make(settings, client_for(emu), clock=clock)
    grant = await driver.authorize(await driver.authenticate())
    assert emu.count("token") == 1
    saved = json.loads(settings.carelink_token_file.read_text())
    assert saved["refresh_token"] != first_refresh
    assert mode(settings.carelink_token_file) == 0o600
    # 3600 s token, used until 600 s remain
    assert grant.expires_in == 3000
    # a login while the saved access token is still good needs no refresh
    clock.t += 60_000
    again = await driver.authorize(await driver.authenticate())
    assert emu.count("token") == 1
    assert again.value.access_token == grant.value.access_token
    # later it is refreshed again; the rotated token is the one presented (no reuse)
    clock.t += 3_000_000
    await driver.authorize(await driver.authenticate())
    assert emu.count("token") == 2 and not emu.revoked
    assert json.loads(settings.carelink_token_file.read_text())["refresh_token"] == emu.current[1]


async def test_a_refused_token_is_refreshed_even_if_not_expired(tmp_path: Path) -> None:
    clock = Clock()
    emu = CareLinkEmulator(now=clock, first_reading_ms=T0 - 3_600_000)
    driver, grant = await logged_in(emu, settings_for(tmp_path), clock)
    assert emu.count("token") == 0  # the file's access token was fresh
    emu.inject("401", endpoint="data")
    with pytest.raises(SessionExpired):
        await driver.fetch(grant.value, lk(clock()))
    renewed = await driver.authorize(await driver.authenticate())
    assert emu.count("token") == 1
    assert renewed.value.access_token != grant.value.access_token
    await driver.fetch(renewed.value, lk(clock()))


async def test_refused_refresh_token_asks_for_a_login_without_leaking_it(tmp_path: Path) -> None:
    clock = Clock()
    emu = CareLinkEmulator(now=clock)
    settings = settings_for(tmp_path)
    tokens = emu.issue_tokens(ttl_s=60)
    emu.revoked.add(emu.families[tokens["refresh_token"]])
    write_token_file(settings.carelink_token_file, read_doc(tokens))
    driver = make(settings, client_for(emu), clock=clock)
    with pytest.raises(StepRequired) as caught:
        await driver.authorize(await driver.authenticate())
    text = describe_error(caught.value) or ""
    assert "invalid_grant" in text and "login carelink" in text
    for value in tokens.values():
        assert value not in text


async def test_a_new_login_while_running_wins_over_memory(tmp_path: Path) -> None:
    clock = Clock()
    emu = CareLinkEmulator(now=clock)
    settings = settings_for(tmp_path)
    driver, _grant = await logged_in(emu, settings, clock)
    fresh = emu.issue_tokens()
    write_token_file(settings.carelink_token_file, read_doc(fresh))
    tokens = await driver.authenticate()
    assert tokens.refresh_token == fresh["refresh_token"]


async def test_failed_save_keeps_the_new_tokens_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    emu = CareLinkEmulator(now=clock)
    settings = settings_for(tmp_path)
    write_token_file(settings.carelink_token_file, read_doc(emu.issue_tokens(ttl_s=60)))
    before = settings.carelink_token_file.read_text()
    driver = make(settings, client_for(emu), clock=clock)

    def full_disk(path: Path, data: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("sources.carelink.client.write_token_file", full_disk)
    await driver.authorize(await driver.authenticate())
    clock.t += 3_600_000
    # the file still holds the rotated-away token; memory has the live one, and uses it
    again = await driver.authorize(await driver.authenticate())
    assert settings.carelink_token_file.read_text() == before
    assert emu.count("token") == 2 and not emu.revoked
    assert again.value.access_token in emu.access


async def test_mag_token_file_refreshes_with_client_secret_and_mag_identifier(tmp_path: Path) -> None:
    clock = Clock()
    emu = CareLinkEmulator(now=clock, mag=True, first_reading_ms=T0 - 600_000)
    settings = settings_for(tmp_path)
    write_token_file(settings.carelink_token_file, read_doc(emu.issue_tokens(ttl_s=30)))
    driver = make(settings, client_for(emu), clock=clock)
    grant = await driver.authorize(await driver.authenticate())
    assert emu.count("sso") == 1  # no token_url in such files: the SSO configuration tells it
    assert emu.count("token", status=200) == 1
    raw = await driver.fetch(grant.value, lk(clock()))
    assert driver.transform(raw, lk(clock())).entries


# --- identity and data ------------------------------------------------------------------------


async def test_patient_login_reads_its_own_data(tmp_path: Path) -> None:
    clock = Clock()
    emu = CareLinkEmulator(now=clock, role="PATIENT_OUS", patients=(), first_reading_ms=T0 - 600_000,
                           generation="legacy")  # fmt: skip
    driver, grant = await logged_in(emu, settings_for(tmp_path), clock)
    assert grant.value.role == "PATIENT_OUS" and grant.value.patient_id is None
    assert emu.count("patients") == 0
    raw = await driver.fetch(grant.value, lk(clock()))
    assert "patientData" not in raw
    entries = driver.transform(raw, lk(clock())).entries
    assert {e.date: e.sgv for e in entries} == emu.published() and len(entries) == 3


async def test_care_partner_patient_choice(tmp_path: Path) -> None:
    clock = Clock()
    emu = CareLinkEmulator(now=clock, patients=("first.kid", "second.kid"))
    _driver, grant = await logged_in(emu, settings_for(tmp_path), clock)
    assert grant.value.patient_id == "first.kid"
    _driver, grant = await logged_in(
        emu, settings_for(tmp_path, carelink_patient_username="second.kid"), clock
    )
    assert grant.value.patient_id == "second.kid"
    with pytest.raises(StepRequired, match="not linked"):
        await logged_in(emu, settings_for(tmp_path, carelink_patient_username="someone.else"), clock)
    lonely = CareLinkEmulator(now=clock, patients=())
    with pytest.raises(StepRequired, match="no patient"):
        await logged_in(lonely, settings_for(tmp_path), clock)


async def test_fresh_token_refused_at_login_is_an_account_problem(tmp_path: Path) -> None:
    clock = Clock()
    emu = CareLinkEmulator(now=clock)
    settings = settings_for(tmp_path)
    write_token_file(settings.carelink_token_file, read_doc(emu.issue_tokens(ttl_s=60)))
    emu.inject("401", endpoint="users")
    driver = make(settings, client_for(emu), clock=clock)
    with pytest.raises(AuthRejected):  # refreshed a moment ago, still refused: not a token problem
        await driver.authorize(await driver.authenticate())
    assert emu.count("token") == 1
    # a valid-looking file token refused twice: one refresh, then the refusal stands
    fresh = CareLinkEmulator(now=clock)
    fresh.inject("401", endpoint="users", times=2)
    with pytest.raises(AuthRejected):
        await logged_in(fresh, settings_for(tmp_path / "other"), clock)
    assert fresh.count("token") == 1


async def test_revoked_but_unexpired_file_token_is_refreshed_at_login(tmp_path: Path) -> None:
    clock = Clock()
    emu = CareLinkEmulator(now=clock)
    settings = settings_for(tmp_path)
    doc = emu.issue_tokens()
    del emu.access[doc["access_token"]]  # revoked on CareLink's side; its exp still says valid
    write_token_file(settings.carelink_token_file, read_doc(doc))
    driver = make(settings, client_for(emu), clock=clock)
    grant = await driver.authorize(await driver.authenticate())
    assert emu.count("token") == 1 and emu.count("users") == 2
    assert grant.value.access_token in emu.access


async def test_old_app_version_gets_upgrade_application(tmp_path: Path) -> None:
    clock = Clock()
    emu = CareLinkEmulator(now=clock, min_app_version=(3, 9))
    driver, grant = await logged_in(emu, settings_for(tmp_path), clock)
    with pytest.raises(RequestRejected, match="206"):
        await driver.fetch(grant.value, lk(clock()))


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("500", TransientError),
        ("503html", TransientError),
        ("429", RateLimited),
        ("html", ProtocolError),
        ("nonjson", ProtocolError),
        ("truncated", ProtocolError),
        ("timeout", TransientError),
        ("401", SessionExpired),
    ],
)
async def test_data_faults_map_to_the_error_tree(
    tmp_path: Path, fault: str, error: type[Exception], autojump_clock: trio.testing.MockClock
) -> None:
    clock = Clock()
    emu = CareLinkEmulator(now=clock, first_reading_ms=T0 - 600_000)
    driver, grant = await logged_in(emu, settings_for(tmp_path), clock)
    emu.inject(fault, endpoint="data")
    with pytest.raises(error) as caught:
        await driver.fetch(grant.value, lk(clock()))
    if fault == "429":
        assert caught.value.retry_after == 30
    text = describe_error(caught.value) or ""
    assert grant.value.access_token not in text and SERVER not in text
    await driver.fetch(grant.value, lk(clock()))  # the next request is fine


@pytest.mark.parametrize("endpoint", ["discovery", "sso", "token"])
async def test_login_step_faults_are_transient(tmp_path: Path, endpoint: str) -> None:
    clock = Clock()
    emu = CareLinkEmulator(now=clock, mag=endpoint == "sso")
    settings = settings_for(tmp_path)
    write_token_file(settings.carelink_token_file, read_doc(emu.issue_tokens(ttl_s=60)))
    driver = make(settings, client_for(emu), clock=clock)
    emu.inject("500", endpoint=endpoint)
    with pytest.raises(TransientError):
        await driver.authorize(await driver.authenticate())
    await driver.authorize(await driver.authenticate())


# --- settings ---------------------------------------------------------------------------------


def test_settings_and_server_override(tmp_path: Path) -> None:
    s = settings_for(tmp_path, carelink_region="EU", country_code=" gb ", carelink_server="127.0.0.1:8080/")
    assert s.carelink_region == "eu" and s.country_code == "GB"
    assert s.carelink_server == "https://127.0.0.1:8080"
    assert server_base("http://127.0.0.1:9000") == "http://127.0.0.1:9000"
    assert rebase("https://clcloud.minimed.eu/connect/x?a=1", "http://h:1") == "http://h:1/connect/x?a=1"
    assert rebase("https://clcloud.minimed.eu/connect/x", None) == "https://clcloud.minimed.eu/connect/x"
    for bad in ({"carelink_region": "asia"}, {"country_code": "GBR"}, {"carelink_server": "ftp://x"},
                {"carelink_server": "http://user:secret@host"}):  # fmt: skip
        with pytest.raises(pydantic.ValidationError) as caught:
            settings_for(tmp_path, **bad)
        # the CLI shows the messages without the input: they must not echo a credential
        assert all("secret" not in e["msg"] for e in caught.value.errors(include_input=False))


def test_source_info_and_legacy_names(tmp_path: Path) -> None:
    assert SOURCE.name == "minimedcarelink"
    env = {"CARELINK_USERNAME": "anna", "MMCONNECT_SERVER": "EU", "MMCONNECT_COUNTRYCODE": "gb"}
    apply_legacy_env(SOURCE.legacy_env, env)
    assert env["CONNECT_CARELINK_USERNAME"] == "anna"
    settings = CareLinkSettings(
        carelink_token_file=tmp_path / "t.json",
        carelink_region=env["CONNECT_CARELINK_REGION"],
        country_code=env["CONNECT_COUNTRY_CODE"],
    )
    assert settings.carelink_region == "eu" and settings.country_code == "GB"
    assert "carelink_token_file" in SOURCE.settings.model_fields


#: variables of the person running the tests that would change what the settings read
FOREIGN = ("CONNECT_", "BRIDGE_", "LINK_UP_", "CARELINK_", "MMCONNECT_", "GLOOKO_", "API_SECRET", "BASE_URL")


def legacy_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: str) -> None:
    """An older bridge's environment: MMCONNECT_* only, and the token file of this one."""
    for name in list(os.environ):
        if name.startswith(FOREIGN):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MMCONNECT_USER_NAME", "anna")
    monkeypatch.setenv("MMCONNECT_SERVER", server)
    monkeypatch.setenv("CONNECT_CARELINK_TOKEN_FILE", str(tmp_path / "token.json"))


@pytest.mark.parametrize(
    ("server", "region"),
    [
        ("EU", "eu"),
        ("us", "us"),
        ("carelink.minimed.eu", "eu"),
        ("carelink.minimed.com", "us"),
        ("https://carelink.minimed.com/", "us"),
        ("CLCLOUD.MINIMED.EU:443", "eu"),
    ],
)
def test_mmconnect_server_names_a_region_or_a_carelink_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: str, region: str
) -> None:
    """The older bridges' MMCONNECT_SERVER held EU, US or the portal's host: each is a region."""
    legacy_environment(monkeypatch, tmp_path, server)
    settings, source = load_settings([], source_name="minimedcarelink")
    assert source.name == "minimedcarelink"
    assert isinstance(settings, CareLinkSettings)
    assert settings.carelink_region == region
    assert settings.carelink_server is None  # a portal host is a region, not a server override
    assert discovery_url(settings).startswith(f"https://clcloud.minimed.{'eu' if region == 'eu' else 'com'}/")
    assert "CONNECT_CARELINK_REGION" not in os.environ  # the translation was for this read only


def test_mmconnect_server_naming_another_host_is_blamed_by_its_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An unknown host cannot be placed: the one line names MMCONNECT_SERVER, the variable the
    person set, and where a proxy goes instead, without echoing the value."""
    legacy_environment(monkeypatch, tmp_path, "proxy.example.org:8080")
    with pytest.raises(UsageError) as caught:
        load_settings([], source_name="minimedcarelink")
    (line,) = caught.value.lines
    assert "MMCONNECT_SERVER" in line and "CONNECT_CARELINK_SERVER" in line
    assert "proxy.example.org" not in line
    # set the new way, a wrong region is still told the new way
    monkeypatch.delenv("MMCONNECT_SERVER")
    monkeypatch.setenv("CONNECT_CARELINK_REGION", "asia")
    with pytest.raises(UsageError) as caught:
        load_settings([], source_name="minimedcarelink")
    (line,) = caught.value.lines
    assert "CONNECT_CARELINK_REGION" in line and "MMCONNECT_SERVER" not in line


def test_region_of_hosts_and_names() -> None:
    assert region_of(" Eu ") == "eu" and region_of("US") == "us"
    assert region_of("carelink-login.minimed.eu") == "eu"
    assert region_of("https://user@clcloud.minimed.com:8443/x") == "us"
    assert region_of("minimed.eu.example.org") is None
    assert region_of("evilminimed.com") is None
    assert region_of("asia") is None
