"""A Dexcom Share ("ShareWebServices") emulator: an ASGI app speaking the protocol as recorded.

Everything it answers follows protocols/01-dexcom-share.md: every call is a POST under
``/ShareWebServices/Services/``; logins answer a bare JSON string holding a UUID; reads answer
a JSON array of ``{WT, ST, DT, Value, Trend}``, newest first; errors are HTTP 500 with
``{Code, Message, SubCode, TypeName}`` (a malformed session id is a 400). The constants here
are written out from the protocol notes on purpose, not imported from the driver, so the
driver's own tables are checked against an independent copy.

Accounts live in one region each. The region of a request comes from its ``Host`` header
(``share2.dexcom.com``, ``shareous1.dexcom.com``, ``share.dexcom.jp``); any other host (a
loopback address) means the emulator's ``default_region``.

Readings are a live stream: account reading ``i`` has the time ``first_reading_ms + i·5 min``
and becomes visible ``publish_delay_ms`` later, judged by the injectable ``now`` (epoch ms),
so a test can run the emulator on :class:`connect.clock.VirtualClock`.

Faults are injected either for the next N matching requests (:meth:`ShareEmulator.inject`) or
for a window of time (:meth:`ShareEmulator.schedule`); account events (sessions killed,
password changed for a while, account locked) are placed in time with :meth:`expire_sessions`,
:meth:`change_password` and :meth:`lock`. Every request is recorded (time, endpoint, account,
status, vendor code, fault) so tests can count logins and reads and check the quiet periods,
and the emulator notes how many logins of one account were ever in flight at once.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final
from urllib.parse import parse_qsl
from xml.sax.saxutils import quoteattr

import anyio
import attrs
import httpx

from tests.emulators.asgi import Answer as _Answer
from tests.emulators.asgi import json_answer as _json
from tests.emulators.asgi import not_http, read_body, respond

PATH_PREFIX: Final = "/ShareWebServices/Services/"
AUTHENTICATE: Final = "General/AuthenticatePublisherAccount"
LOGIN_BY_ID: Final = "General/LoginPublisherAccountById"
LOGIN_BY_NAME: Final = "General/LoginPublisherAccountByName"  # legacy one-step login
READ: Final = "Publisher/ReadPublisherLatestGlucoseValues"
#: short names used in the request log and in fault filters
ENDPOINTS: Final = {AUTHENTICATE: "authenticate", LOGIN_BY_ID: "login", LOGIN_BY_NAME: "login", READ: "read"}
AUTH_ENDPOINTS: Final = frozenset({"authenticate", "login"})

HOSTS: Final = {"share2.dexcom.com": "us", "shareous1.dexcom.com": "ous", "share.dexcom.jp": "jp"}
APPLICATION_IDS: Final = {
    "us": "d89443d2-327c-4a6f-89e5-496bbb0317db",
    "ous": "d89443d2-327c-4a6f-89e5-496bbb0317db",
    "jp": "d8665ade-9673-4e27-9ff6-92db4ce13d13",
}
BASE_URLS: Final = {region: f"https://{host}{PATH_PREFIX}" for host, region in HOSTS.items()}
ZERO_UUID: Final = "00000000-0000-0000-0000-000000000000"
TRENDS: Final = (
    "None", "DoubleUp", "SingleUp", "FortyFiveUp", "Flat", "FortyFiveDown", "SingleDown", "DoubleDown",
    "NotComputable", "RateOutOfRange",
)  # fmt: skip
FIVE_MIN_MS: Final = 300_000
MAX_MINUTES: Final = 1440
MAX_COUNT: Final = 288
LOCKOUT_CODE: Final = "SSO_AuthenticateMaxAttemptsExceeed"  # sic: three "e", as the server spells it

#: Code → (Message, Type, Category, Severity, TypeString, CategoryString, SeverityString);
#: the first three rows are recorded (pydexcom cassettes, 2024–2025); the others follow the
#: same shape with messages as clients quote them
CODES: Final[dict[str, tuple[str, int, int, int, str, str, str]]] = {
    "AccountPasswordInvalid": (
        "Publisher account password failed", 13, 4, 1, "InvalidPassword", "Validation", "Minor",
    ),
    "SessionIdNotFound": (
        "Failed to find session object. [SessionId = {session}]", 5, 2, 2, "ObjectNotFound", "Database",
        "Severe",
    ),
    "InvalidArgument": (
        "Missing required field(s): {field}", 10, 4, 2, "InvalidArgument", "Validation", "Severe",
    ),
    "SessionNotValid": (
        "Session not active or timed out. [SessionId = {session}]", 6, 5, 2, "SessionNotValid",
        "Session", "Severe",
    ),
    LOCKOUT_CODE: (
        "Maximum authentication attempts exceeded", 13, 4, 1, "MaxAttemptsExceeded", "Validation", "Minor",
    ),
    "SSO_AuthenticatePasswordInvalid": (
        "Authenticate password invalid", 13, 4, 1, "InvalidPassword", "Validation", "Minor",
    ),
    "SSO_AuthenticateAccountNotFound": (
        "Authenticate account not found", 5, 4, 1, "ObjectNotFound", "Validation", "Minor",
    ),
    "SSO_InternalError": (
        "Cannot Authenticate by AccountName", 1, 1, 2, "InternalError", "General", "Severe",
    ),
}  # fmt: skip

#: every fault kind :meth:`ShareEmulator.inject` / :meth:`schedule` understand
FAULT_KINDS: Final = frozenset(
    {
        "code",  # HTTP 500 with the vendor body for ``code`` (``message`` overrides its Message);
        #          a lockout code also locks the account, as the real lockout does
        "http429",  # 429 with Retry-After
        "lockout429",  # 429 whose body is the lockout fault (Retry-After too, unless None); locks
        "ban",  # a Cloudflare HTML block page (403 unless ``status`` says otherwise)
        "html500",  # an HTML 500 page from the CDN
        "hang",  # no answer for ``hang_s`` seconds, then the CDN's 524 timeout page
        "timeout",  # ``after_s`` seconds, then httpx.ReadTimeout (in-process transports only)
        "truncated",  # the real answer cut in half (Content-Type still JSON)
        "nonjson",  # 200 with an empty text body, as the all-zero session gets
        "zero_uuid",  # a login step answers the all-zero UUID (older servers' failure)
        "lockout",  # the account locks now; the answer is the lockout fault
    }
)
_DEFAULT_ENDPOINTS: Final = {
    "zero_uuid": AUTH_ENDPOINTS,
    "lockout": AUTH_ENDPOINTS,
    "lockout429": AUTH_ENDPOINTS,
}
#: a ``code`` fault with a code that starts so locks the account, as the real lockout does
LOCKOUT_PREFIX: Final = "SSO_AuthenticateMaxAttempts"


def share_date(ms: int, offset: str | None = None, *, legacy: bool = False) -> str:
    """``Date(ms)`` / ``Date(ms±hhmm)``; ``legacy`` gives the 2015 ``/Date(...)/`` form."""
    text = f"Date({ms}{offset or ''})"
    return f"/{text}/" if legacy else text


@attrs.define
class Account:
    """A publisher: credentials, region, and a stream of readings every five minutes."""

    account_name: str
    password: str
    region: str = "us"
    account_id: str = attrs.Factory(lambda: str(uuid.uuid4()))
    #: time of reading 0; earlier there is no data
    first_reading_ms: int = 0
    #: how long after its time a reading becomes visible (the phone's upload, the cloud)
    publish_delay_ms: int = 5_000
    utc_offset: str = "-0400"
    seed: int = 0
    #: reading indexes never published (signal loss)
    missing: set[int] = attrs.Factory(set)
    #: extra delay before a reading is visible, per index (a late upload)
    late_ms: dict[int, int] = attrs.Factory(dict)
    #: old wire forms: integer trends and ``/Date(...)/`` strings
    trend_as_number: bool = False
    legacy_dates: bool = False
    # account events: (start, end) windows, kill times
    password_windows: list[tuple[int, int]] = attrs.Factory(list)
    lock_windows: list[tuple[int, int]] = attrs.Factory(list)
    kills: list[int] = attrs.Factory(list)
    failed_attempts: int = 0

    def reading_time(self, index: int) -> int:
        return self.first_reading_ms + index * FIVE_MIN_MS

    def visible_at(self, index: int) -> int:
        return self.reading_time(index) + self.publish_delay_ms + self.late_ms.get(index, 0)

    def value(self, index: int) -> int:
        """A smooth, deterministic glucose curve (mg/dL) with a little noise."""
        base = 140 + 70 * math.sin((index + self.seed) / 9.0)
        noise = ((index * 7919 + self.seed * 104729) % 11) - 5
        return max(40, min(400, int(base + noise)))

    def trend_index(self, index: int) -> int:
        """Dexcom's arrows from the rate of change in mg/dL per minute."""
        rate = (self.value(index) - self.value(index - 1)) / 5.0
        for threshold, trend in ((3, 1), (2, 2), (1, 3), (-1, 4), (-2, 5), (-3, 6)):
            if rate > threshold:
                return trend
        return 7

    def record(self, index: int) -> dict[str, Any]:
        t = self.reading_time(index)
        trend = self.trend_index(index)
        return {
            "WT": share_date(t, legacy=self.legacy_dates),
            "ST": share_date(t, legacy=self.legacy_dates),
            "DT": share_date(t, self.utc_offset, legacy=self.legacy_dates),
            "Value": self.value(index),
            "Trend": trend if self.trend_as_number else TRENDS[trend],
        }

    def published(self, now: int) -> list[int]:
        """Times of every reading visible at ``now``, oldest first."""
        if now < self.first_reading_ms:
            return []
        last = (now - self.first_reading_ms) // FIVE_MIN_MS
        return [
            self.reading_time(i)
            for i in range(last + 1)
            if i not in self.missing and self.visible_at(i) <= now
        ]

    def latest(self, now: int, *, minutes: int, max_count: int) -> list[int]:
        """Indexes the server returns: visible, within ``minutes``, at most ``max_count``, newest first."""
        out: list[int] = []
        if now < self.first_reading_ms or max_count <= 0 or minutes <= 0:
            return out
        oldest = now - minutes * 60_000
        index = (now - self.first_reading_ms) // FIVE_MIN_MS
        while index >= 0 and len(out) < max_count:
            t = self.reading_time(index)
            if t < oldest:
                break
            if index not in self.missing and self.visible_at(index) <= now:
                out.append(index)
            index -= 1
        return out

    def wrong_password_now(self, now: int) -> bool:
        return any(start <= now < end for start, end in self.password_windows)

    def locked_until(self, now: int) -> int | None:
        ends = [end for start, end in self.lock_windows if start <= now < end]
        return max(ends) if ends else None


