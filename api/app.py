"""The FastAPI app: Nightscout-compatible reads over the store, the daemon's status, health,
metrics and a status page.

The routes live in :mod:`api.routes`; this module puts them together with what they share (the
:class:`~api.context.ApiContext` on ``app.state``) and the error handling around them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

from api.context import ApiContext, Clock, StatusFn, StoreFaultFn, Writer, attach
from api.errors import add_error_handlers
from api.guard import GuardMiddleware, LoopGuardMiddleware
from api.openapi import SECURITY_SCHEMES
from api.routes import alerts, connect, export, nightscout, ops, pebble, status_page, uploads, v3, v3_writes
from api.settings import ApiSettings, Display
from api.version import NAME, connect_version
from connect.clock import wall_ms
from store.abc import ReaderStore

#: in the order they are matched and documented
ROUTERS: tuple[APIRouter, ...] = (
    nightscout.router,
    v3.router,
    v3_writes.router,
    uploads.router,
    pebble.router,
    connect.router,
    alerts.router,
    export.router,
    ops.router,
    status_page.router,
)


def create_app(
    reader: ReaderStore,
    status: StatusFn,
    settings: ApiSettings,
    *,
    clock: Clock = wall_ms,
    store_fault: StoreFaultFn | None = None,
    writer: Writer | None = None,
    display: Display | None = None,
) -> FastAPI:
    """The API over ``reader``; ``status`` returns the runtime's snapshot (called on the loop);
    ``store_fault`` says what is wrong while the daemon cannot write the store; ``writer`` (the
    daemon's store) takes pushed records, and without it the write routes answer 405; ``display``
    (the site's units and thresholds) is what the status page and ``status.json`` show."""
    app = FastAPI(
        title=NAME,
        version=connect_version(),
        description="Nightscout-compatible reads over the local store, and the daemon's status.",
        docs_url=None,  # the interactive docs load scripts from a CDN
        redoc_url=None,
    )
    attach(app, ApiContext.build(reader, status, settings, clock, store_fault, writer, display))
    add_error_handlers(app)
    app.add_middleware(LoopGuardMiddleware)
    app.add_middleware(GuardMiddleware)
    for router in ROUTERS:
        app.include_router(router)
    _document_security(app)
    return app


def _document_security(app: FastAPI) -> None:
    """Add the ways to present the secret to the OpenAPI document (the routes' ``security``
    names them; FastAPI only documents schemes it enforces itself)."""
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base_openapi()
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
