"""The Glooko driver: a cookie session shared by one loop per v2 feed.

``authenticate`` signs in (``POST /api/v2/users/sign_in``) and keeps the first
``Set-Cookie``; ``authorize`` makes sure the patient code is known (from the sign-in answer,
else ``/api/v3/session/users``). Each loop reads the windows its feed's plan chose
(``windows.py``), every page of each; a 401 (the cookie expired) is :class:`SessionExpired`,
which makes the runtime sign in again once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, timedelta
from functools import partial
from typing import Any

import attrs
import httpx

from connect.contract import Backoff, BuilderLike, Grant, LastKnown
from connect.errors import AccountLocked, AuthRejected, ProtocolError, SessionExpired, StepRequired
from connect.httpkit import check_status, json_body, retry_after_seconds, send
from connect.records import Batch
from connect.redact import register_secret
from sources.glooko import transform as pages
from sources.glooko import windows
from sources.glooko.const import (
    BROWSER_UA,
    DEVICE,
    DEVICE_INFORMATION,
    FEEDS,
    HOUR_MS,
    LAST_GUID,
    MAX_PAGES,
    PAGE_LIMIT,
    SESSION_LIFETIME_S,
    SESSION_USERS_PATH,
    SIGN_IN_PATH,
    Feed,
)
from sources.glooko.settings import GlookoSettings, web_origin

_MAX_AGE = re.compile(r";\s*max-age=(\d+)", re.IGNORECASE)


@attrs.define(kw_only=True)
class GlookoSession:
    """The session cookie (``name=value``) and the patient code. ``repr`` shows neither."""

    cookie: str = attrs.field(repr=False)
    code: str | None = attrs.field(default=None, repr=False)
    max_age: float | None = None


def first_cookie(response: httpx.Response) -> tuple[str, float | None] | None:
    """``name=value`` of the first ``Set-Cookie``, and its Max-Age if it says one."""
    headers = response.headers.get_list("set-cookie")
    if not headers:
        return None
    first = headers[0]
    pair = first.split(";", 1)[0].strip()
    if "=" not in pair or not pair.split("=", 1)[1]:
        return None
    match = _MAX_AGE.search(first)
    return pair, float(match.group(1)) if match else None


def patient_code(body: Any) -> str | None:
    """``glookoCode`` wherever the sign-in or session answers keep it."""
    if not isinstance(body, Mapping):
        return None
    for path in (("userLogin", "glookoCode"), ("user", "glookoCode"), ("currentUser", "glookoCode"),
                 ("currentPatient", "glookoCode")):  # fmt: skip
        node: Any = body
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, str) and node.strip():
            return node.strip()
    return None


class Glooko:
    """One Glooko account: its session and a loop per feed."""

    def __init__(
        self, settings: GlookoSettings, client: httpx.AsyncClient, *, page_limit: int = PAGE_LIMIT
    ) -> None:
        self.settings = settings
        self.client = client
        #: records asked for per request (tests use small pages to exercise paging)
        self.page_limit = page_limit
        self.base = settings.base()
        self.zone = settings.zone()
        self._password = settings.glooko_password.get_secret_value()
        register_secret(self._password)
        origin = web_origin(self.base)
        self.headers = {
            "Accept": "application/json, text/plain, */*",
            "User-Agent": BROWSER_UA,
            "Origin": origin,
            "Referer": origin + "/",
            "Accept-Language": "en-GB,en;q=0.9",
        }

    # --- session ----------------------------------------------------------------------

    async def authenticate(self) -> GlookoSession:
        body = {
            "userLogin": {"email": self.settings.glooko_email, "password": self._password},
            "deviceInformation": DEVICE_INFORMATION,
        }
        request = self.client.build_request("POST", self.base + SIGN_IN_PATH, json=body, headers=self.headers)
        what = "glooko sign-in"
        response = await send(self.client, request, what=what)
        status = response.status_code
        if status in (401, 403, 422):
            # 422 too: some accounts' v2 sign-in answers it, and retrying soon risks a lockout
            raise AuthRejected(f"{what}: Glooko refused the e-mail or password (HTTP {status})")
        if status == 423:
            raise AccountLocked(
                f"{what}: the Glooko account is locked", retry_after=retry_after_seconds(response)
            )
        check_status(response, what=what)
        answer = json_body(response, what=what)
        if isinstance(answer, Mapping) and any(
            answer.get(key) for key in ("twoFaRequired", "two_fa_required", "twoFactorRequired")
        ):
            raise StepRequired(
                f"{what}: the account asks for two-factor authentication, which is not supported"
            )
        cookie = first_cookie(response)
        if cookie is None:
            raise ProtocolError(f"{what}: no session cookie came back")
        register_secret(cookie[0], cookie[0].split("=", 1)[1])
        return GlookoSession(cookie=cookie[0], code=patient_code(answer), max_age=cookie[1])

    async def authorize(self, session: GlookoSession) -> Grant:
        if session.code is None:
            answer = await self._get(session, SESSION_USERS_PATH, {}, what="glooko session users")
            session.code = patient_code(answer)
            if session.code is None:
                raise ProtocolError("glooko session users: no patient code (glookoCode) in the answer")
        register_secret(session.code)
        lifetime = float(SESSION_LIFETIME_S)
        if session.max_age is not None and 0 < session.max_age < lifetime:
            lifetime = session.max_age
        return Grant(value=session, expires_in=lifetime)

    async def _get(self, session: GlookoSession, path: str, params: Mapping[str, Any], *, what: str) -> Any:
        request = self.client.build_request(
            "GET", self.base + path, params=params, headers={**self.headers, "Cookie": session.cookie}
        )
        response = await send(self.client, request, what=what)
        status = response.status_code
        if status == 401 or (300 <= status < 400 and "sign_in" in response.headers.get("location", "")):
            raise SessionExpired(f"{what}: HTTP {status}, the session cookie expired")
        check_status(response, what=what)
        renewed = first_cookie(response)
        if renewed is not None and renewed[0].split("=", 1)[0] == session.cookie.split("=", 1)[0]:
            register_secret(renewed[0], renewed[0].split("=", 1)[1])
            session.cookie = renewed[0]  # a rolling session cookie: keep the newest
        return json_body(response, what=what)

    # --- data -------------------------------------------------------------------------

    async def fetch(self, feed: Feed, session: GlookoSession, last_known: LastKnown) -> pages.Frame:
        plan = windows.plan(
            last_known,
            feed.collection,
            lookback_days=self.settings.glooko_lookback_days,
            late_ms=self.settings.glooko_late_sync_hours * HOUR_MS,
        )
        read: list[pages.Page] = []
        for start, end in plan.windows:
            read.extend(await self._read_window(feed, session, start, end))
        return pages.Frame(feed=feed, pages=tuple(read), covered=plan.covered, more=plan.more)

    async def _read_window(
        self, feed: Feed, session: GlookoSession, start: int, end: int
    ) -> list[pages.Page]:
        """Every page of ``[start, end)`` (UTC ms): a full page means more lie after its newest item.

        The plan's checkpoints hold only once the whole window was read, so the window is finished
        here rather than in a later frame. Paging happens in Glooko's frame (local wall clock
        labelled UTC), where the server compares ``startDate``; the next page starts at the newest
        time of the last one, inclusive, so records sharing that time are not skipped (a record on
        two pages is one record: identifiers are derived from its time).
        """
        first, last = pages.wall_ms(start, self.zone), pages.wall_ms(end, self.zone)
        read: list[pages.Page] = []
        while True:
            since = pages.wall_text(first, UTC)
            params = {
                "patient": session.code,
                "startDate": since,
                "endDate": pages.wall_text(last, UTC),
                # the v2 endpoints answer 422 unless these come along too; their values hardly matter
                "lastGuid": LAST_GUID,
                "lastUpdatedAt": since,
                "limit": self.page_limit,
            }
            body = await self._get(session, feed.path, params, what=f"glooko {feed.key}")
            page = pages.Page(feed=feed, body=body)
            read.append(page)
            if len(pages.items_of(page)) < self.page_limit:
                return read
            newest = pages.newest_wall(page)
            if newest is None or newest <= first:
                raise ProtocolError(f"glooko {feed.key}: a full page that does not move past its start")
            if newest >= last:
                return read
            if len(read) >= MAX_PAGES:
                raise ProtocolError(f"glooko {feed.key}: more than {MAX_PAGES} full pages in one window")
            first = newest

    def transform(self, raw: Any, last_known: LastKnown) -> Batch:
        return pages.transform(raw, self.zone)

    def generate_driver(self, builder: BuilderLike) -> None:
        builder.support_session(
            authenticate=self.authenticate,
            authorize=self.authorize,
            expire_after=timedelta(seconds=SESSION_LIFETIME_S),
        )
        for feed in FEEDS:
            builder.register_loop(
                feed.loop,
                fetch=partial(self.fetch, feed),
                transform=self.transform,
                collections=(feed.collection,),
                expected_interval=timedelta(seconds=feed.interval_s),
                frame_retries=2,
                frame_backoff=Backoff(base=10.0, cap=120.0),
                cycle_backoff=Backoff(base=150.0, cap=1800.0),
                # gap analysis: this feed's own records on the site, not a loop app's treatments
                site_filter={"device": DEVICE, **({"eventType": feed.event_type} if feed.event_type else {})},
            )
