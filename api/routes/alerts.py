"""``/api/connect/episodes`` and ``/api/connect/webhooks``: what the alert rules made of the
readings, and what the webhooks were sent."""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api import status as st
from api.access import RequestAccess
from api.context import Context
from api.errors import ApiError
from api.openapi import EPISODES_SCHEMA, ERROR_RESPONSES, SECURITY, WEBHOOKS_SCHEMA
from api.responses import JSON, json_response
from store.values import SQLITE_INT_MAX

router = APIRouter()

DAY_MS: Final = 86_400_000


@router.get(
    "/api/connect/episodes",
    summary="Episodes (urgent_low, low, normal, high, urgent_high, stale) overlapping a time range",
    responses={
        200: {"description": "episodes, oldest first", "content": {JSON: {"schema": EPISODES_SCHEMA}}},
        **ERROR_RESPONSES,
    },
    openapi_extra={"security": SECURITY},
)
async def episodes(
    access: RequestAccess,
    context: Context,
    since: Annotated[
        int | None, Query(ge=0, le=SQLITE_INT_MAX, description="epoch ms; default: 24 hours ago")
    ] = None,
    until: Annotated[int | None, Query(ge=0, le=SQLITE_INT_MAX, description="epoch ms; default: now")] = None,
    account: Annotated[str | None, Query(max_length=200, description="one account's episodes")] = None,
) -> Response:
    access.require_read()
    now = context.clock()
    end = now if until is None else until
    start = max(0, end - DAY_MS) if since is None else since
    if start > end:
        raise ApiError(400, "Bad Request", "since is after until")
    found = await run_in_threadpool(context.reader.episodes, start, end, account=account)
    return json_response(
        {
            "since": start,
            "until": end,
            "episodes": [
                {
                    "account": e.account,
                    "kind": e.kind,
                    "start": e.start,
                    "end": e.end,
                    "sgv_min": e.sgv_min,
                    "sgv_max": e.sgv_max,
                    "readings": e.readings,
                }
                for e in found
            ],
        }
    )


@router.get(
    "/api/connect/webhooks",
    summary="Each webhook: where it goes, its delivery state, and its last 50 payloads with their outcome",
    responses={
        200: {"description": "webhooks", "content": {JSON: {"schema": WEBHOOKS_SCHEMA}}},
        **ERROR_RESPONSES,
    },
    openapi_extra={"security": SECURITY},
)
async def webhooks(access: RequestAccess, context: Context) -> Response:
    access.require_read()
    snapshot = context.take_status()
    outputs = {
        str(o["name"]): o
        for o in (st.outputs(snapshot) if snapshot is not None else [])
        if o.get("kind") == "webhook"
    }
    logged = await run_in_threadpool(context.reader.webhook_log)
    hooks: list[dict[str, Any]] = []
    for name in sorted({*outputs, *logged}):
        output = outputs.get(name, {})
        hooks.append(
            {
                "name": name,
                "target": output.get("target"),
                "events": output.get("events"),
                "filter": output.get("filter"),
                "state": output.get("state"),
                "lag": output.get("lag"),
                "delivered": output.get("delivered"),
                "last_error": output.get("last_error"),
                "recent": logged.get(name, []),
            }
        )
    return json_response({"webhooks": hooks})
