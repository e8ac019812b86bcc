"""``/api/connect/status``: the daemon's own view of itself, beyond what Nightscout reports."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api import status as st
from api.access import RequestAccess
from api.context import Context
from api.openapi import CONNECT_STATUS_SCHEMA, ERROR_RESPONSES, SECURITY
from api.responses import JSON, json_response
from connect.records import iso_from_ms
from connect.redact import redact

router = APIRouter()


@router.get(
    "/api/connect/status",
    summary="Every machine's state and counters, and each output's delivery lag",
    responses={
        200: {"description": "status", "content": {JSON: {"schema": CONNECT_STATUS_SCHEMA}}},
        **ERROR_RESPONSES,
    },
    openapi_extra={"security": SECURITY},
)
async def connect_status(access: RequestAccess, context: Context) -> Response:
    access.require_read()
    # the runtime's status on the event loop, where the machines live; the store on a worker
    snapshot = context.take_status()
    names = [str(o["name"]) for o in st.outputs(snapshot)] if snapshot is not None else []
    reader = context.reader

    def from_store() -> dict[str, Any]:
        all_names = sorted({*names, *reader.outputs()})
        lag = reader.lag(all_names)
        delivery: dict[str, dict[str, Any]] = {
            name: {"lag": sum(per.values()), "collections": per, "rejected": 0} for name, per in lag.items()
        }
        for group in reader.rejected():
            if not group.queued and group.output in delivery:  # a queued record counts in the lag
                delivery[group.output]["rejected"] += group.records
        return {"schema": reader.ping(), "collections": reader.collections(), "delivery": delivery}

    store_view = await run_in_threadpool(from_store)
    now = context.clock()
    doc: dict[str, Any] = {"serverTime": iso_from_ms(now), "serverTimeEpoch": now}
    if snapshot is None:
        doc["runtime"] = "unavailable"
    else:
        doc.update(redact(dict(snapshot)))
    # the daemon's view of its writes (ok / failing) beside what the store holds
    doc["store"] = {**st.store(doc), **store_view}
    return json_response(doc)
