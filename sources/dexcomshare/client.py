"""The Share driver: three-step login, window-sized reads, and the loop it declares."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import httpx

from connect.clock import jitter_rng
from connect.contract import Backoff, BuilderLike, Grant, LastKnown
from connect.errors import AuthRejected
from connect.httpkit import send
from connect.records import Batch
from connect.redact import register_secret
from sources.dexcomshare import payload
from sources.dexcomshare.const import (
    AUTHENTICATE_PATH,
    DEVICE,
    LOGIN_BY_ID_PATH,
    MAX_COUNT,
    MAX_MINUTES,
    READ_GLUCOSE_PATH,
    READING_INTERVAL_MS,
    SESSION_LIFETIME_S,
    ZERO_UUID,
)
from sources.dexcomshare.faults import list_answer, uuid_answer
from sources.dexcomshare.settings import DexcomShareSettings, Endpoint, endpoint_for
from sources.schedule import PollPlanner

LOOP_NAME = "DexcomShareEntries"
#: readings asked for beyond the gap since the checkpoint: a reading published late, with a
#: time before the newest one stored, is still picked up; unchanged records cost nothing
OVERLAP_READINGS = 3
_HEADERS = {"Accept": "application/json"}


def read_window(last_known: LastKnown) -> tuple[int, int]:
    """``(minutes, maxCount)`` for a read: the gap since the newest stored reading plus overlap.

    Both stay within the server's limits (1440 minutes, 288 readings) and ask for at least
    one reading, so even a checkpoint in the future still sees the current value.
    """
    gap_ms = max(0, last_known.now - last_known.get("entries"))
    count = math.ceil(gap_ms / READING_INTERVAL_MS) + OVERLAP_READINGS
    count = max(1, min(MAX_COUNT, count))
    minutes = max(1, min(MAX_MINUTES, count * READING_INTERVAL_MS // 60_000))
    return minutes, count


class DexcomShare:
    """One publisher account on one Share host.

    The account id of step 1 never changes, so it is kept: logging in again after a session
    ends is the single ``LoginPublisherAccountById`` request pydexcom makes too. A refused
    login forgets it, so the next attempt starts again from the account name.
    """

    def __init__(self, settings: DexcomShareSettings, client: httpx.AsyncClient) -> None:
        self.client = client
        self.account_name = settings.share_account_name
        self._password = settings.share_password.get_secret_value()
        register_secret(self._password)
        self.endpoint: Endpoint = endpoint_for(settings.share_server, settings.share_region)
        self._account_id: str | None = None
        #: when to read next: the reading phase plus the learned upload delay
        self.planner = PollPlanner(interval_ms=READING_INTERVAL_MS)
        self.rng = jitter_rng()

    def _post(
        self, path: str, *, body: dict[str, str], params: dict[str, Any] | None = None
    ) -> httpx.Request:
        return self.client.build_request(
            "POST", self.endpoint.base_url + path, json=body, params=params, headers=_HEADERS
        )

    async def authenticate(self) -> str:
        """Step 1: account name and password to the account id (once; then it is known)."""
        if self._account_id is not None:
            return self._account_id
        request = self._post(
            AUTHENTICATE_PATH,
            body={
                "accountName": self.account_name,
                "password": self._password,
                "applicationId": self.endpoint.region.application_id,
            },
        )
        response = await send(self.client, request, what="dexcomshare authenticate")
        account_id = uuid_answer(response, step="authenticate")
        if account_id == ZERO_UUID:
            raise AuthRejected("dexcomshare authenticate: the server answered the empty account id")
        register_secret(account_id)
        self._account_id = account_id
        return account_id

    async def authorize(self, account_id: str) -> Grant:
        """Step 2: account id and password to a session id."""
        request = self._post(
            LOGIN_BY_ID_PATH,
            body={
                "accountId": account_id,
                "password": self._password,
                "applicationId": self.endpoint.region.application_id,
            },
        )
        try:
            response = await send(self.client, request, what="dexcomshare login")
            session_id = uuid_answer(response, step="login")
            if session_id == ZERO_UUID:
                raise AuthRejected("dexcomshare login: the server answered the empty session id")
        except AuthRejected:
            # the password changed, or the account id is not (or no longer) this account's
            self._account_id = None
            raise
        register_secret(session_id)
        return Grant(value=session_id, expires_in=float(SESSION_LIFETIME_S))

    async def fetch(self, session: str, last_known: LastKnown) -> Any:
        """Step 3: the readings since the checkpoint (newest first, as the server sends them).

        A session error is :class:`SessionExpired` whether or not the session served reads:
        the Session machine knows which, and decides whether the next login follows at once
        (a stale session, or the first refusal of a fresh one) or waits.
        """
        minutes, count = read_window(last_known)
        request = self._post(
            READ_GLUCOSE_PATH,
            body={},
            params={"sessionId": session, "minutes": minutes, "maxCount": count},
        )
        response = await send(self.client, request, what="dexcomshare read")
        answer = list_answer(response, step="read")
        self.planner.observe(
            polled_at=last_known.now,
            before=last_known.values.get("entries"),
            times=payload.reading_times(answer),
        )
        return answer

    def transform(self, raw: Any, last_known: LastKnown) -> Batch:
        return payload.transform(raw, last_known)

    def align(self, last_known: LastKnown, now: int) -> int:
        """Epoch ms of the next read after a successful one (see :class:`PollPlanner`)."""
        return self.planner.next_poll(last_known.values.get("entries"), now, self.rng.random())

    def generate_driver(self, builder: BuilderLike) -> None:
        builder.support_session(
            authenticate=self.authenticate,
            authorize=self.authorize,
            expire_after=timedelta(seconds=SESSION_LIFETIME_S),
        )
        builder.register_loop(
            LOOP_NAME,
            fetch=self.fetch,
            transform=self.transform,
            collections=("entries",),
            align_schedule=self.align,
            expected_interval=timedelta(milliseconds=READING_INTERVAL_MS),
            frame_retries=2,
            frame_backoff=Backoff(base=5.0, cap=60.0),
            cycle_backoff=Backoff(base=30.0, cap=1800.0),
            site_filter={"device": DEVICE},
        )