@attrs.define
class Session:
    session_id: str
    account_id: str
    created_ms: int
    expires_ms: int


@attrs.define
class Fault:
    """A fault for the next ``times`` matching requests, or for every request in a time window."""

    kind: str
    endpoint: frozenset[str] | None = None
    account_id: str | None = None
    times: int | None = 1
    start_ms: int | None = None
    end_ms: int | None = None
    code: str = "SessionIdNotFound"
    #: the fault's ``Message`` instead of the usual one for ``code``
    message: str | None = None
    retry_after: int | None = 60
    status: int = 403
    hang_s: float = 100.0
    after_s: float = 30.0
    hits: int = 0

    def matches(self, endpoint: str, account_id: str | None, now: int) -> bool:
        if self.endpoint is not None and endpoint not in self.endpoint:
            return False
        if self.account_id is not None and account_id != self.account_id:
            return False
        if self.start_ms is not None:
            return self.start_ms <= now < (self.end_ms if self.end_ms is not None else now + 1)
        return self.times is None or self.times > 0


@attrs.define
class Request:
    """One request as the emulator saw it."""

    time_ms: int
    endpoint: str
    region: str
    account_id: str | None
    params: dict[str, str]
    status: int = 0
    fault: str | None = None
    #: the ``Code`` of a vendor fault answer (natural or injected)
    code: str | None = None
    #: reading times in a complete 200 answer
    served: tuple[int, ...] = ()


