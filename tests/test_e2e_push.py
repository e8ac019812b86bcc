"""The real CLI with no polling source (``CONNECT_SOURCE=none``): an uploader pushes to our write
API and a Nightscout output delivers what it pushed, once."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.emulators.nightscout import sgv_series, treatment_series
from tests.test_e2e_nightscout import (  # noqa: F401 (site is a fixture)
    HTTP_SECRET,
    OUTPUT_SECRET,
    free_port,
    query,
    site,
    start,
    wait_for,
)
from tests.test_e2e_serve import answers

pytestmark = pytest.mark.e2e

UPLOADER = {"api-secret": hashlib.sha1(HTTP_SECRET.encode()).hexdigest()}


def posts(emu: Any, collection: str) -> int:
    return sum(1 for r in emu.requests if r.method == "POST" and r.path.startswith(f"/api/v1/{collection}"))


def stop(proc: Any) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err[-3000:]
    return str(err)


def test_pushed_twice_stored_and_delivered_once(site: Any, tmp_path: Path) -> None:  # noqa: F811
    emu, url = site(OUTPUT_SECRET)
    db = tmp_path / "push.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(
        "run",
        CONNECT_SOURCE="none",
        CONNECT_STORE_PATH=str(db),
        CONNECT_HTTP_BIND=f"127.0.0.1:{port}",
        CONNECT_HTTP_SECRET=HTTP_SECRET,
        CONNECT_NIGHTSCOUT_ENDPOINT=url,
        CONNECT_API_SECRET=OUTPUT_SECRET,
    )
    try:
        wait_for(answers(base), timeout=30, what="the API", proc=proc)
        entries = sgv_series(emu.now() - 288 * 300_000, 288)
        treatments = treatment_series(emu.now() - 10 * 1_800_000, 10)
        with httpx.Client(base_url=base, timeout=10) as client:
            refused = client.post("/api/v1/entries", json=entries)
            assert refused.status_code == 401
            for _ in range(2):
                answer = client.post("/api/v1/entries", json=entries, headers=UPLOADER)
                assert answer.status_code == 200 and len(answer.json()) == 288
                answer = client.post("/api/v1/treatments", json=treatments, headers=UPLOADER)
                assert answer.status_code == 200 and len(answer.json()) == 10

                wait_for(
                    lambda: len(emu.entries) == 288 and len(emu.treatments) == 10,
                    timeout=30,
                    what="the output's delivery",
                    proc=proc,
                )
            sent = (posts(emu, "entries"), posts(emu, "treatments"))
            status = client.get("/api/connect/status", headers=UPLOADER).json()
            (output,) = status["outputs"]
            assert output["lag"] == 0
        assert query(db, "SELECT count(*) FROM entries") == [(288,)]
        assert query(db, "SELECT count(*) FROM treatments") == [(10,)]
        # the second push wrote nothing new, so the site was sent nothing more
        assert (posts(emu, "entries"), posts(emu, "treatments")) == sent
        assert sent[0] >= 1 and sent[1] >= 1

        # an API v3 client's reading flows the same way, once, however often it is sent
        reading = {**entries[-1], "date": entries[-1]["date"] + 300_000, "app": "AndroidAPS"}
        reading.pop("dateString", None)
        token = {"Authorization": f"Bearer {HTTP_SECRET}"}
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.post("/api/v3/entries", json=reading).status_code == 401
            created = client.post("/api/v3/entries", json=reading, headers=token)
            assert created.status_code == 201, created.text
            wait_for(lambda: len(emu.entries) == 289, timeout=30, what="the v3 reading delivered", proc=proc)
            again = client.post("/api/v3/entries", json=reading, headers=token)
            assert again.status_code == 200 and again.json()["isDeduplication"] is True
            assert again.json()["identifier"] == created.json()["identifier"]
            wait_for(
                lambda: client.get("/api/connect/status", headers=UPLOADER).json()["outputs"][0]["lag"] == 0,
                timeout=30,
                what="the output to catch up",
                proc=proc,
            )
        assert len(emu.entries) == 289 and posts(emu, "entries") == sent[0] + 1
    finally:
        if proc.poll() is None:
            stop(proc)


def test_records_pushed_to_the_output_site_are_not_sent_back(tmp_path: Path) -> None:
    """The output's site is this API itself: what an uploader pushes here came from that site."""
    db = tmp_path / "echo.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(
        "run",
        CONNECT_SOURCE="none",
        CONNECT_STORE_PATH=str(db),
        CONNECT_HTTP_BIND=f"127.0.0.1:{port}",
        CONNECT_HTTP_SECRET=HTTP_SECRET,
        CONNECT_NIGHTSCOUT_ENDPOINT=base,
        CONNECT_API_SECRET=HTTP_SECRET,
    )
    try:
        wait_for(answers(base), timeout=30, what="the API", proc=proc)
        with httpx.Client(base_url=base, timeout=10) as client:
            answer = client.post("/api/v1/entries", json=sgv_series(1_780_000_000_000, 12), headers=UPLOADER)
            assert answer.status_code == 200

            def drained() -> bool:
                outputs = client.get("/api/connect/status", headers=UPLOADER).json().get("outputs") or [{}]
                return outputs[0].get("lag") == 0

            wait_for(drained, timeout=30, what="the output to pass the pushed records", proc=proc)
            wait_for(
                lambda: (
                    client.get("/api/connect/status", headers=UPLOADER).json()["outputs"][0]["echoes"] == 12
                ),
                timeout=30,
                what="the pushed records passed over",
                proc=proc,
            )
            (output,) = client.get("/api/connect/status", headers=UPLOADER).json()["outputs"]
            assert output["delivered"] == 0
    finally:
        if proc.poll() is None:
            stop(proc)
