"""``/``: the status page, for a person with a browser (rendered by :mod:`api.page`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from api import page
from api import status as st
from api.access import RequestAccess
from api.context import Context
from api.openapi import ERROR_RESPONSES, SECURITY

router = APIRouter()


@router.get(
    "/",
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
async def status_page(access: RequestAccess, context: Context) -> Response:
    if not access.may_read():
        # a person with a browser reads this one: a page saying what to do, not JSON
        return HTMLResponse(page.unauthorized(reads_off=access.reads_off), status_code=401)
    snapshot = context.take_status()
    names = [str(o["name"]) for o in st.outputs(snapshot)] if snapshot is not None else []
    now = context.clock()
    reader = context.reader

    def build() -> str:
        readings = reader.readings(now - page.DAY_MS, now)
        latest = reader.latest_reading()
        lag = reader.lag(sorted({*names, *reader.outputs()}))
        episodes = reader.episodes(now - page.DAY_MS, now)
        return page.render(
            readings=readings, latest=latest, snapshot=snapshot, lag=lag, now_ms=now, episodes=episodes
        )

    html = await run_in_threadpool(build)
    return HTMLResponse(html)
