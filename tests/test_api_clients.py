"""Independent clients over real sockets: py-nightscout (aiohttp) reads our API as it reads a
Nightscout site, and the daemon's way of serving (hypercorn's trio worker in a nursery) starts,
answers and stops cleanly."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import httpx
import py_nightscout as nightscout
import pytest
import trio

from api import serve
from connect.errors import ConfigError
from store import Store
from tests.emulators.serve import serve_in_thread
from tests.test_api_support import SECRET, make_app, populate


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(tmp_path_factory.mktemp("clients")) / "store.db"
    populate(path, count=300)
    return path


def stored(path: Path, collection: str) -> list[dict]:
    store = Store(path)
    try:
        return store.docs(collection)
    finally:
        store.close()


def test_py_nightscout_reads_what_the_store_holds(store_path):
    app, reader = make_app(store_path)
    with serve_in_thread(app) as url:

        async def read():
            api = nightscout.Api(url, api_secret=SECRET)
            return (
                await api.get_sgvs(),
                await api.get_server_status(),
                await api.get_treatments(),
                await api.get_devices_status(),
                await api.get_profiles(),
            )

        sgvs, status, treatments, statuses, profiles = asyncio.run(read())
    reader.close()

    newest = [doc for doc in stored(store_path, "entries") if doc["type"] == "sgv"][:10]
    assert len(sgvs) == 10  # Nightscout's default count
    assert [s.sgv for s in sgvs] == [d["sgv"] for d in newest]
    assert [s.direction for s in sgvs] == [d["direction"] for d in newest]
    assert [s.device for s in sgvs] == [d["device"] for d in newest]
    assert [s.date for s in sgvs] == [datetime.fromtimestamp(d["date"] / 1000, tz=UTC) for d in newest]
    # the client turns every delta into mmol/L; a missing one would crash it
    assert all(isinstance(s.delta, (int, float)) for s in sgvs)

    assert status.status == "ok" and status.apiEnabled is True
    assert status.name == "nightscout-connect" and status.settings["units"] == "mg/dl"

    expected_treatments = stored(store_path, "treatments")
    assert [t.eventType for t in treatments] == [d["eventType"] for d in expected_treatments]
    assert [t.created_at for t in treatments] == [
        datetime.fromisoformat(d["created_at"].replace("Z", "+00:00")) for d in expected_treatments
    ]
    assert [s.device for s in statuses] == ["pump"] * 3
    expected_profiles = stored(store_path, "profile")
    assert len(profiles.profile_definitions) == len(expected_profiles) == 1
    assert profiles.profile_definitions[0].defaultProfile == expected_profiles[0]["defaultProfile"]


def test_py_nightscout_with_a_wrong_secret_gets_401(store_path):
    app, reader = make_app(store_path)
    with serve_in_thread(app) as url:

        async def read():
            api = nightscout.Api(url, api_secret="not-the-right-secret")
            return await api.get_sgvs()

        with pytest.raises(aiohttp.ClientResponseError) as info:
            asyncio.run(read())
    reader.close()
    assert info.value.status == 401


async def test_serve_in_a_trio_nursery_and_stop_on_cancel(store_path):
    app, reader = make_app(store_path, secret=None, readable=True)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, "127.0.0.1:0")
        (base,) = binds
        async with httpx.AsyncClient(base_url=base) as client:
            entries = (await client.get("/api/v1/entries.json?count=288")).json()
            assert len(entries) == 288
            # concurrent reads, each on its own worker thread and connection
            results = []

            async def one() -> None:
                results.append((await client.get("/api/v1/entries/current.json")).status_code)

            async with trio.open_nursery() as many:
                for _ in range(8):
                    many.start_soon(one)
            assert results == [200] * 8
        nursery.cancel_scope.cancel()
    reader.close()
    # the listener is gone once the nursery is done
    port = int(base.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


async def test_serve_refuses_a_taken_port_with_a_config_error(store_path):
    app, reader = make_app(store_path, secret=None, readable=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            await serve(app, f"127.0.0.1:{port}")
    reader.close()
    assert "CONNECT_HTTP_BIND" in str(info.value)
    with pytest.raises(ConfigError):
        await serve(app, "0")
