"""An in-memory Nightscout site (cgm-remote-monitor 15.x, REST API v1) for tests.

It models what an uploader or a reader meets on a real site, as protocols/05-nightscout-api.md
describes it: ``api-secret`` (SHA-1 or SHA-512 hex), access tokens and JWTs with roles,
``AUTH_DEFAULT_ROLES``, the 401 body, MongoDB-style ``find`` queries with v1's type coercion
(``find[date][$gte]=2024-01-18T00:00:00Z`` really becomes 2024), the implicit four-day window,
newest-first sorting, the upsert rules of each collection on POST, and ``status.json``.

One thing a real site does not do: ``count`` above :attr:`NightscoutEmulator.max_count` (1000
by default) is clamped. That is the emulator's model of server-side limits (proxies, memory,
request timeouts): a client that wants everything must page instead of asking for it at once.

Tests drive it with :meth:`seed` / :meth:`seed_entries`, read :attr:`entries`, the request log
and :attr:`received` (documents uploaded, resends included), slow it down with :attr:`latency`,
and inject faults (:meth:`fail_next`, :attr:`down`, :meth:`fail_post_status`). The app is
plain ASGI, so it runs in-process under ``httpx.ASGITransport`` (trio or asyncio) and, through
:func:`serve_in_thread`, on a loopback port for end-to-end tests.
"""

from __future__ import annotations

import base64
import bisect
import copy
import hashlib
import hmac
import itertools
import json
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response

from tests.emulators.asgi import not_http

DAY_MS = 86_400_000
#: query.js: deltaAgo = 2 × TWO_DAYS when a query says nothing about the date
IMPLICIT_WINDOW_MS = 4 * DAY_MS
#: the emulator's model of server-side limits (see the module docstring)
DEFAULT_MAX_COUNT = 1000
#: delaylist.js: each failed authentication adds this much delay for the client's IP
AUTH_FAIL_DELAY_MS = 5000
#: enclave.js signs JWTs for eight hours
JWT_LIFETIME_S = 8 * 3600

COLLECTIONS = ("entries", "treatments", "devicestatus", "profile")

BUILTIN_ROLES: dict[str, tuple[str, ...]] = {
    "admin": ("*",),
    "denied": (),
    "status-only": ("api:status:read",),
    "readable": ("*:*:read",),
    "careportal": ("api:treatments:create",),
    "devicestatus-upload": ("api:devicestatus:create",),
    "activity": ("api:activity:create",),
}

#: fields each collection's query "walker" passes through parseInt (or parseRegEx)
ENTRY_INT_FIELDS = ("date", "sgv", "filtered", "unfiltered", "rssi", "noise", "mbg")
TREATMENT_INT_FIELDS = ("insulin", "carbs", "glucose")
TREATMENT_REGEX_FIELDS = ("notes", "eventType", "enteredBy")
DEFAULT_INT_FIELDS = ("date", "sgv")

UNAUTHORIZED_BODY = {"status": 401, "message": "Unauthorized", "description": "Invalid/Missing"}
STATUS_FIXTURE = (
    Path(__file__).resolve().parent.parent
    / "fixtures"
    / "nightscout"
    / ("py-nightscout__server_status_response.json")
)
OBJECT_ID = re.compile(r"^[0-9a-fA-F]{24}$")
NAN = float("nan")


# --- small models of the JavaScript and MongoDB behaviour the server relies on ----------------


def iso_from_ms(ms: int) -> str:
    """``Date.prototype.toISOString``: UTC, millisecond precision, ``Z``."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_moment(text: str) -> tuple[int, int] | None:
    """``moment.parseZone``: an ISO-8601 string as (epoch ms, UTC offset in minutes), or None."""
    value = text.strip()
    if not value or not value[:4].isdigit():
        return None
    if len(value) > 10 and value[10] == " ":
        value = value[:10] + "T" + value[11:]
    if value[-1] in "zZ":
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # servers run in UTC (Heroku, containers)
    offset = parsed.utcoffset() or timedelta(0)
    return int(round(parsed.timestamp() * 1000)), int(offset.total_seconds() // 60)


_PARSE_INT = re.compile(r"^\s*([+-]?\d+)")


def js_parse_int(value: Any) -> float | int:
    """JavaScript ``parseInt``: the leading integer of a string, else NaN."""
    if isinstance(value, bool) or value is None:
        return NAN
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return NAN if math.isnan(value) or math.isinf(value) else int(value)
    match = _PARSE_INT.match(str(value))
    return int(match.group(1)) if match else NAN


def js_is_nan(value: Any) -> bool:
    """JavaScript ``isNaN``: true when ``Number(value)`` is NaN."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return isinstance(value, float) and math.isnan(value)
    if not isinstance(value, str):
        return True
    text = value.strip()
    if not text:
        return False
    try:
        return math.isnan(float(text)) or text.lower() in {"inf", "+inf", "-inf", "nan"}
    except ValueError:
        return True


def parse_regex(value: Any) -> Any:
    """query.js ``parseRegEx``: ``/pattern/flags`` becomes a regular expression."""
    if isinstance(value, str):
        match = re.match(r"/(.*)/(.*)", value)
        if match:
            flags = re.IGNORECASE if "i" in match.group(2) else 0
            try:
                return re.compile(match.group(1), flags)
            except re.error:
                return value
    return value


def parse_qs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The ``qs`` package's bracket syntax: ``find[date][$gte]=1`` → ``{"find": {"date": {"$gte": "1"}}}``."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head] + (re.findall(r"([^\[\]]*)\]", "[" + rest) if rest else [])
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "" and isinstance(node, list):
                if last:
                    node.append(value)
                    break
                node.append({})
                node = node[-1]
                continue
            if not isinstance(node, dict):
                break  # a conflicting shape ("a=1&a[b]=2"); qs would keep the first
            if last:
                if part in node and isinstance(node[part], list):
                    node[part].append(value)
                elif part not in node:
                    node[part] = value
                continue
            following = parts[i + 1]
            if part not in node or not isinstance(node[part], (dict, list)):
                node[part] = [] if following == "" else {}
            node = node[part]
    return out


