"""Reads of the store answer with an ETag (the store's revision), honour If-None-Match with 304,
and render a body once per revision."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from api.cache import BodyCache, matches
from connect.records import Entry
from store import Store
from tests.test_api_support import SECRET, ApiClient, make_app, populate

AUTH = {"api-secret": hashlib.sha1(SECRET.encode()).hexdigest()}
BEARER = {"Authorization": f"Bearer {SECRET}"}

#: every read of stored documents, with the credentials its API takes
READS = [
    ("/api/v1/entries.json?count=5", AUTH),
    ("/api/v1/entries", AUTH),
    ("/api/v1/entries/sgv.json", AUTH),
    ("/api/v1/entries/current.json", AUTH),
    ("/api/v1/entries/mbg", AUTH),
    ("/api/v1/treatments.json", AUTH),
    ("/api/v1/devicestatus.json", AUTH),
    ("/api/v1/profile.json", AUTH),
    ("/api/v3/entries?sort$desc=date&limit=5", BEARER),
    ("/api/v3/treatments/history/0", BEARER),
    ("/api/v3/food", BEARER),
    ("/api/connect/latest", AUTH),
    ("/api/connect/devices/share2/latest?count=3", AUTH),
    ("/api/connect/export.ndjson?from=2020-01-01", AUTH),
]


@pytest.fixture
def site(tmp_path: Path):
    path = tmp_path / "store.db"
    info = populate(path, count=50)
    store = Store(path)
    app, reader = make_app(path)
    with ApiClient(app) as client:
        yield client, store, info, app
    reader.close()
    store.close()


def write_a_reading(store: Store, info: dict) -> None:
    store.upsert([Entry(type="sgv", date=info["end"] + 60_000, device="share2", sgv=222)])


@pytest.mark.parametrize(("url", "auth"), READS)
def test_every_read_has_an_etag_and_answers_304_until_the_store_changes(site, url, auth) -> None:
    client, store, info, _app = site
    first = client.get(url, headers=auth)
    assert first.status_code == 200 and first.content
    etag = first.headers["etag"]
    again = client.get(url, headers={**auth, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    # any of several tags, weak or strong, names it
    listed = client.get(url, headers={**auth, "If-None-Match": f'"other", W/{etag.removeprefix("W/")}'})
    assert listed.status_code == 304
    assert client.get(url, headers={**auth, "If-None-Match": '"other"'}).status_code == 200

    write_a_reading(store, info)
    fresh = client.get(url, headers={**auth, "If-None-Match": etag})
    if "/history/" in url:
        # a v3 history's ETag is the newest change it lists: a new reading is not a treatment
        assert fresh.status_code == 304
        return
    assert fresh.status_code == 200 and fresh.headers["etag"] != etag


def test_a_body_is_rendered_once_per_store_revision(site) -> None:
    client, store, info, app = site
    cache: BodyCache = app.state.context.cache
    url = "/api/v1/entries.json?count=20"
    bodies = [client.get(url, headers=AUTH).content for _ in range(5)]
    assert cache.renders == 1 and len(set(bodies)) == 1
    # the same question asked with other credentials is the same question
    assert client.get(url + f"&token={SECRET}").content == bodies[0] and cache.renders == 1
    client.get("/api/v1/entries.json?count=21", headers=AUTH)
    assert cache.renders == 2
    write_a_reading(store, info)
    changed = client.get(url, headers=AUTH)
    assert cache.renders == 3 and changed.json()[0]["sgv"] == 222
    client.get(url, headers=AUTH)
    assert cache.renders == 3


def test_credentials_are_judged_before_any_cached_answer(site) -> None:
    client, _store, _info, _app = site
    etag = client.get("/api/v1/entries.json", headers=AUTH).headers["etag"]
    for headers in ({}, {"api-secret": "0" * 40}, {"If-None-Match": etag}):
        refused = client.get("/api/v1/entries.json", headers=headers)
        assert refused.status_code == 401 and "etag" not in refused.headers
    v3 = client.get("/api/v3/entries", headers={"If-None-Match": etag})
    assert v3.status_code == 401


def test_answers_that_carry_the_time_have_no_etag(site) -> None:
    client, _store, _info, _app = site
    for url, auth in (
        ("/api/v1/status.json", AUTH),
        ("/api/v3/lastModified", BEARER),
        ("/api/v3/status", BEARER),
    ):
        response = client.get(url, headers=auth)
        assert response.status_code == 200 and "etag" not in response.headers, url


def test_latest_is_kept_a_minute_at_most(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    info = populate(path, count=10)
    now = [info["end"]]
    app, reader = make_app(path, clock=lambda: now[0])
    with ApiClient(app) as client:
        etag = client.get("/api/connect/latest", headers=AUTH).headers["etag"]
        assert client.get("/api/connect/latest", headers={**AUTH, "If-None-Match": etag}).status_code == 304
        now[0] += 60_000  # which devices are silent depends on the clock
        assert client.get("/api/connect/latest", headers={**AUTH, "If-None-Match": etag}).status_code == 200
        # with every device shown, the answer is the store's alone
        shown = client.get("/api/connect/latest?all=true", headers=AUTH).headers["etag"]
        now[0] += 3_600_000
        assert (
            client.get("/api/connect/latest?all=true", headers={**AUTH, "If-None-Match": shown}).status_code
            == 304
        )
    reader.close()


def test_the_cache_stays_within_its_bounds() -> None:
    from api.cache import Rendered, _Kept

    cache = BodyCache(entries=3, total_bytes=100, body_bytes=60)
    for i in range(5):
        cache.put(("k", i), _Kept(1, '"1"', Rendered(b"x" * 10)))
    assert cache.get(("k", 0), 1) is None and cache.get(("k", 4), 1) is not None
    cache.put(("big",), _Kept(1, '"1"', Rendered(b"x" * 61)))  # too big to keep
    assert cache.get(("big",), 1) is None
    for i in range(3):
        cache.put(("half", i), _Kept(1, '"1"', Rendered(b"x" * 45)))
    assert sum(cache.get(("half", i), 1) is not None for i in range(3)) == 2
    assert cache.get(("half", 2), 2) is None  # another revision: not this answer


@pytest.mark.parametrize(
    ("header", "etag", "expected"),
    [
        (None, '"1-a"', False),
        ('"1-a"', '"1-a"', True),
        ('W/"1-a"', '"1-a"', True),
        ('"1-a"', 'W/"1-a"', True),
        ('"0-a", "1-a"', '"1-a"', True),
        ("*", '"1-a"', True),
        ('"1-b"', '"1-a"', False),
        ("", '"1-a"', False),
    ],
)
def test_if_none_match_is_compared_weakly(header, etag, expected) -> None:
    assert matches(header, etag) is expected
