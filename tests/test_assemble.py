"""``assemble``: the one place a daemon is put together, and what it owns."""

from __future__ import annotations

import ast
import os
import random
from pathlib import Path

import httpx
import pytest

from connect.assemble import assemble
from connect.clock import VirtualClock
from connect.loading import load_settings
from outputs.nightscout import NightscoutOutput
from store import Store

ROOT = Path(__file__).resolve().parent.parent
#: what only assemble may build (the benchmark too measures the daemon assemble builds)
ASSEMBLY_PARTS = frozenset({"Builder", "SourceRuntime", "build_outputs", "Daemon"})


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CONNECT_") or key in ("API_SECRET", "BASE_URL"):
            monkeypatch.delenv(key)


def test_no_module_but_assemble_builds_a_daemon() -> None:
    builders = []
    for package in ("connect", "sources", "outputs", "store", "api", "examples", "bench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "connect" / "assemble.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                    if name in ASSEMBLY_PARTS:
                        builders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    # outputs/delivery.py defines build_outputs; nothing else calls the parts
    assert builders == []


async def test_what_assemble_makes_it_closes(tmp_path: Path) -> None:
    settings, source = load_settings(
        ["--store-path", str(tmp_path / "s.db"), "--http-bind", "0"], source_name="sim"
    )
    async with assemble(settings, source) as daemon:
        assert daemon.store.path == str(tmp_path / "s.db")
        assert daemon.runtime.key == "sim"
        assert daemon.outputs == []
        client, store = daemon.client, daemon.store
    assert client.is_closed
    with pytest.raises(Exception, match="closed"):
        store.conn.execute("SELECT 1")


async def test_what_the_caller_passes_stays_the_callers(tmp_path: Path) -> None:
    settings, source = load_settings(
        ["--store-path", str(tmp_path / "never.db"), "--http-bind", "0", "--account", "alice"],
        source_name="sim",
    )
    store = Store(":memory:")
    clock = VirtualClock(1_700_000_000_000)
    async with httpx.AsyncClient() as client:
        async with assemble(
            settings, source, client=client, store=store, clock=clock, rng=random.Random(1)
        ) as daemon:
            assert daemon.client is client and daemon.store is store
            assert daemon.runtime.clock is clock
            assert daemon.runtime.key == "sim:alice"
        assert not client.is_closed
        assert store.count("entries") == 0  # still open
    store.close()
    assert not (tmp_path / "never.db").exists()


async def test_outputs_follow_the_settings_unless_delivery_is_off(tmp_path: Path) -> None:
    args = ["--store-path", ":memory:", "--http-bind", "0", "--nightscout-endpoint", "https://ns.example"]
    args += ["--api-secret", "a-site-secret-for-assemble"]
    settings, source = load_settings(args, source_name="sim")
    async with assemble(settings, source) as daemon:
        (output,) = daemon.outputs
        assert isinstance(output, NightscoutOutput)
        # on an empty store the source starts where the site is
        assert daemon.runtime.gap_finder == output.newest
    async with assemble(settings, source, deliver=False) as daemon:
        assert daemon.outputs == []
        assert daemon.runtime.gap_finder is None


async def test_every_account_of_a_process_shares_one_tls_context(tmp_path: Path) -> None:
    # a TLS context holds the CA bundle (hundreds of kB): one per account would cost a thousand
    # accounts hundreds of MB
    from outputs.mqtt import MqttOutput
    from outputs.settings import mqtt_target
    from store import AsyncStore

    contexts = []
    for name in ("a", "b"):
        settings, source = load_settings(
            ["--store-path", str(tmp_path / f"{name}.db"), "--http-bind", "0"], source_name="sim"
        )
        async with assemble(settings, source) as daemon:
            pool = daemon.client._transport._pool  # type: ignore[attr-defined]
            contexts.append(pool._ssl_context)
    assert contexts[0] is contexts[1]
    store = AsyncStore(Store())
    clients = [
        MqttOutput(mqtt_target("mqtts://broker.invalid"), store, client_id=name)._make_client(name)
        for name in ("a", "b")
    ]
    assert clients[0]._ssl_context is clients[1]._ssl_context is not None