def _bson_rank(value: Any) -> tuple[int, Any]:
    """MongoDB's cross-type sort order, enough of it for these collections."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (4, value)
    if isinstance(value, (int, float)):
        return (1, -math.inf if math.isnan(value) else value)
    if isinstance(value, str):
        return (2, value)
    return (3, json.dumps(value, sort_keys=True, default=str))


def _lookup(doc: Mapping[str, Any], field: str) -> tuple[bool, Any]:
    node: Any = doc
    for part in field.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _equal(present: bool, value: Any, operand: Any) -> bool:
    if isinstance(operand, re.Pattern):
        return isinstance(value, str) and operand.search(value) is not None
    if operand is None:
        return not present or value is None
    if _is_number(operand) and _is_number(value):
        return bool(value == operand)
    if type(operand) is not type(value) and not (_is_number(operand) and _is_number(value)):
        return False
    return bool(value == operand)


class MongoError(Exception):
    """An operator MongoDB would refuse; the v1 API answers 500."""


def _compare(op: str, present: bool, value: Any, operand: Any) -> bool:
    if op == "$eq":
        return _equal(present, value, operand)
    if op == "$ne":
        return not _equal(present, value, operand)
    if op in ("$in", "$nin"):
        options = list(operand.values()) if isinstance(operand, dict) else operand
        if not isinstance(options, list):
            options = [options]
        hit = any(_equal(present, value, parse_regex(o)) for o in options)
        return hit if op == "$in" else not hit
    if op == "$exists":
        truthy = operand not in ("", "0", "false", 0, False, None)
        return present == truthy
    if op not in ("$gt", "$gte", "$lt", "$lte"):
        raise MongoError(f"unknown operator: {op}")
    if not present:
        return False
    if _is_number(operand) and math.isnan(operand):
        # MongoDB orders NaN below every number
        return _is_number(value) and op in ("$gt", "$gte") and not math.isnan(value)
    if _is_number(operand) and _is_number(value):
        a, b = value, operand
    elif isinstance(operand, str) and isinstance(value, str):
        a, b = value, operand
    else:
        return False  # no cross-type comparison for range operators
    if op == "$gt":
        return bool(a > b)
    if op == "$gte":
        return bool(a >= b)
    if op == "$lt":
        return bool(a < b)
    return bool(a <= b)


def matches(doc: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    """A MongoDB filter on one document: field equality and comparison operators."""
    for field, condition in query.items():
        if field.startswith("$"):
            raise MongoError(f"unknown top level operator: {field}")
        present, value = _lookup(doc, field)
        if isinstance(condition, dict) and condition and all(str(k).startswith("$") for k in condition):
            for op, operand in condition.items():
                if not _compare(op, present, value, operand):
                    return False
        elif isinstance(condition, dict):
            if not (present and value == condition):
                return False
        elif not _equal(present, value, condition):
            return False
    return True


def object_id(seconds: int, counter: int) -> str:
    """A 24-hex ObjectId: four bytes of time, then a per-emulator counter."""
    return f"{seconds & 0xFFFFFFFF:08x}{0x5EED:06x}{counter & 0xFFFFFFFFFF:010x}"


def sha1_hex(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


# --- test data ------------------------------------------------------------------------------


def sgv_series(
    start_ms: int, count: int, *, every_ms: int = 300_000, device: str = "xDrip-DexcomG6", base: int = 120
) -> list[dict[str, Any]]:
    """``count`` CGM entries from ``start_ms`` on, ``every_ms`` apart, as an uploader stores them."""
    directions = ("Flat", "FortyFiveUp", "SingleUp", "Flat", "FortyFiveDown", "SingleDown")
    docs = []
    for i in range(count):
        date = start_ms + i * every_ms
        docs.append(
            {
                "type": "sgv",
                "sgv": base + (i * 7) % 90,
                "date": date,
                "dateString": iso_from_ms(date),
                "sysTime": iso_from_ms(date),
                "utcOffset": 0,
                "direction": directions[i % len(directions)],
                "device": device,
            }
        )
    return docs


def treatment_series(
    start_ms: int, count: int, *, every_ms: int = 1_800_000, device: str = "loop://iPhone"
) -> list[dict[str, Any]]:
    """``count`` Loop-style temp basals from ``start_ms`` on, ``every_ms`` apart."""
    return [
        {
            "eventType": "Temp Basal",
            "created_at": iso_from_ms(start_ms + i * every_ms),
            "timestamp": iso_from_ms(start_ms + i * every_ms),
            "enteredBy": device,
            "temp": "absolute",
            "absolute": round(0.1 * (i % 20), 2),
            "rate": round(0.1 * (i % 20), 2),
            "duration": 30,
            "utcOffset": 0,
        }
        for i in range(count)
    ]


def devicestatus_series(
    start_ms: int, count: int, *, every_ms: int = 300_000, device: str = "loop://iPhone"
) -> list[dict[str, Any]]:
    """``count`` devicestatus documents from ``start_ms`` on, ``every_ms`` apart."""
    return [
        {
            "device": device,
            "created_at": iso_from_ms(start_ms + i * every_ms),
            "uploader": {"battery": 100 - i % 60},
            "pump": {"reservoir": 150 - (i % 100) * 0.5, "battery": {"percent": 80}},
            "utcOffset": 0,
        }
        for i in range(count)
    ]


# --- the emulator ----------------------------------------------------------------------------


class _DateIndex:
    """One collection's documents sorted by a date field, numbers and strings apart."""

    def __init__(self, docs: Mapping[str, Mapping[str, Any]], field: str) -> None:
        numbers: list[tuple[float, str]] = []
        strings: list[tuple[str, str]] = []
        for doc_id, doc in docs.items():
            value: Any = doc.get(field)
            if _is_number(value) and not math.isnan(value):
                numbers.append((value, doc_id))
            elif isinstance(value, str):
                strings.append((value, doc_id))
        numbers.sort()
        strings.sort()
        self.numbers: tuple[list[Any], list[str]] = ([k for k, _ in numbers], [i for _, i in numbers])
        self.strings: tuple[list[Any], list[str]] = ([k for k, _ in strings], [i for _, i in strings])


