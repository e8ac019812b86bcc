"""What every route reads: the store, the runtime's status, the settings and the clock.

``create_app`` builds one :class:`ApiContext` and keeps it on ``app.state``; routes take it
with the :data:`Context` dependency, so the route modules hold no state of their own and several
apps (tests, several accounts) never share any.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Annotated, Any

import attrs
import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry

from api.auth import Authenticator
from api.cache import BodyCache, Rendered, cached
from api.metrics import make_registry
from api.settings import ApiSettings, Display
from connect.redact import describe_error
from store.abc import ReaderStore
from store.aio import AsyncStore

log = structlog.get_logger("api")

StatusFn = Callable[[], Mapping[str, Any]]
Clock = Callable[[], int]
#: what is wrong with the daemon's store while its writes fail, else None
StoreFaultFn = Callable[[], str | None]


def _no_fault() -> str | None:
    return None


@attrs.frozen
class Writer:
    """The daemon's store, for the write API: records pushed through it land in the same
    store, by the same writer, as polled frames; ``written`` wakes the outputs and alerts."""

    astore: AsyncStore
    written: Callable[[], None]


@attrs.frozen
class ApiContext:
    reader: ReaderStore
    #: the runtime's snapshot; call it on the event loop, where the machines live
    status: StatusFn
    settings: ApiSettings
    #: epoch milliseconds
    clock: Clock
    auth: Authenticator
    #: this app's own metrics, so two apps never register the same collector
    registry: CollectorRegistry
    #: bodies of reads of the store, kept per store revision
    cache: BodyCache
    #: the daemon's store fault (a full disk): reads answer 503 and readiness fails meanwhile
    store_fault: StoreFaultFn = _no_fault
    #: the daemon's writer (None under ``serve``, which only reads: writes answer 405)
    writer: Writer | None = None
    #: the site's units and thresholds, for the status page and status.json
    display: Display = attrs.field(factory=Display)

    @classmethod
    def build(
        cls,
        reader: ReaderStore,
        status: StatusFn,
        settings: ApiSettings,
        clock: Clock,
        store_fault: StoreFaultFn | None = None,
        writer: Writer | None = None,
        display: Display | None = None,
    ) -> ApiContext:
        auth = Authenticator(settings.http_secret, readable=settings.http_readable, clock=clock)
        return cls(
            reader,
            status,
            settings,
            clock,
            auth,
            make_registry(reader, status),
            BodyCache(),
            store_fault or _no_fault,
            writer,
            display or Display(),
        )

    def store_failing(self) -> bool:
        """True while the daemon cannot write its store (a full disk, an I/O error)."""
        try:
            return self.store_fault() is not None
        except Exception as exc:  # the API keeps answering when the hook breaks
            log.warning("store state unavailable", error=describe_error(exc))
            return False

    def respond(
        self,
        request: Request,
        render: Callable[[], Rendered],
        *,
        key: tuple[Hashable, ...] | None = None,
        etag_extra: str = "",
    ) -> Response:
        """A read of the store answered with the store's revision as its ``ETag``: 304 when the
        client has it, the kept body when the store has not changed, else ``render()``'s (on a
        worker thread: it reads the store)."""
        revision = self.reader.revision()
        return cached(request, self.cache, revision, render, key=key, etag_extra=etag_extra)

    def take_status(self) -> Mapping[str, Any] | None:
        """The runtime's snapshot, or None when it cannot be had."""
        try:
            snapshot = self.status()
        except Exception as exc:  # the API keeps answering when the runtime's status breaks
            log.warning("status unavailable", error=describe_error(exc))
            return None
        return snapshot if isinstance(snapshot, Mapping) else None


def attach(app: FastAPI, context: ApiContext) -> None:
    app.state.context = context


def context_of(request: Request) -> ApiContext:
    context = request.app.state.context
    assert isinstance(context, ApiContext), "create_app attaches the context"
    return context


async def _request_context(request: Request) -> ApiContext:
    # async, so FastAPI runs this lookup on the event loop instead of handing it to a worker thread
    return context_of(request)


Context = Annotated[ApiContext, Depends(_request_context)]
