"""The status page in a real headless browser: the rendered DOM has one point per stored reading
of the last 24 hours, the newest reading with its arrow, the machines; and a screenshot is kept
as status-page.png in $TEST_ARTIFACTS (default: artifacts/ at the top of the repository, which
git ignores)."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from api.page import ARROWS, DAY_MS
from connect.alerting import AlertConfig, evaluate
from connect.records import Entry
from store import Store
from tests.emulators.serve import serve_in_thread
from tests.test_api_support import SECRET, make_app, now_ms, populate, snapshot

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = Path(os.environ.get("TEST_ARTIFACTS") or REPO / "artifacts") / "status-page.png"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (apt-get install -y chromium)")
        pytest.skip("chromium is not installed")
    return found


class Dom(HTMLParser):
    """Collects what the test looks at from the browser's serialised DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.readings = 0
        self.target_ranges = 0
        self.episodes: list[str] = []
        self.refresh: str | None = None
        self.stack: list[str] = []
        self.text: dict[str, list[str]] = {"sgv": [], "arrow": [], "age": [], "machine": []}
        self.arrow_title: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "circle" and "reading" in classes:
            self.readings += 1
        if tag == "rect" and "target-range" in classes:
            self.target_ranges += 1
        if tag == "rect" and "episode" in classes:
            self.episodes.append(next(c for c in classes if c.startswith("episode-")))
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "refresh":
            self.refresh = a.get("content")
        if "arrow" in classes:
            self.arrow_title = a.get("title")
        self.stack.append(next((c for c in classes if c in self.text), ""))

    def handle_endtag(self, tag):
        if self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for mark in reversed(self.stack):
            if mark:
                self.text[mark].append(data)
                break


def test_status_page_in_headless_chromium(tmp_path):
    browser = chromium()
    path = tmp_path / "store.db"
    now = now_ms()
    info = populate(path, end_ms=now - 2 * 60_000, count=300)  # 25 h of readings, newest 2 min old
    # a reading from another device inside the window, and one far outside it
    store = Store(path)
    store.upsert(
        [
            Entry(
                type="sgv", date=now - 7 * 3_600_000 + 17_000, device="libre", sgv=250, direction="SingleUp"
            ),
            Entry(type="sgv", date=now - 3 * DAY_MS, device="libre", sgv=90, direction="Flat"),
        ]
    )
    expected = sum(
        1 for doc in store.docs("entries") if doc["type"] == "sgv" and now - DAY_MS <= doc["date"] <= now
    )
    # the alert rules' episodes over the readings (the wave goes low and high): bands on the chart
    evaluate(store, AlertConfig(key="test", label="test"), now)
    bands = [
        f"episode-{kind}"
        for (kind,) in store.conn.execute(
            "SELECT kind FROM episodes WHERE kind != 'normal' AND start_at <= ? AND coalesce(end_at, ?) >= ? "
            "ORDER BY start_at, id",
            (now, now, now - DAY_MS),
        )
    ]
    store.close()
    newest = info["entries"][-1]

    app, reader = make_app(path, clock=lambda: now, status=lambda: snapshot(now))
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    with serve_in_thread(app) as url:
        result = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium'}",
                "--window-size=1100,900",
                "--hide-scrollbars",
                f"--screenshot={SCREENSHOT}",
                "--dump-dom",
                f"{url}/?token={SECRET}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    reader.close()
    assert result.returncode == 0, result.stderr[-2000:]

    dom = Dom()
    dom.feed(result.stdout)
    assert expected == 288 + 1  # the test's own arithmetic: 288 share2 readings + the libre one
    assert dom.readings == expected
    assert dom.target_ranges == 1
    assert dom.episodes == bands and "episode-low" in bands and "episode-high" in bands
    assert dom.refresh == "60"
    assert "".join(dom.text["sgv"]).strip() == str(newest.sgv)
    assert "".join(dom.text["arrow"]).strip() == ARROWS[newest.direction]
    assert dom.arrow_title == newest.direction
    assert "2 min ago" in "".join(dom.text["age"])
    machines = " ".join(dom.text["machine"])
    assert "DexcomShareEntries" in machines and "after" in machines and "in 4 min" in machines

    png = SCREENSHOT.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_page_needs_the_secret_like_everything_else(tmp_path):
    from tests.test_api_support import ApiClient

    path = tmp_path / "store.db"
    populate(path, count=10)
    app, reader = make_app(path)
    with ApiClient(app) as c:
        assert c.get("/").status_code == 401
        assert c.get(f"/?token={SECRET}").status_code == 200
    reader.close()
