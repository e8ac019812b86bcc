"""``nightscout-connect capture DIR``: a source's HTTP conversation, saved for a maintainer.

One frame per loop of the configured source runs against the real vendor (outputs off, an
in-memory store), and every HTTP exchange it makes is written to ``DIR`` as one JSON file
(``0001-POST-login.json`` …): method, URL, status, both sets of headers and both bodies.

Nothing a person would not hand a stranger reaches the disk. Exchanges are kept in memory
until the frames are over, then every secret is replaced by a placeholder that stays the
same for the same value across the whole capture (``<token-1>`` in a login answer is the
``<token-1>`` of every later ``Authorization`` header), so a session can still be followed.
Secrets are found two ways:

* by name: values of fields, query parameters, form fields, headers and cookies whose names
  say what they are (passwords, tokens, cookies, session and account ids, user names, e-mail
  addresses, first and last names, birth dates, device serial numbers …), compared
  case-insensitively;
* by value: every secret the settings hold (passwords, user names, e-mail addresses …),
  every secret registered with :mod:`connect.redact`, and every value found by name anywhere
  in the capture are replaced wherever else they appear — inside URLs, paths, other strings,
  in their URL-encoded forms and as their SHA-1 / SHA-256 hex digests.

A bare JSON string answered by a login or session call (Dexcom's account and session ids) is
a secret too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import pydantic
from pydantic_settings import BaseSettings

from connect.assemble import assemble, http_client
from connect.contract import SourceInfo
from connect.redact import registered
from connect.settings import CoreSettings
from store import Store

#: field, parameter and header names (lower case, without ``-``, ``_``, ``.`` and spaces) whose
#: values are secret or identify a person, and the word their placeholders carry
SENSITIVE_KEYS: Final[Mapping[str, str]] = {
    **dict.fromkeys(("password", "passwd", "pwd", "pass", "passphrase", "currentpassword",
                     "newpassword"), "password"),
    **dict.fromkeys(("secret", "apisecret", "clientsecret", "apikey", "xapikey", "codeverifier",
                     "privatekey"), "secret"),
    **dict.fromkeys(("token", "accesstoken", "refreshtoken", "idtoken", "authtoken", "xauthtoken",
                     "bearer", "jwt", "trusteddevicetoken", "devicetoken", "authorization",
                     "proxyauthorization", "ticket", "authticket"), "token"),
    **dict.fromkeys(("cookie", "setcookie"), "cookie"),
    **dict.fromkeys(("sessionid", "session", "sessiontoken", "sessiondata", "xsessionid", "sid"),
                    "session"),
    **dict.fromkeys(("accountid", "userid", "magidentifier", "glookocode", "patientid", "patient",
                     "subjectid", "sub", "xaccountid"), "account"),
    **dict.fromkeys(("username", "accountname", "login", "user", "patientusername",
                     "preferredusername", "userlogin", "loginname"), "user"),
    **dict.fromkeys(("email", "emailaddress", "mail", "useremail"), "email"),
    **dict.fromkeys(("firstname", "lastname", "fullname", "givenname", "familyname", "middlename",
                     "displayname", "nickname", "patientname"), "name"),
    **dict.fromkeys(("dateofbirth", "birthdate", "dob", "birthday"), "birthdate"),
    **dict.fromkeys(("phone", "phonenumber", "mobile", "mobilephone", "telephone"), "phone"),
    # a pump's, phone's or sensor's serial number points at one person as surely as a name
    # (LibreLinkUp calls the sensor's ``sn``); more spellings are matched by SERIAL_SUFFIXES
    **dict.fromkeys(("sn", "transmitterid"), "serial"),
}  # fmt: skip
#: a name ending in one of these holds a device serial number (``medicalDeviceSerialNumber``,
#: ``conduitSerialNumber``, CareLink's ``cpSerialNumber`` parameter, ``sensorSerial`` …)
SERIAL_SUFFIXES: Final = ("serialnumber", "serialnum", "serialno", "serial")
#: names that are secret in a query string or a form (an OAuth code), not in JSON documents
QUERY_ONLY_KEYS: Final[Mapping[str, str]] = {"code": "secret"}
#: kinds whose values are matched without regard to case (e-mail addresses and user names are)
CASELESS_KINDS: Final = frozenset({"email", "user"})
#: kinds of the fields that make an object describe a person, whose ``id`` is then theirs
PERSON_KINDS: Final = frozenset({"name", "email", "user"})
#: values too common to hunt for elsewhere (they are still replaced where they were found)
TRIVIAL: Final = frozenset({"true", "false", "null", "none", "nil", "undefined", "hidden", "n/a", "redacted"})
#: a bare JSON string answered by a call with one of these in its path is a session or account id
SESSION_PATH: Final = re.compile(r"login|authenticat|session|oauth|token|sign_?in", re.IGNORECASE)
#: settings fields that name a person or an account, though they are not SecretStr
IDENTITY_FIELD: Final = re.compile(r"(user_?name|account_name|email|patient|_user$|login)")
URL_HEADERS: Final = frozenset({"location", "content-location", "referer", "origin"})
FILE_NAME: Final = re.compile(r"^\d{4}-.*\.json$")
MIN_LEARN = 3
#: shorter values are only replaced where they stand alone, not inside longer words
WHOLE_WORD_BELOW = 8


def normal_key(key: str) -> str:
    return re.sub(r"[-_.\s]", "", key.lower())


def key_kind(key: str, *, query: bool = False) -> str | None:
    """The placeholder word for a field name, or None when the name says nothing secret."""
    name = normal_key(key)
    kind = SENSITIVE_KEYS.get(name)
    if kind is None and name.endswith(SERIAL_SUFFIXES):
        kind = "serial"
    if kind is None and query:
        kind = QUERY_ONLY_KEYS.get(name)
    return kind


# --- recording ------------------------------------------------------------------------------------


@attrs.define
class Exchange:
    """One HTTP request and its answer, as sent and received (in memory only, never written)."""

    index: int
    started: float
    method: str
    url: str
    request_headers: list[tuple[str, str]]
    request_body: bytes
    status: int | None = None
    reason: str = ""
    response_headers: list[tuple[str, str]] = attrs.Factory(list)
    #: the body after content decoding (gzip …), as the source read it
    response_body: bytes = b""
    elapsed_ms: float | None = None
    error: str | None = None


@attrs.define
class Recorder:
    """Collects exchanges in the order their requests started."""

    exchanges: list[Exchange] = attrs.Factory(list)

    def begin(self, request: httpx.Request, body: bytes) -> Exchange:
        exchange = Exchange(
            index=len(self.exchanges) + 1,
            started=time.time(),
            method=request.method,
            url=str(request.url),
            request_headers=[(k, v) for k, v in request.headers.multi_items()],
            request_body=body,
        )
        self.exchanges.append(exchange)
        return exchange


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests to ``inner`` unchanged and records each exchange with ``recorder``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        exchange = self.recorder.begin(request, body)
        started = time.perf_counter()
        try:
            response = await self.inner.handle_async_request(request)
            try:
                raw = b"".join([part async for part in response.aiter_raw()])
            finally:
                await response.aclose()
        except BaseException as exc:
            exchange.error = type(exc).__name__
            exchange.elapsed_ms = (time.perf_counter() - started) * 1000
            raise
        exchange.elapsed_ms = (time.perf_counter() - started) * 1000
        exchange.status = response.status_code
        exchange.reason = response.reason_phrase
        exchange.response_headers = [(k, v) for k, v in response.headers.multi_items()]
        exchange.response_body = _decoded(response, raw)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(raw),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


def _decoded(response: httpx.Response, raw: bytes) -> bytes:
    """The body as the client will see it (content encodings undone); raw when that fails."""
    copy = httpx.Response(response.status_code, headers=response.headers, stream=httpx.ByteStream(raw))
    try:
        return copy.read()
    except httpx.DecodingError:
        return raw


def record_client(client: httpx.AsyncClient, recorder: Recorder) -> httpx.AsyncClient:
    """Wrap every transport of ``client`` (its default one and any proxy mounts) to record.

    httpx has no public way to wrap the transports of a client already built, and the
    daemon's client must stay exactly as the daemon builds it, so this reaches into the two
    attributes httpx keeps them in; a missing one is reported, never silently skipped.
    """
    if not hasattr(client, "_transport") or not hasattr(client, "_mounts"):
        raise RuntimeError("this httpx version keeps its transports elsewhere; capture cannot record")
    client._transport = RecordingTransport(client._transport, recorder)
    client._mounts = {
        pattern: None if transport is None else RecordingTransport(transport, recorder)
        for pattern, transport in client._mounts.items()
    }
    return client


@attrs.frozen
class FrameResult:
    """What one capture run did: every frame's outcome and the records it would have stored."""

    ok: bool
    counts: Mapping[str, int]