@attrs.define
class LockoutNotice:
    """The emulator told a client the account is locked, at ``told_ms``, until ``until_ms``."""

    account_id: str
    told_ms: int
    until_ms: int


class ShareEmulator:
    """The ASGI app. Create one, add accounts, point a client at it."""

    def __init__(
        self,
        *,
        now: Callable[[], int] | None = None,
        default_region: str = "us",
        session_ttl_ms: int = 24 * 3600 * 1000,
        lockout_after: int = 3,
        lockout_ms: int = 10 * 60 * 1000,
    ) -> None:
        self.now: Callable[[], int] = now or (lambda: int(time.time() * 1000))
        self.default_region = default_region
        self.session_ttl_ms = session_ttl_ms
        self.lockout_after = lockout_after
        self.lockout_ms = lockout_ms
        self.accounts: list[Account] = []
        self.sessions: dict[str, Session] = {}
        #: every session id ever issued → account id (so reads with dead sessions are attributed)
        self.issued: dict[str, str] = {}
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.lockouts: list[LockoutNotice] = []
        #: login requests (either step) being answered right now, per account id
        self.logins_in_flight: dict[str | None, int] = {}
        #: the most logins of one account that were ever in flight at the same time
        self.max_logins_in_flight: dict[str | None, int] = {}

    # --- set-up -------------------------------------------------------------------------

    def add_account(self, account_name: str, password: str, region: str = "us", **kw: Any) -> Account:
        account = Account(account_name=account_name, password=password, region=region, **kw)
        self.accounts.append(account)
        return account

    def inject(
        self, kind: str, *, endpoint: str | Iterable[str] | None = None, times: int | None = 1,
        account: Account | None = None, **params: Any,
    ) -> Fault:  # fmt: skip
        """Answer the next ``times`` matching requests (``None``: all of them) with a fault."""
        return self._add(Fault(kind, self._endpoints(kind, endpoint), _id(account), times, **params))

    def schedule(
        self, kind: str, start_ms: int, end_ms: int, *, endpoint: str | Iterable[str] | None = None,
        account: Account | None = None, **params: Any,
    ) -> Fault:  # fmt: skip
        """Answer every matching request in ``[start_ms, end_ms)`` with a fault."""
        fault = Fault(kind, self._endpoints(kind, endpoint), _id(account), None, start_ms, end_ms, **params)
        return self._add(fault)

    def expire_sessions(self, account: Account, at_ms: int | None = None) -> None:
        """Every session of ``account`` created before ``at_ms`` (default now) dies then."""
        account.kills.append(self.now() if at_ms is None else at_ms)

    def change_password(self, account: Account, start_ms: int, end_ms: int) -> None:
        """The publisher changes the password at ``start_ms`` (sessions die) and back at ``end_ms``."""
        account.password_windows.append((start_ms, end_ms))
        account.kills.append(start_ms)

    def lock(self, account: Account, at_ms: int | None = None, duration_ms: int | None = None) -> None:
        """Lock the account (another device hammered it): sessions die, logins answer the lockout."""
        start = self.now() if at_ms is None else at_ms
        account.lock_windows.append((start, start + (duration_ms or self.lockout_ms)))
        account.kills.append(start)

    def _endpoints(self, kind: str, endpoint: str | Iterable[str] | None) -> frozenset[str] | None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        if endpoint is None:
            return _DEFAULT_ENDPOINTS.get(kind)
        return frozenset([endpoint] if isinstance(endpoint, str) else endpoint)

    def _add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    # --- queries for tests ----------------------------------------------------------------

    def count(self, endpoint: str | None = None, *, account: Account | None = None,
              since: int | None = None, until: int | None = None) -> int:  # fmt: skip
        return sum(
            1
            for r in self.requests
            if (endpoint is None or r.endpoint == endpoint)
            and (account is None or r.account_id == account.account_id)
            and (since is None or r.time_ms >= since)
            and (until is None or r.time_ms < until)
        )

    def served(self, account: Account) -> set[int]:
        """Times of every reading this account's complete 200 answers carried."""
        return {t for r in self.requests if r.account_id == account.account_id for t in r.served}

    def account_by_id(self, account_id: str) -> Account | None:
        return next((a for a in self.accounts if a.account_id == account_id), None)

    # --- ASGI ----------------------------------------------------------------------------

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if await not_http(scope, receive, send):
            return
        answer = await self._handle(scope, await read_body(receive))
        headers = [
            *answer.headers.items(),
            ("server", "cloudflare"),
            ("cf-ray", f"{uuid.uuid4().hex[:16]}-PHL"),
            ("x-trace-id", str(uuid.uuid4())),
            ("cache-control", "no-cache, no-store, max-age=0, must-revalidate"),
        ]
        await respond(send, answer.status, headers, answer.body)

    async def _handle(self, scope: dict[str, Any], body: bytes) -> _Answer:
        now = self.now()
        host = _header(scope, b"host").split(":")[0].lower()
        region = HOSTS.get(host, self.default_region)
        path: str = scope["path"]
        name = path[len(PATH_PREFIX) :] if path.startswith(PATH_PREFIX) else None
        endpoint = ENDPOINTS.get(name or "")
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        if endpoint is None:
            return _html(404, "Not Found")
        parsed = _parse_body(body)
        request = Request(now, endpoint, region, self._attribute(endpoint, parsed, params, region), params)
        self.requests.append(request)
        if scope["method"] != "POST":
            request.status = 405
            return _html(405, "Method Not Allowed")
        login = endpoint in AUTH_ENDPOINTS
        if login:
            count = self.logins_in_flight.get(request.account_id, 0) + 1
            self.logins_in_flight[request.account_id] = count
            peak = self.max_logins_in_flight.get(request.account_id, 0)
            self.max_logins_in_flight[request.account_id] = max(peak, count)
        try:
            answer = await self._answer(request, name or "", parsed, params)
        finally:
            if login:
                self.logins_in_flight[request.account_id] -= 1
        request.status = answer.status
        request.code = _fault_code(answer)
        return answer

    def _attribute(self, endpoint: str, body: Any, params: dict[str, str], region: str) -> str | None:
        """Which account a request concerns, even when it will fail (for the request log)."""
        if endpoint == "read":
            session = _session_param(params)
            return self.issued.get(session or "")
        if not isinstance(body, dict):
            return None
        if isinstance(body.get("accountId"), str):
            account = self.account_by_id(body["accountId"])
            return account.account_id if account else None
        name = body.get("accountName")
        account = self._by_name(name, region) if isinstance(name, str) else None
        return account.account_id if account else None

    def _by_name(self, name: str, region: str) -> Account | None:
        wanted = name.strip().lower()
        return next(
            (a for a in self.accounts if a.account_name.lower() == wanted and a.region == region), None
        )

    def _fault_for(self, request: Request) -> Fault | None:
        for fault in self.faults:
            if fault.matches(request.endpoint, request.account_id, request.time_ms):
                if fault.times is not None and fault.start_ms is None:
                    fault.times -= 1
                fault.hits += 1
                return fault
        return None

    async def _answer(self, request: Request, name: str, body: Any, params: dict[str, str]) -> _Answer:
        fault = self._fault_for(request)
        if fault is not None:
            request.fault = fault.kind if fault.kind != "code" else f"code:{fault.code}"
            if fault.kind == "truncated":
                told = len(self.lockouts)
                answer = self._normal(request, name, body, params)
                # the server did the work (a wrong password still counts towards its lockout),
                # but a cut answer tells the client nothing: a lockout it carried was not told
                del self.lockouts[told:]
                request.served = ()
                return _Answer(answer.status, answer.body[: max(1, len(answer.body) // 2)], **_ct(answer))
            return await self._faulty(fault, request, params)
        try:
            return self._normal(request, name, body, params)
        except _Answer as answer:
            return answer

    async def _faulty(self, fault: Fault, request: Request, params: dict[str, str]) -> _Answer:
        kind = fault.kind
        if kind == "code":
            if fault.code.startswith(LOCKOUT_PREFIX):
                self._lock_by_request(request)
            return self._vendor_fault(fault.code, session=_session_param(params) or "", message=fault.message)
        if kind == "http429":
            headers = {} if fault.retry_after is None else {"retry-after": str(fault.retry_after)}
            return _Answer(429, b"Too Many Requests", "text/plain", **headers)
        if kind == "lockout429":
            self._lock_by_request(request)
            body = self._vendor_fault(LOCKOUT_CODE).body
            headers = {} if fault.retry_after is None else {"retry-after": str(fault.retry_after)}
            return _Answer(429, body, **headers)
        if kind == "ban":
            return _html(fault.status, "Access denied | share2.dexcom.com used Cloudflare to restrict access")
        if kind == "html500":
            return _html(500, "Internal Server Error")
        if kind == "hang":
            await anyio.sleep(fault.hang_s)
            return _html(524, "A timeout occurred")
        if kind == "timeout":
            await anyio.sleep(fault.after_s)
            raise httpx.ReadTimeout("emulated read timeout")
        if kind == "nonjson":
            return _Answer(200, b"", "text/plain")
        if kind == "zero_uuid":
            return _json(ZERO_UUID)
        if kind == "lockout":
            account = self.account_by_id(request.account_id or "")
            if account is not None:
                self.lock(account, request.time_ms)
            return self._lockout_answer(account, request.time_ms)
        raise AssertionError(kind)

    def _lock_by_request(self, request: Request) -> None:
        """The account of ``request`` is locked from now on, and the client has been told so."""
        account = self.account_by_id(request.account_id or "")
        if account is not None:
            self.lock(account, request.time_ms)
            self._lockout_answer(account, request.time_ms)

    # --- the protocol proper -----------------------------------------------------------------

    def _normal(self, request: Request, name: str, body: Any, params: dict[str, str]) -> _Answer:
        try:
            if name == AUTHENTICATE:
                return self._authenticate(request, body)
            if name == LOGIN_BY_ID:
                return self._login_by_id(request, body)
            if name == LOGIN_BY_NAME:
                account_id = self._authenticate(request, body)
                return self._new_session(self.account_by_id(json.loads(account_id.body)), request.time_ms)
            return self._read(request, params)
        except _Answer as answer:
            return answer

    def _authenticate(self, request: Request, body: Any) -> _Answer:
        if not isinstance(body, dict):
            raise self._vendor_fault("InvalidArgument", field="JSON body")
        self._check_application(request, body)
        name, password = body.get("accountName"), body.get("password")
        if not isinstance(name, str) or not name:
            raise self._vendor_fault("InvalidArgument", field="accountName")
        if not isinstance(password, str) or not password:
            raise self._vendor_fault("InvalidArgument", field="password")
        account = self._by_name(name, request.region)
        if account is None:
            raise self._vendor_fault("AccountPasswordInvalid")
        self._check_password(account, password, request.time_ms)
        return _json(account.account_id)

    def _login_by_id(self, request: Request, body: Any) -> _Answer:
        if not isinstance(body, dict):
            raise self._vendor_fault("InvalidArgument", field="JSON body")
        self._check_application(request, body)
        account_id, password = body.get("accountId"), body.get("password")
        if account_id == "":
            return _json(ZERO_UUID)  # recorded in 2024: an empty id logs in to nothing
        if not isinstance(account_id, str) or not _is_uuid(account_id):
            raise self._vendor_fault(
                "InvalidArgument",
                field=f'JSON parse error: Cannot deserialize value of type `java.util.UUID` from String "{account_id}": '
                "UUID has to be represented by standard 36-char representation",
            )
        if not isinstance(password, str) or not password:
            raise self._vendor_fault("InvalidArgument", field="password")
        account = self.account_by_id(account_id)
        if account is None or account.region != request.region:
            raise self._vendor_fault("AccountPasswordInvalid")
        self._check_password(account, password, request.time_ms)
        return self._new_session(account, request.time_ms)

    def _check_application(self, request: Request, body: dict[str, Any]) -> None:
        if body.get("applicationId") != APPLICATION_IDS[request.region]:
            raise self._vendor_fault("AccountPasswordInvalid")

    def _check_password(self, account: Account, password: str, now: int) -> None:
        if account.locked_until(now) is not None:
            raise self._lockout_answer(account, now)
        if password != account.password or account.wrong_password_now(now):
            account.failed_attempts += 1
            if account.failed_attempts >= self.lockout_after:
                account.failed_attempts = 0
                account.lock_windows.append((now, now + self.lockout_ms))
                raise self._lockout_answer(account, now)
            raise self._vendor_fault("AccountPasswordInvalid")
        account.failed_attempts = 0

    def _lockout_answer(self, account: Account | None, now: int) -> _Answer:
        if account is not None:
            until = account.locked_until(now) or now
            self.lockouts.append(LockoutNotice(account.account_id, now, until))
        return self._vendor_fault(LOCKOUT_CODE)

    def _new_session(self, account: Account | None, now: int) -> _Answer:
        if account is None:
            raise self._vendor_fault("AccountPasswordInvalid")
        session_id = str(uuid.uuid4())
        self.sessions[session_id] = Session(session_id, account.account_id, now, now + self.session_ttl_ms)
        self.issued[session_id] = account.account_id
        return _json(session_id)

    def _read(self, request: Request, params: dict[str, str]) -> _Answer:
        session_id = _session_param(params)
        if session_id is None or not _is_uuid(session_id):
            return _Answer(400, b"", "text/plain")
        try:
            minutes = int(params.get("minutes", ""))
            max_count = int(params.get("maxCount", ""))
        except ValueError:
            return _Answer(400, b"", "text/plain")
        if session_id == ZERO_UUID:
            return _Answer(200, b"", "text/plain")  # pydexcom's note: an empty, non-JSON body
        session = self.sessions.get(session_id)
        account = self.account_by_id(session.account_id) if session else None
        if session is None or account is None or _killed(account, session, request.time_ms):
            self.sessions.pop(session_id, None)
            raise self._vendor_fault("SessionIdNotFound", session=session_id)
        if request.time_ms >= session.expires_ms:
            raise self._vendor_fault("SessionNotValid", session=session_id)
        indexes = account.latest(
            request.time_ms, minutes=min(minutes, MAX_MINUTES), max_count=min(max_count, MAX_COUNT)
        )
        request.served = tuple(account.reading_time(i) for i in indexes)
        return _json([account.record(i) for i in indexes])

    def _vendor_fault(
        self, code: str, *, session: str = "", field: str = "", message: str | None = None
    ) -> _Answer:
        return _json(fault_body(code, self.now(), session=session, field=field, message=message), status=500)


def fault_body(
    code: str, now_ms: int, *, session: str = "", field: str = "", message: str | None = None
) -> dict[str, str]:
    """The JSON body of a Share fault, shaped like the recorded ones."""
    message_t, type_, category, severity, type_s, category_s, severity_s = CODES.get(
        code, ("Unexpected error", 1, 1, 2, code, "General", "Severe")
    )
    message = message_t.format(session=session, field=field) if message is None else message
    thrown = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    local = thrown.astimezone(timezone(timedelta(hours=-4)))
    if code == "SessionNotValid":
        # late-2025 servers send this one's SubCode as a JSON-encoded string
        sub_code = json.dumps(
            {
                "OnlineException": {
                    "DateThrownLocal": local.strftime("%Y-%m-%dT%H:%M:%S.%f"),
                    "DateThrown": thrown.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                    "ErrorCode": "", "Type": type_, "Category": category, "Severity": severity,
                    "TypeString": type_s, "CategoryString": category_s, "SeverityString": severity_s,
                    "HostName": "", "HostIP": "", "Id": "{" + str(uuid.uuid4()) + "}", "Message": message,
                    "FullText": f"com.dexcom.udp.common.data.exception.OnlineException: {message}",
                }
            }
        )  # fmt: skip
    else:
        attributes = {
            "DateThrownLocal": local.strftime("%Y-%m-%dT%H:%M:%S.%f"),
            "DateThrown": thrown.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "ErrorCode": code, "Type": str(type_), "Category": str(category), "Severity": str(severity),
            "TypeString": type_s, "CategoryString": category_s, "SeverityString": severity_s,
            "HostName": "", "HostIP": "", "Id": "{" + str(uuid.uuid4()) + "}", "Message": message,
            "FullText": f"com.dexcom.udp.common.data.exception.OnlineException: {message}",
        }  # fmt: skip
        sub_code = (
            "<OnlineException " + " ".join(f"{k}={quoteattr(v)}" for k, v in attributes.items()) + " />"
        )
    return {"Code": code, "Message": message, "SubCode": sub_code, "TypeName": "FaultException"}


def _fault_code(answer: _Answer) -> str | None:
    if answer.status < 400 or not answer.headers["content-type"].startswith("application/json"):
        return None
    try:
        body = json.loads(answer.body)
    except ValueError:
        return None  # a truncated fault body
    code = body.get("Code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def _killed(account: Account, session: Session, now: int) -> bool:
    return any(session.created_ms < kill <= now for kill in account.kills)


def _id(account: Account | None) -> str | None:
    return None if account is None else account.account_id


def _ct(answer: _Answer) -> dict[str, str]:
    return {"content_type": answer.headers["content-type"]}


def _html(status: int, title: str) -> _Answer:
    page = (
        '<!DOCTYPE html>\n<html lang="en-US"><head><title>' + title + "</title></head>"
        '<body><div class="cf-error-details"><h1>' + title + "</h1>"
        "<p>Cloudflare Ray ID: 8a673fddcb8f32c8</p></div></body></html>"
    )
    return _Answer(status, page.encode(), "text/html; charset=UTF-8")


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return ""


def _parse_body(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _session_param(params: dict[str, str]) -> str | None:
    # both spellings are in use (sessionId by pydexcom, sessionID by the bridges)
    for key, value in params.items():
        if key.lower() == "sessionid":
            return value
    return None


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower() and len(text) == 36
    except ValueError:
        return False


class TimeoutTransport(httpx.AsyncBaseTransport):
    """``httpx.ASGITransport`` with the client's read timeout applied, as a socket would.

    The in-process transport ignores timeouts; a test that wants a ``hang`` fault to end the
    way it does on the network wraps the app in this. Trio only (tests run under trio).
    """

    def __init__(self, app: Any, *, timeout_s: float = 30.0) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.timeout_s = timeout_s

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import trio

        with trio.move_on_after(self.timeout_s) as scope:
            return await self.inner.handle_async_request(request)
        assert scope.cancelled_caught
        raise httpx.ReadTimeout("emulated socket read timeout", request=request)


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.emulators.dexcom --account NAME:PASSWORD[:REGION] [--port N]``."""
    from tests.emulators.serve import serve_forever

    parser = argparse.ArgumentParser(description="Dexcom Share emulator on a loopback port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--region", default="us", help="region of requests whose Host is not a Share host")
    parser.add_argument("--account", action="append", default=[], help="NAME:PASSWORD[:REGION]")
    parser.add_argument("--history-hours", type=float, default=24.0, help="readings before start")
    args = parser.parse_args(argv)
    emulator = ShareEmulator(default_region=args.region)
    start = emulator.now() - int(args.history_hours * 3600 * 1000)
    for spec in args.account or ["publisher:secret-password"]:
        name, password, *rest = spec.split(":")
        emulator.add_account(name, password, rest[0] if rest else args.region, first_reading_ms=start)
    serve_forever(emulator, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
