"""The Glooko driver against the emulator: sign-in, cookie, patient code, feeds, errors, settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest
import trio

from connect.contract import LastKnown
from connect.errors import (
    AuthRejected,
    ProtocolError,
    RateLimited,
    SessionExpired,
    StepRequired,
    TransientError,
)
from connect.redact import describe_error
from connect.settings import apply_legacy_env
from sources.glooko import FEEDS, SOURCE, Glooko, GlookoSettings, make
from sources.glooko.client import GlookoSession
from sources.glooko.const import DAY_MS, LAST_GUID
from sources.glooko.settings import base_url, web_origin
from tests.emulators.glooko import COOKIE_NAME, GlookoEmulator

NOW = 1_750_000_000_000  # June 2025: summer time in Berlin
PASSWORD = "correct horse battery"
FEED = {feed.key: feed for feed in FEEDS}


class Clock:
    def __init__(self, t: int = NOW) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def settings_for(**kw: Any) -> GlookoSettings:
    values: dict[str, Any] = {
        "glooko_email": "pat@example.com",
        "glooko_password": PASSWORD,
        "glooko_server": "http://glooko.test",
        "glooko_timezone": "Europe/Berlin",
    }
    values.update(kw)
    return GlookoSettings(**values)


def driver_for(emu: GlookoEmulator, **kw: Any) -> Any:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=emu), follow_redirects=False)
    return make(settings_for(**kw), client)


def lk(now: int, values: dict[str, int] | None = None) -> LastKnown:
    return LastKnown(values=values or {}, backfill_from=now - 30 * DAY_MS, now=now)


def live(now: int, collection: str) -> LastKnown:
    """A loop that read a minute ago and re-read its late-sync horizon ten minutes ago."""
    return lk(now, {collection: now - 60_000, collection + ":resync": now - 600_000})


async def test_sign_in_keeps_the_cookie_and_the_patient_code() -> None:
    emu = GlookoEmulator(now=Clock(), first_ms=NOW - DAY_MS)
    driver = driver_for(emu)
    session = await driver.authenticate()
    assert session.cookie.startswith(f"{COOKIE_NAME}=")  # the first Set-Cookie, not __cf_bm
    assert session.code == emu.code
    grant = await driver.authorize(session)
    assert grant.expires_in == 86_400 - 600
    assert emu.count("users") == 0
    for text in (repr(session), repr(grant)):
        assert session.cookie not in text and emu.code not in text


async def test_patient_code_from_the_session_users_call() -> None:
    emu = GlookoEmulator(now=Clock(), code_in_sign_in=False, cookie_ttl_s=7200)
    driver = driver_for(emu)
    session = await driver.authenticate()
    assert session.code is None
    grant = await driver.authorize(session)
    assert grant.value.code == emu.code and emu.count("users") == 1
    assert grant.expires_in == 7200  # the cookie's Max-Age is shorter than a day


async def test_wrong_password_is_rejected_without_echoing_it() -> None:
    emu = GlookoEmulator(now=Clock(), password="something else")
    with pytest.raises(AuthRejected) as caught:
        await driver_for(emu).authenticate()
    assert PASSWORD not in (describe_error(caught.value) or "")


@pytest.mark.parametrize(("fault", "error"), [("500", TransientError), ("429", RateLimited),
                                               ("html", ProtocolError), ("timeout", TransientError)])  # fmt: skip
async def test_sign_in_faults(
    fault: str, error: type[Exception], autojump_clock: trio.testing.MockClock
) -> None:
    emu = GlookoEmulator(now=Clock())
    emu.inject(fault, endpoint="signin")
    with pytest.raises(error):
        await driver_for(emu).authenticate()
    await driver_for(emu).authenticate()


async def test_two_factor_and_missing_cookie(monkeypatch: pytest.MonkeyPatch) -> None:
    def two_fa(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"twoFaRequired": True}, headers={"set-cookie": "a=b"})

    def no_cookie(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"userLogin": {"glookoCode": "c"}})

    for handler, error in ((two_fa, StepRequired), (no_cookie, ProtocolError)):
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        with pytest.raises(error):
            await make(settings_for(), client).authenticate()


async def test_fetch_asks_in_local_wall_clock_with_every_parameter() -> None:
    clock = Clock()
    emu = GlookoEmulator(now=clock, first_ms=NOW - 2 * DAY_MS)
    seen: list[httpx.Request] = []
    inner = httpx.ASGITransport(app=emu)

    class Spy(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return await inner.handle_async_request(request)

    driver = make(settings_for(), httpx.AsyncClient(transport=Spy()))
    grant = await driver.authorize(await driver.authenticate())
    page = await driver.fetch(FEED["readings"], grant.value, live(clock(), "entries"))
    assert len(seen) == 2  # sign-in, then one page
    params = dict(seen[-1].url.params)
    assert params["patient"] == emu.code and params["lastGuid"] == LAST_GUID
    # 6 hours of overlap before now (15:06:40Z = 17:06:40 in Berlin)
    assert (
        params["startDate"] == "2025-06-15T11:06:40.000Z" and params["endDate"] == "2025-06-15T17:06:40.000Z"
    )
    assert params["lastUpdatedAt"] == params["startDate"] and params["limit"] == "1000"
    assert seen[-1].headers["cookie"] == grant.value.cookie
    batch = driver.transform(page, lk(clock()))
    expected = {t: v for t, v in emu.expected_entries(clock()).items() if t >= NOW - 6 * 3_600_000}
    assert {e.date: e.sgv for e in batch.entries} == expected
    assert batch.covered == {"entries": NOW} and not batch.more
    # an hour after the last re-read, the request reaches back the late-sync horizon (36 h)
    await driver.fetch(FEED["readings"], grant.value, lk(clock(), {"entries": NOW - 60_000}))
    assert dict(seen[-1].url.params)["startDate"] == "2025-06-14T05:05:40.000Z"


async def test_a_first_start_reads_today_first_and_history_after() -> None:
    clock = Clock()
    emu = GlookoEmulator(now=clock, first_ms=NOW - 4 * DAY_MS)
    driver = driver_for(emu, glooko_lookback_days=3)
    grant = await driver.authorize(await driver.authenticate())
    marks: dict[str, int] = {}
    seen: dict[tuple[int, str], Any] = {}
    frames = 0
    for frames in range(1, 10):
        frame = await driver.fetch(FEED["normalBoluses"], grant.value, lk(clock(), marks))
        batch = driver.transform(frame, lk(clock()))
        if frames == 1:
            # the first frame already holds the last day and a half
            assert min(t.date for t in batch.treatments) < NOW - 35 * 3_600_000
            assert max(t.date for t in batch.treatments) > NOW - 2 * 3_600_000
        seen.update({(t.date, t.event_type): t.insulin for t in batch.treatments})
        for key, value in batch.newest().items():
            marks[key] = max(marks.get(key, value), value)
        if not batch.more:
            break
        clock.t += 2_000
    # a day and a half of history before the horizon: two frames, the first beside the live read
    assert frames == 2 and emu.count("normalBoluses") == 3
    expected = {k: v["insulin"] for k, v in emu.expected_treatments(clock()).items()
                if k[1] in ("Meal Bolus", "Correction Bolus") and k[0] >= NOW - 3 * DAY_MS}  # fmt: skip
    assert seen == expected


async def test_a_window_is_read_to_its_end_page_by_page() -> None:
    clock = Clock()
    emu = GlookoEmulator(now=clock, first_ms=NOW - DAY_MS)
    settings = settings_for(glooko_lookback_days=1)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=emu), follow_redirects=False)
    driver = Glooko(settings, client, page_limit=50)
    grant = await driver.authorize(await driver.authenticate())
    frame = await driver.fetch(FEED["readings"], grant.value, lk(clock()))
    batch = driver.transform(frame, lk(clock()))
    # a day of five-minute readings and their soft-deleted twins: seven pages of 50, in one frame
    assert emu.count("readings") == len(frame.pages) == 7
    expected = {t: v for t, v in emu.expected_entries(clock()).items() if t >= NOW - DAY_MS}
    assert {e.date: e.sgv for e in batch.entries} == expected and len(expected) > 280
    assert batch.covered == {"entries": NOW, "entries:resync": NOW} and not batch.more


async def test_full_pages_that_do_not_move_forward_are_a_protocol_error() -> None:
    item = {"timestamp": "2025-06-15T10:00:00.000Z", "value": 100}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("sign_in"):
            return httpx.Response(200, json={"userLogin": {"glookoCode": "c"}}, headers={"set-cookie": "s=1"})
        return httpx.Response(200, json={"readings": [item] * 3})  # the same page whatever is asked

    driver = Glooko(settings_for(), httpx.AsyncClient(transport=httpx.MockTransport(handler)), page_limit=3)
    session = (await driver.authorize(await driver.authenticate())).value
    with pytest.raises(ProtocolError, match="does not move"):
        await driver.fetch(FEED["readings"], session, live(NOW, "entries"))


async def test_expired_cookie_is_session_expired() -> None:
    clock = Clock()
    emu = GlookoEmulator(now=clock, cookie_ttl_s=3600, first_ms=NOW - DAY_MS)
    driver = driver_for(emu)
    grant = await driver.authorize(await driver.authenticate())
    clock.t += 3_600_001
    with pytest.raises(SessionExpired):
        await driver.fetch(FEED["foods"], grant.value, lk(clock()))
    grant = await driver.authorize(await driver.authenticate())
    await driver.fetch(FEED["foods"], grant.value, lk(clock()))


@pytest.mark.parametrize(
    ("fault", "error"),
    [("500", TransientError), ("503html", TransientError), ("401", SessionExpired), ("429", RateLimited),
     ("html", ProtocolError), ("nonjson", ProtocolError), ("truncated", ProtocolError),
     ("timeout", TransientError)],
)  # fmt: skip
async def test_data_faults_map_to_the_error_tree(
    fault: str, error: type[Exception], autojump_clock: trio.testing.MockClock
) -> None:
    clock = Clock()
    emu = GlookoEmulator(now=clock, first_ms=NOW - DAY_MS)
    driver = driver_for(emu)
    grant = await driver.authorize(await driver.authenticate())
    emu.inject(fault, endpoint="scheduledBasals")
    marks = live(clock(), "treatments")
    with pytest.raises(error) as caught:
        page = await driver.fetch(FEED["scheduledBasals"], grant.value, marks)
        driver.transform(page, marks)
    if fault == "429":
        assert caught.value.retry_after == 30
    text = describe_error(caught.value) or ""
    assert grant.value.cookie not in text and emu.code not in text and PASSWORD not in text
    page = await driver.fetch(FEED["scheduledBasals"], grant.value, marks)
    assert driver.transform(page, marks).treatments


async def test_rolling_session_cookie_is_followed() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("cookie", ""))
        if request.url.path.endswith("sign_in"):
            return httpx.Response(
                200, json={"userLogin": {"glookoCode": "c"}}, headers={"set-cookie": "s=one; path=/"}
            )
        return httpx.Response(200, json={"foods": []}, headers={"set-cookie": f"s=n{len(calls)}; path=/"})

    driver = make(settings_for(), httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    session: GlookoSession = (await driver.authorize(await driver.authenticate())).value
    await driver.fetch(FEED["foods"], session, live(NOW, "treatments"))
    await driver.fetch(FEED["foods"], session, live(NOW, "treatments"))
    assert calls[1:] == ["s=one", "s=n2"] and session.cookie == "s=n3"


# --- settings -----------------------------------------------------------------------------------


def test_settings() -> None:
    s = settings_for(glooko_server="eu", glooko_timezone=" America/New_York ")
    assert s.base() == "https://eu.api.glooko.com" and str(s.zone()) == "America/New_York"
    assert settings_for(glooko_server=None, glooko_env="development").base() == "https://api.glooko.work"
    assert settings_for(glooko_server=None).base() == "https://api.glooko.com"
    assert base_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert web_origin("https://eu.api.glooko.com") == "https://eu.my.glooko.com"
    assert web_origin("https://api.glooko.com") == "https://my.glooko.com"
    legacy = settings_for(glooko_timezone=None, glooko_timezone_offset=-5)
    assert legacy.zone().utcoffset(None).total_seconds() == -5 * 3600  # type: ignore[union-attr]
    assert settings_for(glooko_timezone=None).zone().utcoffset(None).total_seconds() == 0  # type: ignore[union-attr]
    assert settings_for().glooko_late_sync_hours == 36
    for bad in ({"glooko_timezone": "Mars/Olympus"}, {"glooko_lookback_days": 0}, {"glooko_lookback_days": 91},
                {"glooko_late_sync_hours": 11}, {"glooko_late_sync_hours": 169},
                {"glooko_password": ""}, {"glooko_server": "ftp://x"}):  # fmt: skip
        with pytest.raises(pydantic.ValidationError) as caught:
            settings_for(**bad)
        assert all(PASSWORD not in e["msg"] for e in caught.value.errors(include_input=False))
    assert "correct" not in repr(settings_for())


def test_source_info_and_legacy_names(tmp_path: Path) -> None:
    assert SOURCE.name == "glooko"
    env = {"GLOOKO_EMAIL": "pat@example.com", "GLOOKO_PASSWORD": "pw"}
    assert apply_legacy_env(SOURCE.legacy_env, env) == ["GLOOKO_EMAIL", "GLOOKO_PASSWORD"]
    assert env["CONNECT_GLOOKO_EMAIL"] == "pat@example.com"
    assert {
        "glooko_email",
        "glooko_password",
        "glooko_timezone",
        "glooko_lookback_days",
        "glooko_late_sync_hours",
    } <= set(SOURCE.settings.model_fields)
