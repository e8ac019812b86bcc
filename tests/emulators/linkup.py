"""A LibreLinkUp (LLU follower API) emulator: an ASGI app speaking protocols/02-librelinkup.md.

What it answers, as documented: ``POST /llu/auth/login`` answers HTTP 200 with a JSON ``status``
(0 success, 0 + ``redirect`` for an account living in another region, 4 with a ``step`` to take,
2 ``notAuthenticated``, 429 ``locked`` after three failures within 60 s); an outdated
``version`` header gets ``status 920`` with ``minimumVersion`` (HTTP 403) on any call;
``POST /auth/continue/{tou|pp}`` (also under ``/llu``) accepts a step with the step's own ticket;
``GET /llu/connections``, ``/llu/connections/{patientId}/graph`` and ``…/logbook`` need
``Authorization: Bearer`` (else HTTP 401) and ``account-id = sha256(user.id)`` (else HTTP 400
``{"message":"RequiredHeaderMissing"}``); an unknown patient is ``status 4 couldNotLoadPatient``.
The constants are written out here from the protocol notes, not imported from the driver, so
the driver's tables are checked against an independent copy.

Regions come from the ``Host`` header (``api-eu2.libreview.io`` …); any other host (a loopback
address) means ``default_region``. Data calls must reach the account's own region (a token is
not honoured elsewhere: an emulator assumption, the protocol notes are silent on it).

Readings are a live stream: every ``interval_ms`` (5 min, as the graph fixtures show) on a
per-patient phase with the odd extra second, visible ``publish_delay_ms`` after their time
(plus a fixed share of ``publish_spread_ms`` per reading, for a phone that uploads late),
judged by the injectable ``now`` (epoch ms) so a test can run on
:class:`connect.clock.VirtualClock`. The current measurement is ``connection.glucoseMeasurement``
(with ``TrendArrow``); the graph holds the 12 h of history points *before* it, and trails it as
the real service's does: a point joins ``graphData`` only ``graph_lag_ms`` after it was
published, so the newest point or two are visible only as the current measurement until then.
A patient with ``current_interval_ms`` (a reading a minute) has a current measurement that lies
between the history points most of the time. A patient can change sensors
(:meth:`Patient.new_sensor`: a warm-up without readings, then a new start time).

Faults are injected for the next N matching requests (:meth:`LinkUpEmulator.inject`) or for a
window of time (:meth:`LinkUpEmulator.schedule`); an account holder can change the password for
a while (:meth:`LinkUpEmulator.change_password`). Every request is recorded (with whether the
service refused a login), and so is every reading a graph answer delivered (``served``) with
the time it was first delivered; the emulator also notes the most logins of one account that
were ever in flight at once.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import attrs
import httpx

from tests.emulators.asgi import Answer as _Answer
from tests.emulators.asgi import json_answer as _json
from tests.emulators.asgi import not_http, read_body, respond
from tests.emulators.serve import serve_forever, serve_in_thread

#: region code (lower case, as a login redirect names it) → host
REGION_HOSTS: Final = {
    "us": "api-us.libreview.io",
    "eu": "api-eu.libreview.io",
    "eu2": "api-eu2.libreview.io",
    "de": "api-de.libreview.io",
    "fr": "api-fr.libreview.io",
    "ae": "api-ae.libreview.io",
    "ap": "api-ap.libreview.io",
    "au": "api-au.libreview.io",
    "ca": "api-ca.libreview.io",
    "jp": "api-jp.libreview.io",
    "la": "api-la.libreview.io",
    "ru": "api.libreview.ru",
}
HOST_REGIONS: Final = {host: region for region, host in REGION_HOSTS.items()}
#: the undecorated host: every account is redirected from it to its region
GLOBAL_HOST: Final = "api.libreview.io"
MINIMUM_VERSION: Final = "4.16.0"
TOKEN_DURATION_MS: Final = 15_552_000_000  # 180 days
STEP_DURATION_MS: Final = 3_600_000
GRAPH_SPAN_MS: Final = 12 * 3_600_000
LOGBOOK_SPAN_MS: Final = 14 * 86_400_000
FIVE_MIN_MS: Final = 300_000
#: the graph's newest point trails the current measurement (§6: "usually newer than the last
#: graphData point and not included in it"); by how much is not recorded, so two readings
GRAPH_LAG_MS: Final = 10 * 60_000
STEP_PROPS: Final = {
    "tou": ("AcceptDocument", {"reaccept": True, "titleKey": "Common.termsOfUse", "type": "tou"}),
    "pp": ("AcceptDocument", {"reaccept": True, "titleKey": "Common.privacyPolicy", "type": "pp"}),
    "verifyEmail": ("VerifyEmail", None),
}
FAULT_KINDS: Final = frozenset(
    {
        "http500",  # HTTP 500, a short JSON-less body
        "html502",  # the CDN's 502 page
        "http429",  # HTTP 429 with Retry-After: retry_after seconds
        "lock",  # the lockout body (status 429 in JSON, HTTP 200); locks the account for real
        "ban",  # Cloudflare's HTML "banned you temporarily" page with HTTP ``status`` (403 or 430)
        "timeout",  # ``after_s`` seconds, then httpx.ReadTimeout (in-process transports only)
        "hang",  # no answer for ``after_s`` seconds, then a 524 page (for loopback clients)
        "truncated",  # the real answer cut in half
        "nonjson",  # HTTP 200 with an HTML error page
        "expire",  # every token issued so far dies now; the request is then answered normally
        "version",  # the service raised its minimum version (status 920) for this request
    }
)
#: request kinds a fault may be limited to
REQUEST_KINDS: Final = frozenset({"login", "step", "connections", "graph", "logbook"})


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def llu_time(ms: int) -> str:
    """``M/D/YYYY h:mm:ss AM/PM`` without zero padding (the service's format)."""
    moment = datetime.fromtimestamp(ms // 1000, tz=UTC)
    hour = moment.hour % 12 or 12
    half = "PM" if moment.hour >= 12 else "AM"
    return f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment.minute:02d}:{moment.second:02d} {half}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.strip().split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@attrs.define(eq=False)
class Patient:
    """A person whose sensor shares readings with the follower account."""

    patient_id: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    connection_id: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    first_name: str = "Pat"
    last_name: str = "Ient"
    country: str = "DE"
    seed: int = 1
    interval_ms: int = FIVE_MIN_MS
    #: readings fall on ``phase_ms + k·interval`` (plus 0 or 1 s)
    phase_ms: int = 50_000
    #: minutes the phone's wall clock is ahead of UTC (Timestamp vs FactoryTimestamp)
    utc_offset_min: int = 60
    #: [start, end) epoch-ms windows without readings (sensor changes, signal loss)
    gaps: list[tuple[int, int]] = attrs.field(factory=list)
    sensor_serial: str = "0M0008B8CD"
    sensor_start_s: int = 1_652_400_270
    #: later sensors (epoch s of each start): the connection shows the newest one started
    sensor_starts: list[int] = attrs.field(factory=list)
    #: how often the current measurement is renewed: None for the history grid (every
    #: ``interval_ms``), 60 000 for a sensor that streams a reading a minute (Libre 3), whose
    #: current measurement then lies between the history points most of the time
    current_interval_ms: int | None = None
    _values: dict[int, int] = attrs.field(factory=dict, repr=False)
    _items: dict[tuple[int, bool], dict[str, Any]] = attrs.field(factory=dict, repr=False)

    def reading_time(self, index: int) -> int:
        jitter = 1000 if (index * 2_654_435_761 + self.seed) % 7 == 0 else 0
        return self.phase_ms + index * self.interval_ms + jitter

    def current_time(self, index: int) -> int:
        """The time of the ``index``-th current measurement (a history point where they meet)."""
        step = self.current_interval_ms
        if step is None:
            return self.reading_time(index)
        offset = index * step
        if offset % self.interval_ms == 0:
            return self.reading_time(offset // self.interval_ms)
        return self.phase_ms + offset

    def current_index_at_or_before(self, ms: int) -> int:
        index = (ms - self.phase_ms) // (self.current_interval_ms or self.interval_ms)
        while self.current_time(index) > ms:
            index -= 1
        return index

    def new_sensor(self, start_ms: int, *, warmup_ms: int = 3_600_000) -> None:
        """A new sensor from ``start_ms``: no readings while it warms up, then a new start time."""
        self.sensor_starts.append(start_ms // 1000)
        self.gaps.append((start_ms, start_ms + warmup_ms))

    def sensor_start(self, now_ms: int) -> int:
        """The start (epoch s) of the sensor in use at ``now_ms``."""
        return max([self.sensor_start_s, *(s for s in self.sensor_starts if s * 1000 <= now_ms)])

    def index_at_or_before(self, ms: int) -> int:
        index = (ms - self.phase_ms) // self.interval_ms
        while self.reading_time(index) > ms:
            index -= 1
        return index

    def in_gap(self, ms: int) -> bool:
        return any(start <= ms < end for start, end in self.gaps)

    def times(self, after_ms: int, until_ms: int) -> Iterator[int]:
        """Reading times in (after, until], oldest first, skipping gaps."""
        index = self.index_at_or_before(after_ms) + 1
        while (t := self.reading_time(index)) <= until_ms:
            if t > after_ms and not self.in_gap(t):
                yield t
            index += 1

    def value(self, ms: int) -> int:
        if ms not in self._values:
            index = (ms - self.phase_ms) // self.interval_ms
            day = 2 * math.pi * (ms % 86_400_000) / 86_400_000
            noise = random.Random(self.seed * 7_919 + index).uniform(-6, 6)
            raw = 130 + 45 * math.sin(day + self.seed) + 25 * math.sin(5 * day) + noise
            self._values[ms] = int(min(400, max(40, round(raw))))
        return self._values[ms]

    def arrow(self, ms: int) -> int:
        """LibreLinkUp TrendArrow (1 fast down … 5 fast up) from the last five minutes."""
        before = self.value(ms - self.interval_ms) if self.interval_ms else self.value(ms)
        per_min = (self.value(ms) - before) / max(1, self.interval_ms / 60_000)
        if per_min <= -2:
            return 1
        if per_min <= -1:
            return 2
        if per_min < 1:
            return 3
        if per_min < 2:
            return 4
        return 5

    def item(self, ms: int, *, current: bool) -> dict[str, Any]:
        """The GlucoseItem of a reading (cached: a graph repeats 12 h of them on every call)."""
        key = (ms, current)
        if key not in self._items:
            self._items[key] = self._item(ms, current=current)
        return self._items[key]

    def _item(self, ms: int, *, current: bool) -> dict[str, Any]:
        value = self.value(ms)
        doc: dict[str, Any] = {
            "FactoryTimestamp": llu_time(ms),
            "Timestamp": llu_time(ms + self.utc_offset_min * 60_000),
            "type": 1 if current else 0,
            "ValueInMgPerDl": value,
        }
        if current:
            doc["TrendArrow"] = self.arrow(ms)
            doc["TrendMessage"] = None
        doc.update(
            {
                "MeasurementColor": 1 if 70 <= value <= 180 else (2 if value > 180 else 3),
                "GlucoseUnits": 1,
                "Value": value,
                "isHigh": False,
                "isLow": False,
            }
        )
        return doc


@attrs.define(eq=False)
class Account:
    """A LibreLinkUp follower account in one region."""

    email: str
    password: str
    region: str = "eu"
    user_id: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    first_name: str = "Flo"
    last_name: str = "Lower"
    country: str = "DE"
    patients: list[Patient] = attrs.field(factory=list)
    #: steps the next login must pass ("tou", "pp", "verifyEmail"), in order
    steps: list[str] = attrs.field(factory=list)
    token_duration_ms: int = TOKEN_DURATION_MS
    failures: list[int] = attrs.field(factory=list)
    locked_until: int = 0
    #: [start, end) windows in which the holder had changed the password (the old one fails)
    password_windows: list[tuple[int, int]] = attrs.field(factory=list)
    #: times at which every token issued before was revoked
    kills: list[int] = attrs.field(factory=list)

    def password_at(self, now_ms: int) -> str:
        changed = any(start <= now_ms < end for start, end in self.password_windows)
        return self.password + " (changed)" if changed else self.password

    @property
    def account_id(self) -> str:
        return sha256_hex(self.user_id)


@attrs.define(eq=False)
class Ticket:
    token: str
    account: Account
    expires_ms: int
    duration_ms: int
    step: str | None = None
    revoked: bool = False
    issued_ms: int = 0

    def dead(self, now_ms: int) -> bool:
        """Revoked, expired, or issued before a password change that has happened by now."""
        killed = any(self.issued_ms < kill <= now_ms for kill in self.account.kills)
        return self.revoked or killed or self.expires_ms <= now_ms


@attrs.define(eq=False)
class Fault:
    kind: str
    kinds: frozenset[str] | None = None  # request kinds it applies to (None: all)
    times: int | None = None  # remaining hits for inject(); None for a window
    start_ms: int | None = None
    end_ms: int | None = None
    retry_after: int | None = 60
    status: int = 403
    after_s: float = 30.0
    hits: int = 0

    def matches(self, kind: str, now: int) -> bool:
        if self.kinds is not None and kind not in self.kinds:
            return False
        if self.start_ms is not None:
            return self.start_ms <= now < (self.end_ms if self.end_ms is not None else now + 1)
        return self.times is not None and self.times > 0


@attrs.define(eq=False)
class Request:
    """One request as the emulator saw it (headers lower-cased; the login body kept as sent)."""

    time_ms: int
    method: str
    host: str
    path: str
    kind: str
    region: str
    headers: dict[str, str]
    body: Any
    account: Account | None = None
    status: int = 0
    fault: str | None = None
    #: the lockout seconds of a lock answer, for quiet-period checks
    lockout_s: int | None = None
    #: a login the service judged and refused (bad credentials or the lockout)
    refused: bool = False
    #: a login answered with the account's region: the client logs in there next, as part of
    #: the same logical login
    redirected: bool = False


def _html(status: int, title: str) -> _Answer:
    page = (
        "<!DOCTYPE html><html lang='en-US'><head><title>"
        f"{title}</title></head><body><h1>{title}</h1><p>Cloudflare Ray ID: 8a1b2c3d4e5f6789</p>"
        "</body></html>"
    )
    return _Answer(status, page.encode("utf-8"), "text/html; charset=UTF-8")


class LinkUpEmulator:
    """Accounts in several regions, a live stream per patient, injected faults, a request log."""

    def __init__(
        self,
        *,
        now: Callable[[], int] | None = None,
        default_region: str = "eu",
        minimum_version: str = MINIMUM_VERSION,
        publish_delay_ms: int = 10_000,
        publish_spread_ms: int = 0,
        graph_lag_ms: int = GRAPH_LAG_MS,
        lock_failures: int = 3,
        lock_interval_s: int = 60,
        lock_seconds: int = 300,
    ) -> None:
        self.now: Callable[[], int] = now or (lambda: int(time.time() * 1000))
        self.default_region = default_region
        self.minimum_version = minimum_version
        self.publish_delay_ms = publish_delay_ms
        #: each reading waits a further 0 … spread ms (fixed per reading time): a slow uploader
        self.publish_spread_ms = publish_spread_ms
        #: how long after it was published a reading joins graphData (it is current before)
        self.graph_lag_ms = graph_lag_ms
        self.lock_failures = lock_failures
        self.lock_interval_s = lock_interval_s
        self.lock_seconds = lock_seconds
        self.accounts: list[Account] = []
        self.tickets: dict[str, Ticket] = {}
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        #: (patient id, reading time) → the time a graph answer first delivered it
        self.served: dict[tuple[str, int], int] = {}
        #: the readings a graph answer delivered as the current measurement (with an arrow)
        self.served_current: set[tuple[str, int]] = set()
        #: login and step requests being answered now, and the most ever at once, per account
        #: e-mail (None: no account known): a client runs one login at a time
        self.logins_in_flight: dict[str | None, int] = {}
        self.max_logins_in_flight: dict[str | None, int] = {}

    # --- set-up ------------------------------------------------------------------------------

    def add_account(
        self, email: str, password: str, region: str = "eu", *, patients: int = 1, **kw: Any
    ) -> Account:
        if region not in REGION_HOSTS:
            raise ValueError(f"unknown region {region!r}")
        account = Account(email=email, password=password, region=region, **kw)
        for n in range(patients):
            account.patients.append(
                Patient(
                    first_name=f"Pat{n}", seed=len(self.accounts) * 10 + n + 1, phase_ms=50_000 + 7_000 * n
                )
            )
        self.accounts.append(account)
        return account

    def inject(self, kind: str, *, times: int = 1, on: str | Iterable[str] | None = None, **kw: Any) -> Fault:
        """A fault for the next ``times`` requests of the given kinds (login, graph …)."""
        return self._add(Fault(kind, self._kinds(on), times=times, **kw))

    def schedule(
        self, kind: str, start_ms: int, end_ms: int, *, on: str | Iterable[str] | None = None, **kw: Any
    ) -> Fault:
        """A fault for every matching request in [start, end)."""
        return self._add(Fault(kind, self._kinds(on), start_ms=start_ms, end_ms=end_ms, **kw))

    @staticmethod
    def _kinds(on: str | Iterable[str] | None) -> frozenset[str] | None:
        if on is None:
            return None
        kinds = frozenset([on] if isinstance(on, str) else on)
        if not kinds <= REQUEST_KINDS:
            raise ValueError(f"unknown request kinds {sorted(kinds - REQUEST_KINDS)}")
        return kinds

    def _add(self, fault: Fault) -> Fault:
        if fault.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {fault.kind!r}")
        self.faults.append(fault)
        return fault

    def expire_tokens(self) -> None:
        """The service forgets every token issued so far (password change, server-side logout)."""
        for ticket in self.tickets.values():
            ticket.revoked = True

    def move_account(self, account: Account, region: str) -> None:
        account.region = region

    def change_password(self, account: Account, start_ms: int, end_ms: int) -> None:
        """The holder changes the password at ``start_ms`` (tokens die) and back at ``end_ms``.

        Until then a login with the password the client knows is refused (status 2).
        """
        account.password_windows.append((start_ms, end_ms))
        account.kills.append(start_ms)

    # --- what tests read ---------------------------------------------------------------------

    def count(self, kind: str | None = None, *, account: Account | None = None) -> int:
        return sum(
            1
            for r in self.requests
            if (kind is None or r.kind == kind) and (account is None or r.account is account)
        )

    def served_times(self, patient: Patient) -> dict[int, int]:
        """Reading time → when it was first delivered, for one patient."""
        return {t: at for (pid, t), at in self.served.items() if pid == patient.patient_id}

    def served_current_times(self, patient: Patient) -> set[int]:
        """The readings of one patient that some graph answer delivered as its current one."""
        return {t for pid, t in self.served_current if pid == patient.patient_id}

    def available_at(self, reading_ms: int) -> int:
        """When a reading becomes visible: its time, the delay, and its share of the spread."""
        extra = 0
        if self.publish_spread_ms > 0:
            digest = hashlib.sha256(f"publish:{reading_ms}".encode()).digest()
            extra = int.from_bytes(digest[:4], "big") % (self.publish_spread_ms + 1)
        return reading_ms + self.publish_delay_ms + extra

    # --- ASGI ----------------------------------------------------------------------------------

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if await not_http(scope, receive, send):
            return
        answer = await self._handle(scope, await read_body(receive))
        headers = [
            *answer.headers.items(),
            ("server", "cloudflare"),
            ("cf-ray", f"{uuid.uuid4().hex[:16]}-FRA"),
        ]
        await respond(send, answer.status, headers, answer.body)

    async def _handle(self, scope: dict[str, Any], raw: bytes) -> _Answer:
        now = self.now()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "").split(":")[0].lower()
        region = "global" if host == GLOBAL_HOST else HOST_REGIONS.get(host, self.default_region)
        method: str = scope["method"]
        path: str = scope["path"]
        kind, patient_id = _route(path)
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        request = Request(now, method, host, path, kind or "unknown", region, headers, body)
        self.requests.append(request)
        self._attribute(request)
        login = kind in ("login", "step")
        key = request.account.email if request.account is not None else None
        if login:
            count = self.logins_in_flight.get(key, 0) + 1
            self.logins_in_flight[key] = count
            self.max_logins_in_flight[key] = max(self.max_logins_in_flight.get(key, 0), count)
        try:
            answer = await self._answer(request, method, kind, patient_id)
        except _Answer as raised:
            answer = raised
        finally:
            if login:
                self.logins_in_flight[key] -= 1
        request.status = answer.status
        return answer

    async def _answer(
        self, request: Request, method: str, kind: str | None, patient_id: str | None
    ) -> _Answer:
        if kind is None:
            return _html(404, "Not Found")
        if (method == "GET") != (kind in ("connections", "graph", "logbook")):
            return _html(405, "Method Not Allowed")
        fault = self._fault_for(request)
        if fault is not None:
            request.fault = fault.kind
            if fault.kind == "expire":
                self.expire_tokens()
            elif fault.kind == "truncated":
                answer = self._normal(request, kind, patient_id, record=False)
                return _Answer(answer.status, answer.body[: max(1, len(answer.body) // 2)], **answer.headers)
            else:
                return await self._faulty(fault, request)
        return self._normal(request, kind, patient_id, record=True)

    def _attribute(self, request: Request) -> None:
        """Which account a request concerns, even when it fails (for the request log)."""
        if request.kind == "login" and isinstance(request.body, dict):
            request.account = self._by_email(request.body.get("email"))
            return
        ticket = self.tickets.get(_bearer(request.headers) or "")
        request.account = ticket.account if ticket is not None else None

    def _by_email(self, email: object) -> Account | None:
        if not isinstance(email, str):
            return None
        wanted = email.strip().lower()
        return next((a for a in self.accounts if a.email.lower() == wanted), None)

    def _fault_for(self, request: Request) -> Fault | None:
        for fault in self.faults:
            if fault.matches(request.kind, request.time_ms):
                if fault.times is not None and fault.start_ms is None:
                    fault.times -= 1
                fault.hits += 1
                return fault
        return None

    async def _faulty(self, fault: Fault, request: Request) -> _Answer:
        kind = fault.kind
        if kind == "http500":
            return _Answer(500, b"Internal Server Error", "text/plain")
        if kind == "html502":
            return _html(502, "Bad gateway")
        if kind == "http429":
            extra = {} if fault.retry_after is None else {"retry-after": str(fault.retry_after)}
            return _Answer(429, b"Too Many Requests", "text/plain", **extra)
        if kind == "lock":
            if request.account is not None:
                request.account.locked_until = request.time_ms + self.lock_seconds * 1000
            request.lockout_s = self.lock_seconds
            request.refused = request.kind == "login"
            return self._lock_body()
        if kind == "ban":
            return _html(fault.status, f"{request.host or 'api.libreview.io'} has banned you temporarily")
        if kind == "timeout":
            await anyio.sleep(fault.after_s)
            raise httpx.ReadTimeout("emulated read timeout")
        if kind == "hang":
            await anyio.sleep(fault.after_s)
            return _html(524, "A timeout occurred")
        if kind == "nonjson":
            return _html(200, "Application Error")
        if kind == "version":
            return self._version_answer()
        raise AssertionError(kind)

    # --- the protocol ---------------------------------------------------------------------------

    def _normal(self, request: Request, kind: str, patient_id: str | None, *, record: bool) -> _Answer:
        try:
            self._check_app(request.headers)
            if kind == "login":
                return self._login(request)
            if kind == "step":
                return self._continue(request)
            ticket = self._authenticated(request)
            if kind == "connections":
                return self._connections(ticket, request.time_ms)
            patient = next((p for p in ticket.account.patients if p.patient_id == patient_id), None)
            if patient is None and self._follower_id(ticket.account, patient_id):
                # reported for a follower id in place of a patient id (02-librelinkup.md §6); the
                # status that comes with it is not recorded: an emulator assumption
                return _json({"error": {"message": "MissingCachedUser"}, "status": 1})
            if patient is None:
                return _json({"error": {"message": "couldNotLoadPatient"}, "status": 4})
            if kind == "graph":
                return self._graph(ticket, patient, request.time_ms, record=record)
            return self._logbook(ticket, patient, request.time_ms)
        except _Answer as answer:
            return answer

    @staticmethod
    def _follower_id(account: Account, wanted: str | None) -> bool:
        """Whether an id in a graph path is the follower's own or a connection's, not a patient's."""
        ids = {account.user_id, *(p.connection_id for p in account.patients)}
        return wanted is not None and wanted.lower() in {i.lower() for i in ids}

    def _version_answer(self) -> _Answer:
        return _json({"data": {"minimumVersion": self.minimum_version}, "status": 920}, status=403)

    def _check_app(self, headers: dict[str, str]) -> None:
        version = headers.get("version")
        if not headers.get("product") or not version:
            raise self._version_answer()
        if _version_tuple(version) < _version_tuple(self.minimum_version):
            raise self._version_answer()

    def _lock_body(self) -> _Answer:
        return _json(
            {
                "status": 429,
                "data": {
                    "code": 60,
                    "data": {
                        "failures": self.lock_failures,
                        "interval": self.lock_interval_s,
                        "lockout": self.lock_seconds,
                    },
                    "message": "locked",
                },
            }
        )

    def _login(self, request: Request) -> _Answer:
        body = request.body
        now = request.time_ms
        if not isinstance(body, dict) or not isinstance(body.get("email"), str):
            return _json({"status": 1, "error": {"message": "BadRequest"}}, status=400)
        account = request.account
        if account is not None and now < account.locked_until:
            request.lockout_s = (account.locked_until - now + 999) // 1000
            request.refused = True
            return self._lock_body()
        if account is None or body.get("password") != account.password_at(now):
            request.refused = True
            if account is not None:
                window = now - self.lock_interval_s * 1000
                account.failures = [t for t in account.failures if t > window] + [now]
                if len(account.failures) >= self.lock_failures:
                    account.locked_until = now + self.lock_seconds * 1000
                    account.failures.clear()
                    request.lockout_s = self.lock_seconds
                    return self._lock_body()
            return _json({"status": 2, "error": {"message": "notAuthenticated"}})
        if request.region != account.region:
            request.redirected = True
            return _json({"data": {"redirect": True, "region": account.region}, "status": 0})
        return self._after_login(account, now, request.headers.get("product", "llu.android"))

    def _after_login(self, account: Account, now: int, product: str) -> _Answer:
        if account.steps:
            step = account.steps[0]
            ticket = self._issue(account, now, STEP_DURATION_MS, product, step=step)
            component, props = STEP_PROPS.get(step, ("AcceptDocument", {"type": step}))
            step_doc: dict[str, Any] = {"type": step, "componentName": component}
            step_doc["props"] = {"email": account.email} if props is None else dict(props)
            return _json(
                {
                    "status": 4,
                    "data": {
                        "step": step_doc,
                        "user": {"accountType": "pat", "country": account.country, "uiLanguage": "en-GB"},
                        "authTicket": self._ticket_doc(ticket),
                    },
                }
            )
        ticket = self._issue(account, now, account.token_duration_ms, product)
        return _json({"status": 0, "data": self._login_data(account, ticket, now)})

    def _continue(self, request: Request) -> _Answer:
        ticket = self.tickets.get(_bearer(request.headers) or "")
        step = request.path.rstrip("/").rsplit("/", 1)[-1]
        if ticket is None or ticket.step is None or ticket.dead(request.time_ms):
            return _json({"message": "Unauthorized"}, status=401)
        account = ticket.account
        if not account.steps or account.steps[0] != step or step not in ("tou", "pp"):
            return _json({"status": 1, "error": {"message": "InvalidStep"}}, status=400)
        account.steps.pop(0)
        ticket.revoked = True
        return self._after_login(account, request.time_ms, request.headers.get("product", "llu.android"))

    def _issue(
        self, account: Account, now: int, duration_ms: int, product: str, *, step: str | None = None
    ) -> Ticket:
        expires_ms = now + duration_ms
        payload = {
            "id": account.user_id,
            "firstName": account.first_name,
            "lastName": account.last_name,
            "country": account.country,
            "region": account.region,
            "role": "patient",
            "units": 1,
            "practices": [],
            "c": 1,
            "s": product,
            "exp": expires_ms // 1000,
            "jti": uuid.uuid4().hex,
        }
        header = {"alg": "HS256", "typ": "JWT"}
        token = ".".join(
            (
                _b64(json.dumps(header, separators=(",", ":")).encode()),
                _b64(json.dumps(payload, separators=(",", ":")).encode()),
                _b64(uuid.uuid4().bytes + uuid.uuid4().bytes),
            )
        )
        ticket = Ticket(token, account, expires_ms, duration_ms, step=step, issued_ms=now)
        self.tickets[token] = ticket
        return ticket

    @staticmethod
    def _ticket_doc(ticket: Ticket) -> dict[str, Any]:
        return {"token": ticket.token, "expires": ticket.expires_ms // 1000, "duration": ticket.duration_ms}

    def _login_data(self, account: Account, ticket: Ticket, now: int) -> dict[str, Any]:
        return {
            "user": {
                "id": account.user_id,
                "firstName": account.first_name,
                "lastName": account.last_name,
                "email": account.email,
                "country": account.country,
                "uiLanguage": "de-DE",
                "communicationLanguage": "de-DE",
                "accountType": "pat",
                "uom": "1",
                "dateFormat": "2",
                "timeFormat": "2",
                "emailDay": [1],
                "system": {"messages": {"firstUsePhoenix": 1_652_399_000, "lvWebPostRelease": "3.19.10"}},
                "details": {},
                "twoFactor": {
                    "primaryMethod": "",
                    "primaryValue": "",
                    "secondaryMethod": "",
                    "secondaryValue": "",
                },
                "created": 1_621_354_475,
                "lastLogin": now // 1000,
                "programs": {},
                "dateOfBirth": 567_043_200,
                "practices": {},
                "devices": {},
                "consents": {"llu": {"policyAccept": 1_652_399_000, "touAccept": 1_652_399_000}},
            },
            "messages": {"unread": 0},
            "notifications": {"unresolved": 0},
            "authTicket": self._ticket_doc(ticket),
            "invitations": None,
            "trustedDeviceToken": "",
        }

    def _authenticated(self, request: Request) -> Ticket:
        ticket = self.tickets.get(_bearer(request.headers) or "")
        if (
            ticket is None
            or ticket.step is not None
            or ticket.dead(request.time_ms)
            or (request.region != ticket.account.region)
        ):
            raise _json({"message": "Unauthorized"}, status=401)
        if request.headers.get("account-id") != ticket.account.account_id:
            raise _json({"message": "RequiredHeaderMissing"}, status=400)
        return ticket

    def _current(self, patient: Patient, now: int) -> int | None:
        """The newest measurement already published (searching back over gaps, up to a day)."""
        visible = now - self.publish_delay_ms
        index = patient.current_index_at_or_before(visible)
        while (t := patient.current_time(index)) > visible - 86_400_000:
            if not patient.in_gap(t) and self.available_at(t) <= now:
                return t
            index -= 1
        return None

    def _connection(self, patient: Patient, now: int) -> dict[str, Any]:
        current = self._current(patient, now)
        measurement = None if current is None else patient.item(current, current=True)
        device = {
            "did": f"{patient.seed:08x}-phone",
            "dtid": 40068,
            "v": "3.3.1",
            "ll": 70,
            "hl": 250,
            "u": now // 1000 - 60,
            "fixedLowAlarmValues": {"mgdl": 60, "mmoll": 3.3},
            "alarms": False,
            "fixedLowThreshold": 0,
        }
        return {
            "id": patient.connection_id,
            "patientId": patient.patient_id,
            "country": patient.country,
            "status": 2,
            "firstName": patient.first_name,
            "lastName": patient.last_name,
            "targetLow": 70,
            "targetHigh": 180,
            "uom": 1,
            "sensor": {
                "deviceId": "",
                "sn": patient.sensor_serial,
                "a": patient.sensor_start(now),
                "w": 60,
                "pt": 4,
                "s": False,
                "lj": False,
            },
            "alarmRules": {
                "c": True,
                "h": {"on": True, "th": 250, "thmm": 13.9, "d": 1440, "f": 0.1},
                "f": {"th": 55, "thmm": 3, "d": 30, "tl": 10, "tlmm": 0.6},
                "l": {"on": True, "th": 70, "thmm": 3.9, "d": 1440, "tl": 10, "tlmm": 0.6},
                "nd": {"i": 20, "r": 5, "l": 6},
                "p": 5,
                "r": 5,
                "std": {"sd": True},
            },
            "glucoseMeasurement": measurement,
            "glucoseItem": None if current is None else patient.item(current, current=True),
            "glucoseAlarm": None,
            "patientDevice": device,
            "created": 1_652_399_545,
        }

    def _connections(self, ticket: Ticket, now: int) -> _Answer:
        return _json(
            {
                "status": 0,
                "data": [self._connection(p, now) for p in ticket.account.patients],
                "ticket": self._ticket_doc(ticket),
            }
        )

    def _graph(self, ticket: Ticket, patient: Patient, now: int, *, record: bool) -> _Answer:
        connection = self._connection(patient, now)
        current = self._current(patient, now)
        history: list[int] = []
        if current is not None:
            # the history trails the current measurement: a point joins it graph_lag_ms after
            # it was published, so a poll that missed a current reading finds it only later
            history = [
                t
                for t in patient.times(current - GRAPH_SPAN_MS, current - 1)
                if self.available_at(t) + self.graph_lag_ms <= now
            ]
        if record:
            for t in [*history, *([] if current is None else [current])]:
                self.served.setdefault((patient.patient_id, t), now)
            if current is not None:
                self.served_current.add((patient.patient_id, current))
        return _json(
            {
                "status": 0,
                "data": {
                    "connection": connection,
                    "activeSensors": [
                        {"sensor": connection["sensor"], "device": connection["patientDevice"]}
                    ],
                    "graphData": [patient.item(t, current=False) for t in history],
                },
                "ticket": self._ticket_doc(ticket),
            }
        )

    def _logbook(self, ticket: Ticket, patient: Patient, now: int) -> _Answer:
        visible = now - self.publish_delay_ms
        events = [
            t
            for i, t in enumerate(patient.times(visible - LOGBOOK_SPAN_MS, visible))
            if i % 36 == 0 and self.available_at(t) <= now
        ]
        return _json(
            {
                "status": 0,
                "data": [patient.item(t, current=True) for t in reversed(events)],
                "ticket": self._ticket_doc(ticket),
            }
        )

    # --- clients ------------------------------------------------------------------------------------

    def transport(self) -> httpx.ASGITransport:
        return httpx.ASGITransport(app=self)  # type: ignore[arg-type]

    def client(self, **kw: Any) -> httpx.AsyncClient:
        """An httpx client whose requests, to any host, reach this emulator in-process."""
        return httpx.AsyncClient(transport=self.transport(), **kw)


def _route(path: str) -> tuple[str | None, str | None]:
    """(request kind, patient id) for a path; kind None for anything the service lacks."""
    parts = [p for p in path.split("/") if p]
    if parts == ["llu", "auth", "login"]:
        return "login", None
    if (
        parts[-3:-1] == ["auth", "continue"]
        and len(parts) in (3, 4)
        and (len(parts) == 3 or parts[0] == "llu")
    ):
        return "step", None
    if parts == ["llu", "connections"]:
        return "connections", None
    if len(parts) == 4 and parts[:2] == ["llu", "connections"] and parts[3] in ("graph", "logbook"):
        return parts[3], parts[2]
    return None, None


def _bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    return value[7:].strip() if value.lower().startswith("bearer ") else None


def demo_emulator() -> LinkUpEmulator:
    """An emulator with one account per region pair, for ``python -m tests.emulators.linkup``."""
    emulator = LinkUpEmulator()
    emulator.add_account("follower@example.com", "correct horse", region="eu")
    emulator.add_account("faraway@example.com", "battery staple", region="eu2")
    return emulator


__all__ = [
    "Account",
    "LinkUpEmulator",
    "Patient",
    "demo_emulator",
    "llu_time",
    "serve_in_thread",
]


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.emulators.linkup [--host H] [--port P] [--publish-delay-ms N]``.

    Serves :func:`demo_emulator` (``follower@example.com`` / ``correct horse`` in the default
    region, so a loopback CONNECT_LINK_UP_SERVER reaches it without a redirect).
    """
    parser = argparse.ArgumentParser(description="LibreLinkUp emulator on a loopback port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--publish-delay-ms", type=int, default=10_000)
    args = parser.parse_args(argv)
    emulator = demo_emulator()
    emulator.publish_delay_ms = args.publish_delay_ms
    serve_forever(emulator, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