async def capture_frames(settings: CoreSettings, source: SourceInfo, recorder: Recorder) -> FrameResult:
    """One frame per loop of ``source`` through the daemon's own HTTP client, recorded.

    Like ``once``, but with no output and an in-memory store: a capture changes nothing a
    running daemon relies on (except what the vendor itself rotates, such as a refresh token).
    """
    store = Store(":memory:")
    try:
        async with (
            record_client(http_client(), recorder) as client,
            assemble(settings, source, client=client, store=store, deliver=False) as daemon,
        ):
            ok = await daemon.runtime.run_once(budget=1)  # one frame per loop: a sample, not a backfill
        counts = {c: store.count(c) for c in ("entries", "treatments", "devicestatus", "profile")}
        return FrameResult(ok=ok, counts=counts)
    finally:
        store.close()


# --- scrubbing ------------------------------------------------------------------------------------


def _variants(value: str) -> dict[str, str]:
    """Forms a value may take on the wire, each with the suffix its placeholder gets."""
    encoded = value.encode("utf-8")
    sha1 = hashlib.sha1(encoded).hexdigest()
    forms = {
        value: "",
        urllib.parse.quote(value, safe=""): "",
        urllib.parse.quote_plus(value, safe=""): "",
        json.dumps(value)[1:-1]: "",
        sha1: ":sha1",
        sha1.upper(): ":sha1",
        hashlib.sha256(encoded).hexdigest(): ":sha256",
    }
    return {form: suffix for form, suffix in forms.items() if form}


