"""A Glooko emulator: the cookie sign-in and the v2 data endpoints, as protocols/04-glooko.md says.

* ``POST /api/v2/users/sign_in`` with ``{"userLogin": {email, password}, "deviceInformation"}``
  answers the user (``userLogin.glookoCode``) and sets the session cookie first among its
  ``Set-Cookie`` headers (with ``Max-Age``); wrong credentials answer 401;
* ``GET /api/v3/session/users`` answers ``currentUser.glookoCode``;
* ``GET /api/v2/pumps/normal_boluses``, ``/pumps/scheduled_basals``, ``/cgm/readings`` and
  ``/foods`` want the cookie and ``patient``, ``startDate``, ``endDate``, ``lastGuid``,
  ``lastUpdatedAt`` and ``limit`` (422 without them), and answer ``{"<key>": [...]}`` sorted by
  time, at most ``limit`` items. An expired cookie gets 401 (Devise's message).

Times on the wire are the pump's or phone's local wall clock labelled ``Z`` (in ``zone``), and
the date filters compare in that same fake-UTC frame, as the real service does. Records
happen at true UTC times on a live stream driven by an injectable ``now`` (epoch ms) and
reach Glooko ``lag`` later (the phone or pump syncs late). A feed may also upload only at set
times (``syncs``: a pump or meter synced once a day), so its records arrive hours to a day after
they happened. The CGM may read every minute instead of every five. Some records are
soft-deleted twins.
Faults (500, HTML pages, 401, 429 with Retry-After, truncated or non-JSON bodies, timeouts)
are injected for the next N requests or a time window; every request is logged without its
cookie or password.
"""

from __future__ import annotations

import json
import math
import secrets
import time
import urllib.parse
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import httpx

from tests.emulators.asgi import not_http, read_body, respond
from tests.emulators.scripted import Fault, FaultScript, Logged

COOKIE_NAME: Final = "_logbook-web_session"
FIVE_MIN: Final = 300_000
HOUR: Final = 3_600_000
PATHS: Final = {
    "/api/v2/users/sign_in": "signin",
    "/api/v3/session/users": "users",
    "/api/v2/cgm/readings": "readings",
    "/api/v2/pumps/normal_boluses": "normalBoluses",
    "/api/v2/pumps/scheduled_basals": "scheduledBasals",
    "/api/v2/foods": "foods",
}
FEEDS: Final = ("readings", "normalBoluses", "scheduledBasals", "foods")
REQUIRED_PARAMS: Final = ("patient", "startDate", "endDate", "lastGuid", "lastUpdatedAt", "limit")
FAULT_KINDS: Final = frozenset({"500", "503html", "401", "429", "html", "truncated", "nonjson", "timeout"})
#: (period, phase) of each stream in ms
STREAMS: Final = {
    "readings": (FIVE_MIN, 0),
    "normalBoluses": (2 * HOUR, 17 * 60_000),
    "scheduledBasals": (HOUR, 0),
    "foods": (6 * HOUR, 3 * HOUR + 10 * 60_000),
}


class _Answer(Exception):
    def __init__(self, status: int, body: bytes | str, content_type: str = "application/json",
                 headers: list[tuple[str, str]] | None = None) -> None:  # fmt: skip
        super().__init__(status)
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = [("content-type", content_type), *(headers or [])]


