"""What a source sees of the daemon: the types its coroutines receive and return.

A source module imports this, :mod:`connect.records`, :mod:`connect.errors` and
:mod:`connect.httpkit` — never the machines or the runtime.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import attrs
import httpx
from pydantic_settings import BaseSettings

from connect.records import Batch
from machines.timing import Backoff  # the one backoff policy; sources take it from here

S = TypeVar("S", bound=BaseSettings)


@attrs.frozen(kw_only=True)
class LastKnown:
    """Where a loop stands: the newest time stored per collection, and where to start without one.

    ``get`` answers the checkpoint, or ``backfill_from`` (now − ``CONNECT_BACKFILL_DAYS``) for a
    collection the loop has never stored, so every source backfills the same way.
    """

    values: Mapping[str, int] = attrs.field(factory=dict)
    backfill_from: int
    now: int

    def get(self, collection: str) -> int:
        return self.values.get(collection, self.backfill_from)

    def has(self, collection: str) -> bool:
        return collection in self.values


@attrs.frozen(kw_only=True)
class Grant:
    """What ``authorize`` may return: the session value and, when the vendor says, its lifetime.

    The runtime only holds the value and hands it back to the source's own coroutines, so it
    is an ``object`` here: the source knows its type.
    """

    value: object
    expires_in: float | None = None


#: what ``authenticate`` hands to ``authorize`` (credentials, a login answer)
LoginT = TypeVar("LoginT")
#: a fetch's raw answer, which the same loop's ``transform`` takes
RawT = TypeVar("RawT")

# The session value a fetch or a refresh receives is typed ``Any`` on purpose: each source's
# coroutines take their own session type (a string, a token record), which ``object`` would
# refuse, and the builder cannot tie ``authorize``'s result to them across two calls.

#: log in: the vendor's answer, for ``authorize``
Authenticate = Callable[[], Awaitable[LoginT]]
#: the session value every fetch receives, or a :class:`Grant` carrying it and its lifetime
Authorize = Callable[[LoginT], Awaitable[object]]
#: a renewed session value (or :class:`Grant`) from the current one
Refresh = Callable[[Any], Awaitable[object]]
#: one frame's raw answer from the vendor, given the session value and where the loop stands
Fetch = Callable[[Any, LastKnown], Awaitable[RawT]]
#: the raw answer as records; pure
Transform = Callable[[RawT, LastKnown], Batch]
#: when the next frame is due (epoch ms), given where the loop stands and now
AlignSchedule = Callable[[LastKnown, int], int]


class BuilderLike(Protocol):
    """The two calls a source's ``generate_driver`` makes (see :class:`connect.builder.Builder`).

    ``refresh_after`` (renew the session after a while) needs a ``refresh`` coroutine; a session
    that simply ends is ``expire_after``, after which the runtime logs in again.
    """

    def support_session(
        self,
        *,
        authenticate: Authenticate[LoginT],
        authorize: Authorize[LoginT],
        refresh: Refresh | None = None,
        refresh_after: timedelta | None = None,
        expire_after: timedelta | None = None,
    ) -> None: ...

    def register_loop(
        self,
        name: str,
        *,
        fetch: Fetch[RawT],
        transform: Transform[RawT],
        collections: tuple[str, ...] = ("entries",),
        align_schedule: AlignSchedule | None = None,
        expected_interval: timedelta = timedelta(minutes=5),
        frame_retries: int = 2,
        frame_backoff: Backoff = Backoff(base=2.0, cap=60.0),
        cycle_backoff: Backoff = Backoff(base=30.0, cap=1800.0),
        site_filter: Mapping[str, str] | None = None,
    ) -> None: ...


class Driver(Protocol):
    """A source bound to its settings and HTTP client."""

    def generate_driver(self, builder: BuilderLike) -> None: ...


class SourceFactory(Protocol):
    """Binds the settings of a run and the daemon's HTTP client into a :class:`Driver`.

    ``settings`` is the model composed at run time (core, this source's, outputs', API's), a
    subclass of this source's own model, so a factory may take it as that (``Any`` here: no
    static type names "the source's own model" for every source at once).
    """

    def __call__(self, settings: Any, client: httpx.AsyncClient) -> Driver: ...


@attrs.frozen(kw_only=True)
class SourceInfo:
    """What the entry point ``nightscout_connect.sources`` names: one per source.

    ``settings`` is a pydantic-settings model (``env_prefix="CONNECT_"``) holding only this
    source's fields; the CLI combines it with the core settings when the source is selected,
    so its required fields are required only then. ``legacy_env`` maps old variable names
    (e.g. ``BRIDGE_USER_NAME``) to ours. ``secrets`` names the settings fields to redact.
    """

    name: str
    description: str
    settings: type[BaseSettings]
    factory: SourceFactory
    legacy_env: Mapping[str, str] = attrs.field(factory=dict)
    #: base URL used when no server is configured, for `check` output
    default_server: str = ""
    #: False for ``none``: a source that registers no loop (the daemon only takes pushed data)
    polls: bool = True


def own_settings(model: type[S], settings: BaseSettings) -> S:
    """A source's own settings out of the composed model of a run (which holds every field of
    core, source, outputs and API), or ``settings`` itself when it already is one."""
    if isinstance(settings, model):
        return settings
    return model.model_validate(settings, from_attributes=True)


__all__ = [
    "AlignSchedule",
    "Authenticate",
    "Authorize",
    "Backoff",
    "BuilderLike",
    "Driver",
    "Fetch",
    "Grant",
    "LastKnown",
    "Refresh",
    "SourceFactory",
    "SourceInfo",
    "Transform",
    "own_settings",
]