class LoggedRequest(NamedTuple):
    method: str
    path: str
    status: int
    query: str


@dataclass
class _Fault:
    kind: int | str
    remaining: int
    path: str | None
    method: str | None
    retry_after: float | None
    skip: int = 0


@dataclass
class _Auth:
    """What a request's credentials resolve to (authorization/index.js ``resolve``)."""

    permissions: tuple[str, ...]
    failed: bool = False
    defaults: bool = False
    subject: str | None = None


def _implies(granted: str, wanted: str) -> bool:
    """Shiro-style permission check: ``*:*:read`` implies ``api:entries:read``."""
    gparts = granted.split(":")
    wparts = wanted.split(":")
    for i, part in enumerate(gparts):
        if i >= len(wparts):
            return all(p == "*" for p in gparts[i:])
        if part != "*" and wparts[i] not in part.split(","):
            return False
    return True


class _Abort(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")), status_code=status, headers=dict(headers or {}),
        media_type="application/json",
    )  # fmt: skip


def _status_error(status: int, message: str, description: str | None = None) -> Response:
    body: dict[str, Any] = {"status": status, "message": message}
    if description is not None:
        body["description"] = description
    return _json(body, status)


class NightscoutEmulator:
    """One Nightscout site: its secret, its subjects, its four collections and its faults."""

    def __init__(
        self,
        api_secret: str = "emulator-api-secret",
        *,
        tokens: Mapping[str, Sequence[str]] | None = None,
        roles: Mapping[str, Sequence[str]] | None = None,
        auth_default_roles: str = "denied",
        now: Callable[[], int] | None = None,
        max_count: int = DEFAULT_MAX_COUNT,
        version: str = "15.0.7",
        hang_seconds: float = 3600.0,
    ) -> None:
        if len(api_secret) < 12:
            raise ValueError("Nightscout refuses an API_SECRET shorter than 12 characters")
        self.api_secret = api_secret
        self._secret_sha1 = sha1_hex(api_secret)
        self._secret_sha512 = hashlib.sha512(api_secret.encode("utf-8")).hexdigest()
        self.roles: dict[str, tuple[str, ...]] = {
            **BUILTIN_ROLES,
            **{k: tuple(v) for k, v in (roles or {}).items()},
        }
        self.auth_default_roles = auth_default_roles
        self.now: Callable[[], int] = now or (lambda: int(time.time() * 1000))
        self.max_count = max_count
        self.version = version
        #: how long a "timeout" fault stalls a response when served on a socket
        self.hang_seconds = hang_seconds
        #: set by :func:`serve_in_thread`: faults then act on the wire instead of raising in-process
        self.over_socket = False
        self._jwt_key = os.urandom(32)
        self._subjects: dict[str, dict[str, Any]] = {}
        for name, subject_roles in (tokens or {}).items():
            self.add_subject(name, subject_roles)
        self._lock = threading.RLock()
        self._counter = itertools.count(1)
        self._docs: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in COLLECTIONS}
        self._entry_keys: dict[tuple[str, str], str] = {}
        # treatments' upsert keys → _id (checked against the document on use: keys go stale)
        self._treatment_ids: dict[str, str] = {}
        self._treatment_keys: dict[tuple[str, Any], str] = {}
        # insertion order (ties sort newest-inserted first) and sorted date indexes for reads
        self._seq: dict[str, int] = {}
        self._order = itertools.count()
        self._version: dict[str, int] = dict.fromkeys(COLLECTIONS, 0)
        self._indexes: dict[tuple[str, str], tuple[int, _DateIndex]] = {}
        self.requests: list[LoggedRequest] = []
        #: documents each collection's POSTs carried and the site accepted, resends included
        #: (``count`` is what it holds after its dedupe rules)
        self.received: dict[str, int] = dict.fromkeys(COLLECTIONS, 0)
        #: seconds every answer is held after the request was handled (0: none). The site has
        #: already stored a POST when its answer is still on the way: the window a crashed or
        #: killed uploader leaves behind.
        self.latency = 0.0
        self.down = False
        self._faults: list[_Fault] = []
        self._post_faults: list[tuple[int, str]] = []
        #: failed authentications (the real server slows the client's IP down by 5 s for each)
        self.auth_failures = 0
        self._consecutive_failures = 0
        self.app = self._asgi

    # --- configuration helpers -----------------------------------------------------------

    def add_subject(self, name: str, subject_roles: Sequence[str]) -> str:
        """Create an admin-UI subject; returns its access token (``<abbrev>-<16 hex>``)."""
        subject_id = sha1_hex("subject:" + name)[:24]
        digest = sha1_hex(self._secret_sha1 + subject_id)
        abbrev = re.sub(r"\W", "", name.lower())[:10]
        token = f"{abbrev}-{digest[:16]}"
        self._subjects[name] = {
            "name": name, "_id": subject_id, "roles": tuple(subject_roles), "digest": digest,
            "accessToken": token, "accessTokenDigest": sha1_hex(token),
        }  # fmt: skip
        return token

    def token_for(self, name: str) -> str:
        return str(self._subjects[name]["accessToken"])

    def _role_permissions(self, names: Iterable[str]) -> tuple[str, ...]:
        perms: list[str] = []
        for name in names:
            if name in self.roles:
                perms.extend(self.roles[name])
            elif ":" in name or name == "*":
                perms.append(name)  # a permission string given directly
        return tuple(perms)

    def _default_roles(self) -> list[str]:
        return [r for r in re.split(r"[, :]", self.auth_default_roles) if r]

    # --- test data helpers ----------------------------------------------------------------

    def _new_id(self) -> str:
        return object_id(self.now() // 1000, next(self._counter))

    def seed(self, collection: str, docs: Iterable[Mapping[str, Any]]) -> None:
        """Store documents exactly as given (historic data is not normalised); ``_id`` added."""
        with self._lock:
            for doc in docs:
                stored = copy.deepcopy(dict(doc))
                stored["_id"] = str(stored.get("_id") or self._new_id())
                self._put(collection, stored)
                if collection == "entries" and stored.get("type") is not None:
                    key = self._entry_key(stored)
                    if key is not None:
                        self._entry_keys[key] = stored["_id"]
                if collection == "treatments":
                    self._index_treatment(stored)

    def _put(self, collection: str, doc: dict[str, Any]) -> None:
        """Store (or replace) a document; every write goes through here."""
        if doc["_id"] not in self._seq:
            self._seq[doc["_id"]] = next(self._order)
        self._docs[collection][doc["_id"]] = doc
        self._version[collection] += 1

    def _candidates(self, collection: str, field: str, condition: Any) -> Iterable[dict[str, Any]]:
        """Documents that may satisfy a range condition on ``field`` (a sorted-index lookup)."""
        docs = self._docs[collection]
        if not isinstance(condition, dict) or not condition:
            return list(docs.values())
        lows = [v for k, v in condition.items() if k in ("$gt", "$gte")]
        highs = [v for k, v in condition.items() if k in ("$lt", "$lte")]
        operands = lows + highs
        if set(condition) - {"$gt", "$gte", "$lt", "$lte"} or not operands:
            return list(docs.values())
        if all(_is_number(v) and not math.isnan(v) for v in operands):
            numeric = True
        elif all(isinstance(v, str) for v in operands):
            numeric = False
        else:
            return list(docs.values())
        cached = self._indexes.get((collection, field))
        if cached is None or cached[0] != self._version[collection]:
            cached = (self._version[collection], _DateIndex(docs, field))
            self._indexes[(collection, field)] = cached
        keys, ids = cached[1].numbers if numeric else cached[1].strings
        start = bisect.bisect_left(keys, max(lows)) if lows else 0
        stop = bisect.bisect_right(keys, min(highs)) if highs else len(keys)
        return [docs[i] for i in ids[start:stop]]

    def seed_entries(self, docs: Iterable[Mapping[str, Any]]) -> None:
        self.seed("entries", docs)

    def seed_treatments(self, docs: Iterable[Mapping[str, Any]]) -> None:
        self.seed("treatments", docs)

    def seed_devicestatus(self, docs: Iterable[Mapping[str, Any]]) -> None:
        self.seed("devicestatus", docs)

    def seed_profiles(self, docs: Iterable[Mapping[str, Any]]) -> None:
        self.seed("profile", docs)

    def docs(self, collection: str) -> list[dict[str, Any]]:
        """Copies of a collection's documents, in insertion order."""
        with self._lock:
            return [copy.deepcopy(d) for d in self._docs[collection].values()]

    @property
    def entries(self) -> list[dict[str, Any]]:
        return self.docs("entries")

    @property
    def treatments(self) -> list[dict[str, Any]]:
        return self.docs("treatments")

    @property
    def devicestatus(self) -> list[dict[str, Any]]:
        return self.docs("devicestatus")

    @property
    def profiles(self) -> list[dict[str, Any]]:
        return self.docs("profile")

    def count(self, collection: str) -> int:
        return len(self._docs[collection])

    @property
    def counts(self) -> dict[str, int]:
        return {c: len(self._docs[c]) for c in COLLECTIONS}

    def requests_to(self, path_prefix: str, method: str | None = None) -> list[LoggedRequest]:
        return [
            r
            for r in self.requests
            if r.path.startswith(path_prefix) and (method is None or r.method == method)
        ]

    @property
    def auth_delay_ms(self) -> int:
        """The delay the real server would now add to this client's requests."""
        return AUTH_FAIL_DELAY_MS * self._consecutive_failures

    # --- faults -------------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int | str = 500,
        *,
        path: str | None = None,
        method: str | None = None,
        retry_after: float | None = None,
        skip: int = 0,
    ) -> None:
        """Make ``n`` matching requests fail, after letting ``skip`` of them through.

        ``status`` is an HTTP status (500 answers a Mongo error body, 503 an HTML proxy page,
        429 carries ``Retry-After``), or one of ``"timeout"``, ``"disconnect"`` (the connection
        breaks), ``"lost"`` (the request is carried out, a POST stored, but the answer never
        comes: a timeout for the client), ``"html"`` (200 with a captive-portal page),
        ``"truncated"`` (200 with half a JSON body) and ``"object"`` (200 with a JSON object
        where an array belongs).
        ``path`` limits the fault to paths starting with it.
        """
        self._faults.append(_Fault(status, n, path, method, retry_after, skip))

    def fail_post_status(self, status: int = 400, message: str = "Bad Request") -> None:
        """The next authorised POST is refused with ``status`` (nothing is stored)."""
        self._post_faults.append((status, message))

    def clear_faults(self) -> None:
        self._faults.clear()
        self._post_faults.clear()
        self.down = False

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.path is not None and not path.startswith(fault.path):
                continue
            if fault.method is not None and fault.method != method:
                continue
            if fault.skip > 0:
                fault.skip -= 1
                return None
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
            return fault
        return None

    # --- ASGI -----------------------------------------------------------------------------

    async def _asgi(self, scope: Any, receive: Any, send: Any) -> None:
        if await not_http(scope, receive, send):
            return
        request = Request(scope, receive)
        method, path = request.method, request.url.path
        query = request.url.query
        fault = None if self.down else self._take_fault(method, path)
        if self.down:
            response = Response(
                "<html><body><h1>503 Service Unavailable</h1></body></html>", status_code=503,
                media_type="text/html",
            )  # fmt: skip
        elif fault is not None:
            if fault.kind == "lost":
                await self._answer(request)  # carried out; the answer is what gets lost
            if fault.kind in ("timeout", "disconnect", "lost"):
                self.requests.append(LoggedRequest(method, path, 0, query))
                await self._break("disconnect" if fault.kind == "disconnect" else "timeout", send)
                return
            response = self._fault_response(fault)
        else:
            response = await self._answer(request)
        self.requests.append(LoggedRequest(method, path, response.status_code, query))
        if self.latency > 0:
            await anyio.sleep(self.latency)
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except _Abort as abort:
            return abort.response
        except MongoError as error:
            return _status_error(500, "Mongo Error", str(error))

    async def _break(self, kind: int | str, send: Any) -> None:
        if not self.over_socket:
            # in-process (httpx.ASGITransport): what the client's transport would raise
            if kind == "timeout":
                raise httpx.ReadTimeout("emulated: the server did not answer in time")
            raise httpx.RemoteProtocolError("emulated: server disconnected without sending a response")
        if kind == "timeout":
            await anyio.sleep(self.hang_seconds)  # the client gives up long before this
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"[]"})
            return
        # on a socket: promise a body, send part of it, then drop the connection
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b"[{", "more_body": True})
        raise ConnectionResetError("emulated disconnect")

    def _fault_response(self, fault: _Fault) -> Response:
        kind = fault.kind
        if kind == "html":
            return Response("<html><body>Please sign in to the Wi-Fi</body></html>", media_type="text/html")
        if kind == "truncated":
            return Response('[{"type":"sgv","sgv":1', media_type="application/json")
        if kind == "object":
            return _json({"status": "ok"})
        status = int(kind)
        headers = {} if fault.retry_after is None else {"Retry-After": str(int(fault.retry_after))}
        if status == 503:
            return Response(
                "<html><body><h1>503 Service Unavailable</h1></body></html>", status_code=503,
                media_type="text/html", headers=headers,
            )  # fmt: skip
        if status == 401:
            return _json(UNAUTHORIZED_BODY, 401)
        if status == 429:
            return _json({"status": 429, "message": "Too Many Requests"}, 429, headers)
        if status >= 500:
            return _json(
                {"status": status, "message": "Mongo Error", "description": "emulated fault"}, status, headers
            )
        return _json({"status": status, "message": "emulated fault"}, status, headers)

    # --- authorization ------------------------------------------------------------------------

    def _find_subject(self, value: str) -> dict[str, Any] | None:
        """storage.js ``findSubject``: a token, or the SHA-1 of one (by prefix)."""
        prefix = value.split("-")[-1]
        if len(prefix) < 16:
            return None
        for subject in self._subjects.values():
            if subject["accessTokenDigest"].startswith(value) or subject["digest"].startswith(prefix):
                return subject
        return None

    def _is_api_key(self, value: str) -> bool:
        lowered = value.lower()
        return hmac.compare_digest(lowered, self._secret_sha1) or hmac.compare_digest(
            lowered, self._secret_sha512
        )

    def _resolve(self, request: Request, body: Any) -> _Auth:
        secret = request.query_params.get("secret") or request.headers.get("api-secret")
        access_token = request.query_params.get("token")
        for holder in self._body_holders(body):
            if not secret and isinstance(holder.get("secret"), str):
                secret = holder.pop("secret")
            if not access_token and isinstance(holder.get("token"), str):
                access_token = holder.pop("token")
        jwt: str | None = None
        authorization = request.headers.get("authorization", "")
        parts = authorization.split(" ")
        if len(parts) == 2 and parts[0] == "Bearer":
            jwt = parts[1]
        if jwt is None and access_token:
            issued = self._authorize(access_token)
            jwt = None if issued is None else issued["token"]
        if secret == "null":
            secret = None
        defaults = self._role_permissions(self._default_roles())
        if not secret and not jwt:
            return _Auth(permissions=defaults, defaults=True)
        if secret and self._is_api_key(secret):
            self._consecutive_failures = 0
            return _Auth(permissions=("*",))
        token: str | None = None
        if jwt:
            payload = self._verify_jwt(jwt)
            token = None if payload is None else payload.get("accessToken")
        if token is None and secret and self._find_subject(secret) is not None:
            token = secret
        subject = None if token is None else self._find_subject(token)
        if subject is not None:
            self._consecutive_failures = 0
            perms = self._role_permissions(subject["roles"]) + defaults
            return _Auth(permissions=perms, subject=subject["name"])
        self.auth_failures += 1
        self._consecutive_failures += 1
        return _Auth(permissions=(), failed=True)

    @staticmethod
    def _body_holders(body: Any) -> list[dict[str, Any]]:
        if isinstance(body, list) and body and isinstance(body[0], dict):
            return [body[0]]
        if isinstance(body, dict):
            return [body]
        return []

    @staticmethod
    def _permitted(auth: _Auth, permission: str) -> bool:
        return not auth.failed and any(_implies(p, permission) for p in auth.permissions)

    def _require(self, auth: _Auth, permission: str) -> None:
        if not self._permitted(auth, permission):
            raise _Abort(_json(UNAUTHORIZED_BODY, 401))

    def _sign_jwt(self, payload: Mapping[str, Any]) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

        header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
        claims = b64(json.dumps(payload, separators=(",", ":")).encode())
        signature = hmac.new(self._jwt_key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
        return f"{header}.{claims}.{b64(signature)}"

    def _verify_jwt(self, token: str) -> dict[str, Any] | None:
        try:
            header, claims, signature = token.split(".")
            expected = hmac.new(self._jwt_key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
            given = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
            if not hmac.compare_digest(expected, given):
                return None
            payload = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
        except (ValueError, TypeError):
            return None
        if not isinstance(payload, dict) or payload.get("exp", 0) <= self.now() // 1000:
            return None
        return payload

    def _authorize(self, access_token: str) -> dict[str, Any] | None:
        """authorization.authorize: an access token (or a JWT) → a fresh JWT and its grants."""
        payload = self._verify_jwt(access_token)
        user_token = payload["accessToken"] if payload and "accessToken" in payload else access_token
        subject = self._find_subject(user_token)
        if subject is None:
            return None
        iat = self.now() // 1000
        token = self._sign_jwt(
            {"accessToken": subject["accessToken"], "iat": iat, "exp": iat + JWT_LIFETIME_S}
        )
        roles = list(dict.fromkeys([*subject["roles"], *self._default_roles()]))
        return {
            "token": token, "sub": subject["name"],
            "permissionGroups": [list(self._role_permissions([r])) for r in roles],
            "iat": iat, "exp": iat + JWT_LIFETIME_S,
        }  # fmt: skip

    # --- routing -------------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        method, path = request.method, request.url.path
        body: Any = None
        if method in ("POST", "PUT"):
            raw = await request.body()
            if raw.strip():
                try:
                    body = json.loads(raw)
                except ValueError:
                    return _status_error(400, "Bad Request", "request body is not valid JSON")
        if path.startswith("/api/v2/authorization/request/") and method == "GET":
            issued = self._authorize(path.rsplit("/", 1)[-1])
            if issued is None:
                self.auth_failures += 1
                self._consecutive_failures += 1
                return _json(UNAUTHORIZED_BODY, 401)
            return _json(issued)
        if not path.startswith("/api/v1/"):
            return _not_found(method, path)
        route = path[len("/api/v1/") :]
        auth = self._resolve(request, body)
        params = parse_qs(request.query_params.multi_items())
        if route == "verifyauth" and method == "GET":
            return self._verifyauth(auth)
        if route in ("status", "status.json") and method == "GET":
            self._require(auth, "api:status:read")
            return _json(self._status(request))
        name, _, suffix = route.partition("/")
        collection, dot, extension = name.partition(".")
        if dot and extension != "json":
            return _not_found(method, path)
        if collection == "profiles":
            collection = "profile"
        if collection not in COLLECTIONS:
            return _not_found(method, path)
        if suffix.endswith(".json"):
            suffix = suffix[: -len(".json")]
        if method == "GET":
            self._require(auth, f"api:{collection}:read")
            return _json(self._read(collection, suffix, params))
        if method == "POST" and not suffix:
            self._require(auth, f"api:{collection}:create")
            if self._post_faults:
                status, message = self._post_faults.pop(0)
                return _status_error(status, message, "emulated rejection")
            return self._create(collection, body)
        return _not_found(method, path)

    def _verifyauth(self, auth: _Auth) -> Response:
        can_read = self._permitted(auth, "*:*:read")
        message = {
            "canRead": can_read,
            "canWrite": self._permitted(auth, "*:*:write"),
            "isAdmin": self._permitted(auth, "*:*:admin"),
            "message": "OK" if can_read and not auth.defaults else "UNAUTHORIZED",
            "rolefound": "FOUND" if auth.subject else "NOTFOUND",
            "permissions": "DEFAULT" if auth.defaults else "ROLE",
        }
        return _json({"status": 200, "message": message})

    def _status(self, request: Request) -> dict[str, Any]:
        status: dict[str, Any] = json.loads(STATUS_FIXTURE.read_text())
        now = self.now()
        status["version"] = self.version
        status["serverTime"] = iso_from_ms(now)
        status["serverTimeEpoch"] = now
        status["settings"]["authDefaultRoles"] = self.auth_default_roles
        token = request.query_params.get("token")
        status["authorized"] = self._authorize(token) if token else None
        status["runtimeState"] = "loaded"
        return status

    # --- reads -------------------------------------------------------------------------------

    def _read(self, collection: str, suffix: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        find = params.get("find")
        find = copy.deepcopy(find) if isinstance(find, dict) else {}
        count_default = 10
        if collection == "entries":
            if suffix == "current":
                find, params = {}, {"count": "1"}
            elif OBJECT_ID.match(suffix or ""):
                with self._lock:
                    doc = self._docs["entries"].get(suffix)
                return [] if doc is None else [copy.deepcopy(doc)]
            elif suffix:
                find["type"] = suffix  # /entries/sgv.json, /entries/mbg.json …
        elif collection == "profile":
            if suffix not in ("", "current"):
                return []
            return self._read_profiles(1 if suffix == "current" else self._count(params, 10))
        elif suffix:
            return []
        if collection == "treatments":
            count_default = 1000 if params.get("find") else 100
        query = self._query(collection, find)
        count = self._count(params, count_default)
        date_field = "date" if collection == "entries" else "created_at"
        with self._lock:
            candidates = self._candidates(collection, date_field, query.get(date_field))
            hits = [d for d in candidates if matches(d, query)]
            hits.sort(key=lambda d: (_bson_rank(d.get(date_field)), self._seq[d["_id"]]), reverse=True)
            # writes replace documents (or set top-level fields): a shallow copy is a snapshot
            return [dict(d) for d in hits[:count]]

    def _read_profiles(self, count: int) -> list[dict[str, Any]]:
        with self._lock:
            docs = list(self._docs["profile"].values())
            docs.sort(key=lambda d: (_bson_rank(d.get("startDate")), self._seq[d["_id"]]), reverse=True)
            return [dict(d) for d in docs[: min(count, self.max_count)]]

    def _count(self, params: Mapping[str, Any], default: int) -> int:
        value = params.get("count")
        count = default
        if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value) and int(value) > 0:
            count = int(value)
        return min(count, self.max_count)

    def _query(self, collection: str, find: dict[str, Any]) -> dict[str, Any]:
        """query.js: walker coercion, date-field normalisation, the implicit window, ``_id``."""
        ints: tuple[str, ...]
        regexes: tuple[str, ...]
        if collection == "entries":
            ints, regexes, date_field, epoch = ENTRY_INT_FIELDS, (), "date", True
        elif collection == "treatments":
            ints, regexes, date_field, epoch = (
                TREATMENT_INT_FIELDS,
                TREATMENT_REGEX_FIELDS,
                "created_at",
                False,
            )
        else:
            ints, regexes, date_field, epoch = DEFAULT_INT_FIELDS, (), "created_at", False
        for field in ints:
            if find.get(field):
                find[field] = _walk(find[field], js_parse_int)
        for field in regexes:
            if find.get(field):
                find[field] = _walk(find[field], parse_regex)
        date_value = find.get(date_field)
        if isinstance(date_value, dict):
            for key, value in list(date_value.items()):
                if not js_is_nan(value):
                    continue
                if not isinstance(value, str):
                    # entries: parseInt gave NaN, and query.js calls NaN.replace → a 500
                    raise _Abort(_status_error(500, "TypeError", "dateString.replace is not a function"))
                parsed = parse_moment(value.replace(" ", "+", 1))
                if parsed is None:
                    raise _Abort(_status_error(500, f"Cannot parse {value} as a valid ISO-8601 date"))
                date_value[key] = iso_from_ms(parsed[0])
        if not find.get("_id") and not date_value and not find.get("dateString"):
            since = self.now() - IMPLICIT_WINDOW_MS
            find[date_field] = {"$gte": since if epoch else iso_from_ms(since)}
        return find

    # --- writes -------------------------------------------------------------------------------

    def _create(self, collection: str, body: Any) -> Response:
        if collection == "entries":
            if isinstance(body, list):
                docs = body
            elif isinstance(body, dict) and "date" in body:
                docs = [body]
            else:
                docs = []  # a single object without `date` is silently ignored
        elif isinstance(body, list):
            docs = body
        elif isinstance(body, dict):
            docs = [body]
        else:
            docs = []
        if not all(isinstance(d, dict) for d in docs):
            return _status_error(400, "Bad Request", "documents must be JSON objects")
        with self._lock:
            if collection == "entries":
                stored = [self._upsert_entry(d) for d in docs]
            elif collection == "treatments":
                stored = [s for d in docs for s in self._upsert_treatment(d)]
            elif collection == "devicestatus":
                for doc in docs:
                    if "_id" in doc and not (isinstance(doc["_id"], str) and OBJECT_ID.match(doc["_id"])):
                        return _status_error(400, "Bad Request", "_id must be an ObjectId")
                stored = [self._insert_devicestatus(d) for d in docs]
            else:
                stored = [self._insert_profile(d) for d in docs]
            self.received[collection] += len(docs)
        return _json(stored)

    @staticmethod
    def _entry_key(doc: Mapping[str, Any]) -> tuple[str, str] | None:
        sys_time = doc.get("sysTime")
        kind = doc.get("type")
        if isinstance(sys_time, str) and isinstance(kind, str):
            return (sys_time, kind)
        return None

    def _upsert_entry(self, doc: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(doc)
        if "_id" in doc and not (isinstance(doc["_id"], str) and OBJECT_ID.match(doc["_id"])):
            del doc["_id"]  # 15.x drops a client UUID _id; the server assigns an ObjectId
        parsed = parse_moment(doc["dateString"]) if isinstance(doc.get("dateString"), str) else None
        if parsed is None and _is_number(doc.get("date")):
            parsed = (int(doc["date"]), 0)
        if parsed is None:
            parsed = (self.now(), 0)
        doc["utcOffset"] = parsed[1]
        doc["sysTime"] = iso_from_ms(parsed[0])
        if doc.get("dateString"):
            doc["dateString"] = doc["sysTime"]
        store = self._docs["entries"]
        key = self._entry_key(doc)
        existing_id = None if key is None else self._entry_keys.get(key)
        if existing_id is not None and existing_id in store:
            merged = {**store[existing_id], **{k: v for k, v in doc.items() if k != "_id"}}  # $set
            self._put("entries", merged)
            return copy.deepcopy(merged)
        doc["_id"] = str(doc.get("_id") or self._new_id())
        self._put("entries", doc)
        if key is not None:
            self._entry_keys[key] = doc["_id"]
        return copy.deepcopy(doc)

    def _prepare_treatment(self, doc: dict[str, Any]) -> tuple[str, str | None]:
        """treatments.js ``prepareData``: UTC ``created_at``, numbers, empty fields removed."""
        created: Any = doc.get("created_at")
        parsed = parse_moment(created) if isinstance(created, str) else None
        if parsed is None and _is_number(created):
            parsed = (int(created), 0)
        if parsed is None:
            parsed = (self.now(), 0)
        doc["created_at"] = iso_from_ms(parsed[0])
        doc["utcOffset"] = parsed[1]
        for field in ("glucose", "targetTop", "targetBottom", "carbs", "insulin", "duration", "percent",
                      "absolute", "relative", "preBolus"):  # fmt: skip
            if field in doc:
                doc[field] = _js_number(doc[field])
        event_time = doc.pop("eventTime", None)
        if isinstance(event_time, str) and parse_moment(event_time) is not None:
            doc["created_at"] = iso_from_ms(parse_moment(event_time)[0])  # type: ignore[index]
        pre_bolus_carbs = None
        if doc.get("preBolus") and doc.get("carbs"):
            pre_bolus_carbs = doc.pop("carbs")
        if doc.get("eventType") == "Announcement":
            doc["isAnnouncement"] = True
        for field in (
            "targetTop",
            "targetBottom",
            "carbs",
            "insulin",
            "percent",
            "relative",
            "notes",
            "preBolus",
        ):
            if field in doc and (
                not doc[field] or (isinstance(doc[field], float) and math.isnan(doc[field]))
            ):
                del doc[field]
        for field in ("absolute", "duration"):
            if field in doc and isinstance(doc[field], float) and math.isnan(doc[field]):
                del doc[field]
        if "glucose" in doc and (
            doc["glucose"] == 0 or (isinstance(doc["glucose"], float) and math.isnan(doc["glucose"]))
        ):
            for field in ("glucose", "glucoseType", "units"):
                doc.pop(field, None)
        return doc["created_at"], pre_bolus_carbs

    def _upsert_treatment(self, doc: dict[str, Any]) -> list[dict[str, Any]]:
        doc = copy.deepcopy(doc)
        created_at, pre_bolus_carbs = self._prepare_treatment(doc)
        stored = [self._replace_treatment(doc)]
        if pre_bolus_carbs is not None:
            moved = {
                "created_at": iso_from_ms(
                    parse_moment(created_at)[0] + int(float(doc.get("preBolus", 0) or 0) * 60_000)  # type: ignore[index]
                ),
                "eventType": doc.get("eventType"),
                "carbs": pre_bolus_carbs,
            }
            if doc.get("notes"):
                moved["notes"] = doc["notes"]
            stored.append(self._replace_treatment(moved))
        return stored

    def _index_treatment(self, doc: Mapping[str, Any]) -> None:
        if doc.get("identifier"):
            self._treatment_ids[str(doc["identifier"])] = doc["_id"]
        self._treatment_keys[(str(doc.get("created_at")), doc.get("eventType"))] = doc["_id"]

    def _replace_treatment(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Upsert key: ``identifier``, else ``_id``, else ``{created_at, eventType}``."""
        store = self._docs["treatments"]
        match: str | None = None
        if doc.get("identifier"):
            candidate = self._treatment_ids.get(str(doc["identifier"]))
            if candidate in store and store[candidate].get("identifier") == doc["identifier"]:
                match = candidate
        elif doc.get("_id"):
            match = str(doc["_id"]) if str(doc["_id"]) in store else None
        else:
            candidate = self._treatment_keys.get((doc["created_at"], doc.get("eventType")))
            if candidate in store and (
                store[candidate].get("created_at") == doc["created_at"]
                and store[candidate].get("eventType") == doc.get("eventType")
            ):
                match = candidate
        if match is not None:
            doc["_id"] = match  # replaceOne keeps the matched document's _id
        else:
            doc["_id"] = str(doc.get("_id") or self._new_id())
        self._put("treatments", doc)
        self._index_treatment(doc)
        return copy.deepcopy(doc)

    def _insert_devicestatus(self, doc: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(doc)
        created = doc.get("created_at")
        parsed = parse_moment(created) if isinstance(created, str) else None
        if parsed is None:
            parsed = (self.now(), 0)
        doc["created_at"] = iso_from_ms(parsed[0])
        doc["utcOffset"] = parsed[1]
        doc["_id"] = str(doc.get("_id") or self._new_id())
        if doc["_id"] in self._docs["devicestatus"]:
            raise _Abort(_status_error(500, "Mongo Error", "E11000 duplicate key error"))
        self._put("devicestatus", doc)
        return copy.deepcopy(doc)

    def _insert_profile(self, doc: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(doc)
        doc.setdefault("created_at", iso_from_ms(self.now()))
        doc["_id"] = self._new_id()
        self._put("profile", doc)
        return copy.deepcopy(doc)


def _walk(value: Any, typer: Callable[[Any], Any]) -> Any:
    """traverse().forEach on the leaves, as query.js's walker does."""
    if isinstance(value, dict):
        return {k: _walk(v, typer) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, typer) for v in value]
    return typer(value)


def _js_number(value: Any) -> float | int:
    """JavaScript ``Number(value)``."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return 0
        try:
            number = float(text)
        except ValueError:
            return NAN
        return int(number) if number.is_integer() else number
    return NAN


def _not_found(method: str, path: str) -> Response:
    return Response(f"Cannot {method} {path}", status_code=404, media_type="text/html")


# --- serving on a loopback port ---------------------------------------------------------------


def serve_in_thread(app: Any, host: str = "127.0.0.1") -> tuple[str, Callable[[], None]]:
    """Serve an ASGI app (or a :class:`NightscoutEmulator`) with hypercorn on a free loopback port.

    Returns ``(base_url, stop)``. The server runs an asyncio loop in a daemon thread, so it
    works beside trio tests and subprocess CLI tests alike; ``stop()`` shuts it down.
    """
    import asyncio

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    if isinstance(app, NightscoutEmulator):
        app.over_socket = True
        app = app.app
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the listening socket from here
    config.accesslog = None
    config.errorlog = None
    config.loglevel = "ERROR"
    config.graceful_timeout = 1.0
    started = threading.Event()
    state: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            shutdown = asyncio.Event()
            state["loop"] = asyncio.get_running_loop()
            state["shutdown"] = shutdown
            started.set()
            await serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]

        try:
            asyncio.run(main())
        except Exception as exc:  # reported by stop(); a test must not hang on a dead server
            state["error"] = exc
            started.set()

    thread = threading.Thread(target=run, name=f"asgi-{port}", daemon=True)
    thread.start()
    started.wait(10)

    def stop() -> None:
        loop = state.get("loop")
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(state["shutdown"].set)
        thread.join(10)

    return f"http://{host}:{port}", stop
