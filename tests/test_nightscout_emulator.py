"""The Nightscout emulator speaks v1 as protocols/05 documents it: auth, queries, upserts, faults."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from connect.records import Entry, Profile, Treatment, from_nightscout
from tests.emulators.nightscout import (
    IMPLICIT_WINDOW_MS,
    UNAUTHORIZED_BODY,
    NightscoutEmulator,
    iso_from_ms,
    parse_qs,
    serve_in_thread,
    sgv_series,
    treatment_series,
)

FIXTURES = Path(__file__).parent / "fixtures" / "nightscout"
SECRET = "correct-horse-battery-staple"
SHA1 = hashlib.sha1(SECRET.encode()).hexdigest()
SHA512 = hashlib.sha512(SECRET.encode()).hexdigest()
NOW = 1_750_000_000_000  # 2025-06-15T15:06:40Z
DAY = 86_400_000
ADMIN = {"api-secret": SHA1}


class Clock:
    def __init__(self, ms: int = NOW) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def emulator(**kwargs: Any) -> NightscoutEmulator:
    kwargs.setdefault("now", Clock())
    return NightscoutEmulator(SECRET, **kwargs)


def client(emu: NightscoutEmulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=emu.app), base_url="http://ns.test")


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# --- auth -------------------------------------------------------------------------------------


async def test_api_secret_sha1_in_any_case_and_sha512_are_accepted() -> None:
    emu = emulator()
    emu.seed_entries(sgv_series(NOW - 3_600_000, 12))
    async with client(emu) as c:
        for value in (SHA1, SHA1.upper(), SHA512):
            r = await c.get("/api/v1/entries.json", headers={"API-SECRET": value})
            assert r.status_code == 200
            assert len(r.json()) == 10
        r = await c.get("/api/v1/entries.json", params={"secret": SHA1})
        assert r.status_code == 200
    assert emu.auth_failures == 0


async def test_the_plain_secret_is_refused_with_the_v1_401_body_and_counted() -> None:
    emu = emulator(auth_default_roles="readable")
    async with client(emu) as c:
        r = await c.get("/api/v1/entries.json", headers={"api-secret": SECRET})
        assert r.status_code == 401
        assert r.json() == {"status": 401, "message": "Unauthorized", "description": "Invalid/Missing"}
        r = await c.get("/api/v1/treatments.json", headers={"api-secret": "0" * 40})
        assert r.status_code == 401
        assert emu.auth_failures == 2
        assert emu.auth_delay_ms == 10_000  # what the real server would add, not slept here
        r = await c.get("/api/v1/entries.json", headers=ADMIN)
        assert r.status_code == 200
        assert emu.auth_delay_ms == 0  # a success clears the delay list
        assert emu.auth_failures == 2


async def test_auth_default_roles_apply_to_anonymous_requests() -> None:
    denied, readable = emulator(), emulator(auth_default_roles="readable")
    async with client(denied) as c:
        assert (await c.get("/api/v1/entries.json")).status_code == 401
        assert (await c.get("/api/v1/status.json")).status_code == 401
    async with client(readable) as c:
        assert (await c.get("/api/v1/entries.json")).status_code == 200
        assert (await c.get("/api/v1/status.json")).status_code == 200
        r = await c.post("/api/v1/entries", json=[{"type": "sgv", "sgv": 100, "date": NOW}])
        assert r.status_code == 401
    assert readable.count("entries") == 0


async def test_access_tokens_have_the_nightscout_form_and_their_roles() -> None:
    emu = emulator(tokens={"reader": ["readable"], "Loop Uploader!": ["readable", "api:*:create"]})
    reader, writer = emu.token_for("reader"), emu.token_for("Loop Uploader!")
    assert re.fullmatch(r"reader-[0-9a-f]{16}", reader)
    assert re.fullmatch(r"loopupload-[0-9a-f]{16}", writer)
    doc = [{"type": "sgv", "sgv": 101, "date": NOW - 60_000}]
    async with client(emu) as c:
        assert (await c.get("/api/v1/entries.json", params={"token": reader})).status_code == 200
        r = await c.post("/api/v1/entries", params={"token": reader}, json=doc)
        assert r.status_code == 401
        r = await c.post("/api/v1/entries", params={"token": writer}, json=doc)
        assert r.status_code == 200
        # the api-secret header may carry the token, or the SHA-1 of the token
        for value in (reader, hashlib.sha1(reader.encode()).hexdigest()):
            assert (await c.get("/api/v1/entries.json", headers={"api-secret": value})).status_code == 200
        # the token in the body works for POST too, and is not stored
        r = await c.post("/api/v1/entries", json=[{**doc[0], "sgv": 102, "token": writer}])
        assert r.status_code == 200
    assert emu.count("entries") == 1
    assert "token" not in emu.entries[0]
    assert emu.entries[0]["sgv"] == 102


async def test_jwt_exchange_and_bearer_auth() -> None:
    clock = Clock()
    emu = emulator(tokens={"reader": ["readable"]}, now=clock)
    async with client(emu) as c:
        r = await c.get(f"/api/v2/authorization/request/{emu.token_for('reader')}")
        assert r.status_code == 200
        body = r.json()
        assert body["sub"] == "reader"
        assert body["exp"] - body["iat"] == 8 * 3600
        assert ["*:*:read"] in body["permissionGroups"]
        bearer = {"Authorization": f"Bearer {body['token']}"}
        assert (await c.get("/api/v1/entries.json", headers=bearer)).status_code == 200
        r = await c.get("/api/v1/entries.json", headers={"Authorization": f"Bearer {body['token']}x"})
        assert r.status_code == 401
        clock.ms += 8 * 3600 * 1000 + 1000
        assert (await c.get("/api/v1/entries.json", headers=bearer)).status_code == 401
        r = await c.get("/api/v2/authorization/request/nobody-0123456789abcdef")
        assert r.status_code == 401
        assert r.json() == UNAUTHORIZED_BODY


async def test_a_wrong_secret_is_refused_even_where_anonymous_reads_are_allowed() -> None:
    emu = emulator(auth_default_roles="readable")
    async with client(emu) as c:
        r = await c.get("/api/v1/entries.json", headers={"api-secret": hashlib.sha1(b"wrong").hexdigest()})
        assert r.status_code == 401
        # …but an unknown ?token= is simply ignored (authorize() finds no subject): defaults apply
        r = await c.get("/api/v1/entries.json", params={"token": "nobody-0123456789abcdef"})
        assert r.status_code == 200


async def test_verifyauth_reports_what_the_credentials_allow() -> None:
    emu = emulator(auth_default_roles="readable", tokens={"reader": ["readable"]})
    async with client(emu) as c:
        admin = (await c.get("/api/v1/verifyauth", headers=ADMIN)).json()
        anon = (await c.get("/api/v1/verifyauth")).json()
        wrong = (await c.get("/api/v1/verifyauth", headers={"api-secret": "f" * 40})).json()
        token = (await c.get("/api/v1/verifyauth", params={"token": emu.token_for("reader")})).json()
    assert admin == {
        "status": 200,
        "message": {
            "canRead": True, "canWrite": True, "isAdmin": True, "message": "OK",
            "rolefound": "NOTFOUND", "permissions": "ROLE",
        },
    }  # fmt: skip
    assert anon["message"]["canRead"] is True
    assert anon["message"]["message"] == "UNAUTHORIZED"
    assert anon["message"]["permissions"] == "DEFAULT"
    assert wrong["message"]["canRead"] is False
    assert wrong["message"]["message"] == "UNAUTHORIZED"
    assert token["message"]["rolefound"] == "FOUND"
    assert token["message"]["message"] == "OK"
    assert token["message"]["canWrite"] is False


async def test_status_json_has_the_documented_shape() -> None:
    emu = emulator(tokens={"reader": ["readable"]})
    async with client(emu) as c:
        status = (await c.get("/api/v1/status.json", headers=ADMIN)).json()
        authorized = (await c.get("/api/v1/status.json", params={"token": emu.token_for("reader")})).json()
    original = fixture("py-nightscout__server_status_response.json")
    assert set(original) <= set(status)
    assert status["status"] == "ok"
    assert status["serverTimeEpoch"] == NOW
    assert status["serverTime"] == "2025-06-15T15:06:40.000Z"
    assert status["settings"]["units"] == "mg/dl"
    assert status["settings"]["authDefaultRoles"] == "denied"
    assert status["authorized"] is None
    assert authorized["authorized"]["sub"] == "reader"


# --- reads --------------------------------------------------------------------------------------


async def test_entries_without_a_date_constraint_see_only_four_days() -> None:
    emu = emulator()
    emu.seed_entries(sgv_series(NOW - 10 * DAY, 240, every_ms=3_600_000))  # hourly, 10 days
    async with client(emu) as c:
        recent = (await c.get("/api/v1/entries.json", params={"count": "1000"}, headers=ADMIN)).json()
        params = {"count": "1000", "find[date][$gte]": str(NOW - 10 * DAY)}
        everything = (await c.get("/api/v1/entries.json", params=params, headers=ADMIN)).json()
        params = {"count": "1000", "find[dateString][$gte]": "2000"}
        by_string = (await c.get("/api/v1/entries.json", params=params, headers=ADMIN)).json()
    assert len(recent) == 96
    assert min(d["date"] for d in recent) >= NOW - IMPLICIT_WINDOW_MS
    assert len(everything) == 240
    assert len(by_string) == 240  # a dateString constraint also lifts the window
    dates = [d["date"] for d in everything]
    assert dates == sorted(dates, reverse=True)  # newest first
    assert all(re.fullmatch(r"[0-9a-f]{24}", d["_id"]) for d in everything)


async def test_treatments_and_devicestatus_window_on_created_at() -> None:
    emu = emulator()
    emu.seed_treatments(treatment_series(NOW - 10 * DAY, 240, every_ms=3_600_000))
    emu.seed_devicestatus(
        [{"device": "loop://x", "created_at": iso_from_ms(NOW - h * 3_600_000)} for h in range(240)]
    )
    async with client(emu) as c:
        recent = (await c.get("/api/v1/treatments.json", headers=ADMIN)).json()
        params = {"find[created_at][$gte]": iso_from_ms(NOW - 11 * DAY)}
        everything = (await c.get("/api/v1/treatments.json", params=params, headers=ADMIN)).json()
        status = (await c.get("/api/v1/devicestatus.json", params={"count": "500"}, headers=ADMIN)).json()
    assert len(recent) == 96  # default count 100, but only four days
    assert len(everything) == 240
    assert [d["created_at"] for d in everything] == sorted(
        (d["created_at"] for d in everything), reverse=True
    )
    assert len(status) == 97  # created_at >= now − 4 days, inclusive


async def test_count_defaults_and_the_emulated_cap() -> None:
    emu = emulator()
    emu.seed_entries(sgv_series(NOW - 2 * DAY, 2000, every_ms=60_000))
    emu.seed_treatments(treatment_series(NOW - 2 * DAY, 1500, every_ms=60_000))
    async with client(emu) as c:

        async def n(path: str, **params: str) -> int:
            r = await c.get(path, params=params, headers=ADMIN)
            assert r.status_code == 200
            return len(r.json())

        assert await n("/api/v1/entries.json") == 10
        assert await n("/api/v1/entries.json", count="0") == 10  # not a positive count: default
        assert await n("/api/v1/entries.json", count="abc") == 10
        assert await n("/api/v1/entries.json", count="5000") == 1000  # the cap
        assert await n("/api/v1/treatments.json") == 100
        assert await n("/api/v1/treatments.json", **{"find[eventType]": "Temp Basal"}) == 1000
        assert await n("/api/v1/devicestatus.json") == 0
    big = emulator(max_count=5000)
    big.seed_entries(sgv_series(NOW - 2 * DAY, 2000, every_ms=60_000))
    async with client(big) as c:
        r = await c.get("/api/v1/entries.json", params={"count": "5000"}, headers=ADMIN)
        assert len(r.json()) == 2000


async def test_v1_coerces_date_with_parse_int_so_iso_dates_match_almost_everything() -> None:
    emu = emulator()
    old = sgv_series(NOW - 600 * DAY, 3, every_ms=DAY)  # early 2024 and before
    new = sgv_series(NOW - 2 * DAY, 3, every_ms=DAY)
    emu.seed_entries(old + new)
    async with client(emu) as c:
        iso = {"find[date][$gte]": "2025-01-01T00:00:00Z", "count": "100"}
        by_date = (await c.get("/api/v1/entries.json", params=iso, headers=ADMIN)).json()
        string = {"find[dateString][$gte]": "2025-01-01T00:00:00Z", "count": "100"}
        by_string = (await c.get("/api/v1/entries.json", params=string, headers=ADMIN)).json()
        nan = await c.get("/api/v1/entries.json", params={"find[date][$gte]": "soon"}, headers=ADMIN)
    assert len(by_date) == 6  # parseInt("2025-01-01T…") == 2025: every entry is newer than that
    assert len(by_string) == 3  # dateString compares as a string
    assert nan.status_code == 500


async def test_numeric_fields_compare_as_numbers_and_strings_do_not_match_them() -> None:
    emu = emulator()
    docs = sgv_series(NOW - 3_600_000, 6, every_ms=600_000)
    for doc, value in zip(docs, (90, 150, 181, 250, 400, 39), strict=True):
        doc["sgv"] = value
    docs[0]["sgv"] = "5"  # historic data sometimes stores sgv as a string
    emu.seed_entries(docs)
    async with client(emu) as c:
        r = await c.get("/api/v1/entries.json", params={"find[sgv][$gt]": "180"}, headers=ADMIN)
        high = sorted(d["sgv"] for d in r.json())
        r = await c.get("/api/v1/entries/sgv.json", params={"find[sgv][$lte]": "100"}, headers=ADMIN)
        low = sorted(d["sgv"] for d in r.json())
    assert high == [181, 250, 400]
    assert low == [39]


async def test_created_at_queries_are_normalised_to_utc_and_bad_dates_fail() -> None:
    emu = emulator()
    emu.seed_treatments(treatment_series(NOW - 6 * 3_600_000, 7, every_ms=3_600_000))
    async with client(emu) as c:
        local = NOW - 3 * 3_600_000
        offset = iso_from_ms(local + 2 * 3_600_000)[:19] + "+02:00"  # the same instant, in +02:00
        r1 = await c.get("/api/v1/treatments.json", params={"find[created_at][$gte]": offset}, headers=ADMIN)
        unescaped = offset.replace("+", " ")  # a client that did not escape the plus
        r2 = await c.get(
            "/api/v1/treatments.json", params={"find[created_at][$gte]": unescaped}, headers=ADMIN
        )
        bad = await c.get(
            "/api/v1/treatments.json", params={"find[created_at][$gte]": "yesterday"}, headers=ADMIN
        )
    assert len(r1.json()) == 4
    assert r2.json() == r1.json()
    assert bad.status_code == 500
    assert "Cannot parse" in bad.json()["message"]


async def test_entry_endpoints_current_by_type_and_by_id() -> None:
    emu = emulator()
    emu.seed_entries(sgv_series(NOW - 3_600_000, 6, every_ms=600_000))
    emu.seed_entries([{"type": "mbg", "mbg": 123, "date": NOW - 1_000, "device": "meter"}])
    async with client(emu) as c:
        current = (await c.get("/api/v1/entries/current.json", headers=ADMIN)).json()
        sgvs = (await c.get("/api/v1/entries/sgv.json", headers=ADMIN)).json()
        mbgs = (await c.get("/api/v1/entries/mbg.json", headers=ADMIN)).json()
        one = (await c.get(f"/api/v1/entries/{sgvs[2]['_id']}", headers=ADMIN)).json()
        missing = await c.get("/api/v1/nothing.json", headers=ADMIN)
    assert [d["type"] for d in current] == ["mbg"]
    assert len(sgvs) == 6 and {d["type"] for d in sgvs} == {"sgv"}
    assert [d["mbg"] for d in mbgs] == [123]
    assert one == [sgvs[2]]
    assert missing.status_code == 404


def test_qs_bracket_parsing() -> None:
    parsed = parse_qs(
        [
            ("find[date][$gte]", "1"),
            ("find[type][$in][]", "sgv"),
            ("find[type][$in][]", "mbg"),
            ("count", "5"),
        ]
    )
    assert parsed == {"find": {"date": {"$gte": "1"}, "type": {"$in": ["sgv", "mbg"]}}, "count": "5"}


# --- writes -------------------------------------------------------------------------------------


async def test_entries_upsert_on_systime_and_type() -> None:
    emu = emulator()
    async with client(emu) as c:
        first = await c.post(
            "/api/v1/entries", json=[{"type": "sgv", "sgv": 100, "date": NOW, "device": "a"}], headers=ADMIN
        )
        assert first.status_code == 200
        stored = first.json()
        assert re.fullmatch(r"[0-9a-f]{24}", stored[0]["_id"])
        assert stored[0]["sysTime"] == iso_from_ms(NOW)
        # same instant and type from another device: replaced (same _id)
        again = await c.post(
            "/api/v1/entries", json=[{"type": "sgv", "sgv": 110, "date": NOW, "device": "b"}], headers=ADMIN
        )
        assert again.json()[0]["_id"] == stored[0]["_id"]
        # another type at the same instant is a separate record
        await c.post("/api/v1/entries", json=[{"type": "mbg", "mbg": 111, "date": NOW}], headers=ADMIN)
        # dateString wins over date; an offset is normalised to UTC and kept as utcOffset
        local = iso_from_ms(NOW + 60_000 + 3_600_000)[:23] + "+01:00"
        r = await c.post(
            "/api/v1/entries",
            json=[{"type": "sgv", "sgv": 120, "date": 1, "dateString": local}],
            headers=ADMIN,
        )
        assert r.json()[0]["dateString"] == iso_from_ms(NOW + 60_000)
        assert r.json()[0]["utcOffset"] == 60
        r = await c.post(
            "/api/v1/entries", json=[{"type": "sgv", "sgv": 121, "date": NOW + 60_000}], headers=ADMIN
        )
        # a single object needs `date`, else it is silently ignored
        ignored = await c.post("/api/v1/entries", json={"type": "sgv", "sgv": 130}, headers=ADMIN)
        single = await c.post(
            "/api/v1/entries", json={"type": "sgv", "sgv": 131, "date": NOW + 120_000}, headers=ADMIN
        )
    assert ignored.status_code == 200 and ignored.json() == []
    assert len(single.json()) == 1
    by_key = {(d["sysTime"], d["type"]): d for d in emu.entries}
    assert emu.count("entries") == 4
    assert by_key[(iso_from_ms(NOW), "sgv")]["sgv"] == 110
    assert by_key[(iso_from_ms(NOW), "sgv")]["device"] == "b"
    assert by_key[(iso_from_ms(NOW + 60_000), "sgv")]["sgv"] == 121


async def test_treatments_dedupe_by_identifier_then_id_then_created_at_and_event_type() -> None:
    clock = Clock()
    emu = emulator(now=clock)
    async with client(emu) as c:

        async def post(doc: Any) -> list[dict[str, Any]]:
            r = await c.post("/api/v1/treatments", json=doc, headers=ADMIN)
            assert r.status_code == 200
            body: list[dict[str, Any]] = r.json()
            return body

        base = iso_from_ms(NOW - 3_600_000)
        first = await post({"eventType": "Meal Bolus", "created_at": base, "insulin": 2, "carbs": 30})
        # the same instant written with an offset, and the same eventType: replaced
        offset = iso_from_ms(NOW - 3_600_000 + 7_200_000)[:23] + "+02:00"
        second = await post([{"eventType": "Meal Bolus", "created_at": offset, "insulin": 3}])
        assert second[0]["_id"] == first[0]["_id"]
        assert second[0]["created_at"] == base
        assert emu.count("treatments") == 1
        assert "carbs" not in emu.treatments[0]  # replaceOne: the old fields are gone
        # another eventType at that instant: a new record
        await post({"eventType": "Note", "created_at": base, "notes": "hi"})
        assert emu.count("treatments") == 2
        # identifier wins over created_at
        await post(
            {
                "eventType": "Correction Bolus",
                "created_at": iso_from_ms(NOW - 60_000),
                "identifier": "u-1",
                "insulin": 1,
            }
        )
        await post(
            {
                "eventType": "Correction Bolus",
                "created_at": iso_from_ms(NOW - 30_000),
                "identifier": "u-1",
                "insulin": 1.5,
            }
        )
        assert emu.count("treatments") == 3
        # _id is the next key
        by_id = await post(
            {"_id": first[0]["_id"], "eventType": "Meal Bolus", "created_at": base, "insulin": 4}
        )
        assert by_id[0]["_id"] == first[0]["_id"]
        assert emu.count("treatments") == 3
        # no created_at: now
        now_doc = await post({"eventType": "Note", "notes": "now"})
        assert now_doc[0]["created_at"] == iso_from_ms(NOW)
    insulin = sorted(t.get("insulin", 0) for t in emu.treatments)
    assert insulin == [0, 0, 1.5, 4]


async def test_devicestatus_has_no_dedupe_and_rejects_bad_ids() -> None:
    emu = emulator()
    doc = {"device": "loop://phone", "created_at": iso_from_ms(NOW), "uploader": {"battery": 50}}
    async with client(emu) as c:
        assert (await c.post("/api/v1/devicestatus", json=doc, headers=ADMIN)).status_code == 200
        assert (await c.post("/api/v1/devicestatus", json=[doc], headers=ADMIN)).status_code == 200
        bad = await c.post("/api/v1/devicestatus", json=[{**doc, "_id": "not-an-object-id"}], headers=ADMIN)
    assert bad.status_code == 400
    assert emu.count("devicestatus") == 2


async def test_profile_post_creates_and_reads_come_newest_first() -> None:
    emu = emulator()
    emu.seed_profiles(fixture("py-nightscout__profile_response.json"))
    new = {
        "defaultProfile": "Default",
        "startDate": "2025-06-01T00:00:00.000Z",
        "store": {"Default": {"dia": 5}},
    }
    async with client(emu) as c:
        assert (await c.post("/api/v1/profile", json=new, headers=ADMIN)).status_code == 200
        assert (await c.post("/api/v1/profile", json=new, headers=ADMIN)).status_code == 200
        profiles = (await c.get("/api/v1/profile.json", headers=ADMIN)).json()
        current = (await c.get("/api/v1/profile/current", headers=ADMIN)).json()
    assert len(profiles) == 5
    assert [p["startDate"] for p in profiles[:3]] == ["2025-06-01T00:00:00.000Z"] * 2 + [
        "2017-03-24T03:54:00.000Z"
    ]
    assert len(current) == 1


async def test_every_post_needs_create_permission() -> None:
    emu = emulator(auth_default_roles="readable", tokens={"reader": ["readable"], "carbs": ["careportal"]})
    async with client(emu) as c:
        for path in ("/api/v1/entries", "/api/v1/treatments", "/api/v1/devicestatus", "/api/v1/profile"):
            r = await c.post(path, json=[{"date": NOW, "created_at": iso_from_ms(NOW)}])
            assert r.status_code == 401, path
            r = await c.post(path, params={"token": emu.token_for("reader")}, json=[{"date": NOW}])
            assert r.status_code == 401, path
        r = await c.post(
            "/api/v1/treatments", params={"token": emu.token_for("carbs")}, json=[{"eventType": "Note"}]
        )
        assert r.status_code == 200
    assert emu.counts == {"entries": 0, "treatments": 1, "devicestatus": 0, "profile": 0}


# --- faults and the request log -------------------------------------------------------------------


async def test_faults_fail_the_requested_number_of_requests() -> None:
    emu = emulator()
    emu.fail_next(2, 500)
    emu.fail_next(1, 429, retry_after=120)
    emu.fail_next(1, 503)
    async with client(emu) as c:
        statuses = [(await c.get("/api/v1/entries.json", headers=ADMIN)).status_code for _ in range(5)]
        assert statuses == [500, 500, 429, 503, 200]
        emu.fail_next(1, 429, retry_after=120)
        r = await c.get("/api/v1/entries.json", headers=ADMIN)
        assert r.headers["retry-after"] == "120"
        emu.fail_next(1, "timeout")
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/api/v1/entries.json", headers=ADMIN)
        emu.fail_next(1, "disconnect")
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/api/v1/entries.json", headers=ADMIN)
        emu.fail_next(1, "html")
        r = await c.get("/api/v1/entries.json", headers=ADMIN)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        emu.fail_next(1, 500, path="/api/v1/treatments", skip=1)
        assert (await c.get("/api/v1/entries.json", headers=ADMIN)).status_code == 200
        assert (await c.get("/api/v1/treatments.json", headers=ADMIN)).status_code == 200
        assert (await c.get("/api/v1/treatments.json", headers=ADMIN)).status_code == 500
        emu.down = True
        assert (await c.get("/api/v1/status.json", headers=ADMIN)).status_code == 503
        r = await c.post("/api/v1/entries", json=[{"type": "sgv", "sgv": 100, "date": NOW}], headers=ADMIN)
        assert r.status_code == 503
        emu.down = False
        emu.fail_post_status(400, "Bad Request")
        r = await c.post("/api/v1/entries", json=[{"type": "sgv", "sgv": 100, "date": NOW}], headers=ADMIN)
        assert r.status_code == 400
        r = await c.post("/api/v1/entries", json=[{"type": "sgv", "sgv": 100, "date": NOW}], headers=ADMIN)
        assert r.status_code == 200
    assert emu.count("entries") == 1
    log = [(r.method, r.path, r.status) for r in emu.requests]
    assert log[:5] == [("GET", "/api/v1/entries.json", s) for s in (500, 500, 429, 503, 200)]
    assert ("GET", "/api/v1/entries.json", 0) in log  # the broken connections
    assert log[-2:] == [("POST", "/api/v1/entries", 400), ("POST", "/api/v1/entries", 200)]


# --- fixtures -----------------------------------------------------------------------------------


def test_the_recorded_fixtures_parse_into_records() -> None:
    (entry_doc,) = fixture("nightscout-librelink-up__entries_v1_get_response.json")
    entry = from_nightscout("entries", entry_doc)
    assert entry == Entry(type="sgv", date=1_672_384_540_000, device="unknown", sgv=188, direction="Flat")
    treatments = [
        from_nightscout("treatments", d) for d in fixture("py-nightscout__treatments_response.json")
    ]
    assert all(isinstance(t, Treatment) for t in treatments)
    assert [t.absolute for t in treatments] == [0.7, 1.675, 1.775]  # type: ignore[union-attr]
    assert {t.event_type for t in treatments} == {"Temp Basal"}  # type: ignore[union-attr]
    assert treatments[0].date == 1_488_879_515_000
    assert treatments[0].device == "loop://Riley's iphone"
    profiles = [from_nightscout("profile", d) for d in fixture("py-nightscout__profile_response.json")]
    assert all(isinstance(p, Profile) for p in profiles)
    assert [p.date for p in profiles] == [1_489_035_240_000, 1_488_418_620_000, 1_461_301_560_000]
    assert set(profiles[0].store) == {"Default", "Test2"}  # type: ignore[union-attr]


async def test_what_the_emulator_serves_parses_into_records() -> None:
    emu = emulator()
    emu.seed_entries(fixture("nightscout-librelink-up__entries_v1_get_response.json"))
    emu.seed_treatments(fixture("py-nightscout__treatments_response.json"))
    async with client(emu) as c:
        params = {"find[date][$gte]": "1672384540000"}
        entries = (await c.get("/api/v1/entries.json", params=params, headers=ADMIN)).json()
        params = {"find[created_at][$gte]": "2017-01-01T00:00:00Z"}
        treatments = (await c.get("/api/v1/treatments.json", params=params, headers=ADMIN)).json()
    assert entries[0]["_id"] == "63af42d9431037df51515b67"  # a seeded _id is kept
    assert from_nightscout("entries", entries[0]).sgv == 188  # type: ignore[union-attr]
    assert len(treatments) == 3
    assert [from_nightscout("treatments", t).date for t in treatments] == sorted(
        (from_nightscout("treatments", t).date for t in treatments), reverse=True
    )


# --- on a real socket ----------------------------------------------------------------------------


def test_served_on_loopback_a_third_party_client_reads_it() -> None:
    from py_nightscout import Api  # type: ignore[import-untyped]

    emu = NightscoutEmulator(SECRET, hang_seconds=2.0)
    now = emu.now()
    # py-nightscout's SGV model needs xDrip's `delta`
    emu.seed_entries([{**doc, "delta": 1.5} for doc in sgv_series(now - 3_600_000, 12)])
    base_url, stop = serve_in_thread(emu)
    try:

        async def read() -> tuple[Any, Any]:
            api = Api(base_url, api_secret=SECRET)
            return await api.get_sgvs(), await api.get_server_status()

        sgvs, status = asyncio.run(read())
        assert len(sgvs) == 10
        assert sgvs[0].sgv == emu.entries[-1]["sgv"]
        assert status.status == "ok"
        with httpx.Client(base_url=base_url, headers=ADMIN, timeout=0.5) as c:
            assert c.get("/api/v1/entries.json").status_code == 200
            emu.fail_next(1, "disconnect")
            with pytest.raises(httpx.RemoteProtocolError):
                c.get("/api/v1/entries.json")
            emu.fail_next(1, "timeout")
            with pytest.raises(httpx.ReadTimeout):
                c.get("/api/v1/entries.json")
            assert c.get("/api/v1/verifyauth").json()["message"]["isAdmin"] is True
    finally:
        stop()