class Scrubber:
    """Learns secrets, then replaces them by stable placeholders (``<kind-n>``)."""

    def __init__(self) -> None:
        self._placeholder: dict[str, str] = {}
        self._caseless: dict[str, str] = {}
        self._numbers: dict[str, int] = {}
        self._pattern: re.Pattern[str] | None = None

    # learning

    def learn(self, value: object, kind: str) -> None:
        """Remember a secret (and its encoded and hashed forms) under a new placeholder."""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return
        text = str(value).strip() if isinstance(value, str) else str(value)
        if isinstance(value, (int, float)) and len(text) < 6:
            return
        if len(text) < MIN_LEARN or text.lower() in TRIVIAL or self.known(text):
            return
        self._numbers[kind] = self._numbers.get(kind, 0) + 1
        base = f"{kind}-{self._numbers[kind]}"
        for form, suffix in _variants(text).items():
            if len(form) < MIN_LEARN or form in self._placeholder:
                continue
            placeholder = f"<{base}{suffix}>"
            self._placeholder[form] = placeholder
            if kind in CASELESS_KINDS and not suffix:
                self._caseless.setdefault(form.lower(), placeholder)
        self._pattern = None

    def known(self, value: str) -> bool:
        return value in self._placeholder or value.lower() in self._caseless

    def placeholder(self, value: object, kind: str) -> str:
        """The placeholder of a value found by name (learning it first if need be)."""
        self.learn(value, kind)
        text = str(value).strip()
        found = self._placeholder.get(text) or self._caseless.get(text.lower())
        return found if found is not None else f"<{kind}>"

    def learn_settings(self, settings: BaseSettings) -> None:
        """Every secret and identity a settings instance holds (passwords, user names, e-mails)."""
        for name in sorted(type(settings).model_fields):
            value: Any = getattr(settings, name, None)
            if isinstance(value, pydantic.SecretStr):
                secret = value.get_secret_value()
                if "://" in secret:
                    self._learn_url_credentials(secret)
                kind = key_kind(name.rsplit("_", 1)[-1]) or "secret"
                self.learn(secret, kind)
            elif isinstance(value, str) and value:
                if "://" in value:
                    self._learn_url_credentials(value)
                elif IDENTITY_FIELD.search(name):
                    self.learn(value, "email" if "@" in value else "user")

    def learn_registered(self) -> None:
        for value in sorted(registered()):
            self.learn(value, "secret")

    def _learn_url_credentials(self, url: str) -> None:
        with contextlib.suppress(ValueError):
            parts = urllib.parse.urlsplit(url)
            if parts.password:
                self.learn(urllib.parse.unquote(parts.password), "password")
            if parts.username:
                self.learn(urllib.parse.unquote(parts.username), "user")
            for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
                kind = key_kind(key, query=True)
                if kind is not None:
                    self.learn(value, kind)

    # replacing

    def _compiled(self) -> re.Pattern[str] | None:
        if self._pattern is None and self._placeholder:
            parts = []
            for form in sorted(self._placeholder, key=len, reverse=True):
                escaped = re.escape(form)
                caseless = form.lower() in self._caseless
                if len(form) < WHOLE_WORD_BELOW:
                    escaped = rf"(?<![A-Za-z0-9]){escaped}(?![A-Za-z0-9])"
                parts.append(f"(?i:{escaped})" if caseless else escaped)
            self._pattern = re.compile("|".join(parts))
        return self._pattern

    def text(self, value: str) -> str:
        """``value`` with every known secret replaced, wherever it appears."""
        pattern = self._compiled()
        if pattern is None or not value:
            return value

        def swap(match: re.Match[str]) -> str:
            found = match.group(0)
            return self._placeholder.get(found) or self._caseless.get(found.lower()) or "<secret>"

        return pattern.sub(swap, value)

    def document(self, value: Any, *, learn_only: bool = False) -> Any:
        """A JSON document with secret fields replaced (or, ``learn_only``, just learned)."""
        if isinstance(value, Mapping):
            kinds = {k: key_kind(k) for k in value if isinstance(k, str)}
            person = any(kind in PERSON_KINDS for kind in kinds.values())
            out: dict[str, Any] = {}
            for key, item in value.items():
                kind = kinds.get(key)
                if kind is None and person and isinstance(key, str) and normal_key(key) == "id":
                    kind = "account"
                if kind is not None and _scalar(item):
                    if learn_only:
                        self.learn(item, kind)
                    else:
                        out[self.text(str(key))] = self.placeholder(item, kind)
                    continue
                rendered = self.document(item, learn_only=learn_only)
                if not learn_only:
                    out[self.text(str(key))] = rendered
            return out
        if isinstance(value, list):
            return [self.document(item, learn_only=learn_only) for item in value]
        if isinstance(value, str) and not learn_only:
            return self.text(value)
        return value

    def pairs(self, text: str, *, learn_only: bool = False) -> str:
        """A query string or form body (``a=1&b=2``) with secret parameters replaced."""
        out = []
        for part in text.split("&"):
            raw_key, sep, raw_value = part.partition("=")
            key = urllib.parse.unquote_plus(raw_key)
            kind = key_kind(key, query=True)
            if kind is not None and sep:
                value = urllib.parse.unquote_plus(raw_value)
                if learn_only:
                    self.learn(value, kind)
                    continue
                out.append(f"{self.text(raw_key)}={self.placeholder(value, kind) if value else ''}")
            elif not learn_only:
                out.append(self.text(part))
        return "&".join(out)

    def url(self, url: str, *, learn_only: bool = False) -> str:
        base, sep, query = url.partition("?")
        query, hash_sep, fragment = query.partition("#")
        if learn_only:
            self._learn_url_credentials(url)
            return url
        scrubbed = self.text(_without_userinfo(base))
        if sep:
            scrubbed += "?" + self.pairs(query)
        if hash_sep:
            scrubbed += "#" + self.text(fragment)
        return scrubbed

    def header(self, name: str, value: str, *, learn_only: bool = False) -> str:
        lower = name.lower()
        if lower in ("cookie", "set-cookie"):
            return self._cookies(value, first_only=lower == "set-cookie", learn_only=learn_only)
        kind = key_kind(name)
        if kind is not None:
            scheme, space, credential = value.strip().partition(" ")
            if lower.endswith("authorization") and space and credential.strip():
                if learn_only:
                    self.learn(credential.strip(), kind)
                    return value
                return f"{scheme} {self.placeholder(credential.strip(), kind)}"
            if learn_only:
                self.learn(value, kind)
                return value
            return self.placeholder(value, kind) if value.strip() else value
        if lower in URL_HEADERS:
            return self.url(value, learn_only=learn_only)
        return value if learn_only else self.text(value)

    def _cookies(self, value: str, *, first_only: bool, learn_only: bool) -> str:
        out = []
        for i, part in enumerate(value.split(";")):
            name, sep, cookie = part.partition("=")
            secret = sep and (not first_only or i == 0)
            if secret and cookie.strip():
                if learn_only:
                    self.learn(cookie.strip(), "cookie")
                    continue
                out.append(f"{self.text(name)}={self.placeholder(cookie.strip(), 'cookie')}")
            elif not learn_only:
                out.append(self.text(part))
        return "; ".join(p.strip() for p in out) if not learn_only else value


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool) and value != ""


