"""What operators' tools poll: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import sqlite3

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api import status as st
from api.access import RequestAccess
from api.context import Context
from api.metrics import scrape
from api.openapi import ERROR_RESPONSES, PROBE_SCHEMA, SECURITY
from api.responses import JSON, json_response

router = APIRouter()


@router.get(
    "/healthz",
    summary="Liveness: the process answers",
    responses={200: {"description": "alive", "content": {JSON: {"schema": PROBE_SCHEMA}}}},
)
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    summary="Readiness: the store can be read and not every loop is failing",
    responses={
        200: {"description": "ready", "content": {JSON: {"schema": PROBE_SCHEMA}}},
        503: {"description": "not ready", "content": {JSON: {"schema": PROBE_SCHEMA}}},
    },
)
async def readyz(context: Context) -> Response:
    problems: list[str] = []
    try:
        await run_in_threadpool(context.reader.ping)
    except sqlite3.Error:
        problems.append("store unreadable")
    if context.store_failing():
        problems.append("store failing")
    snapshot = context.take_status()
    if snapshot is None:
        problems.append("runtime status unavailable")
    elif st.all_failing(snapshot):
        problems.append("every loop is failing")
    if problems:
        return json_response({"status": "unavailable", "problems": problems}, 503)
    return json_response({"status": "ready"})


@router.get(
    "/metrics",
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
async def metrics(access: RequestAccess, context: Context) -> Response:
    access.require_read()
    body = await scrape(context.registry, context.take_status())
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
