"""Glooko end to end through the real CLI, as cron runs it: ``once`` after ``once``.

A one-minute CGM gives more readings than one page holds, both in the recent hours and in a
day of history, so every window is read page by page. The first run must already hold the
last minutes; the runs after it fill the history; and the store and the Nightscout site must
end up holding every record Glooko served, each delivered once.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clirun import cli, iso_ms, rows
from tests.emulators.glooko import GlookoEmulator
from tests.emulators.nightscout import NightscoutEmulator
from tests.emulators.nightscout import serve_in_thread as serve_site
from tests.emulators.serve import serve_in_thread

pytestmark = pytest.mark.e2e

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
SITE_SECRET = "site-api-secret-7d30b2"


def once(**settings: str) -> subprocess.CompletedProcess[str]:
    return cli("once", timeout=120, **settings)


@pytest.fixture
def site() -> Iterator[tuple[NightscoutEmulator, str]]:
    emu = NightscoutEmulator(SITE_SECRET)
    url, stop = serve_site(emu)
    try:
        yield emu, url
    finally:
        stop()


def test_cron_runs_page_through_a_one_minute_cgm_and_deliver_each_record_once(
    site: tuple[NightscoutEmulator, str], tmp_path: Path
) -> None:
    ns, ns_url = site
    start = int(time.time() * 1000)
    emu = GlookoEmulator(first_ms=start - 3 * DAY_MS - 12 * HOUR_MS, reading_ms=MINUTE_MS)
    db = tmp_path / "store.db"
    with serve_in_thread(emu) as url:
        settings = {
            "CONNECT_SOURCE": "glooko",
            "CONNECT_GLOOKO_EMAIL": emu.email,
            "CONNECT_GLOOKO_PASSWORD": emu.password,
            "CONNECT_GLOOKO_SERVER": url,
            "CONNECT_GLOOKO_TIMEZONE": "Europe/Berlin",
            "CONNECT_GLOOKO_LOOKBACK_DAYS": "4",
            # the Glooko look-back wins over the general one
            "CONNECT_BACKFILL_DAYS": "1",
            "CONNECT_STORE_PATH": str(db),
            "CONNECT_NIGHTSCOUT_ENDPOINT": ns_url,
            "CONNECT_API_SECRET": SITE_SECRET,
        }
        first = once(**settings)
        assert first.returncode == 0, first.stderr
        # the first run already shows now: the readings reach Glooko eight minutes late
        ((newest,),) = rows(db, "SELECT max(date) FROM entries")
        assert newest >= start - 10 * MINUTE_MS
        assert max(e["date"] for e in ns.entries) == newest
        # the last 36 hours of one-minute readings, and their soft-deleted twins: three pages
        # (beside the first day of history, twelve hours: one); then, in the same run, the rest
        # of the history while the source says more: the full day two pages, the half day one
        assert emu.count("readings", status=200) == 4 + 2 + 1

        for _ in range(2):  # later runs find nothing left to backfill
            later = once(**settings)
            assert later.returncode == 0, later.stderr
    end = emu.now()

    # each later run reads the latest readings once (one page), and no history again
    assert emu.count("readings", status=200) == 4 + 2 + 1 + 2
    stored = dict(rows(db, "SELECT date, sgv FROM entries"))
    everything = emu.expected_entries(end)
    assert all(everything[t] == v for t, v in stored.items())
    missing = sorted(set(emu.expected_entries(start)) - set(stored))
    assert not missing, f"readings lost: {missing[:5]}"
    assert min(stored) == emu.first_ms and len(stored) > 3 * 24 * 60
    # the site holds each reading, and was sent each one once: re-reads change nothing
    assert {e["date"]: e["sgv"] for e in ns.entries} == stored
    assert ns.received["entries"] == len(stored)

    treatments = {(d, e) for d, e in rows(db, "SELECT date, event_type FROM treatments")}
    assert set(emu.expected_treatments(start)) <= treatments <= set(emu.expected_treatments(end))
    delivered = [(iso_ms(t["created_at"]), t["eventType"]) for t in ns.treatments]
    assert set(delivered) == treatments and ns.received["treatments"] == len(treatments)