def _without_userinfo(url: str) -> str:
    """The URL with any ``user:password@`` dropped (the values are learned separately)."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1<credentials>@", url)


# --- rendering ------------------------------------------------------------------------------------


@attrs.frozen
class Body:
    kind: str
    value: Any


def _parse_body(content: bytes, headers: Iterable[tuple[str, str]]) -> Body:
    if not content:
        return Body("empty", None)
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "").lower()
    text = content.decode("utf-8", errors="replace")
    if "json" in content_type or text.lstrip()[:1] in ("{", "[", '"'):
        try:
            return Body("json", json.loads(text))
        except ValueError:
            pass
    if "x-www-form-urlencoded" in content_type:
        return Body("form", text)
    return Body("text", text)


class CaptureWriter:
    """Turns recorded exchanges into scrubbed documents: first learning, then replacing."""

    def __init__(self, scrubber: Scrubber) -> None:
        self.scrubber = scrubber

    def learn(self, exchanges: Iterable[Exchange]) -> None:
        exchanges = list(exchanges)
        s = self.scrubber
        for exchange in exchanges:
            s.url(exchange.url, learn_only=True)
            for name, value in (*exchange.request_headers, *exchange.response_headers):
                s.header(name, value, learn_only=True)
            for body in self._bodies(exchange):
                if body.kind == "json":
                    s.document(body.value, learn_only=True)
                elif body.kind == "form":
                    s.pairs(body.value, learn_only=True)
        # a bare string a login or session call answers is that session's (or account's) id
        for exchange in exchanges:
            response = _parse_body(exchange.response_body, exchange.response_headers)
            ok = exchange.status is not None and 200 <= exchange.status < 300
            if ok and response.kind == "json" and isinstance(response.value, str):
                if SESSION_PATH.search(urllib.parse.urlsplit(exchange.url).path):
                    s.learn(response.value, "session")

    @staticmethod
    def _bodies(exchange: Exchange) -> Iterator[Body]:
        yield _parse_body(exchange.request_body, exchange.request_headers)
        yield _parse_body(exchange.response_body, exchange.response_headers)

    def _body(self, body: Body) -> Any:
        if body.kind == "json":
            return self.scrubber.document(body.value)
        if body.kind == "form":
            return self.scrubber.pairs(body.value)
        if body.kind == "text":
            return self.scrubber.text(body.value)
        return None

    def render(self, exchange: Exchange) -> dict[str, Any]:
        s = self.scrubber
        request_body = _parse_body(exchange.request_body, exchange.request_headers)
        doc: dict[str, Any] = {
            "exchange": exchange.index,
            "started": datetime.fromtimestamp(exchange.started, tz=UTC).isoformat(timespec="milliseconds"),
            "elapsed_ms": None if exchange.elapsed_ms is None else round(exchange.elapsed_ms, 1),
            "request": {
                "method": exchange.method,
                "url": s.url(exchange.url),
                "headers": [f"{name}: {s.header(name, value)}" for name, value in exchange.request_headers],
                "body_format": request_body.kind,
                "body": self._body(request_body),
            },
            "response": None,
            "error": exchange.error,
        }
        if exchange.status is not None:
            response_body = _parse_body(exchange.response_body, exchange.response_headers)
            doc["response"] = {
                "status": exchange.status,
                "reason": exchange.reason,
                "headers": [f"{name}: {s.header(name, value)}" for name, value in exchange.response_headers],
                "body_format": response_body.kind,
                "body": self._body(response_body),
            }
        return doc


def file_name(doc: Mapping[str, Any]) -> str:
    """``0003-GET-graph.json``: the number, the method and the (scrubbed) path's last part."""
    request = doc["request"]
    path = urllib.parse.urlsplit(request["url"]).path
    last = next((part for part in reversed(path.split("/")) if part), "root")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", last).strip("_")[:48] or "root"
    return f"{doc['exchange']:04d}-{request['method']}-{slug}.json"


def existing_capture(directory: Path) -> list[str]:
    """Capture files already in ``directory`` (a new capture must not mix with them)."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if FILE_NAME.match(p.name))


def write_capture(
    directory: Path, exchanges: Iterable[Exchange], settings: BaseSettings | None = None
) -> list[Path]:
    """Scrub every exchange with everything learned from all of them, then write one file each."""
    ordered = sorted(exchanges, key=lambda e: e.index)
    scrubber = Scrubber()
    if settings is not None:
        scrubber.learn_settings(settings)
    writer = CaptureWriter(scrubber)
    writer.learn(ordered)
    scrubber.learn_registered()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for exchange in ordered:
        doc = writer.render(exchange)
        path = directory / file_name(doc)
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


__all__ = [
    "CaptureWriter",
    "Exchange",
    "FrameResult",
    "Recorder",
    "RecordingTransport",
    "Scrubber",
    "capture_frames",
    "existing_capture",
    "key_kind",
    "record_client",
    "write_capture",
]
