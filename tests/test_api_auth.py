"""Who may read: every accepted form of the secret, 401s for wrong or missing ones, anonymous
reading only when configured (with or without a secret), the bind rule, and the secret never
coming back out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pydantic
import pytest
from structlog.testing import capture_logs

from api import ApiSettings, check_bind
from connect.errors import ConfigError
from tests.test_api_support import SECRET, ApiClient, make_app, populate

SHA1 = hashlib.sha1(SECRET.encode()).hexdigest()
SHA512 = hashlib.sha512(SECRET.encode()).hexdigest()
UNAUTHORIZED = {"status": 401, "message": "Unauthorized", "description": "Invalid/Missing"}
#: the JSON routes that need reading rights; the status page "/" needs them too, and answers a
#: browser with HTML
PROTECTED_JSON = [
    "/api/v1/entries.json",
    "/api/v1/entries/sgv.json",
    "/api/v1/entries/current.json",
    "/api/v1/entries/0123456789abcdef01234567",
    "/api/v1/treatments.json",
    "/api/v1/devicestatus.json",
    "/api/v1/profile.json",
    "/api/v1/status.json",
    "/api/connect/status",
    "/metrics",
]
PROTECTED = [*PROTECTED_JSON, "/"]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(tmp_path_factory.mktemp("auth")) / "store.db"
    populate(path, count=50)
    return path


@pytest.fixture
def client(store_path):
    app, reader = make_app(store_path)
    with ApiClient(app) as c:
        yield c
    reader.close()


ACCEPTED = {
    "api-secret sha1": ({"api-secret": SHA1}, ""),
    "api-secret SHA1 upper case": ({"API-SECRET": SHA1.upper()}, ""),
    "api-secret sha512": ({"api-secret": SHA512}, ""),
    "token": ({}, f"token={SECRET}"),
    "bearer": ({"Authorization": f"Bearer {SECRET}"}, ""),
    "secret query (sha1)": ({}, f"secret={SHA1}"),
    "proxy basic auth beside the secret": ({"Authorization": "Basic dXNlcjpwYXNz", "api-secret": SHA1}, ""),
    # Nightscout: any one valid credential is enough; a wrong one beside it does not revoke it
    "right header, wrong token": ({"api-secret": SHA1}, "token=nope-nope-nope-nope"),
    "wrong header, right token": ({"api-secret": "0" * 40}, f"token={SECRET}"),
    "wrong bearer, right secret query": ({"Authorization": "Bearer nope-nope-nope"}, f"secret={SHA1}"),
    "right bearer, wrong token": ({"Authorization": f"Bearer {SECRET}"}, "token=nope-nope-nope-nope"),
}

REFUSED = {
    "nothing": ({}, ""),
    "wrong sha1": ({"api-secret": hashlib.sha1(b"not-the-secret-at-all").hexdigest()}, ""),
    "the secret itself as api-secret": ({"api-secret": SECRET}, ""),
    "wrong token": ({}, "token=not-the-secret-at-all"),
    "token of the sha1": ({}, f"token={SHA1}"),
    "wrong bearer": ({"Authorization": "Bearer not-the-secret-at-all"}, ""),
    "empty bearer": ({"Authorization": "Bearer "}, ""),
    "non-ascii": ({"api-secret": ("é" * 40).encode("utf-8")}, ""),
    "non-ascii token": ({}, "token=" + "%C3%A9" * 20),
    "basic auth only": ({"Authorization": "Basic dXNlcjpwYXNz"}, ""),
}


@pytest.mark.parametrize("form", sorted(ACCEPTED))
def test_each_accepted_form_reads(client, form):
    headers, query = ACCEPTED[form]
    for path in PROTECTED:
        response = client.get(f"{path}?{query}" if query else path, headers=headers)
        assert response.status_code == 200, (path, response.text)


@pytest.mark.parametrize("form", sorted(REFUSED))
def test_wrong_or_missing_secret_is_401(client, form):
    headers, query = REFUSED[form]
    for path in PROTECTED_JSON:
        response = client.get(f"{path}?{query}" if query else path, headers=headers)
        assert response.status_code == 401, path
        assert response.json() == UNAUTHORIZED
    page = client.get(f"/?{query}" if query else "/", headers=headers)
    assert page.status_code == 401
    assert page.headers["content-type"].startswith("text/html")
    assert "?token=" in page.text and 'class="reading"' not in page.text


def test_probes_and_the_document_are_open(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    # even with a wrong secret: a liveness probe must not depend on credentials
    assert client.get("/healthz", headers={"api-secret": "wrong"}).status_code == 200


def test_verifyauth_tells_a_client_whether_it_may_read(client):
    good = client.get("/api/v1/verifyauth", headers={"api-secret": SHA1}).json()["message"]
    assert good["canRead"] is True and good["isAdmin"] is True and good["message"] == "OK"
    bad = client.get("/api/v1/verifyauth", headers={"api-secret": "nope"}).json()["message"]
    assert bad["canRead"] is False and bad["message"] == "UNAUTHORIZED"
    anonymous = client.get("/api/v1/verifyauth").json()["message"]
    assert anonymous["canRead"] is False and anonymous["rolefound"] == "NOTFOUND"


def test_readable_allows_anonymous_reads_but_not_wrong_secrets(store_path):
    app, reader = make_app(store_path, readable=True)
    with ApiClient(app) as c:
        for path in PROTECTED:
            assert c.get(path).status_code == 200, path
        assert c.get("/api/v1/entries.json", headers={"api-secret": "wrong"}).status_code == 401
        assert c.get(f"/api/v1/entries.json?token={SECRET}").status_code == 200
        anonymous = c.get("/api/v1/status.json").json()
        assert anonymous["settings"]["authDefaultRoles"] == "readable"
        assert anonymous["authorized"] is None  # read anonymously: nothing was granted
        assert c.get(f"/api/v1/status.json?token={SECRET}").json()["authorized"]["sub"] == "api-secret"
    reader.close()


@pytest.mark.parametrize("form", ["nothing", "api-secret sha1", "token", "bearer"])
def test_without_a_secret_nobody_reads_unless_reading_is_switched_on(store_path, form):
    """No secret and no CONNECT_HTTP_READABLE: loopback is no consent (every local user and
    process could read the glucose history), so reads answer 401 and say how to turn them on."""
    headers, query = {**ACCEPTED, **REFUSED}[form]
    app, reader = make_app(store_path, secret=None)
    with ApiClient(app) as c:
        for path in PROTECTED_JSON:
            response = c.get(f"{path}?{query}" if query else path, headers=headers)
            assert response.status_code == 401, path
            body = response.json()
            assert body["status"] == 401 and body["message"] == "Unauthorized"
            assert "CONNECT_HTTP_SECRET" in body["description"]
            assert "CONNECT_HTTP_READABLE=true" in body["description"]
        page = c.get("/")
        assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
        assert "CONNECT_HTTP_READABLE=true" in page.text and "CONNECT_HTTP_SECRET" in page.text
        assert 'class="reading"' not in page.text and "<script" not in page.text
        # the probes, the document and verifyauth stay open; verifyauth says "no"
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200
        assert c.get("/openapi.json").status_code == 200
        verdict = c.get("/api/v1/verifyauth").json()["message"]
        assert verdict["canRead"] is False and verdict["message"] == "UNAUTHORIZED"
    reader.close()


def test_without_a_secret_reading_switched_on_is_open(store_path):
    app, reader = make_app(store_path, secret=None, readable=True)
    with ApiClient(app) as c:
        for path in PROTECTED:
            assert c.get(path).status_code == 200, path
        status = c.get("/api/v1/status.json").json()
        assert status["settings"]["authDefaultRoles"] == "readable"
        assert status["authorized"] is None
        assert c.get("/api/v1/verifyauth").json()["message"]["canRead"] is True
    reader.close()


def test_status_json_authorized_reflects_the_request(client):
    granted = client.get("/api/v1/status.json", headers={"api-secret": SHA1})
    assert granted.json()["authorized"] == {"sub": "api-secret", "permissionGroups": [["*:*:read"]]}
    for headers, query in (
        ({}, f"token={SECRET}"),
        ({}, f"secret={SHA1}"),
        ({"Authorization": f"Bearer {SECRET}"}, ""),
    ):
        status = client.get(f"/api/v1/status.json?{query}", headers=headers).json()
        assert status["authorized"]["sub"] == "api-secret", (headers, query)
        assert not leaks(json.dumps(status))


def test_denied_by_default_is_announced(client):
    status = client.get("/api/v1/status.json", headers={"api-secret": SHA1}).json()
    assert status["settings"]["authDefaultRoles"] == "denied"


def leaks(text: str) -> bool:
    lowered = text.lower()
    return any(v.lower() in lowered for v in (SECRET, SHA1, SHA512))


def test_nothing_echoes_the_secret(client):
    responses = [
        client.get(f"/api/v1/entries.json?token={SECRET}&count=abc"),  # 400 with the token present
        # the secret as a field name (any field may be searched: an empty answer)
        client.get(f"/api/v1/entries.json?token={SECRET}&find[{SECRET}]=1"),
        client.get(f"/api/v1/entries.json?token={SECRET}&find[date][{SECRET}]=1"),  # as an operator
        client.get(
            f"/api/v1/entries.json?find[date][$gte]={SECRET}", headers={"api-secret": SHA1}
        ),  # a value
        client.get(f"/nowhere?token={SECRET}"),
        client.get(f"/api/v1/entries.json?token={SECRET}x"),  # wrong, close to right
        client.get("/api/v1/entries.json", headers={"api-secret": SHA1 + "0"}),
        client.post(f"/api/v1/entries.json?token={SECRET}", json={"secret": SECRET}),
        client.get(f"/api/connect/status?token={SECRET}"),
        client.get(f"/metrics?token={SECRET}"),
        client.get(f"/?token={SECRET}"),
        client.get(f"/api/v1/status.json?token={SECRET}"),
        client.get(f"/api/v1/verifyauth?token={SECRET}"),
    ]
    assert [r.status_code for r in responses[:6]] == [400, 200, 400, 400, 404, 401]
    assert responses[-2].json()["authorized"] is not None  # granted, and still no secret in it
    for response in responses:
        assert not leaks(response.text), response.request.url
        assert not leaks(str(response.headers))


def test_logs_never_carry_the_secret(store_path):
    def broken_status():
        raise RuntimeError(f"status exploded near {SECRET}")

    app, reader = make_app(store_path, status=broken_status)
    with capture_logs() as logs, ApiClient(app) as c:
        body = c.get(f"/api/connect/status?token={SECRET}")
        assert body.status_code == 200 and body.json()["runtime"] == "unavailable"
        assert c.get(f"/metrics?token={SECRET}").status_code == 200
        assert c.get(f"/readyz?token={SECRET}").status_code == 503
    reader.close()
    assert logs, "the broken status is logged"
    assert not leaks(repr(logs))


# --- settings and the bind rule ------------------------------------------------------------------


def test_short_secrets_are_refused_without_echoing_them():
    with pytest.raises(pydantic.ValidationError) as info:
        ApiSettings(http_secret="short-one")
    assert "short-one" not in str(info.value)
    assert "12" in str(info.value)


def test_settings_come_from_connect_variables(monkeypatch):
    monkeypatch.setenv("CONNECT_HTTP_BIND", "0.0.0.0:8080")
    monkeypatch.setenv("CONNECT_HTTP_SECRET", SECRET)
    monkeypatch.setenv("CONNECT_HTTP_READABLE", "true")
    settings = ApiSettings()
    assert settings.http_bind == "0.0.0.0:8080" and settings.http_readable is True
    assert settings.http_secret is not None and settings.http_secret.get_secret_value() == SECRET
    assert SECRET not in repr(settings)
    assert check_bind(settings) == "0.0.0.0:8080"


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("127.0.0.1:1338", "127.0.0.1:1338"),
        ("localhost:9000", "localhost:9000"),
        ("[::1]:1338", "[::1]:1338"),
        ("127.0.0.5:1", "127.0.0.5:1"),
        ("unix:/run/connect.sock", "unix:/run/connect.sock"),
        ("0", None),
        ("off", None),
        # an empty value is no value: the default address
        ("", "127.0.0.1:1338"),
    ],
)
def test_loopback_binds_need_no_secret(bind, expected):
    assert check_bind(ApiSettings(http_bind=bind, http_secret=None)) == expected


@pytest.mark.parametrize("bind", ["0.0.0.0:1338", "192.168.1.20:1338", "[::]:1338", "example.org:80"])
def test_reachable_binds_need_a_secret(bind):
    # refused where the settings are read, with the other settings' problems
    with pytest.raises(pydantic.ValidationError) as info:
        ApiSettings(http_bind=bind, http_secret=None)
    assert "CONNECT_HTTP_SECRET" in str(info.value) and "reachable" in str(info.value)
    assert check_bind(ApiSettings(http_bind=bind, http_secret=SECRET)) == bind
    # anonymous reading does not make an unprotected public API acceptable
    with pytest.raises(pydantic.ValidationError):
        ApiSettings(http_bind=bind, http_secret=None, http_readable=True)


@pytest.mark.parametrize(
    "bind", ["1338", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", ":1338", "unix:", "x..y:80"]
)
def test_malformed_binds_are_settings_errors(bind):
    with pytest.raises(pydantic.ValidationError):
        ApiSettings(http_bind=bind, http_secret=SECRET)
    # the parser the daemon calls says the same, naming the setting
    with pytest.raises(ConfigError) as config:
        check_bind(ApiSettings.model_construct(http_bind=bind, http_secret=None))
    assert "CONNECT_HTTP_BIND" in str(config.value)


def test_the_default_bind_is_loopback_1338(monkeypatch):
    for name in ("CONNECT_HTTP_BIND", "CONNECT_HTTP_SECRET", "CONNECT_HTTP_READABLE"):
        monkeypatch.delenv(name, raising=False)
    settings = ApiSettings()
    assert settings.http_bind == "127.0.0.1:1338" and settings.http_secret is None
    assert settings.http_readable is False
    assert check_bind(settings) == "127.0.0.1:1338"


@pytest.mark.parametrize("form", sorted(ACCEPTED) + sorted(set(REFUSED) - {"nothing", "basic auth only"}))
def test_every_credential_is_compared_in_constant_time(store_path, monkeypatch, form):
    """Each offered credential goes through hmac.compare_digest; a plain == would leak timing."""
    import api.auth

    seen: list[tuple[bytes, bytes]] = []
    real = api.auth.hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api.auth.hmac, "compare_digest", spy)
    headers, query = {**ACCEPTED, **REFUSED}[form]
    app, reader = make_app(store_path)
    with ApiClient(app) as c:
        response = c.get(
            f"/api/v1/entries.json?{query}" if query else "/api/v1/entries.json", headers=headers
        )
    reader.close()
    assert response.status_code == (200 if form in ACCEPTED else 401)
    assert seen, "no constant-time comparison was made"
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in seen)
