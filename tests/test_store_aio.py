"""AsyncStore mirrors Store: every public method has an awaitable twin with the same signature,
so nothing reaches the store through an untyped seam."""

from __future__ import annotations

import inspect

from store import AsyncStore, Store

#: Store's own lifecycle, not for the async side: the daemon closes it; transactions stay on
#: the writer's thread
SYNC_ONLY = frozenset({"close", "transaction", "as_store_error", "alert_transaction"})


def public_methods(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(member) and not isinstance(member, staticmethod)
    }


def test_every_store_method_has_an_async_twin_with_the_same_signature() -> None:
    sync = public_methods(Store)
    twins = public_methods(AsyncStore)
    for name, method in sync.items():
        if name in SYNC_ONLY:
            continue
        assert name in twins, f"AsyncStore.{name} is missing"
        twin = twins[name]
        assert inspect.iscoroutinefunction(twin), name
        assert inspect.signature(twin) == inspect.signature(method), name  # type: ignore[arg-type]
    assert set(twins) - set(sync) == {"call"}, "AsyncStore has a method Store has not"
