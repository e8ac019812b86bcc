"""``/``: the status page, for a person with a browser (rendered by :mod:`api.page`).

``?hours=`` picks the chart's range (3, 6, 12 or 24; ``CONNECT_PAGE_HOURS`` without it); any
other value answers 400 with a page linking the ranges there are.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from api import page
from api import status as st
from api.access import RequestAccess
from api.context import Context
from api.openapi import ERROR_RESPONSES, SECURITY
from api.settings import PAGE_HOURS

router = APIRouter()


@router.get(
    "/",
    summary="Status page",
    responses={
        200: {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}},
        **ERROR_RESPONSES,
        400: {
            "description": "a page listing the ranges there are (hours other than 3, 6, 12 or 24)",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
        401: {
            "description": "a page saying how to read: the secret, or turning reading on",
            "content": {"text/html": {"schema": {"type": "string"}}},
        },
    },
    openapi_extra={
        "security": SECURITY,
        "parameters": [
            {
                "name": "hours",
                "in": "query",
                "required": False,
                "description": "the chart's range in hours (default CONNECT_PAGE_HOURS, 24)",
                "schema": {"type": "integer", "enum": list(PAGE_HOURS)},
            }
        ],
    },
)
async def status_page(request: Request, access: RequestAccess, context: Context) -> Response:
    if not access.may_read():
        # a person with a browser reads this one: a page saying what to do, not JSON
        # under a prefix (serve --fleet's /a/NAME/) the advice names the page's own address
        base = str(request.scope.get("root_path", "")) + "/"
        return HTMLResponse(page.unauthorized(reads_off=access.reads_off, base=base), status_code=401)
    # a page opened with ?token= links to its other ranges, and reloads itself, with a fresh
    # token of its own (an 8-hour JWT, as /api/v2/authorization issues): never the secret in
    # the page, the secret leaves the address bar at the first reload, and a page left open
    # keeps reloading for good
    token = request.query_params.get("token")
    issued = access.issue_token(token) if token else None
    link = {"token": str(issued["token"])} if issued else {}
    asked = request.query_params.get("hours")
    hours = context.settings.page_hours
    if asked is not None:
        if asked.strip() not in {str(h) for h in PAGE_HOURS}:
            return HTMLResponse(page.bad_range(link), status_code=400)
        hours = int(asked)
    again = {"hours": str(hours)} if asked is not None else {}
    reload = "?" + urlencode({**again, **link}) if link else ""
    snapshot = context.take_status()
    names = [str(o["name"]) for o in st.outputs(snapshot)] if snapshot is not None else []
    now = context.clock()
    reader = context.reader

    since = now - hours * page.HOUR_MS

    def build() -> str:
        return page.render(
            readings=reader.readings(since, now),
            latest=reader.latest_reading(),
            delta=reader.latest_delta(),
            snapshot=snapshot,
            lag=reader.lag(sorted({*names, *reader.outputs()})),
            now_ms=now,
            episodes=reader.episodes(since, now),
            doses=reader.doses(since, now),
            display=context.display,
            hours=hours,
            link=link,
            reload=reload,
        )

    html = await run_in_threadpool(build)
    return HTMLResponse(html)
