"""The daemon's own views: /api/connect/status, /healthz, /readyz, /metrics, and the status
page's HTML (the browser test looks at the rendered page)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from api import ApiSettings, create_app
from store import Store
from store.reader import StoreReader
from tests.test_api_support import SECRET, ApiClient, make_app, now_ms, populate, snapshot

TOTAL = 302 + 6 + 3 + 1  # entries, treatments, devicestatus, profile in populate()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    populate(path, count=300)
    return path


def metrics(client) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_connect_status_joins_runtime_and_store(store_path):
    app, reader = make_app(store_path, secret=None, readable=True)
    with ApiClient(app) as c:
        body = c.get("/api/connect/status").json()
        loop = body["sources"][0]["loops"]["DexcomShareEntries"]
        assert loop["frames_ok"] == 41 and loop["state"] == "after"
        assert body["store"]["collections"]["entries"]["records"] == 302
        assert body["store"]["delivery"]["nightscout"]["lag"] == TOTAL

        store = Store(store_path)
        store.advance("nightscout", "entries", store.max_seq("entries"))
        store.advance("mqtt", "treatments", store.max_seq("treatments"))
        store.close()
        delivery = c.get("/api/connect/status").json()["store"]["delivery"]
        assert delivery["nightscout"]["collections"]["entries"] == 0
        assert delivery["nightscout"]["lag"] == TOTAL - 302
        # an output known only from its cursors still shows
        assert delivery["mqtt"]["collections"]["treatments"] == 0
        assert delivery["mqtt"]["lag"] == TOTAL - 6
    reader.close()


def test_health_and_readiness(store_path):
    state = {"missing": 0}
    app, reader = make_app(
        store_path, secret=None, readable=True, status=lambda: snapshot(missing=state["missing"])
    )
    with ApiClient(app) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").json() == {"status": "ready"}
        state["missing"] = 1  # one failed frame is not yet "failing"
        assert c.get("/readyz").status_code == 200
        state["missing"] = 3
        response = c.get("/readyz")
        assert response.status_code == 503 and "every loop is failing" in response.json()["problems"]
        assert c.get("/healthz").status_code == 200
    reader.close()


def test_one_healthy_loop_keeps_the_daemon_ready(store_path):
    def two_loops():
        snap = snapshot(missing=5)
        loops = snap["sources"][0]["loops"]
        loops["DexcomShareTreatments"] = {**loops["DexcomShareEntries"], "frames_missing": 0}
        return snap

    app, reader = make_app(store_path, secret=None, readable=True, status=two_loops)
    with ApiClient(app) as c:
        assert c.get("/readyz").status_code == 200
    reader.close()


def test_an_unreadable_store_is_503_never_500(tmp_path):
    reader = StoreReader(tmp_path / "missing" / "store.db")
    app = create_app(reader, snapshot, ApiSettings(http_secret=None, http_readable=True))
    with ApiClient(app) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503
        for path in ("/api/v1/entries.json", "/api/v1/treatments.json", "/api/connect/status", "/"):
            response = c.get(path)
            assert response.status_code == 503, path
            assert response.json()["message"] == "Service Unavailable"
        scrape = c.get("/metrics")
        assert scrape.status_code == 200 and "nightscout_connect_store_up 0.0" in scrape.text
    assert not (tmp_path / "missing").exists()  # the reader never creates a store


def test_metrics_from_status_and_store(store_path):
    app, reader = make_app(store_path, secret=None, readable=True)
    with ApiClient(app) as c:
        response = c.get("/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        m = metrics(c)
    reader.close()
    loop = (("loop", "DexcomShareEntries"), ("source", "dexcomshare"))
    assert m[("nightscout_connect_frames_total", (*loop[:1], ("result", "ok"), loop[1]))] == 41
    assert m[("nightscout_connect_frames_total", (*loop[:1], ("result", "failed"), loop[1]))] == 3
    assert m[("nightscout_connect_logins_total", (("source", "dexcomshare"),))] == 2
    assert m[("nightscout_connect_records_stored", (("collection", "entries"),))] == 302
    assert m[("nightscout_connect_records_stored", (("collection", "treatments"),))] == 6
    assert m[("nightscout_connect_delivery_lag_records", (("output", "nightscout"),))] == TOTAL
    assert m[("nightscout_connect_delivered_total", (("output", "nightscout"),))] == 290
    assert m[("nightscout_connect_status_up", ())] == 1
    assert m[("nightscout_connect_store_up", ())] == 1


def test_metrics_lag_is_read_from_the_store_at_each_scrape(store_path):
    """The output's own lag figure (0 in this snapshot) may be minutes old during a catch-up;
    the metric counts the store's undelivered rows when Prometheus asks, as /api/connect/status."""
    app, reader = make_app(store_path, secret=None, readable=True)
    lag = ("nightscout_connect_delivery_lag_records", (("output", "nightscout"),))
    with ApiClient(app) as c:
        assert metrics(c)[lag] == TOTAL
        store = Store(store_path)
        store.advance("nightscout", "entries", store.max_seq("entries") - 2)
        store.close()
        assert metrics(c)[lag] == TOTAL - 300
        assert c.get("/api/connect/status").json()["store"]["delivery"]["nightscout"]["lag"] == TOTAL - 300
    reader.close()