def _json(value: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> _Answer:
    return _Answer(status, json.dumps(value, separators=(",", ":")), headers=headers)


def _html(status: int, title: str) -> _Answer:
    page = f"<!DOCTYPE html><html><head><title>{title}</title></head><body><p>{title}</p></body></html>"
    return _Answer(status, page, "text/html; charset=utf-8")


class GlookoEmulator(FaultScript):
    """The ASGI app: one Glooko account with a pump, a CGM and a food log."""

    fault_kinds = FAULT_KINDS

    def __init__(
        self,
        *,
        now: Callable[[], int] | None = None,
        email: str = "pat@example.com",
        password: str = "correct horse battery",
        code: str = "orange-waywood-8651",
        zone: str = "Europe/Berlin",
        first_ms: int | None = None,
        cookie_ttl_s: int = 86_400,
        lag_ms: dict[str, int] | None = None,
        reading_style: str = "camel",
        code_in_sign_in: bool = True,
        deleted_every: int = 23,
        syncs: dict[str, tuple[int, int]] | None = None,
        reading_ms: int = FIVE_MIN,
    ) -> None:
        self.now: Callable[[], int] = now or (lambda: int(time.time() * 1000))
        self.email = email
        self.password = password
        self.code = code
        self.zone = zoneinfo.ZoneInfo(zone)
        start = self.now() if first_ms is None else first_ms
        self.first_ms = start - start % FIVE_MIN
        self.cookie_ttl_s = cookie_ttl_s
        self.lag_ms = {"readings": 8 * 60_000, "normalBoluses": 40 * 60_000, "scheduledBasals": 50 * 60_000,
                       "foods": 25 * 60_000, **(lag_ms or {})}  # fmt: skip
        if reading_style not in ("camel", "snake"):
            raise ValueError("reading_style is camel or snake")
        self.reading_style = reading_style
        self.code_in_sign_in = code_in_sign_in
        self.deleted_every = deleted_every
        #: feed → (period, phase) in UTC ms: the device uploads only at ``phase + k·period``
        self.syncs = dict(syncs or {})
        if reading_ms <= 0 or FIVE_MIN % reading_ms:
            raise ValueError("reading_ms divides five minutes")
        self.streams = {**STREAMS, "readings": (reading_ms, 0)}
        self.sessions: dict[str, int] = {}
        self.log: list[Logged] = []
        super().__init__()

    # --- set-up and queries ---------------------------------------------------------------

    def expire_sessions(self) -> None:
        """Every cookie issued so far stops working now (the web session was reset)."""
        self.sessions.clear()

    def count(self, endpoint: str | None = None, *, status: int | None = None) -> int:
        return sum(
            1
            for r in self.log
            if (endpoint is None or r.endpoint == endpoint) and (status is None or r.status == status)
        )

    # --- the streams ---------------------------------------------------------------------------

    def wall(self, utc_ms: int) -> str:
        local = datetime.fromtimestamp(utc_ms / 1000, tz=UTC).astimezone(self.zone)
        return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc_ms % 1000:03d}Z"

    def times(self, feed: str, until: int, since: int | None = None) -> list[tuple[int, int]]:
        """(index, UTC time) of every record of ``feed`` that happened by ``until`` (and at or
        after ``since``)."""
        period, phase = self.streams[feed]
        first = self.first_ms + phase
        if until < first:
            return []
        lowest = 0 if since is None or since <= first else -((first - since) // period)
        return [(k, first + k * period) for k in range(lowest, (until - first) // period + 1)]

    def arrives(self, feed: str, t: int) -> int:
        """When a record that happened at ``t`` reaches Glooko: after the lag, at the next upload."""
        ready = t + self.lag_ms[feed]
        if feed not in self.syncs:
            return ready
        period, phase = self.syncs[feed]
        return ready + (phase - ready) % period

    def arrived(
        self, feed: str, now: int, since: int | None = None, until: int | None = None
    ) -> list[tuple[int, int]]:
        """(index, UTC time) of every record of ``feed`` Glooko holds at ``now``."""
        end = now if until is None else min(now, until)
        return [(k, t) for k, t in self.times(feed, end, since) if self.arrives(feed, t) <= now]

    def glucose(self, k: int) -> int:
        return max(40, min(400, int(140 + 70 * math.sin(k / 13.0) + (k * 7919) % 7 - 3)))

    def record(self, feed: str, k: int, t: int) -> dict[str, Any]:
        guid = f"{feed[:4]}-{k:08d}-{t % 99991:05d}"
        arrival = self.wall(self.arrives(feed, t))
        common = {"guid": guid, "updatedAt": arrival, "softDeleted": False}
        if feed == "readings":
            if self.reading_style == "snake":
                return {"display_time": self.wall(t), "bg_value": self.glucose(k) * 100, "trend": "FLAT",
                        "guid": guid, "soft_deleted": False}  # fmt: skip
            return {"timestamp": self.wall(t), "value": self.glucose(k), "trend": "Flat", **common}
        if feed == "normalBoluses":
            carbs = 0 if k % 3 == 2 else 20 + (k * 11) % 40
            return {"pumpTimestamp": self.wall(t), "pumpTimestampUtcOffset": "+00:00", "pumpGuid": "pump-1",
                    "insulinDelivered": round(0.5 + (k % 9) * 0.45, 2), "carbsInput": carbs,
                    "syncTimestamp": arrival, **common}  # fmt: skip
        if feed == "scheduledBasals":
            local = datetime.fromtimestamp(t / 1000, tz=UTC).astimezone(self.zone)
            return {"pumpTimestamp": self.wall(t), "pumpTimestampUtcOffset": "+00:00", "pumpGuid": "pump-1",
                    "startTime": local.hour * 3600, "duration": 3600, "segmentId": local.hour,
                    "rate": round(0.6 + (k % 5) * 0.1, 2), "syncTimestamp": self.wall(t), **common}  # fmt: skip
        return {"timestamp": self.wall(t), "carbs": 30 + (k * 7) % 45, "name": "Meal", **common}

    def deleted_twin(self, feed: str, k: int) -> bool:
        return self.deleted_every > 0 and k % self.deleted_every == 5

    def visible(self, feed: str, now: int, since: int | None = None, until: int | None = None
                ) -> list[tuple[int, dict[str, Any]]]:  # fmt: skip
        """(UTC time, record) of every record Glooko holds at ``now`` (soft-deleted twins included),
        of those that happened in ``[since, until]`` when given."""
        out: list[tuple[int, dict[str, Any]]] = []
        for k, t in self.arrived(feed, now, since, until):
            record = self.record(feed, k, t)
            out.append((t, record))
            if self.deleted_twin(feed, k):
                twin = dict(record, guid=record["guid"] + "-x")
                twin["soft_deleted" if "soft_deleted" in twin else "softDeleted"] = True
                for key in ("value", "bg_value", "insulinDelivered", "carbs", "rate"):
                    if key in twin:
                        twin[key] = twin[key] * 2 + 1
                out.append((t, twin))
        return out

    def expected_entries(self, now: int) -> dict[int, int]:
        """UTC time → mg/dL of every reading Glooko holds at ``now``."""
        return {t: self.glucose(k) for k, t in self.arrived("readings", now)}

    def expected_treatments(self, now: int) -> dict[tuple[int, str], dict[str, float]]:
        """(UTC time, eventType) → fields of every treatment Glooko holds at ``now``."""
        out: dict[tuple[int, str], dict[str, float]] = {}
        for feed in ("normalBoluses", "scheduledBasals", "foods"):
            for k, t in self.arrived(feed, now):
                r = self.record(feed, k, t)
                if feed == "normalBoluses":
                    event = "Meal Bolus" if r["carbsInput"] else "Correction Bolus"
                    fields = {"insulin": r["insulinDelivered"]}
                    if r["carbsInput"]:
                        fields["carbs"] = r["carbsInput"]
                    out[(t, event)] = fields
                elif feed == "scheduledBasals":
                    out[(t, "Temp Basal")] = {"rate": r["rate"], "duration": r["duration"] / 60}
                else:
                    out[(t, "Carb Correction")] = {"carbs": r["carbs"]}
        return out

    # --- ASGI ------------------------------------------------------------------------------------

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if await not_http(scope, receive, send):
            return
        answer = await self._handle(scope, await read_body(receive))
        await respond(send, answer.status, answer.headers, answer.body)

    async def _handle(self, scope: dict[str, Any], body: bytes) -> _Answer:
        now = self.now()
        endpoint = PATHS.get(scope["path"], "unknown")
        entry = Logged(now, scope["method"], endpoint)
        self.log.append(entry)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        params = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        try:
            fault = self._fault_for(endpoint, now)
            if fault is not None:
                entry.fault = fault.kind
                answer = await self._faulty(fault, scope, headers, params, body, entry)
            else:
                answer = self._answer(scope, headers, params, body, entry)
        except _Answer as raised:
            answer = raised
        entry.status = answer.status
        if answer.status != 200:
            entry.served = ()
        return answer

    async def _faulty(self, fault: Fault, scope: dict[str, Any], headers: dict[str, str], params: dict[str, str],
                      body: bytes, entry: Logged) -> _Answer:  # fmt: skip
        kind = fault.kind
        if kind == "500":
            return _json({"status": 500, "error": "Internal Server Error"}, 500)
        if kind == "503html":
            return _html(503, "Service Temporarily Unavailable")
        if kind == "401":
            return _json({"error": "You need to sign in or sign up before continuing."}, 401)
        if kind == "429":
            return _json({"error": "Rate limit exceeded"}, 429, [("retry-after", str(fault.retry_after))])
        if kind == "html":
            return _html(200, "Glooko is undergoing maintenance")
        if kind == "nonjson":
            return _Answer(200, "OK")
        if kind == "truncated":
            real = self._answer(scope, headers, params, body, entry)
            entry.served = ()
            return _Answer(real.status, real.body[: max(1, len(real.body) // 2)])
        if kind == "timeout":
            await anyio.sleep(fault.hang_s)
            raise httpx.ReadTimeout("emulated read timeout")
        raise AssertionError(kind)

    def _session_ok(self, headers: dict[str, str]) -> bool:
        cookies = dict(
            part.strip().split("=", 1) for part in headers.get("cookie", "").split(";") if "=" in part
        )
        expires = self.sessions.get(cookies.get(COOKIE_NAME, ""))
        return expires is not None and expires > self.now()

    def _answer(self, scope: dict[str, Any], headers: dict[str, str], params: dict[str, str], body: bytes,
                entry: Logged) -> _Answer:  # fmt: skip
        endpoint, method = entry.endpoint, scope["method"]
        if endpoint == "unknown":
            return _html(404, "The page you were looking for doesn't exist.")
        if endpoint == "signin":
            if method != "POST":
                return _html(405, "Method Not Allowed")
            return self._sign_in(body)
        if method != "GET":
            return _html(405, "Method Not Allowed")
        if not self._session_ok(headers):
            return _json({"error": "You need to sign in or sign up before continuing."}, 401)
        if endpoint == "users":
            return _json(
                {"currentUser": {"glookoCode": self.code, "email": self.email, "meterUnits": "mg/dl"}}
            )
        missing = [p for p in REQUIRED_PARAMS if not params.get(p)]
        if missing:
            return _json({"errors": [f"{p} is missing" for p in missing]}, 422)
        if params["patient"] != self.code:
            return _json({"error": "Forbidden"}, 403)
        try:
            start, end = _fake_utc(params["startDate"]), _fake_utc(params["endDate"])
            limit = int(params["limit"])
        except ValueError:
            return _json({"errors": ["invalid date or limit"]}, 422)
        # the filter compares local wall clocks; no zone is more than 14 hours from UTC
        near = self.visible(endpoint, self.now(), start - 15 * HOUR, end + 15 * HOUR)
        chosen = [
            (t, r) for t, r in near
            if start <= _fake_utc(r.get("timestamp") or r.get("pumpTimestamp") or r["display_time"]) < end
        ]  # fmt: skip
        chosen.sort(key=lambda pair: pair[0])
        chosen = chosen[:limit]
        entry.served = tuple(t for t, r in chosen if not (r.get("softDeleted") or r.get("soft_deleted")))
        return _json({endpoint: [r for _t, r in chosen]})

    def _sign_in(self, body: bytes) -> _Answer:
        try:
            doc = json.loads(body)
            login = doc["userLogin"]
            email, password = login["email"], login["password"]
            doc["deviceInformation"]["applicationType"]  # noqa: B018 - required, as the app sends it
        except (ValueError, KeyError, TypeError):
            return _json({"success": False, "error": "Invalid request"}, 422)
        if email != self.email or password != self.password:
            return _json({"success": False, "error": "Invalid email or password."}, 401)
        value = secrets.token_urlsafe(32)
        self.sessions[value] = self.now() + self.cookie_ttl_s * 1000
        user: dict[str, Any] = {"email": self.email, "firstName": "Pat", "lastName": "Example"}
        if self.code_in_sign_in:
            user["glookoCode"] = self.code
        cookies = [
            ("set-cookie", f"{COOKIE_NAME}={value}; path=/; Max-Age={self.cookie_ttl_s}; secure; HttpOnly; "
                           "SameSite=None"),
            ("set-cookie", f"__cf_bm={secrets.token_hex(8)}; path=/; Max-Age=1800; secure; HttpOnly"),
        ]  # fmt: skip
        return _json({"success": True, "userLogin": user}, 200, cookies)


def _fake_utc(text: str) -> int:
    """Epoch ms of a Glooko time read as the UTC it claims to be (the frame filters use)."""
    value = text.strip().replace("Z", "+00:00")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(round(parsed.timestamp() * 1000))


def main() -> None:  # pragma: no cover - a manual aid: python -m tests.emulators.glooko
    from tests.emulators.serve import serve_forever

    serve_forever(GlookoEmulator(first_ms=int(time.time() * 1000) - 3 * 86_400_000))


if __name__ == "__main__":  # pragma: no cover
    main()
