"""The real CLI (``once``, as cron runs it) against a Nightscout site on a loopback port whose
newest reading is low: one ``alert:raised`` reaches the webhook, none for the older lows of the
backfill, none again on the next ``once``."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from tests import test_e2e_nightscout as e2e
from tests.emulators.nightscout import sgv_series
from tests.emulators.serve import serve_in_thread
from tests.test_e2e_nightscout import DAY_MS, MIN_MS, SOURCE_SECRET, cli, query

#: the emulated Nightscout sites fixture of the other end-to-end tests
site = e2e.site

pytestmark = pytest.mark.e2e

HOOK_SECRET = "e2e-hook-secret-31a9"


class Hook:
    """A webhook receiver that keeps what it was sent and checks each signature."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.bad_signatures = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            message = await receive()
            await send({"type": f"{message['type']}.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        if headers.get(b"x-connect-signature", b"").decode() != expected:
            self.bad_signatures += 1
        self.bodies.append(json.loads(body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def test_once_raises_one_alert_for_the_newest_low_and_none_again(site: Any, tmp_path: Path) -> None:
    emu, url = site(SOURCE_SECRET)
    # two days of readings, a low every few hours, and the newest three low (the last a minute old)
    docs = sgv_series(emu.now() - 2 * DAY_MS + 4 * MIN_MS, 576)
    for i, doc in enumerate(docs):
        if i % 40 in (10, 11, 12) or i >= len(docs) - 3:
            doc["sgv"] = 62
            doc["direction"] = "FortyFiveDown"
    emu.seed_entries(docs)
    db = tmp_path / "alerts.db"
    hook = Hook()
    with serve_in_thread(hook) as receiver:
        settings = {
            "CONNECT_SOURCE": "nightscout",
            "CONNECT_SOURCE_ENDPOINT": url,
            "CONNECT_SOURCE_API_SECRET": SOURCE_SECRET,
            "CONNECT_STORE_PATH": str(db),
            "CONNECT_BACKFILL_DAYS": "3",
            "CONNECT_WEBHOOK_URL": f"{receiver}/hook",
            "CONNECT_WEBHOOK_SECRET": HOOK_SECRET,
            "CONNECT_WEBHOOK_EVENTS": "alert:raised,alert:cleared",
            # a site's own name for its low threshold carries over
            "BG_TARGET_BOTTOM": "70",
        }
        first = cli("once", **settings)
        assert first.returncode == 0, first.stderr
        # raised by the first of the newest lows (11 minutes old: current), by nothing older
        assert [
            (b["event"], b["data"]["kind"], b["data"]["sgv"], b["data"]["date"]) for b in hook.bodies
        ] == [("alert:raised", "low", 62, docs[-3]["date"])]
        assert hook.bodies[0]["data"]["threshold"] == 70
        assert hook.bad_signatures == 0
        second = cli("once", **settings)
        assert second.returncode == 0, second.stderr
        assert len(hook.bodies) == 1
    # the store holds the whole story: the older lows are episodes, silently
    lows = query(db, "SELECT count(*) FROM episodes WHERE kind = 'low'")[0][0]
    assert lows >= 14
    raised = query(db, "SELECT count(*) FROM events WHERE event = 'alert:raised'")[0][0]
    assert raised == 1
    assert HOOK_SECRET not in first.stderr + second.stderr
