"""The store as seen from trio: every call runs on a worker thread, one at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import trio

from store.database import Store

P = ParamSpec("P")
T = TypeVar("T")


class AsyncStore:
    """Serialises every use of the writer connection through a one-slot limiter.

    SQLite allows one writer; funnelling every call through the same limiter keeps the
    connection single-threaded in practice and never blocks the trio loop.
    """

    def __init__(self, store: Store, *, inline: bool | None = None) -> None:
        self.store = store
        self.limiter = trio.CapacityLimiter(1)
        # An in-memory store is private to this process and fast; running it inline also keeps
        # trio's MockClock honest (autojump treats a task waiting on a thread as idle and would
        # leap virtual time forward while the thread works).
        self.inline = store.path == ":memory:" if inline is None else inline

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        def run() -> T:
            return fn(*args, **kwargs)

        if self.inline:
            await trio.lowlevel.checkpoint()
            return run()

        # abandon_on_cancel=False: a cancelled caller never leaves a transaction half done
        return await trio.to_thread.run_sync(run, limiter=self.limiter, abandon_on_cancel=False)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not callable(attr):
            return attr

        async def bound(*args: Any, **kwargs: Any) -> Any:
            return await self.call(attr, *args, **kwargs)

        return bound