def test_each_app_has_its_own_registry(store_path, tmp_path):
    other = tmp_path / "other.db"
    populate(other, count=20)
    app_a, reader_a = make_app(store_path, secret=None, readable=True)
    app_b, reader_b = make_app(
        other, secret=None, readable=True, status=lambda: {"sources": [], "outputs": []}
    )
    with ApiClient(app_a) as a, ApiClient(app_b) as b:
        entries = ("nightscout_connect_records_stored", (("collection", "entries"),))
        assert metrics(a)[entries] == 302
        assert metrics(b)[entries] == 22
        assert not any(name == "nightscout_connect_frames_total" for name, _ in metrics(b))
    reader_a.close()
    reader_b.close()


def test_a_broken_status_still_scrapes(store_path):
    def broken():
        raise RuntimeError("runtime gone")

    app, reader = make_app(store_path, secret=None, readable=True, status=broken)
    with ApiClient(app) as c:
        m = metrics(c)
        assert m[("nightscout_connect_status_up", ())] == 0
        assert m[("nightscout_connect_records_stored", (("collection", "entries"),))] == 302
        assert c.get("/").status_code == 200
    reader.close()


def test_status_page_html(store_path):
    now = now_ms() + 1000  # strictly after the newest reading: the oldest falls out of the window
    app, reader = make_app(
        store_path, secret=None, readable=True, clock=lambda: now, status=lambda: snapshot(now)
    )
    with ApiClient(app) as c:
        response = c.get("/")
    reader.close()
    html = response.text
    assert response.headers["content-type"].startswith("text/html")
    assert '<meta http-equiv="refresh" content="60">' in html
    assert html.count('class="reading"') == 288  # 300 readings every 5 min; 288 in the last 24 h
    assert 'class="target-range"' in html
    assert "Dexcom Share:</span> connected, next check in 4 min" in html
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_an_internal_failure_is_a_bare_500_that_leaks_nothing(store_path):
    class Broken(StoreReader):
        def doc_texts(self, *args, **kwargs):
            raise RuntimeError(f"database exploded; secret {SECRET} and path {self.path}")

    reader = Broken(store_path)
    app = create_app(reader, snapshot, ApiSettings(http_secret=SECRET))
    with capture_logs() as logs, ApiClient(app, raise_server_exceptions=False) as c:
        response = c.get(f"/api/v1/entries.json?token={SECRET}")
        assert c.get("/healthz").status_code == 200  # the app keeps serving
    reader.close()
    assert response.status_code == 500
    assert response.json() == {"status": 500, "message": "Internal Server Error"}
    assert SECRET not in repr(logs) and any(entry["event"] == "request failed" for entry in logs)
