"""A Medtronic CareLink emulator: discovery, the Auth0 login, token refresh and display/message.

It follows protocols/03-medtronic-carelink.md and what the CareLink tools it cites send and
receive (the tables here are written out independently of the driver's, on purpose):

* ``GET /connect/carepartner/v13/discover/android/3.6`` (and the older v11/3.2 path): the
  discovery document, with ``supportedCountries`` and a ``CP`` entry per region whose URLs
  point at Medtronic's real host names (a client under test rewrites them to this server);
* the Auth0 SSO configuration, the MAG one, ``/authorize`` (an HTML page for the person),
  and ``POST /oauth/token`` for ``authorization_code`` (PKCE checked) and ``refresh_token``
  grants. Refresh tokens rotate: the old one dies, and presenting a dead one revokes the
  whole family (Auth0's reuse detection). OAuth errors are ``{"error", "error_description"}``
  with 403 for a bad grant, as Auth0 answers;
* ``/api/carepartner/v2/users/me`` and ``/links/patients`` (Bearer);
* ``POST /connect/carepartner/v6/display/message``: the last 24 hours, as the 2015 PARADIGM
  payload (pump-local ``"Oct 19, 2015 08:15:00"`` times) or as the 7xxG one (ISO times whose
  ``Z`` is a lie: the pump's wall clock), bare or wrapped in ``patientData``. App versions
  below 3.7 get HTTP 206 "Upgrade application".

Readings are a live stream on an injectable ``now`` (epoch ms): reading ``k`` has the UTC time
``first_reading_ms + k·5 min`` and becomes visible ``publish_lag_ms`` later, when the pump
uploads it. The pump's clock fields (``sMedicalDeviceTime``, ``medicalDeviceTimeAsString``,
``lastSensorTSAsString``) are read at that upload and paired with its server time
``lastMedicalDeviceDataUpdateServerTime``, as in the real 2015 payloads: only
``currentServerTime`` follows the clock. ``silence(start, end)`` stops the uploads for a
while (a pump out of range, a phone without network): CareLink keeps answering the last
upload, and at ``end`` the pump uploads what it recorded meanwhile. Access tokens
expire after ``access_ttl_s`` by the same clock. Faults are injected for the next N matching
requests or for a time window: 500s, 503 HTML pages, 401 (expired token), 429 with
Retry-After, 200 HTML maintenance pages, truncated or non-JSON bodies, timeouts. Every
request is logged (time, endpoint, status, fault) with no token in it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import attrs
import httpx

from tests.emulators.asgi import Answer as _Answer
from tests.emulators.asgi import json_answer as _json
from tests.emulators.asgi import not_http, read_body, respond
from tests.emulators.scripted import Fault, FaultScript, Logged

DISCOVERY_PATHS: Final = (
    "/connect/carepartner/v13/discover/android/3.6",
    "/connect/carepartner/v11/discover/android/3.2",
)
AUTH0_CONFIG_PATH: Final = "/connect/carepartner/v13/sso/auth0/{region}.json"
MAG_CONFIG_PATH: Final = "/connect/carepartner/v11/sso/mag/{region}.json"
HOSTS: Final = {
    "us": {
        "carelink": "carelink.minimed.com",
        "cloud": "clcloud.minimed.com",
        "login": "carelink-login.minimed.com",
    },
    "eu": {
        "carelink": "carelink.minimed.eu",
        "cloud": "clcloud.minimed.eu",
        "login": "carelink-login.minimed.eu",
    },
}
COUNTRIES: Final = {
    "US": "US",
    "CA": "US",
    "GB": "EU",
    "DE": "EU",
    "NL": "EU",
    "FR": "EU",
    "IT": "EU",
    "AU": "EU",
}
REDIRECT_URI: Final = "com.medtronic.carepartner:/sso"
AUTH0_CLIENT_ID: Final = "cpConnectAppClient01"
MAG_CLIENT_ID: Final = "8a1c4e0a-5b5e-4a5b-9f4b-mag0client01"
SCOPE: Final = "openid profile email offline_access"
MONTH_NAMES: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
FIVE_MIN: Final = 300_000
SLOTS: Final = 288
TRENDS: Final = ("DOWN_TRIPLE", "DOWN_DOUBLE", "DOWN", "NONE", "UP", "UP_DOUBLE", "UP_TRIPLE")
FAULT_KINDS: Final = frozenset(
    {"500", "503html", "401", "429", "html", "truncated", "nonjson", "timeout", "hang"}
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def old_local(ms: int) -> str:
    """``"Oct 19, 2015 08:15:00"`` of a wall-clock time given as if it were UTC."""
    t = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return f"{MONTH_NAMES[t.month - 1]} {t.day:02d}, {t.year} {t.strftime('%H:%M:%S')}"


def iso_local(ms: int, suffix: str = "Z") -> str:
    t = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}{suffix}"


def _html(status: int, title: str) -> _Answer:
    page = f"<!DOCTYPE html><html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
    return _Answer(status, page, "text/html; charset=utf-8")


def _oauth_error(error: str, description: str, status: int = 403) -> _Answer:
    return _json({"error": error, "error_description": description}, status)


@attrs.define
class Grant:
    challenge: str
    redirect_uri: str
    client_id: str
    expires_ms: int
    used: bool = False


class CareLinkEmulator(FaultScript):
    """The ASGI app: one CareLink login (patient or care partner) and one pump's data."""

    fault_kinds = FAULT_KINDS

    def __init__(
        self,
        *,
        now: Callable[[], int] | None = None,
        first_reading_ms: int | None = None,
        generation: str = "7xxG",
        wrapped: bool | None = None,
        zone_offset_ms: int = 2 * 3_600_000,
        region: str = "eu",
        country: str = "GB",
        role: str = "CARE_PARTNER_OUS",
        username: str = "carepartner.anna",
        patients: Iterable[str] = ("patient.ben",),
        access_ttl_s: int = 3600,
        publish_lag_ms: int = 90_000,
        sso: str = "auth0",
        mag: bool = False,
        gaps: Iterable[int] = (),
        seed: int = 0,
        min_app_version: tuple[int, ...] = (3, 7),
        silences: Iterable[tuple[int, int]] = (),
    ) -> None:
        self.now: Callable[[], int] = now or (lambda: int(time.time() * 1000))
        start = self.now() if first_reading_ms is None else first_reading_ms
        self.first_reading_ms = start - start % FIVE_MIN
        if generation not in ("legacy", "7xxG"):
            raise ValueError("generation is legacy or 7xxG")
        self.generation = generation
        self.wrapped = (generation == "7xxG") if wrapped is None else wrapped
        self.zone_offset_ms = zone_offset_ms
        self.region = region
        self.country = country
        self.role = role
        self.username = username
        self.patients = list(patients)
        self.access_ttl_s = access_ttl_s
        self.publish_lag_ms = publish_lag_ms
        self.sso = sso
        self.mag = mag
        self.gaps = set(gaps)
        self.seed = seed
        self.min_app_version = min_app_version
        #: server-time windows [start, end) in which the pump uploads nothing
        self.silences: list[tuple[int, int]] = [(int(a), int(b)) for a, b in silences]
        # device serial numbers: the real payloads carry them, and a capture must hide them
        digest = hashlib.sha256(f"carelink-emulator-{seed}".encode()).hexdigest().upper()
        self.pump_serial = f"NG{int(digest[:8], 16) % 10_000_000:07d}H"
        self.conduit_serial = (
            f"{digest[8:16]}-{digest[16:20]}-{digest[20:24]}-{digest[24:28]}-{digest[28:40]}"
        )
        self.client_secret = "mag-client-secret-" + secrets.token_hex(8)
        self.mag_identifier = "mag-" + secrets.token_hex(12)
        self.codes: dict[str, Grant] = {}
        #: refresh token → its family; only ``current[family]`` is alive
        self.families: dict[str, int] = {}
        self.current: dict[int, str] = {}
        self.revoked: set[int] = set()
        self.access: dict[str, int] = {}
        self.log: list[Logged] = []
        super().__init__()

    # --- set-up and queries ---------------------------------------------------------------

    def issue_tokens(self, *, ttl_s: int | None = None) -> dict[str, Any]:
        """Tokens as a finished login would hold them (a test's token file, without a browser)."""
        family = len(self.current) + 1
        refresh = self._new_refresh(family)
        access = self._new_access(ttl_s)
        doc: dict[str, Any] = {
            "access_token": access,
            "refresh_token": refresh,
            "scope": SCOPE,
            "client_id": MAG_CLIENT_ID if self.mag else AUTH0_CLIENT_ID,
        }
        if self.mag:
            doc.update({"client_secret": self.client_secret, "mag-identifier": self.mag_identifier})
        else:
            doc["token_url"] = f"https://{HOSTS[self.region]['login']}/oauth/token"
            doc["audience"] = f"https://{HOSTS[self.region]['carelink']}"
        return doc

    def approve(self, authorize_url: str) -> str:
        """The person at the browser: log in, solve the captcha, land on the app's address."""
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(authorize_url).query))
        if query.get("response_type") != "code" or query.get("code_challenge_method") != "S256":
            raise AssertionError("the authorize URL must ask for a code with PKCE S256")
        if query.get("client_id") != AUTH0_CLIENT_ID or query.get("redirect_uri") != REDIRECT_URI:
            raise AssertionError("the authorize URL names the wrong client or redirect")
        if "offline_access" not in query.get("scope", ""):
            raise AssertionError("without offline_access there is no refresh token")
        code = secrets.token_urlsafe(24)
        self.codes[code] = Grant(query["code_challenge"], REDIRECT_URI, AUTH0_CLIENT_ID, self.now() + 300_000)
        return f"{REDIRECT_URI}?code={code}&state={urllib.parse.quote(query.get('state', ''))}"

    def count(self, endpoint: str | None = None, *, status: int | None = None) -> int:
        return sum(
            1
            for r in self.log
            if (endpoint is None or r.endpoint == endpoint) and (status is None or r.status == status)
        )

    # --- the data stream ---------------------------------------------------------------------

    def reading_time(self, k: int) -> int:
        return self.first_reading_ms + k * FIVE_MIN

    def value(self, k: int) -> int:
        base = 150 + 80 * math.sin((k + self.seed) / 11.0)
        wobble = ((k * 7919 + self.seed * 31) % 9) - 4
        return max(40, min(400, int(base + wobble)))

    def silence(self, start_ms: int, end_ms: int) -> None:
        """The pump uploads nothing from ``start_ms`` until ``end_ms`` (server time)."""
        self.silences.append((start_ms, end_ms))

    def upload_cutoff(self, now: int) -> int:
        """The latest server time whose uploads CareLink holds at ``now``: inside a silence, its start."""
        for start, end in self.silences:
            if start <= now < end:
                return start
        return now

    def upload_time(self, k: int) -> int:
        """The server time reading ``k`` reached CareLink: ``publish_lag_ms`` after it was taken,
        or when the silence it fell in ended."""
        ready = self.reading_time(k) + self.publish_lag_ms
        return max([ready, *(end for start, end in self.silences if start < ready < end)])

    def last_index(self, now: int) -> int:
        """The newest reading visible at ``now`` (−1 before the first)."""
        visible = self.upload_cutoff(now) - self.publish_lag_ms - self.first_reading_ms
        return -1 if visible < 0 else visible // FIVE_MIN

    def published(self, now: int | None = None) -> dict[int, int]:
        """Every reading ever visible up to ``now``: UTC time → mg/dL (gaps excluded)."""
        last = self.last_index(self.now() if now is None else now)
        return {self.reading_time(k): self.value(k) for k in range(last + 1) if k not in self.gaps}

    def markers(self, first: int, last: int) -> list[tuple[int, str, dict[str, Any]]]:
        """(slot, type, fields) of therapy markers in slots ``first..last`` (7xxG only)."""
        out: list[tuple[int, str, dict[str, Any]]] = []
        for k in range(max(first, 0), last + 1):
            if k % 36 == 7:  # a meal with its bolus
                carbs = 20 + (k * 13) % 50
                out.append((k, "MEAL", {"amount": carbs}))
                out.append((k, "INSULIN", {"bolusType": "FAST", "activationType": "RECOMMENDED",
                                           "deliveredFastAmount": round(carbs / 10, 1),
                                           "programmedFastAmount": round(carbs / 10, 1)}))  # fmt: skip
            elif k % 36 == 25:  # an automatic correction
                out.append((k, "INSULIN", {"bolusType": "FAST", "activationType": "AUTOCORRECTION",
                                           "deliveredFastAmount": 0.4, "programmedFastAmount": 0.4}))  # fmt: skip
        return out

    def expected_treatments(self, now: int | None = None) -> dict[tuple[int, str], float]:
        """(UTC time, eventType) → insulin of every bolus marker ever published up to ``now``."""
        last = self.last_index(self.now() if now is None else now)
        out: dict[tuple[int, str], float] = {}
        for k, kind, fields in self.markers(0, last):
            if kind == "INSULIN":
                event = "Meal Bolus" if fields["activationType"] == "RECOMMENDED" else "Correction Bolus"
                out[(self.reading_time(k), event)] = fields["deliveredFastAmount"]
        return out

    def trend(self, k: int) -> str:
        rate = (self.value(k) - self.value(k - 1)) / 5.0
        index = 3 + max(-3, min(3, int(rate)))
        return TRENDS[index]

    def payload(self, now: int) -> tuple[dict[str, Any], tuple[int, ...]]:
        """The display/message document at ``now`` and the reading times it carries."""
        last = self.last_index(now)
        first = last - SLOTS + 1
        wall = self.zone_offset_ms  # local = UTC + offset
        legacy = self.generation == "legacy"

        def local(ms: int) -> str:
            return old_local(ms + wall) if legacy else iso_local(ms + wall)

        sgs: list[dict[str, Any]] = []
        served: list[int] = []
        for k in range(first, last + 1):
            if k < 0:
                continue
            t = self.reading_time(k)
            sg = 0 if k in self.gaps else self.value(k)
            if sg:
                served.append(t)
            item = {"sg": sg, "datetime": local(t), "kind": "SG", "version": 1, "timeChange": False}
            if not legacy:
                item["sensorState"] = "NO_ERROR_MESSAGE" if sg else "NO_DATA_FROM_PUMP"
                del item["kind"], item["version"]
            sgs.append(item)
        if legacy:  # the slot to come: no reading, no time yet
            sgs.append({"kind": "SG", "sg": 0, "version": 1})
        newest = next((k for k in range(last, first - 1, -1) if k >= 0 and k not in self.gaps), None)
        # the server time the pump's upload arrived, which is when its readings became visible
        uploaded = self.upload_time(last) if last >= 0 else now
        # the pump's clock at that upload (whole minutes): it stays put while the pump is silent
        pump_clock = old_local(uploaded - uploaded % 60_000 + wall)
        doc: dict[str, Any] = {
            "kind": "Main",
            "version": 1,
            "firstName": "Ben",
            "lastName": "Example",
            "medicalDeviceFamily": "PARADIGM" if legacy else "NGP",
            "currentServerTime": now,
            "lastMedicalDeviceDataUpdateServerTime": uploaded,
            "lastConduitUpdateServerTime": uploaded,
            "sMedicalDeviceTime": pump_clock,
            "medicalDeviceTimeAsString": pump_clock,
            "lastSensorTSAsString": pump_clock,
            "medicalDeviceSerialNumber": self.pump_serial,
            "conduitSerialNumber": self.conduit_serial,
            "bgUnits": "MGDL",
            "sensorState": "NORMAL" if legacy else "NO_ERROR_MESSAGE",
            "calibStatus": "LESS_THAN_TWELVE_HRS",
            "sensorDurationHours": 73,
            "timeToNextCalibHours": 10,
            "conduitInRange": True,
            "conduitMedicalDeviceInRange": True,
            "conduitSensorInRange": True,
            "conduitBatteryLevel": 64,
            "conduitBatteryStatus": "MEDIUM",
            "medicalDeviceBatteryLevelPercent": 75,
            "reservoirAmount": 60,
            "reservoirLevelPercent": 25,
            "reservoirRemainingUnits": 60,
            "medicalDeviceSuspended": False,
            "lastSGTrend": self.trend(newest) if newest is not None else "NONE",
            "activeInsulin": {
                "amount": 1.25,
                "datetime": local(uploaded - 120_000),  # as the pump reported it then
                "kind": "Insulin",
                "version": 1,
            },
            "sgs": sgs,
        }
        if newest is not None:
            doc["lastSG"] = {
                "sg": self.value(newest), "datetime": local(self.reading_time(newest)), "kind": "SG",
                "version": 1, "timeChange": False,
            }  # fmt: skip
        if not legacy:
            # the phone's wall clock, labelled UTC, and the true time it was taken at
            doc["lastConduitDateTime"] = iso_local(uploaded + wall)
            doc["lastConduitUpdateServerDateTime"] = uploaded
            doc["therapyAlgorithmState"] = {"autoModeShieldState": "AUTO_BASAL", "safeBasalDuration": 0}
            doc["pumpBatteryLevelPercent"] = 75
            markers = []
            for k, kind, fields in self.markers(first, last):
                markers.append({"type": kind, "index": k, "dateTime": local(self.reading_time(k)), **fields})
            doc["markers"] = markers
        return ({"patientData": doc} if self.wrapped else doc), tuple(served)

    # --- tokens ------------------------------------------------------------------------------

    def _new_access(self, ttl_s: int | None = None) -> str:
        now = self.now()
        ttl = self.access_ttl_s if ttl_s is None else ttl_s
        header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "emu"}).encode())
        claims = {
            "sub": "auth0|" + secrets.token_hex(6),
            "iat": now // 1000,
            "exp": now // 1000 + ttl,
            "token_details": {"country": self.country, "preferred_username": self.username},
            "jti": secrets.token_hex(8),
        }
        token = f"{header}.{b64url(json.dumps(claims).encode())}.{b64url(secrets.token_bytes(32))}"
        self.access[token] = now + ttl * 1000
        return token

    def _new_refresh(self, family: int) -> str:
        token = "v1." + secrets.token_urlsafe(32)
        self.families[token] = family
        self.current[family] = token
        return token

    def _token_answer(self, family: int) -> _Answer:
        return _json(
            {
                "access_token": self._new_access(),
                "refresh_token": self._new_refresh(family),
                "id_token": self._new_access(),
                "scope": SCOPE,
                "expires_in": self.access_ttl_s,
                "token_type": "Bearer",
            }
        )

    def _bearer_ok(self, headers: dict[str, str]) -> bool:
        value = headers.get("authorization", "")
        if not value.startswith("Bearer "):
            return False
        expires = self.access.get(value[len("Bearer ") :])
        if expires is None or expires <= self.now():
            return False
        return not self.mag or headers.get("mag-identifier") == self.mag_identifier

    # --- ASGI --------------------------------------------------------------------------------

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if await not_http(scope, receive, send):
            return
        answer = await self._handle(scope, await read_body(receive))
        await respond(send, answer.status, answer.headers.items(), answer.body)

    def endpoint_of(self, method: str, path: str) -> str:
        if path in DISCOVERY_PATHS:
            return "discovery"
        if path.startswith("/connect/carepartner/v13/sso/auth0/") or path.startswith(
            "/connect/carepartner/v11/sso/mag/"
        ):
            return "sso"
        if path == "/authorize":
            return "authorize"
        if path in ("/oauth/token", "/mag/auth/oauth/v2/token"):
            return "token"
        if path == "/api/carepartner/v2/users/me":
            return "users"
        if path == "/api/carepartner/v2/links/patients":
            return "patients"
        if path == "/connect/carepartner/v6/display/message":
            return "data"
        return "unknown"

    async def _handle(self, scope: dict[str, Any], body: bytes) -> _Answer:
        now = self.now()
        method: str = scope["method"]
        endpoint = self.endpoint_of(method, scope["path"])
        entry = Logged(now, method, endpoint)
        self.log.append(entry)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            fault = self._fault_for(endpoint, now)
            if fault is not None:
                entry.fault = fault.kind
                answer = await self._faulty(fault, scope, headers, body, entry)
            else:
                answer = self._answer(scope, headers, body, entry)
        except _Answer as raised:
            answer = raised
        entry.status = answer.status
        if answer.status != 200:
            entry.served = ()
        return answer

    async def _faulty(self, fault: Fault, scope: dict[str, Any], headers: dict[str, str], body: bytes,
                      entry: Logged) -> _Answer:  # fmt: skip
        kind = fault.kind
        if kind == "500":
            return _json({"timestamp": self.now(), "status": 500, "error": "Internal Server Error"}, 500)
        if kind == "503html":
            return _html(503, "Service Unavailable")
        if kind == "401":
            return _json({"error": "invalid_token", "error_description": "The access token expired"}, 401)
        if kind == "429":
            return _json({"message": "Too many requests"}, 429, **{"retry-after": str(fault.retry_after)})
        if kind == "html":
            return _html(200, "CareLink is down for scheduled maintenance")
        if kind == "nonjson":
            return _Answer(200, "Service temporarily unavailable", "application/json")
        if kind == "truncated":
            real = self._answer(scope, headers, body, entry)
            entry.served = ()
            return _Answer(
                real.status, real.body[: max(1, len(real.body) // 2)], real.headers["content-type"]
            )
        if kind == "timeout":
            await anyio.sleep(fault.hang_s)
            raise httpx.ReadTimeout("emulated read timeout")
        if kind == "hang":
            await anyio.sleep(fault.hang_s)
            return _html(504, "Gateway Timeout")
        raise AssertionError(kind)

    def _answer(self, scope: dict[str, Any], headers: dict[str, str], body: bytes, entry: Logged) -> _Answer:
        endpoint, method, path = entry.endpoint, scope["method"], scope["path"]
        if endpoint == "unknown":
            return _html(404, "Not Found")
        if endpoint == "discovery" and method == "GET":
            return _json(self._discovery())
        if endpoint == "sso" and method == "GET":
            region = path.rsplit("/", 1)[1].split(".")[0]
            if region not in HOSTS:
                return _html(404, "Not Found")
            return _json(self._auth0_config(region) if "/auth0/" in path else self._mag_config(region))
        if endpoint == "authorize" and method == "GET":
            return _html(200, "Log in to CareLink")
        if endpoint == "token" and method == "POST":
            return self._token(headers, body)
        if endpoint in ("users", "patients") and method == "GET":
            if not self._bearer_ok(headers):
                return _json({"error": "invalid_token", "error_description": "Unauthorized"}, 401)
            if endpoint == "users":
                return _json({"username": self.username, "role": self.role, "firstName": "Anna",
                              "lastName": "Example", "country": self.country})  # fmt: skip
            return _json([{"username": p, "firstName": "Ben", "lastName": "Example", "status": "ACTIVE"}
                          for p in self.patients])  # fmt: skip
        if endpoint == "data" and method == "POST":
            return self._display_message(headers, body, entry)
        return _html(405, "Method Not Allowed")

    def _discovery(self) -> dict[str, Any]:
        entries = []
        for region, hosts in HOSTS.items():
            cloud = f"https://{hosts['cloud']}"
            entries.append(
                {
                    "region": region.upper(),
                    "baseUrlCareLink": f"https://{hosts['carelink']}/api/carepartner/v2",
                    "baseUrlCumulus": f"{cloud}/connect/carepartner/v6",
                    "SSOConfiguration": cloud + MAG_CONFIG_PATH.format(region=region),
                    "Auth0SSOConfiguration": cloud + AUTH0_CONFIG_PATH.format(region=region),
                    "UseSSOConfiguration": "Auth0SSOConfiguration"
                    if self.sso == "auth0"
                    else "SSOConfiguration",
                }
            )
        return {
            "supportedCountries": [{code: {"region": region}} for code, region in COUNTRIES.items()],
            "CP": entries,
        }

    @staticmethod
    def _auth0_config(region: str) -> dict[str, Any]:
        return {
            "server": {"hostname": HOSTS[region]["login"], "port": 443, "prefix": ""},
            "client": {
                "client_id": AUTH0_CLIENT_ID,
                "scope": SCOPE,
                "audience": f"https://{HOSTS[region]['carelink']}",
                "redirect_uri": REDIRECT_URI,
            },
            "system_endpoints": {
                "authorization_endpoint_path": "/authorize",
                "token_endpoint_path": "/oauth/token",
            },
        }

    @staticmethod
    def _mag_config(region: str) -> dict[str, Any]:
        return {
            "server": {"hostname": f"mdtsso.minimed.{'com' if region == 'us' else 'eu'}", "port": 443, "prefix": "mag"},
            "oauth": {
                "client": {
                    "organization": "Medtronic",
                    "client_ids": [{"client_id": MAG_CLIENT_ID, "scope": "openid msso",
                                    "redirect_uri": "https://carepartner.medtronic.com/redirect"}],
                },  # fmt: skip
                "system_endpoints": {
                    "authorization_endpoint_path": "/auth/oauth/v2/authorize",
                    "token_endpoint_path": "/auth/oauth/v2/token",
                },
            },
            "mag": {"system_endpoints": {"device_register_endpoint_path": "/connect/device/register",
                                         "client_credential_init_endpoint_path": "/connect/client/initialize"}},
        }  # fmt: skip

    def _token(self, headers: dict[str, str], body: bytes) -> _Answer:
        if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return _oauth_error("invalid_request", "Content-Type must be form-urlencoded", 400)
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
        grant = form.get("grant_type")
        if grant == "authorization_code":
            code = self.codes.get(form.get("code", ""))
            if code is None or code.used or code.expires_ms <= self.now():
                return _oauth_error("invalid_grant", "Invalid authorization code")
            code.used = True
            verifier = form.get("code_verifier", "")
            if b64url(hashlib.sha256(verifier.encode()).digest()) != code.challenge:
                return _oauth_error("invalid_grant", "Failed to verify code verifier")
            if form.get("client_id") != code.client_id or form.get("redirect_uri") != code.redirect_uri:
                return _oauth_error("invalid_grant", "Invalid client or redirect")
            return self._token_answer(len(self.current) + 1)
        if grant == "refresh_token":
            client_id = MAG_CLIENT_ID if self.mag else AUTH0_CLIENT_ID
            if form.get("client_id") != client_id:
                return _oauth_error("invalid_client", "Unknown client", 401)
            if self.mag and (
                form.get("client_secret") != self.client_secret
                or headers.get("mag-identifier") != self.mag_identifier
            ):
                return _oauth_error("invalid_client", "Client authentication failed", 401)
            token = form.get("refresh_token", "")
            family = self.families.get(token)
            if family is None or family in self.revoked:
                return _oauth_error("invalid_grant", "Unknown or invalid refresh token.")
            if self.current.get(family) != token:
                self.revoked.add(family)  # reuse of a rotated token: the family is compromised
                return _oauth_error("invalid_grant", "Unknown or invalid refresh token.")
            return self._token_answer(family)
        return _oauth_error("unsupported_grant_type", "Unsupported grant type", 400)

    def _display_message(self, headers: dict[str, str], body: bytes, entry: Logged) -> _Answer:
        if not self._bearer_ok(headers):
            return _json({"error": "invalid_token", "error_description": "Unauthorized"}, 401)
        try:
            request = json.loads(body)
        except ValueError:
            return _json({"message": "Malformed request"}, 400)
        if not isinstance(request, dict) or request.get("username") != self.username:
            return _json({"message": "Bad request"}, 400)
        version = str(request.get("appVersion", "0"))
        try:
            parts = tuple(int(p) for p in version.split("."))
        except ValueError:
            parts = (0,)
        if parts < self.min_app_version:
            return _Answer(206, "Upgrade application", "text/plain")
        partner = self.role.startswith("CARE_PARTNER")
        if partner and (
            request.get("role") != "carepartner" or request.get("patientId") not in self.patients
        ):
            return _json({"message": "Bad request"}, 400)
        if not partner and request.get("role") != "patient":
            return _json({"message": "Bad request"}, 400)
        doc, served = self.payload(self.now())
        entry.served = served
        return _json(doc)


def main() -> None:  # pragma: no cover - a manual aid: python -m tests.emulators.carelink
    from tests.emulators.serve import serve_forever

    emulator = CareLinkEmulator(first_reading_ms=int(time.time() * 1000) - 86_400_000)
    print(json.dumps(emulator.issue_tokens()), flush=True)
    serve_forever(emulator)


if __name__ == "__main__":  # pragma: no cover
    main()
