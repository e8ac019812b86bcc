"""AsyncStore mirrors the store port: every method of WriterStore has an awaitable twin with the
same signature, and both backends have every method of the port with that same signature, so
nothing reaches a store through an untyped seam and neither backend lacks what the daemon calls."""

from __future__ import annotations

import inspect

import pytest

from store import AsyncStore, Store
from store.abc import WaitFree, WriterStore
from store.postgres import PostgresStore

#: a store's own lifecycle, not for the async side: the daemon closes it; transactions (the
#: alert pass's included) stay on the writer's thread; AsyncStore.call maps errors itself
SYNC_ONLY = frozenset({"close", "transaction", "as_store_error", "alert_transaction"})


def public_methods(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(member) and not isinstance(member, staticmethod)
    }


def test_every_store_method_has_an_async_twin_with_the_same_signature() -> None:
    port = public_methods(WriterStore)
    twins = public_methods(AsyncStore)
    for name, method in port.items():
        if name in SYNC_ONLY:
            continue
        assert name in twins, f"AsyncStore.{name} is missing"
        twin = twins[name]
        assert inspect.iscoroutinefunction(twin), name
        assert inspect.signature(twin) == inspect.signature(method), name  # type: ignore[arg-type]
    assert set(twins) - set(port) == {"call", "call_brief", "call_background"}, (
        "AsyncStore has a method the port has not"
    )


@pytest.mark.parametrize("backend", [Store, PostgresStore])
def test_each_backend_implements_the_whole_port(backend: type) -> None:
    for name, method in public_methods(WriterStore).items():
        mine = getattr(backend, name, None)
        assert mine is not None, f"{backend.__name__}.{name} is missing"
        assert inspect.signature(mine) == inspect.signature(method), name  # type: ignore[arg-type]
    # WaitFree: what a store offers for a call on the event loop (SQLite only)
    extra = set(public_methods(backend)) - set(public_methods(WriterStore)) - set(public_methods(WaitFree))
    extra -= {"transaction", "open"}
    assert not extra, f"{backend.__name__} has methods the port has not: {sorted(extra)}"
