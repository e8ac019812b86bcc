"""The status page as a person reads it.

In-process: the HTML has the newest value, its arrow and delta in the site's units, the same in
the title, the target band of the alert settings, the range links, the treatments' amounts, the
episodes, and every source and output in a plain sentence.

In a real headless browser at 390 and 1280 px wide: nothing scrolls sideways, the chart's labels
are large enough to read and do not overlap, the error texts wrap inside the page, and what the
page says (value, delta, title) is on screen. Screenshots are kept as status-page-390.png and
status-page-1280.png in $TEST_ARTIFACTS (default: artifacts/ at the top of the repository, which
git ignores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import HTMLResponse

from api.page import ARROWS, DAY_MS
from api.settings import Display
from connect.alerting import AlertConfig, evaluate
from connect.records import Entry
from machines.alerts import Thresholds
from store import Store
from tests.emulators.serve import serve_in_thread
from tests.test_api_support import SECRET, ApiClient, make_app, now_ms, populate, snapshot

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS") or REPO / "artifacts")
HOUR = 3_600_000


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
    """What the tests look at in the page: texts by class, elements by class, the title."""

    MARKS = ("sgv", "arrow", "delta", "unit", "age", "y-label", "x-label", "footer")
    ITEMS = ("machine", "output", "treatment")
    VOID = frozenset({"meta", "link", "br", "img", "input", "hr"})

    def __init__(self) -> None:
        super().__init__()
        self.readings: list[str] = []  # each reading's colour
        self.target_ranges = 0
        self.doses = 0
        self.episodes: list[str] = []
        self.refresh: str | None = None
        self.links: dict[str, str] = {}
        self.current_range = ""
        self.sgv_classes: list[str] = []
        self.arrow_title: str | None = None
        self.stack: list[tuple[str, str]] = []
        self.text: dict[str, list[str]] = {mark: [] for mark in (*self.MARKS, "title", "body")}
        self.items: dict[str, list[str]] = {name: [] for name in self.ITEMS}
        self._item: list[str] | None = None
        self._href = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "circle" and "reading" in classes:
            self.readings.append(a.get("fill") or "")
        if tag == "rect" and "target-range" in classes:
            self.target_ranges += 1
        if tag == "g" and "dose" in classes:
            self.doses += 1
        if tag == "rect" and "episode" in classes:
            self.episodes.append(next(c for c in classes if c.startswith("episode-")))
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "refresh":
            self.refresh = a.get("content")
        if tag == "a":
            self._href = a.get("href") or ""
        if "arrow" in classes:
            self.arrow_title = a.get("title")
        if "sgv" in classes:
            self.sgv_classes = classes
        if tag in self.VOID:
            return
        mark = next(
            (c for c in classes if c in self.MARKS or c in self.ITEMS), "footer" if tag == "footer" else ""
        )
        if mark in self.ITEMS:
            self._item = []
        self.stack.append((tag, mark))

    def handle_endtag(self, tag):
        if not self.stack:
            return
        _, mark = self.stack.pop()
        if mark in self.ITEMS and self._item is not None:
            self.items[mark].append(" ".join("".join(self._item).split()))
            self._item = None

    def handle_data(self, data):
        tags = [tag for tag, _ in self.stack]
        if "head" in tags:
            if tags[-1] == "title":
                self.text["title"].append(data)
            return
        if tags and tags[-1] == "a":
            self.links[data.strip()] = self._href
        if tags and tags[-1] == "strong":
            self.current_range = data.strip()
        self.text["body"].append(data)
        if "svg" in tags and "title" in tags:  # a tooltip
            return
        if self._item is not None:
            self._item.append(data)
        for _tag, mark in reversed(self.stack):
            if mark in self.MARKS:
                self.text[mark].append(data)
                break

    def said(self, mark: str) -> str:
        return " ".join("".join(self.text[mark]).split())


def page(app: Any, query: str = "") -> tuple[int, Dom, str]:
    with ApiClient(app) as c:
        answer = c.get(f"/?token={SECRET}{query}")
    dom = Dom()
    dom.feed(answer.text)
    return answer.status_code, dom, answer.text


@pytest.fixture
def stored(tmp_path: Path) -> tuple[Path, int, dict[str, Any]]:
    """30 h of five-minute readings (newest 2 min old), a meal bolus an hour for 5 hours."""
    path = tmp_path / "store.db"
    now = now_ms()
    info = populate(path, end_ms=now - 2 * 60_000, count=360)
    return path, now, info


def test_the_newest_value_arrow_delta_and_age_are_on_the_page_and_in_its_title(stored):
    path, now, info = stored
    newest, before = info["entries"][-1], info["entries"][-2]
    delta = newest.sgv - before.sgv
    app, reader = make_app(path, clock=lambda: now)
    status, dom, _ = page(app)
    reader.close()
    assert status == 200
    assert dom.said("sgv") == str(newest.sgv)
    assert dom.said("arrow") == ARROWS[newest.direction] and dom.arrow_title == newest.direction
    assert dom.said("delta").startswith(f"{delta:+d}") and dom.said("unit") == "mg/dL"
    assert "2 min ago" in dom.said("age")
    assert dom.said("title") == f"{newest.sgv} {ARROWS[newest.direction]} {delta:+d} · nightscout-connect"
    assert dom.refresh is not None and dom.refresh.startswith("60; url=?token=")


def test_mmol_sites_read_mmol_with_one_decimal_everywhere(stored):
    path, now, info = stored
    newest, before = info["entries"][-1], info["entries"][-2]
    app, reader = make_app(path, clock=lambda: now, display=Display(units="mmol"))
    _, dom, _ = page(app)
    with ApiClient(app) as c:
        site = c.get(f"/api/v1/status.json?token={SECRET}").json()
    reader.close()
    value = f"{newest.sgv / 18:.1f}"  # Nightscout's mg/dL → mmol/L: ÷ 18, one decimal
    delta = f"{round((newest.sgv - before.sgv) / 18, 1) + 0.0:+.1f}"
    assert dom.said("sgv") == value and dom.said("unit") == "mmol/L"
    assert dom.said("delta").startswith(delta)
    assert dom.said("title").startswith(f"{value} {ARROWS[newest.direction]} {delta} ")
    # the band's edges in mmol/L on the axis (80 and 180 mg/dL), and no mg/dL number anywhere on it
    labels = dom.text["y-label"]
    assert "4.4" in labels and "10.0" in labels and "180" not in labels
    assert "target 4.4–10.0 mmol/L" in dom.said("footer")
    # status.json says the same to Nightscout clients (thresholds stay mg/dL, as Nightscout keeps them)
    assert site["settings"]["units"] == "mmol"
    assert site["settings"]["thresholds"]["bgTargetBottom"] == 80


def test_the_target_band_is_the_alert_settings_band(tmp_path, monkeypatch):
    """BG_TARGET_BOTTOM / BG_TARGET_TOP (or the CONNECT_ names) set the band the page shades,
    the colours of the readings, status.json's thresholds, and what the alert rules judge by."""
    from connect.daemon import display_of
    from connect.loading import load_settings

    for key in list(os.environ):
        if key.startswith(("CONNECT_", "BG_", "DISPLAY_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CONNECT_STORE_PATH", ":memory:")
    monkeypatch.setenv("BG_TARGET_BOTTOM", "70")
    monkeypatch.setenv("CONNECT_BG_TARGET_TOP", "150")
    settings, _ = load_settings([], source_name="sim")
    display = display_of(settings)  # type: ignore[arg-type]
    alerts = settings.thresholds()  # type: ignore[attr-defined]
    assert (display.thresholds.low, display.thresholds.high) == (alerts.low, alerts.high) == (70, 150)

    path = tmp_path / "store.db"
    now = now_ms()
    store = Store(path)
    store.upsert(
        [
            Entry(type="sgv", date=now - 10 * 60_000, device="cgm", sgv=160, direction="Flat"),
            Entry(type="sgv", date=now - 5 * 60_000, device="cgm", sgv=140, direction="Flat"),
        ]
    )
    store.close()
    app, reader = make_app(path, clock=lambda: now, display=display)
    _, dom, _ = page(app)
    with ApiClient(app) as c:
        site = c.get(f"/api/v1/status.json?token={SECRET}").json()
    reader.close()
    assert dom.target_ranges == 1
    assert {"70", "150"} <= set(dom.text["y-label"]) and "180" not in dom.text["y-label"]
    assert "target 70–150 mg/dL" in dom.said("footer")
    # 160 is above this band (yellow), 140 inside it (green)
    assert dom.readings == ["#eb3", "#5c5"]
    assert dom.said("sgv") == "140" and "in-range" in dom.sgv_classes
    assert (
        site["settings"]["thresholds"]["bgTargetBottom"],
        site["settings"]["thresholds"]["bgTargetTop"],
    ) == (
        70,
        150,
    )


def test_the_default_range_is_a_setting_and_a_bad_one_is_one_line(stored, monkeypatch):
    from api import ApiSettings, create_app
    from connect.loading import UsageError, load_settings
    from store.reader import StoreReader

    path, now, _ = stored
    reader = StoreReader(path)
    app = create_app(reader, snapshot, ApiSettings(http_secret=SECRET, page_hours=6), clock=lambda: now)
    _, dom, _ = page(app)
    reader.close()
    assert dom.current_range == "6 h" and len(dom.readings) == 72

    for key in list(os.environ):
        if key.startswith("CONNECT_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CONNECT_STORE_PATH", ":memory:")
    monkeypatch.setenv("CONNECT_PAGE_HOURS", "48")
    with pytest.raises(UsageError) as refused:
        load_settings([], source_name="sim")
    assert refused.value.lines == ["--page-hours / CONNECT_PAGE_HOURS: must be 3, 6, 12 or 24"]


def test_the_range_is_chosen_by_a_link_and_a_bad_one_is_a_400(stored):
    path, now, _ = stored
    app, reader = make_app(path, clock=lambda: now)
    _, day, _ = page(app)
    _, six, _ = page(app, "&hours=6")
    bad = [page(app, q)[0] for q in ("&hours=5", "&hours=abc", "&hours=", "&hours=24.0")]
    # readings every 5 minutes, the newest 2 minutes old
    assert len(day.readings) == 288 and day.current_range == "24 h"
    assert len(six.readings) == 72 and six.current_range == "6 h"
    assert "last 6 hours" in six.said("footer")
    # the links to the other ranges, and the reload, carry a token of their own (never the
    # secret), and open the page
    assert set(six.links) == {"3 h", "12 h", "24 h"}
    assert six.links["3 h"].startswith("?hours=3&token=") and SECRET not in six.links["3 h"]
    assert six.refresh is not None and six.refresh.startswith("60; url=?hours=6&token=")
    with ApiClient(app) as c:
        assert c.get("/" + six.links["3 h"]).status_code == 200
        assert c.get("/" + six.refresh.removeprefix("60; url=")).status_code == 200
        assert c.get("/?hours=3&token=" + "x" * 40).status_code == 401
    reader.close()
    assert bad == [400, 400, 400, 400]


def test_a_page_read_without_a_token_links_without_one(tmp_path):
    path = tmp_path / "store.db"
    populate(path, count=10)
    app, reader = make_app(path, readable=True)
    with ApiClient(app) as c:
        assert c.get("/?token=not-the-secret-at-all").status_code == 401
        anonymous = c.get("/")
    reader.close()
    dom = Dom()
    dom.feed(anonymous.text)
    assert anonymous.status_code == 200 and "token=" not in anonymous.text
    assert dom.refresh == "60" and dom.links["6 h"] == "?hours=6"


def test_carbs_and_insulin_are_marked_with_their_amounts(stored):
    path, now, info = stored
    app, reader = make_app(path, clock=lambda: now)
    _, day, _ = page(app)
    _, three, _ = page(app, "&hours=3")
    reader.close()
    # a 2.5 U / 30 g meal bolus every hour for the last 5 hours (populate's treatments)
    assert day.doses == 5 and three.doses == 3
    labels = day.items["treatment"]
    assert labels and set(labels) == {"2.5 U", "30 g"}
    # the hourly boluses are closer than two labels' width: each keeps its line, not every one
    # is labelled, and the labels never overlap (the chromium test looks at that on screen)
    assert labels.count("2.5 U") == labels.count("30 g") <= 5


def test_the_sims_meals_are_drawn(tmp_path):
    """What the demo stores: the sim source's meal boluses (carbs and insulin)."""
    from connect.contract import LastKnown
    from sources.sim import SimDriver, SimSettings, SimWindow

    now = now_ms()
    known = LastKnown(backfill_from=now - DAY_MS, now=now)
    batch = SimDriver(settings=SimSettings()).transform(SimWindow(now - DAY_MS, now, now - DAY_MS), known)
    meals = [t for t in batch.treatments if t.carbs]
    assert meals
    path = tmp_path / "store.db"
    store = Store(path)
    store.upsert([*batch.entries, *batch.treatments])
    store.close()
    app, reader = make_app(path, clock=lambda: now)
    _, dom, _ = page(app)
    reader.close()
    assert dom.doses == len(meals)
    assert f"{meals[-1].carbs:g} g" in dom.items["treatment"]
    assert f"{meals[-1].insulin:g} U" in dom.items["treatment"]


def test_machines_and_outputs_are_said_in_plain_words(stored):
    path, now, _ = stored
    status = snapshot(now)
    linkup = {
        "source": "linkup",
        "poller": "running",
        "session": {
            "state": "rejected",
            "logins": 1,
            "not_before": now + 90 * 60_000,
            "last_error": "AuthRejected: LibreLinkUp refused the e-mail address or password (status 2)",
        },
        "loops": {
            "LibreLinkUp": {"state": "ready", "frames_ok": 0, "frames_failed": 1, "frames_missing": 1,
                            "next_due": now + 90 * 60_000, "last_error": "AuthRejected: refused"}
        },
    }  # fmt: skip
    status["sources"].append(linkup)
    status["outputs"][0].update(
        state="backoff",
        target="https://site.example",
        retry_at=now + 3 * 60_000,
        last_error="TransientError: 502 from https://site.example/api/v1/entries " + "x" * 300,
    )
    app, reader = make_app(path, clock=lambda: now, status=lambda: status)
    _, dom, html = page(app)
    reader.close()
    machines, outputs = dom.items["machine"], dom.items["output"]
    assert machines[0].startswith("Dexcom Share: connected, next check in 4 min")
    assert "last data fetched 1 min ago" in machines[0]
    retry = re.escape(_clock(now + 90 * 60_000))
    assert re.match(rf"LibreLinkUp: password refused, next try {retry}", machines[1])
    assert "refused the e-mail address or password" in machines[1]
    assert outputs[0].startswith(
        f"nightscout (https://site.example): not answering, next try {_clock(now + 180_000)}"
    )
    assert "290 delivered" in outputs[0] and "502 from" in outputs[0]
    # no machine jargon: no class names, no state ids, no counters of frames
    text = dom.said("body")
    for jargon in (
        "DexcomShareEntries",
        "AuthRejected",
        "TransientError",
        "frames",
        " after",
        "backoff",
        "state",
    ):
        assert jargon not in text, jargon


def _clock(ms: int) -> str:
    from api.page import clock_time

    return clock_time(ms)


# --- in a real browser ---------------------------------------------------------------------

#: a same-origin frame of the page exactly as wide as the screen measured (headless windows have
#: a minimum width of their own), measured by a script once it loaded (the page itself has no
#: scripts); the measurements land in the DOM that --dump-dom prints
PROBE = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>
html,body{margin:0;padding:0;background:#111}iframe{display:block;border:0;width:WIDTHpx;height:1500px}
</style><script>
function measure(frame) {
  const doc = frame.contentDocument, win = frame.contentWindow;
  const box = (el) => { const r = el.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height,
            text: el.textContent.trim(), scroll: el.scrollWidth, client: el.clientWidth,
            font: parseFloat(win.getComputedStyle(el).fontSize)}; };
  const all = (sel) => Array.from(doc.querySelectorAll(sel)).map(box);
  const out = {
    innerWidth: win.innerWidth, scrollWidth: doc.documentElement.scrollWidth,
    bodyScrollWidth: doc.body.scrollWidth, title: doc.title,
    sgv: all('.sgv'), delta: all('.delta'), arrow: all('.arrow'), age: all('.age'),
    chart: all('#chart'), ylabels: all('.y-label'), xlabels: all('.x-label'),
    treatments: all('.treatment'), errors: all('.error'), items: all('li'),
    readings: doc.querySelectorAll('circle.reading').length,
    episodes: Array.from(doc.querySelectorAll('rect.episode')).map(e => e.getAttribute('class')),
  };
  document.getElementById('result').textContent = JSON.stringify(out);
}
</script></head><body><pre id="result" style="display:none"></pre>
<iframe src="/?token=TOKEN" onload="measure(this)"></iframe></body></html>"""


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["left"] < b["right"]
        and b["left"] < a["right"]
        and a["top"] < b["bottom"]
        and b["top"] < a["bottom"]
    )


@pytest.fixture(scope="module")
def browser_world(tmp_path_factory):
    """A store with a day of readings, episodes, meal boluses, and a status with a long error."""
    path = tmp_path_factory.mktemp("page") / "store.db"
    now = now_ms()
    info = populate(path, end_ms=now - 2 * 60_000, count=300)
    store = Store(path)
    evaluate(store, AlertConfig(key="test", label="test", thresholds=Thresholds()), now)
    bands = [
        f"episode episode-{kind}"
        for (kind,) in store.conn.execute(
            "SELECT kind FROM episodes WHERE kind != 'normal' AND start_at <= ? AND coalesce(end_at, ?) >= ? "
            "ORDER BY start_at, id",
            (now, now, now - DAY_MS),
        )
    ]
    store.close()
    status = snapshot(now, missing=2)
    # an error text longer than a phone is wide, without a space to break at
    status["sources"][0]["loops"]["DexcomShareEntries"]["last_error"] = (
        "TransientError: 503 from https://share2.dexcom.com/ShareWebServices/Services/Publisher/"
        "ReadPublisherLatestGlucoseValues?sessionId=…&minutes=1440&maxCount=288&" + "x" * 80
    )
    return path, now, info, bands, status


@pytest.mark.parametrize("width", [390, 1280])
def test_the_page_in_headless_chromium(browser_world, tmp_path, width):
    browser = chromium()
    path, now, info, bands, status = browser_world
    newest, before = info["entries"][-1], info["entries"][-2]
    app, reader = make_app(path, clock=lambda: now, status=lambda: status)
    app.add_api_route(
        "/probe",
        lambda: HTMLResponse(PROBE.replace("TOKEN", SECRET).replace("WIDTH", str(width))),
        include_in_schema=False,
    )
    shot = ARTIFACTS / f"status-page-{width}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
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
                f"--window-size={width},1500",
                "--hide-scrollbars",
                f"--screenshot={shot}",
                "--dump-dom",
                f"{url}/probe",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    reader.close()
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="result"[^>]*>(.*?)</pre>', result.stdout, re.DOTALL)
    assert found and found.group(1), result.stdout[-2000:]
    seen = json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))

    # nothing scrolls sideways, and everything shown lies inside the window
    assert seen["innerWidth"] == width
    assert seen["scrollWidth"] <= seen["innerWidth"] and seen["bodyScrollWidth"] <= seen["innerWidth"]
    for item in (*seen["items"], *seen["errors"], *seen["chart"], *seen["sgv"], *seen["delta"]):
        assert 0 <= item["left"] and item["right"] <= width + 0.5, item["text"][:80]
    # the error texts wrap: as wide as their box, and taller than one line
    long_error = next(e for e in seen["errors"] if "share2.dexcom.com" in e["text"])
    assert long_error["scroll"] <= long_error["client"] and long_error["height"] > 1.5 * long_error["font"]

    # what the page says is on screen: value, arrow, delta, age, the title
    delta = f"{newest.sgv - before.sgv:+d}"
    assert seen["sgv"][0]["text"] == str(newest.sgv) and seen["sgv"][0]["height"] > 40
    assert seen["arrow"][0]["text"] == ARROWS[newest.direction]
    assert seen["delta"][0]["text"].startswith(delta)
    assert "2 min ago" in seen["age"][0]["text"]
    assert seen["title"].startswith(f"{newest.sgv} {ARROWS[newest.direction]} {delta}")

    # the chart: a point per reading of the day, the episodes, labels that can be read (at
    # least 9 px high on screen) and that never overlap one another
    assert seen["readings"] == 288
    assert seen["episodes"] == bands and "episode episode-low" in bands
    labels = [*seen["ylabels"], *seen["xlabels"], *seen["treatments"]]
    assert len(seen["ylabels"]) >= 3 and len(seen["xlabels"]) >= 5 and seen["treatments"]
    for label in labels:
        assert label["height"] >= 9, label
        chart = seen["chart"][0]
        assert chart["left"] <= label["left"] and label["right"] <= chart["right"] + 0.5, label
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            assert not _overlap(a, b), (a["text"], b["text"])

    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_page_needs_the_secret_like_everything_else(tmp_path):
    path = tmp_path / "store.db"
    populate(path, count=10)
    app, reader = make_app(path)
    with ApiClient(app) as c:
        assert c.get("/").status_code == 401
        assert c.get(f"/?token={SECRET}").status_code == 200
    reader.close()
