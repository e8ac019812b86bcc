"""The FastAPI app: Nightscout-compatible reads over the store, the daemon's status, health,
metrics and a status page.

Store reads run on worker threads (each with its own read-only connection), so the event loop
that runs the machines never waits on SQLite. The runtime's status is read on the event loop,
where the machines live. Response bodies are built from the stored JSON without re-encoding.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Annotated, Any, Final

from fastapi import FastAPI, Path, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from api import page
from api import status as st
from api.context import ApiContext, Clock, StatusFn, attach
from api.errors import ApiError, add_error_handlers
from api.guard import GuardMiddleware
from api.metrics import scrape
from api.openapi import (
    CONNECT_STATUS_SCHEMA,
    DOC_SCHEMAS,
    ERROR_RESPONSES,
    PROBE_SCHEMA,
    SECURITY,
    SECURITY_SCHEMES,
    STATUS_SCHEMA,
    VERIFYAUTH_SCHEMA,
    read_parameters,
)
from api.query import OBJECT_ID, parse_read
from api.reads import read_body
from api.responses import JSON, json_response
from api.settings import ApiSettings
from api.version import NAME, connect_version
from connect.clock import wall_ms
from connect.records import Collection, iso_from_ms
from connect.redact import redact
from store.reader import Filter, StoreReader

#: the Nightscout release whose v1 reads this API follows. status.json's ``version`` is what
#: clients compare against their minimum Nightscout (uploaders parse major.minor.patch and warn
#: below 0.10.2; Nightscout 15 added the fields served here), so it must read as a Nightscout
#: version; our own version goes in ``connectVersion``
NIGHTSCOUT_VERSION: Final = "15.0.7"
#: /api/v1/entries/<spec>: a served _id, or an entry type (Nightscout's /entries/<type>)
ENTRY_SPEC: Final = r"^([0-9a-fA-F]{24}|[A-Za-z][A-Za-z0-9_-]{0,31})(\.json)?$"
THRESHOLDS: Final = {"bgHigh": 260, "bgTargetTop": 180, "bgTargetBottom": 70, "bgLow": 55}


def create_app(
    reader: StoreReader,
    status: StatusFn,
    settings: ApiSettings,
    *,
    clock: Clock = wall_ms,
) -> FastAPI:
    """The API over ``reader``; ``status`` returns the runtime's snapshot (called on the loop)."""
    ctx = ApiContext.build(reader, status, settings, clock)
    auth = ctx.auth
    app = FastAPI(
        title=NAME,
        version=connect_version(),
        description="Nightscout-compatible reads over the local store, and the daemon's status.",
        docs_url=None,  # the interactive docs load scripts from a CDN
        redoc_url=None,
    )
    attach(app, ctx)

    def authorize(request: Request) -> None:
        if not auth.may_read(request.headers, request.query_params):
            raise ApiError(401, "Unauthorized", "Invalid/Missing")

    add_error_handlers(app)
    app.add_middleware(GuardMiddleware)

    # --- Nightscout v1 reads -------------------------------------------------------------------

    def read_route(
        collection: Collection, *, forced: tuple[Filter, ...] = (), count: int | None = None
    ) -> Callable[[Request], Response]:
        # a plain function: FastAPI runs it on a worker thread, with its own store connection
        def handler(request: Request) -> Response:
            authorize(request)
            query = parse_read(collection, request.query_params.multi_items(), forced=forced, count=count)
            return Response(read_body(reader, query), media_type=JSON)

        return handler

    def add_read(
        paths: list[str],
        collection: Collection,
        summary: str,
        *,
        forced: tuple[Filter, ...] = (),
        count: int | None = None,
    ) -> None:
        endpoint = read_route(collection, forced=forced, count=count)
        for i, path in enumerate(paths):
            app.add_api_route(
                path,
                endpoint,
                methods=["GET"],
                summary=summary,
                operation_id=path.strip("/").replace("/", "_").replace(".", "_"),
                include_in_schema=i == 0,  # the aliases answer the same; documenting one is enough
                responses={
                    200: {
                        "description": "documents, newest first",
                        "content": {JSON: {"schema": DOC_SCHEMAS[collection]}},
                    },
                    **ERROR_RESPONSES,
                },
                openapi_extra={
                    "parameters": read_parameters(collection, count is None),
                    "security": SECURITY,
                },
            )

    add_read(["/api/v1/entries.json", "/api/v1/entries", "/api/v1/entries/"], "entries", "Entries")
    for kind in ("sgv", "mbg", "cal"):
        add_read(
            [f"/api/v1/entries/{kind}.json", f"/api/v1/entries/{kind}"],
            "entries",
            f"Entries of type {kind}",
            forced=(Filter("type", "=", kind),),
        )
    add_read(
        ["/api/v1/entries/current.json", "/api/v1/entries/current"], "entries", "The newest entry", count=1
    )

    def entry_by_spec(request: Request, spec: Annotated[str, Path(pattern=ENTRY_SPEC)]) -> Response:
        authorize(request)
        name = spec.removesuffix(".json")
        items = request.query_params.multi_items()
        if OBJECT_ID.match(name):
            query = parse_read("entries", items, object_id=name.lower())
        else:
            query = parse_read("entries", items, forced=(Filter("type", "=", name),))
        return Response(read_body(reader, query), media_type=JSON)

    # after the fixed /entries/... routes, which take precedence over this pattern
    app.add_api_route(
        "/api/v1/entries/{spec}",
        entry_by_spec,
        methods=["GET"],
        summary="One entry by its _id, or the entries of a type",
        operation_id="api_v1_entries_spec",
        responses={
            200: {
                "description": "the entry with this _id (or none), or entries of this type, newest first",
                "content": {JSON: {"schema": DOC_SCHEMAS["entries"]}},
            },
            **ERROR_RESPONSES,
        },
        openapi_extra={"parameters": read_parameters("entries", True), "security": SECURITY},
    )
    add_read(["/api/v1/treatments.json", "/api/v1/treatments"], "treatments", "Treatments")
    add_read(["/api/v1/devicestatus.json", "/api/v1/devicestatus"], "devicestatus", "Device status")
    add_read(["/api/v1/profile.json", "/api/v1/profile", "/api/v1/profiles"], "profile", "Profiles")

    def site_status(request: Request) -> Response:
        authorize(request)
        now = clock()
        doc = {
            "status": "ok",
            "name": NAME,
            "version": NIGHTSCOUT_VERSION,
            "connectVersion": connect_version(),
            "serverTime": iso_from_ms(now),
            "serverTimeEpoch": now,
            "apiEnabled": True,
            "careportalEnabled": False,
            "boluscalcEnabled": False,
            "settings": {
                "units": "mg/dl",
                "timeFormat": 24,
                "customTitle": NAME,
                "theme": "default",
                "language": "en",
                "alarmTypes": ["simple"],
                "authDefaultRoles": "readable" if settings.http_readable else "denied",
                "thresholds": dict(THRESHOLDS),
                "DEFAULT_FEATURES": [],
                "enable": [],
            },
            "extendedSettings": {},
            "authorized": auth.grant(request.headers, request.query_params),
            "runtimeState": "loaded",
        }
        return json_response(doc)

    for i, path in enumerate(("/api/v1/status.json", "/api/v1/status")):
        app.add_api_route(
            path,
            site_status,
            methods=["GET"],
            summary="Site status (Nightscout's status.json)",
            operation_id=path.strip("/").replace("/", "_").replace(".", "_"),
            include_in_schema=i == 0,
            responses={
                200: {"description": "status", "content": {JSON: {"schema": STATUS_SCHEMA}}},
                **ERROR_RESPONSES,
            },
            openapi_extra={"security": SECURITY},
        )

    def verifyauth(request: Request) -> Response:
        # open, as in Nightscout: it tells a client whether its credentials work
        valid = auth.credentials_valid(request.headers, request.query_params)
        can_read = auth.may_read(request.headers, request.query_params)
        message = {
            "canRead": can_read,
            "canWrite": False,
            "isAdmin": bool(valid),
            "message": "OK" if can_read else "UNAUTHORIZED",
            "rolefound": "FOUND" if valid else "NOTFOUND",
            "permissions": "ROLE" if valid else "DEFAULT",
        }
        return json_response({"status": 200, "message": message})

    app.add_api_route(
        "/api/v1/verifyauth",
        verifyauth,
        methods=["GET"],
        summary="Whether the offered credentials may read",
        responses={200: {"description": "verdict", "content": {JSON: {"schema": VERIFYAUTH_SCHEMA}}}},
    )

    # --- the daemon's own views ----------------------------------------------------------------

    async def connect_status(request: Request) -> Response:
        authorize(request)
        snapshot = ctx.take_status()
        names = [str(o["name"]) for o in st.outputs(snapshot)] if snapshot is not None else []

        def from_store() -> dict[str, Any]:
            all_names = sorted({*names, *reader.outputs()})
            lag = reader.lag(all_names)
            return {
                "schema": reader.ping(),
                "collections": reader.collections(),
                "delivery": {
                    name: {"lag": sum(per.values()), "collections": per} for name, per in lag.items()
                },
            }

        store_view = await run_in_threadpool(from_store)
        now = clock()
        doc: dict[str, Any] = {"serverTime": iso_from_ms(now), "serverTimeEpoch": now}
        if snapshot is None:
            doc["runtime"] = "unavailable"
        else:
            doc.update(redact(dict(snapshot)))
        doc["store"] = store_view
        return json_response(doc)

    app.add_api_route(
        "/api/connect/status",
        connect_status,
        methods=["GET"],
        summary="Every machine's state and counters, and each output's delivery lag",
        responses={
            200: {"description": "status", "content": {JSON: {"schema": CONNECT_STATUS_SCHEMA}}},
            **ERROR_RESPONSES,
        },
        openapi_extra={"security": SECURITY},
    )

    async def healthz() -> Response:
        return json_response({"status": "ok"})

    app.add_api_route(
        "/healthz",
        healthz,
        methods=["GET"],
        summary="Liveness: the process answers",
        responses={200: {"description": "alive", "content": {JSON: {"schema": PROBE_SCHEMA}}}},
    )

    async def readyz() -> Response:
        problems: list[str] = []
        try:
            await run_in_threadpool(reader.ping)
        except sqlite3.Error:
            problems.append("store unreadable")
        snapshot = ctx.take_status()
        if snapshot is None:
            problems.append("runtime status unavailable")
        elif st.all_failing(snapshot):
            problems.append("every loop is failing")
        if problems:
            return json_response({"status": "unavailable", "problems": problems}, 503)
        return json_response({"status": "ready"})

    app.add_api_route(
        "/readyz",
        readyz,
        methods=["GET"],
        summary="Readiness: the store can be read and not every loop is failing",
        responses={
            200: {"description": "ready", "content": {JSON: {"schema": PROBE_SCHEMA}}},
            503: {"description": "not ready", "content": {JSON: {"schema": PROBE_SCHEMA}}},
        },
    )

    async def metrics(request: Request) -> Response:
        authorize(request)
        snapshot = ctx.take_status()

        body = await scrape(ctx.registry, snapshot)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        summary="Prometheus metrics",
        responses={
            200: {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **ERROR_RESPONSES,
        },
        openapi_extra={"security": SECURITY},
    )

    async def status_page(request: Request) -> Response:
        if not auth.may_read(request.headers, request.query_params):
            # a person with a browser reads this one: a page saying what to do, not JSON
            return HTMLResponse(page.unauthorized(reads_off=auth.reads_off), status_code=401)
        snapshot = ctx.take_status()
        names = [str(o["name"]) for o in st.outputs(snapshot)] if snapshot is not None else []
        now = clock()

        def build() -> str:
            readings = reader.readings(now - page.DAY_MS, now)
            latest = reader.latest_reading()
            lag = reader.lag(sorted({*names, *reader.outputs()}))
            return page.render(readings=readings, latest=latest, snapshot=snapshot, lag=lag, now_ms=now)

        html = await run_in_threadpool(build)
        return HTMLResponse(html)

    app.add_api_route(
        "/",
        status_page,
        methods=["GET"],
        summary="Status page",
        responses={
            200: {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}},
            **ERROR_RESPONSES,
            401: {
                "description": "a page saying how to read: the secret, or turning reading on",
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
        },
        openapi_extra={"security": SECURITY},
    )

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base_openapi()
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
