"""The API over a real daemon (the sim source, a 30-day backfill, and an output), in one trio
run: reads keep answering while the backfill is written, and /metrics, /readyz and
/api/connect/status report exactly what the runtime's own status snapshot says (not a hand-made
dict, so a renamed snapshot key shows up here)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from api import ApiSettings, create_app
from connect.assemble import assemble
from connect.cli import load_settings
from outputs.delivery import Output
from store.reader import StoreReader

BACKFILL_DAYS = 30
READINGS_PER_DAY = 288


class MemoryOutput(Output):
    """An output that takes every entry at once and never treatments (so its lag stays > 0)."""

    def target(self) -> str:
        return "memory:"

    async def _deliver_once(self) -> None:
        self._new_pass()
        while chunk := await self.astore.pending(self.name, "entries", limit=1000):
            await self._accepted("entries", chunk)

    async def _serve(self) -> None:
        while True:
            await self._deliver_once()
            await self._idle()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("CONNECT_") or key.startswith("NIGHTSCOUT_") or key == "API_SECRET":
            monkeypatch.delenv(key)
    yield


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def settled(status: dict[str, Any], now: int, reader: StoreReader) -> bool:
    """The backfill is done: the loop waits for the next reading, and the output has delivered
    every entry and is idle with its lag up to date."""
    (source,) = status["sources"]
    loop = source["loops"]["SimEntries"]
    (output,) = status["outputs"]
    return (
        loop["state"] == "after"
        and loop["frames_ok"] >= 2
        and loop["next_due"] is not None
        and loop["next_due"] > now + 1_000
        and output["state"] == "idle"
        and output["delivered"] > 0
        and output["lag"] == sum(reader.lag(["memory"])["memory"].values())
        and reader.lag(["memory"])["memory"]["entries"] == 0
    )


async def test_api_over_a_real_daemon_during_a_30_day_backfill(tmp_path: Path, clean_env: None) -> None:
    db = tmp_path / "daemon.db"
    settings, source = load_settings(
        ["--store-path", str(db), "--backfill-days", str(BACKFILL_DAYS), "--http-bind", "0"],
        source_name="sim",
    )
    reads: list[int] = []
    failures: list[tuple[str, int]] = []
    async with assemble(settings, source) as daemon:
        output = MemoryOutput("memory", daemon.astore)
        daemon.outputs.append(output)
        reader = StoreReader(db)
        app = create_app(reader, daemon.status, ApiSettings(http_secret=None, http_readable=True))
        transport = httpx.ASGITransport(app=app)
        try:
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://api") as client,
                trio.open_nursery() as nursery,
            ):
                await nursery.start(daemon.run)
                # reads all through the backfill: none may fail, and none may wait on the writer
                # (a blocked read would trip the deadline instead of hanging the run)
                with trio.fail_after(20):
                    while not settled(daemon.status(), daemon.runtime.clock(), reader):
                        for path in ("/api/v1/entries.json?count=0", "/api/connect/status", "/metrics"):
                            response = await client.get(path)
                            if response.status_code != 200:
                                failures.append((path, response.status_code))
                            elif path.startswith("/api/v1/entries"):
                                reads.append(len(response.json()))
                        await trio.sleep(0.01)

                # settled: the loop sleeps until the next reading, so the snapshot holds still
                status = daemon.status()
                metrics = scrape((await client.get("/metrics")).text)
                connect = (await client.get("/api/connect/status")).json()
                ready = await client.get("/readyz")
                entries = (await client.get("/api/v1/entries.json?count=0")).json()
                nursery.cancel_scope.cancel()
        finally:
            reader.close()

    assert not failures
    assert reads and min(reads) < len(entries)  # the reads really overlapped the backfill
    assert reads == sorted(reads)  # the store only grew, frame by frame
    assert len(entries) >= BACKFILL_DAYS * READINGS_PER_DAY - 1
    assert [d["date"] for d in entries] == sorted((d["date"] for d in entries), reverse=True)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}

    # /api/connect/status carries the runtime's snapshot as it is
    (source_status,) = status["sources"]
    assert connect["sources"] == status["sources"]
    assert connect["outputs"] == status["outputs"]
    session = connect["sources"][0]["session"]
    assert {"state", "logins", "rejections", "failures", "last_error"} <= set(session)
    loop = connect["sources"][0]["loops"]["SimEntries"]
    assert {"state", "frames_ok", "frames_failed", "last_success", "next_due", "last_error"} <= set(loop)
    out = connect["outputs"][0]
    assert {"name", "state", "lag", "last_error", "delivered", "failures"} <= set(out)
    assert out["lag"] == connect["store"]["delivery"]["memory"]["lag"] > 0

    # /metrics: every figure is the snapshot's own, under the names the runtime uses now
    name = source_status["source"]
    labels = (("loop", "SimEntries"), ("source", name))
    data = source_status["loops"]["SimEntries"]
    assert data["frames_ok"] >= 2
    assert (
        metrics[("nightscout_connect_frames_total", (labels[0], ("result", "ok"), labels[1]))]
        == data["frames_ok"]
    )
    assert (
        metrics[("nightscout_connect_frames_total", (labels[0], ("result", "failed"), labels[1]))]
        == data["frames_failed"]
    )
    assert metrics[("nightscout_connect_frames_missing", labels)] == data["frames_missing"]
    assert metrics[("nightscout_connect_records_written_total", labels)] == data["records_written"] > 0
    assert (
        metrics[("nightscout_connect_last_success_timestamp_seconds", labels)] == data["last_success"] / 1000
    )
    sess = source_status["session"]
    assert metrics[("nightscout_connect_logins_total", (("source", name),))] == sess["logins"]
    assert metrics[("nightscout_connect_login_rejections_total", (("source", name),))] == sess["rejections"]
    assert metrics[("nightscout_connect_session_failures_total", (("source", name),))] == sess["failures"]
    assert metrics[("nightscout_connect_session_state", (("source", name), ("state", sess["state"])))] == 1
    assert metrics[("nightscout_connect_loop_state", (*labels, ("state", data["state"])))] == 1

    (output_status,) = status["outputs"]
    per_output = (("output", "memory"),)
    assert metrics[("nightscout_connect_delivered_total", per_output)] == output_status["delivered"] > 0
    assert metrics[("nightscout_connect_delivery_failures_total", per_output)] == output_status["failures"]
    assert metrics[("nightscout_connect_delivery_lag_records", per_output)] == output_status["lag"] > 0
    assert metrics[("nightscout_connect_output_state", (("output", "memory"), ("state", "idle")))] == 1
    assert metrics[("nightscout_connect_records_stored", (("collection", "entries"),))] == len(entries)
    assert metrics[("nightscout_connect_status_up", ())] == 1
