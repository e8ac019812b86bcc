"""Every recorded LibreLinkUp payload (tests/fixtures/librelinkup) gives the records or the error
it should: graph variants, the logbook's items, and each login outcome (success, redirect, steps,
the damaged terms-of-use capture, an unknown patient)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from connect.contract import LastKnown
from connect.errors import ProtocolError, RequestRejected, StepRequired
from connect.httpkit import sha256_hex
from connect.records import to_nightscout
from sources.linkup import LinkUpSettings, Login, Session, make, parse_timestamp, transform
from sources.linkup.settings import Endpoint
from sources.linkup.transform import reading

FIXTURES = Path(__file__).parent / "fixtures" / "librelinkup"
GRAPHS = (
    "pylibrelinkup__graph_response.json",
    "pylibrelinkup__graph_response_no_alarm_rules_c.json",
    "pylibrelinkup__graph_response_no_sd.json",
    "pylibrelinkup__graph_response_no_u.json",
)
DEVICE = "nightscout-connect-librelinkup"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


#: the eight history points of the graph fixtures (FactoryTimestamp is UTC) and their values
HISTORY = [
    (ms(2022, 5, 21, 1, 39, 50), 117),
    (ms(2022, 5, 21, 1, 44, 51), 115),
    (ms(2022, 5, 21, 1, 49, 50), 115),
    (ms(2022, 5, 21, 1, 54, 51), 116),
    (ms(2022, 5, 21, 1, 59, 50), 116),
    (ms(2022, 5, 21, 2, 4, 50), 118),
    (ms(2022, 5, 21, 2, 9, 50), 118),
    (ms(2022, 5, 21, 2, 14, 51), 115),
]
CURRENT = (ms(2022, 5, 21, 13, 38, 50), 91)
NOW = ms(2022, 5, 21, 13, 40, 0)


def known(entries: int | None = None, **values: int) -> LastKnown:
    if entries is not None:
        values["entries"] = entries
    return LastKnown(values=values, backfill_from=NOW - 30 * 86_400_000, now=NOW)


@pytest.mark.parametrize("name", GRAPHS)
def test_graph_fixture_gives_history_and_current(name: str) -> None:
    raw = load(name)
    batch = transform(raw, known())
    got = [(e.date, e.sgv, e.direction) for e in batch.entries]
    arrow = raw["data"]["connection"]["glucoseMeasurement"]["TrendArrow"]
    expected_direction = {1: "SingleDown", 3: "Flat"}[arrow]
    assert got == [(d, v, None) for d, v in HISTORY] + [(*CURRENT, expected_direction)]
    assert all(e.type == "sgv" and e.device == DEVICE for e in batch.entries)
    assert batch.treatments == () and batch.devicestatus == ()
    docs = [to_nightscout(e) for e in batch.entries]
    assert docs[0]["dateString"] == "2022-05-21T01:39:50.000Z"
    assert docs[-1]["dateString"] == "2022-05-21T13:38:50.000Z"
    assert "direction" not in docs[0] and docs[-1]["direction"] == expected_direction
    assert len({e.identifier for e in batch.entries}) == len(batch.entries)


def test_graph_fixture_current_uses_glucose_measurement_not_item() -> None:
    raw = load("pylibrelinkup__graph_response.json")
    # glucoseItem says 3 (Flat) for the same moment; glucoseMeasurement (1) is the current one
    assert raw["data"]["connection"]["glucoseItem"]["TrendArrow"] == 3
    assert transform(raw, known()).entries[-1].direction == "SingleDown"
    del raw["data"]["connection"]["glucoseMeasurement"]
    assert transform(raw, known()).entries[-1].direction == "Flat"


def test_graph_fixture_only_newer_than_last_known() -> None:
    raw = load("pylibrelinkup__graph_response.json")
    batch = transform(raw, known(entries=HISTORY[4][0]))
    # what is newer, and the history of the half hour before the checkpoint again (a late
    # point could be among it); the point at the checkpoint itself is the stored one
    assert [e.date for e in batch.entries] == [d for d, _ in HISTORY[:4] + HISTORY[5:]] + [CURRENT[0]]
    assert [e.date for e in transform(raw, known(entries=HISTORY[7][0] + 29 * 60_000)).entries] == [
        HISTORY[7][0],
        CURRENT[0],
    ]
    assert transform(raw, known(entries=CURRENT[0])).entries == ()


def test_a_history_point_older_than_the_stored_current_reading_is_not_lost() -> None:
    """The checkpoint comes from the current reading; the graph gains the points before it later.

    Here the first answer's current reading is the fixture's, the graph lacking the point a
    minute before it; the next answer has that point. It must be written, with the value the
    graph gives; the current reading keeps its arrow.
    """
    raw = load("pylibrelinkup__graph_response.json")
    first = transform(raw, known())
    stored = known(**first.newest())
    assert stored.get("entries") == CURRENT[0]
    late = copy.deepcopy(raw)
    point = {**raw["data"]["graphData"][-1], "FactoryTimestamp": "5/21/2022 1:37:50 PM", "ValueInMgPerDl": 93}
    late["data"]["graphData"].append(point)
    (entry,) = transform(late, stored).entries
    assert (entry.date, entry.sgv, entry.direction) == (CURRENT[0] - 60_000, 93, None)
    # a point at the moment of an earlier current reading is written as that reading
    arrow = first.entries[-1]
    point_at_current = {**point, "FactoryTimestamp": "5/21/2022 1:38:50 PM"}
    late["data"]["graphData"][-1] = point_at_current
    later = known(entries=CURRENT[0] + 300_000)
    assert transform(late, later, recent={CURRENT[0]: arrow}).entries == (arrow,)
    # beyond the overlap nothing old is written again
    assert transform(late, known(entries=CURRENT[0] + 31 * 60_000)).entries == ()
    # transforming the same payload from the checkpoint it produced yields nothing new
    full = transform(raw, known())
    assert transform(raw, known(**full.newest())).entries == ()


def test_graph_fixture_sensor_info() -> None:
    raw = load("pylibrelinkup__graph_response.json")
    batch = transform(raw, known(), sensor_info=True)
    (start,) = batch.treatments
    assert start.event_type == "Sensor Start" and start.date == 1_652_400_270_000
    assert to_nightscout(start)["created_at"] == "2022-05-13T00:04:30.000Z"
    (status,) = batch.devicestatus
    assert status.date == CURRENT[0]
    info = status.payload["librelinkup"]
    assert info["sensor"]["startedAt"] == "2022-05-13T00:04:30.000Z"
    assert info["sensor"]["warmupMinutes"] == 60 and info["sensor"]["productType"] == 4
    assert info["sensor"]["ageSeconds"] == (CURRENT[0] - 1_652_400_270_000) // 1000
    assert info["patientDevice"]["deviceTypeId"] == 40068
    assert info["patientDevice"]["lastUpload"] == "2022-05-20T03:21:36.000Z"
    # the serial number and the phone's id stay out of the status
    assert "XXXXXXXXXX" not in json.dumps(to_nightscout(status))
    # already known: neither comes again
    again = transform(raw, known(treatments=start.date, devicestatus=status.date), sensor_info=True)
    assert again.treatments == () and again.devicestatus == ()
    # without patientDevice.u the upload time is simply unknown
    no_u = transform(load("pylibrelinkup__graph_response_no_u.json"), known(), sensor_info=True)
    assert no_u.devicestatus[0].payload["librelinkup"]["patientDevice"]["lastUpload"] is None


def test_logbook_fixture_items_read_as_current_readings() -> None:
    items = load("pylibrelinkup__logbook_response.json")["data"]
    got = [(r.date, r.sgv, r.direction) for r in (reading(i, current=True) for i in items) if r is not None]
    # mmol/L account: ValueInMgPerDl is still mg/dL and is what sgv takes
    assert got == [
        (ms(2024, 11, 10, 17, 13, 36), 197, "Flat"),
        (ms(2024, 11, 10, 13, 8, 19), 181, "FortyFiveUp"),
        (ms(2024, 11, 9, 15, 19, 0), 159, "Flat"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12/30/2022 4:47:40 PM", ms(2022, 12, 30, 16, 47, 40)),
        ("5/21/2022 1:38:50 PM", ms(2022, 5, 21, 13, 38, 50)),
        ("1/1/2023 12:00:00 AM", ms(2023, 1, 1, 0, 0, 0)),
        ("1/1/2023 12:30:05 PM", ms(2023, 1, 1, 12, 30, 5)),
        ("01/02/2023 09:05:00 am", ms(2023, 1, 2, 9, 5, 0)),
    ],
)
def test_factory_timestamp_is_utc(text: str, expected: int) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text", ["", "2022-05-21T13:38:50Z", "13/1/2022 1:00:00 PM", "2/30/2022 1:00:00 PM", "1/1/2022 13:00:00 PM",
             "1/1/2022 0:00:00 AM", "1/1/1999 1:00:00 AM", None, 1653140330],
)  # fmt: skip
def test_bad_timestamps_are_protocol_errors(text: object) -> None:
    with pytest.raises(ProtocolError):
        parse_timestamp(text)


# --- login outcomes from the recorded bodies ---------------------------------------------------


class Recorder:
    """A MockTransport that answers by (host, path) and records every request."""

    def __init__(self, routes: dict[tuple[str, str], Callable[[], Any]]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.routes.get((request.url.host, request.url.path))
        if answer is None:
            return httpx.Response(404, text="not found")
        return httpx.Response(200, json=answer())

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))


def settings(**kw: Any) -> LinkUpSettings:
    return LinkUpSettings(link_up_username="f@example.com", link_up_password="hunter2-pw", **kw)


async def test_login_fixture_success() -> None:
    rec = Recorder(
        {("api-eu.libreview.io", "/llu/auth/login"): lambda: load("pylibrelinkup__login_response.json")}
    )
    async with rec.client() as client:
        login = await make(settings(), client).authenticate()
    assert login.token == "parp"
    assert login.account_id == sha256_hex("xx")
    # the header is SHA-256 over the UTF-8 user id, 64 lower-case hex digits (an independent vector)
    assert login.account_id == "5dde896887f6754c9b15bfe3a441ae4806df2fde94001311e08bf110622e0bbe"
    assert login.lifetime_s == 15_552_000.0  # duration is in ms: 180 days
    assert login.endpoint.base_url == "https://api-eu.libreview.io"
    (request,) = rec.requests
    assert request.method == "POST"
    assert json.loads(request.content) == {"email": "f@example.com", "password": "hunter2-pw"}
    assert request.headers["version"] == "4.16.0" and request.headers["product"] == "llu.android"
    assert "authorization" not in request.headers and "account-id" not in request.headers
    assert "parp" not in repr(login) and sha256_hex("xx") not in repr(login)


async def test_login_fixture_real_world_evidence_consent() -> None:
    body = load("pylibrelinkup__realworldevidence_consent_response.json")
    rec = Recorder({("api-eu.libreview.io", "/llu/auth/login"): lambda: body})
    async with rec.client() as client:
        login = await make(settings(), client).authenticate()
    assert login.account_id == sha256_hex("<Id>")


async def test_redirect_fixture_is_followed_once_and_remembered() -> None:
    rec = Recorder(
        {
            ("api-eu.libreview.io", "/llu/auth/login"): lambda: load("pylibrelinkup__redirect_response.json"),
            ("api-eu2.libreview.io", "/llu/auth/login"): lambda: load("pylibrelinkup__login_response.json"),
        }
    )
    async with rec.client() as client:
        driver = make(settings(), client)
        login = await driver.authenticate()
        assert login.endpoint.base_url == "https://api-eu2.libreview.io"
        assert [r.url.host for r in rec.requests] == ["api-eu.libreview.io", "api-eu2.libreview.io"]
        await driver.authenticate()  # the next login goes straight to the account's region
    assert [r.url.host for r in rec.requests][2:] == ["api-eu2.libreview.io"]


async def test_redirect_loop_is_a_protocol_error() -> None:
    redirect = load("pylibrelinkup__redirect_response.json")
    rec = Recorder(
        {
            ("api-eu.libreview.io", "/llu/auth/login"): lambda: redirect,
            ("api-eu2.libreview.io", "/llu/auth/login"): lambda: {
                "data": {"redirect": True, "region": "us"},
                "status": 0,
            },
        }
    )
    async with rec.client() as client:
        with pytest.raises(ProtocolError, match="second time"):
            await make(settings(), client).authenticate()
    assert len(rec.requests) == 2


@pytest.mark.parametrize(
    ("name", "step", "words"),
    [
        ("pylibrelinkup__privacy_policy_response.json", "pp", "privacy policy"),
        ("pylibrelinkup__terms_of_use_response.json", "tou", "terms of use"),
        ("pylibrelinkup__email_verification_response.json", "verifyEmail", "e-mail"),
    ],
)
async def test_step_fixtures_need_a_person_by_default(name: str, step: str, words: str) -> None:
    rec = Recorder({("api-eu.libreview.io", "/llu/auth/login"): lambda: load(name)})
    async with rec.client() as client:
        with pytest.raises(StepRequired) as caught:
            await make(settings(), client).authenticate()
    message = str(caught.value)
    assert f'"{step}"' in message and words in message
    if step != "verifyEmail":
        assert "CONNECT_LINK_UP_AUTO_ACCEPT_TERMS" in message
    assert len(rec.requests) == 1  # nothing accepted on the user's behalf
    assert "eyJ" not in message


async def test_privacy_policy_step_is_accepted_when_allowed() -> None:
    step = load("pylibrelinkup__privacy_policy_response.json")
    rec = Recorder(
        {
            ("api-eu.libreview.io", "/llu/auth/login"): lambda: step,
            ("api-eu.libreview.io", "/auth/continue/pp"): lambda: load("pylibrelinkup__login_response.json"),
        }
    )
    async with rec.client() as client:
        login = await make(settings(link_up_auto_accept_terms=True), client).authenticate()
    assert login.token == "parp"
    accept = rec.requests[1]
    assert accept.method == "POST" and accept.url.path == "/auth/continue/pp"
    assert accept.headers["authorization"] == f"Bearer {step['data']['authTicket']['token']}"


async def test_damaged_terms_fixture_without_ticket_is_a_clear_step() -> None:
    rec = Recorder(
        {
            ("api-eu.libreview.io", "/llu/auth/login"): lambda: load(
                "pylibrelinkup__terms_of_use_response.json"
            )
        }
    )
    async with rec.client() as client:
        with pytest.raises(StepRequired, match="without a ticket"):
            await make(settings(link_up_auto_accept_terms=True), client).authenticate()
    assert len(rec.requests) == 1


async def test_email_verification_is_never_auto_accepted() -> None:
    rec = Recorder(
        {
            ("api-eu.libreview.io", "/llu/auth/login"): lambda: load(
                "pylibrelinkup__email_verification_response.json"
            )
        }
    )
    async with rec.client() as client:
        with pytest.raises(StepRequired, match="verify"):
            await make(settings(link_up_auto_accept_terms=True), client).authenticate()
    assert len(rec.requests) == 1


async def test_patient_not_found_fixture_rejects_the_request() -> None:
    pid = "9dfd0d64-4863-4775-9438-712fa68787df"
    rec = Recorder(
        {
            ("api-eu.libreview.io", f"/llu/connections/{pid}/graph"): lambda: load(
                "pylibrelinkup__patient_not_found.json"
            )
        }
    )
    login = Login(
        token="tok-abc",
        account_id="a" * 64,
        endpoint=Endpoint("https://api-eu.libreview.io", "EU"),
        lifetime_s=None,
    )
    async with rec.client() as client:
        with pytest.raises(RequestRejected, match="couldNotLoadPatient") as caught:
            await make(settings(), client).fetch(Session(login=login, patient_id=pid), known())
    assert pid not in str(caught.value)
    (request,) = rec.requests
    assert request.headers["authorization"] == "Bearer tok-abc"
    assert request.headers["account-id"] == "a" * 64


async def test_graph_fixture_through_fetch_and_transform() -> None:
    pid = "9dfd0d64-4863-4775-9438-712fa68787df"
    rec = Recorder({("api-eu.libreview.io", f"/llu/connections/{pid}/graph"): lambda: load(GRAPHS[0])})
    login = Login(
        token="tok-abc",
        account_id="a" * 64,
        endpoint=Endpoint("https://api-eu.libreview.io", "EU"),
        lifetime_s=None,
    )
    async with rec.client() as client:
        driver = make(settings(), client)
        raw = await driver.fetch(Session(login=login, patient_id=pid), known())
    assert len(driver.transform(raw, known()).entries) == 9


#: every recorded payload and the tests above that read it; a new recording must join a test
COVERED = {
    *GRAPHS,
    "pylibrelinkup__logbook_response.json",
    "pylibrelinkup__login_response.json",
    "pylibrelinkup__realworldevidence_consent_response.json",
    "pylibrelinkup__redirect_response.json",
    "pylibrelinkup__privacy_policy_response.json",
    "pylibrelinkup__terms_of_use_response.json",
    "pylibrelinkup__email_verification_response.json",
    "pylibrelinkup__patient_not_found.json",
}
SHARED = Path("/work/shared/protocols/fixtures/librelinkup")


def test_every_recorded_payload_is_exercised() -> None:
    recorded = {p.name for p in FIXTURES.glob("*.json")}
    assert recorded == COVERED, recorded ^ COVERED
    if SHARED.is_dir():  # the copies here are the recordings of the protocol notes, unchanged
        shared = {p.name for p in SHARED.glob("*.json")}
        assert shared <= recorded, shared - recorded
        for name in shared:
            assert (SHARED / name).read_bytes() == (FIXTURES / name).read_bytes(), name
