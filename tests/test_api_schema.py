"""The app against its own OpenAPI document: schemathesis generates requests for every documented
operation (in-process, through ASGI) and checks that nothing answers 5xx and every response
matches the document — for valid requests (positive) and for requests that break the document
(negative: wrong types, out-of-range numbers, malformed values).

Requests carry the secret both ways a route may look for it: as ``api-secret`` (Nightscout's v1)
and as a Bearer token (API v3 takes only tokens), so every route reads for real."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.test_api_support import SECRET, make_app, populate

AUTH = {"api-secret": hashlib.sha1(SECRET.encode()).hexdigest(), "Authorization": f"Bearer {SECRET}"}


def expressible(case) -> bool:
    """What OpenAPI cannot say: a v3 search takes ``sort`` or ``sort$desc``, not both; the
    episodes' ``since`` is not after their ``until`` (by default, now)."""
    query = case.query or {}
    since, until = query.get("since"), query.get("until")
    if isinstance(since, int) and not isinstance(until, int):
        until = int(time.time() * 1000) + 60_000  # until defaults to now
    if isinstance(since, int) and isinstance(until, int) and since > until:
        return False
    return not (query.get("sort") and query.get("sort$desc"))


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory):
    path = Path(tmp_path_factory.mktemp("schema")) / "store.db"
    populate(path, count=300)
    app, reader = make_app(path)
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    reader.close()


V3_OPERATIONS = {
    "GET /api/v2/authorization/request/{token}",
    "GET /api/v3/version",
    "GET /api/v3/status",
    "GET /api/v3/lastModified",
    "GET /api/v3/{collection}",
    "GET /api/v3/{collection}/history",
    "GET /api/v3/{collection}/history/{lastModified}",
    "GET /api/v3/{collection}/{identifier}",
}
CONNECT_OPERATIONS = {
    "GET /api/connect/export.csv",
    "GET /api/connect/export.ndjson",
    "GET /api/connect/latest",
    "GET /api/connect/devices/{device}/latest",
}

PARITY_OPERATIONS = {
    "GET /api/v1/entries.txt",
    "GET /api/v1/entries/sgv.txt",
    "GET /api/v1/entries.csv",
    "GET /api/v1/entries.tsv",
    "GET /api/v1/profile/current.json",
    "GET /pebble",
    "GET /api/v2/properties",
    "GET /api/v2/properties/{names}",
}


def run_operations(schema, mode: GenerationMode, examples: int) -> list[str]:
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() != "GET":
            # the writes answer 405 on this read-only app; test_api_writes generates their bodies
            continue

        @given(case=operation.as_strategy(generation_mode=mode).filter(expressible))
        @settings(
            max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case):
            case.call_and_validate(headers=AUTH)

        try:
            check()
        except Unsatisfiable:
            # no parameters to break (e.g. /healthz): nothing negative to send
            assert mode == GenerationMode.NEGATIVE
            continue
        checked.append(operation.label)
    return checked


def test_valid_requests_conform(api_schema):
    checked = run_operations(api_schema, GenerationMode.POSITIVE, 12)
    assert {
        "GET /api/v1/entries.json",
        "GET /api/v1/entries/{spec}",
        "GET /api/v1/status.json",
        *V3_OPERATIONS,
        *CONNECT_OPERATIONS,
        *PARITY_OPERATIONS,
    } <= set(checked)
    assert len(checked) >= 31


def test_the_document_describes_ids_patterns_and_served_fields(api_schema):
    document = api_schema.raw_schema
    entries = document["paths"]["/api/v1/entries.json"]["get"]
    names = {p["name"]: p for p in entries["parameters"]}
    assert names["find[_id]"]["schema"]["pattern"] == "^[0-9a-fA-F]{24}$"
    assert "find[_id][$gt]" not in names  # an id takes equality only
    treatments = {p["name"]: p for p in document["paths"]["/api/v1/treatments.json"]["get"]["parameters"]}
    assert "/pattern/flags" in treatments["find[eventType]"]["description"]
    by_spec = document["paths"]["/api/v1/entries/{spec}"]["get"]
    spec = next(p for p in by_spec["parameters"] if p["name"] == "spec")
    assert spec["in"] == "path" and "24" in spec["schema"]["pattern"]
    item = entries["responses"]["200"]["content"]["application/json"]["schema"]["items"]
    assert {"sysTime", "utcOffset"} <= set(item["required"])
    status = document["paths"]["/api/v1/status.json"]["get"]["responses"]["200"]["content"]
    properties = status["application/json"]["schema"]["properties"]
    assert "connectVersion" in properties and "oneOf" in properties["authorized"]


def test_invalid_requests_are_refused_not_crashed(api_schema):
    checked = run_operations(api_schema, GenerationMode.NEGATIVE, 8)
    assert {
        "GET /api/v1/entries.json",
        "GET /api/v1/treatments.json",
        "GET /api/v1/entries/sgv.json",
        "GET /api/v1/entries/{spec}",
        "GET /api/v3/{collection}",
        "GET /api/v3/{collection}/history/{lastModified}",
        "GET /api/connect/export.csv",
        "GET /api/connect/devices/{device}/latest",
        "GET /pebble",
        "GET /api/v2/properties/{names}",
        "GET /api/v1/entries/sgv.txt",
    } <= set(checked)
