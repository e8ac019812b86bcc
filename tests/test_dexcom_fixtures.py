"""Recorded Share answers (pydexcom cassettes, 2025) through the driver's parsing and mapping."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from connect.contract import LastKnown
from connect.errors import AuthRejected, SessionExpired
from connect.records import Entry, to_nightscout
from sources.dexcomshare.faults import list_answer, uuid_answer
from sources.dexcomshare.payload import transform
from tests.emulators.dexcom import ShareEmulator, fault_body

FIXTURES = Path(__file__).parent / "fixtures" / "dexcom_share"
NOW = 1_745_081_100_000
LAST_KNOWN = LastKnown(values={}, backfill_from=NOW - 86_400_000, now=NOW)


def recorded(name: str) -> httpx.Response:
    status = int(re.search(r"\.(\d{3})", name).group(1))  # type: ignore[union-attr]
    return httpx.Response(
        status, content=(FIXTURES / name).read_bytes(), headers={"content-type": "application/json"}
    )


#: where the copies came from (the project's protocol notes), when that tree is present
SHARED = Path("/work/shared/protocols/fixtures/dexcom_share")


def test_fixtures_are_unchanged_copies_with_their_source_noted() -> None:
    names = sorted(p.name for p in FIXTURES.glob("*.json"))
    notes = (FIXTURES / "SOURCES.md").read_text()
    assert "gagebenne/pydexcom" in notes and "MIT" in notes
    for name in names:
        assert f"| {name} |" in notes, f"{name} has no source line in SOURCES.md"
    if not SHARED.is_dir():
        pytest.skip("the protocol notes' fixture tree is not present here")
    # every recorded Dexcom payload was copied, byte for byte
    assert sorted(p.name for p in SHARED.glob("*.json")) == names
    for name in names:
        assert (SHARED / name).read_bytes() == (FIXTURES / name).read_bytes(), name


def test_every_fixture_is_covered() -> None:
    names = {p.name for p in FIXTURES.glob("*.json")}
    assert names == {
        "authenticate_publisher_account.200.json",
        "authenticate_publisher_account.500_AccountPasswordInvalid.json",
        "login_publisher_account_by_id.200.json",
        "login_publisher_account_by_id.500_AccountPasswordInvalid.json",
        "read_publisher_latest_glucose_values.200.json",
        "read_publisher_latest_glucose_values.200_empty.json",
        "read_publisher_latest_glucose_values.500_SessionIdNotFound.json",
    }


def test_authenticate_answer_is_the_account_id() -> None:
    response = recorded("authenticate_publisher_account.200.json")
    assert uuid_answer(response, step="authenticate") == "99999999-9999-9999-9999-999999999999"


def test_login_answer_is_the_session_id() -> None:
    response = recorded("login_publisher_account_by_id.200.json")
    assert uuid_answer(response, step="login") == "55555555-5555-5555-5555-555555555555"


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("authenticate_publisher_account.500_AccountPasswordInvalid.json", "authenticate"),
        ("login_publisher_account_by_id.500_AccountPasswordInvalid.json", "login"),
    ],
)
def test_bad_password_is_rejected_credentials(name: str, step: str) -> None:
    with pytest.raises(AuthRejected) as info:
        uuid_answer(recorded(name), step=step)  # type: ignore[arg-type]
    assert "AccountPasswordInvalid" in str(info.value)
    assert type(info.value) is AuthRejected  # not a lockout


def test_session_not_found_expires_the_session_without_echoing_its_id() -> None:
    with pytest.raises(SessionExpired) as info:
        list_answer(recorded("read_publisher_latest_glucose_values.500_SessionIdNotFound.json"), step="read")
    assert "SessionIdNotFound" in str(info.value)
    assert "3333" not in str(info.value)  # the vendor message carries the session id


def test_recorded_reading_becomes_one_sgv_entry() -> None:
    raw = list_answer(recorded("read_publisher_latest_glucose_values.200.json"), step="read")
    batch = transform(raw, LAST_KNOWN)
    assert batch.entries == (
        Entry(type="sgv", date=1_745_081_013_817, device="share2", sgv=224, direction="Flat", trend=4),
    )
    doc = to_nightscout(batch.entries[0])
    assert doc["dateString"] == "2025-04-19T16:43:33.817Z"
    assert doc["direction"] == "Flat" and doc["trend"] == 4 and doc["type"] == "sgv"
    assert batch.covered == {}  # the checkpoint stays on the reading itself


def test_recorded_empty_answer_is_an_empty_batch() -> None:
    raw = list_answer(recorded("read_publisher_latest_glucose_values.200_empty.json"), step="read")
    batch = transform(raw, LAST_KNOWN)
    assert len(batch) == 0 and batch.newest() == {}


def _shape(body: dict[str, str]) -> dict[str, object]:
    """A fault body with its per-request parts (times, ids) blanked."""
    sub = re.sub(r'(DateThrownLocal|DateThrown|Id)="[^"]*"', r'\1=""', body["SubCode"])
    sub = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", sub)
    return {**body, "SubCode": sub, "Message": re.sub(r"[0-9a-f-]{36}", "<uuid>", body["Message"])}


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("authenticate_publisher_account.500_AccountPasswordInvalid.json", "AccountPasswordInvalid"),
        ("read_publisher_latest_glucose_values.500_SessionIdNotFound.json", "SessionIdNotFound"),
    ],
)
def test_emulator_fault_bodies_match_the_recorded_ones(name: str, code: str) -> None:
    recorded_body = json.loads((FIXTURES / name).read_text())
    emulated = fault_body(code, NOW, session="33333333-3333-3333-3333-333333333333")
    assert list(emulated) == list(recorded_body)  # same keys, same order
    assert _shape(emulated) == _shape(recorded_body)


def test_emulator_readings_have_the_recorded_shape() -> None:
    (recorded_reading,) = json.loads((FIXTURES / "read_publisher_latest_glucose_values.200.json").read_text())
    account = ShareEmulator().add_account("x", "y", first_reading_ms=1_745_081_013_817)
    emulated = account.record(3)
    assert list(emulated) == list(recorded_reading)
    for key, value in recorded_reading.items():
        assert type(emulated[key]) is type(value), key
        if isinstance(value, str) and value.startswith("Date("):
            pattern = re.sub(r"\d+", r"\\d+", re.escape(value))
            assert re.fullmatch(pattern, emulated[key]), (key, emulated[key])
    # and it goes through the same transform to the same kind of record
    (entry,) = transform([emulated], LAST_KNOWN).entries
    assert entry.date == account.reading_time(3) and entry.sgv == emulated["Value"]
