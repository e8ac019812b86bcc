"""Nightscout's watch and summary reads: ``/pebble`` and ``/api/v2/properties[/names]``.

``/pebble`` (Nightscout's ``lib/server/pebble.js``) answers ``{status, bgs, cals}``: the newest
``count`` CGM readings (1 by default, at most :data:`MAX_PEBBLE`), each with its value as text
in the asked ``units`` (``mmol`` or mg/dL), the trend number and direction, the time and the
change since the reading before it; the newest carries the uploader's battery when a
devicestatus reports one. ``cals`` holds the newest calibration when the store has one.

``/api/v2/properties`` answers the properties the store can compute (``bgnow``, ``delta``,
``direction``, ``buckets``, and ``rawbg`` when the newest reading has raw values and a
calibration exists); ``/api/v2/properties/a,b`` only those asked for. A property the store
cannot answer (``iob``, ``cob``, ``pump``…) is absent, as in Nightscout when its plugin is off.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from api.access import Access, RequestAccess
from api.cache import Rendered
from api.context import ApiContext, Context
from api.errors import ApiError, StoreUnavailable
from api.openapi import ERROR_RESPONSES, SECURITY
from api.responses import JSON
from connect.records import ARROWS
from store.abc import ReaderStore
from store.values import Filter

router = APIRouter()

MAX_PEBBLE: Final = 100
MGDL_PER_MMOL: Final = 18.0
#: Nightscout's trend numbers, by direction
TRENDS: Final = {
    "NONE": 0,
    "DoubleUp": 1,
    "SingleUp": 2,
    "FortyFiveUp": 3,
    "Flat": 4,
    "FortyFiveDown": 5,
    "SingleDown": 6,
    "DoubleDown": 7,
    "NOT COMPUTABLE": 8,
    "RATE OUT OF RANGE": 9,
}
PROPERTIES: Final = ("bgnow", "delta", "direction", "buckets", "rawbg")
BUCKET_MS: Final = 5 * 60_000
BUCKETS: Final = 4
_NAMES = r"^[A-Za-z0-9_,-]{1,200}$"


def _require_store(context: ApiContext) -> None:
    if context.store_failing():
        raise StoreUnavailable()


def _readings(reader: ReaderStore, count: int) -> list[dict[str, Any]]:
    """The newest ``count`` CGM readings with a value, newest first."""
    texts = reader.doc_texts("entries", [Filter("type", "=", "sgv")], count)
    docs = [json.loads(t) for t in texts]
    return [d for d in docs if isinstance(d.get("sgv"), (int, float)) and isinstance(d.get("date"), int)]


def _newest(reader: ReaderStore, kind: str) -> dict[str, Any] | None:
    texts = reader.doc_texts("entries", [Filter("type", "=", kind)], 1)
    return json.loads(texts[0]) if texts else None


def _battery(reader: ReaderStore) -> Any:
    """The newest uploader battery a devicestatus reports, or ``None``."""
    for text in reader.doc_texts("devicestatus", [], 10):
        uploader = json.loads(text).get("uploader")
        if isinstance(uploader, dict) and isinstance(uploader.get("battery"), (int, float)):
            return uploader["battery"]
    return None


def _scaled(mgdl: float, mmol: bool) -> str:
    if mmol:
        return f"{mgdl / MGDL_PER_MMOL:.1f}"
    return str(round(mgdl))


def pebble_body(reader: ReaderStore, now: int, count: int, mmol: bool) -> bytes:
    readings = _readings(reader, count + 1)
    battery = _battery(reader)
    bgs: list[dict[str, Any]] = []
    for index, doc in enumerate(readings[:count]):
        given = doc.get("direction")
        direction = given if isinstance(given, str) else "NONE"
        bg: dict[str, Any] = {
            "sgv": _scaled(doc["sgv"], mmol),
            "trend": TRENDS.get(direction, 0),
            "direction": direction,
            "datetime": doc["date"],
        }
        if index + 1 < len(readings):
            change = doc["sgv"] - readings[index + 1]["sgv"]
            bg["bgdelta"] = round(change / MGDL_PER_MMOL, 1) if mmol else round(change)
        if index == 0 and battery is not None:
            bg["battery"] = str(battery)
        bgs.append(bg)
    cals = []
    cal = _newest(reader, "cal")
    if cal is not None:
        cals.append({k: cal.get(k) for k in ("slope", "intercept", "scale")} | {"datetime": cal.get("date")})
    doc = {"status": [{"now": now}], "bgs": bgs, "cals": cals}
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


PEBBLE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["status", "bgs", "cals"],
    "properties": {
        "status": {"type": "array", "items": {"type": "object", "required": ["now"]}},
        "bgs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["sgv", "trend", "direction", "datetime"],
                "properties": {
                    "sgv": {"type": "string"},
                    "trend": {"type": "integer"},
                    "direction": {"type": "string"},
                    "datetime": {"type": "integer"},
                    "bgdelta": {"type": "number"},
                    "battery": {"type": "string"},
                },
            },
        },
        "cals": {"type": "array"},
    },
}


@router.get(
    "/pebble",
    summary="Nightscout's watch summary: the newest readings, their change, battery and calibration",
    responses={
        200: {"description": "status, bgs, cals", "content": {JSON: {"schema": PEBBLE_SCHEMA}}},
        **ERROR_RESPONSES,
    },
    openapi_extra={"security": SECURITY},
)
def pebble(
    request: Request,
    access: RequestAccess,
    context: Context,
    count: Annotated[int, Query(ge=1, le=2**63 - 1, description=f"readings (at most {MAX_PEBBLE})")] = 1,
    units: Annotated[str | None, Query(max_length=16, description="mmol for mmol/L")] = None,
) -> Response:
    access.require_read()
    _require_store(context)
    wanted = min(count, MAX_PEBBLE)
    mmol = (units or "").lower().startswith("mmol")
    now = context.clock()
    # the answer carries the time: it is rendered for every request
    return Response(pebble_body(context.reader, now, wanted, mmol), media_type=JSON)


# --- /api/v2/properties ----------------------------------------------------------------------


def _sgv_doc(doc: dict[str, Any]) -> dict[str, Any]:
    out = {
        "_id": doc.get("_id"),
        "mgdl": doc["sgv"],
        "mills": doc["date"],
        "device": doc.get("device"),
        "direction": doc.get("direction"),
        "type": "sgv",
        "scaled": doc["sgv"],
    }
    return {k: v for k, v in out.items() if v is not None}


def _rawbg(newest: dict[str, Any], cal: dict[str, Any] | None) -> dict[str, Any] | None:
    """Nightscout's raw glucose (``lib/plugins/rawbg.js``) from the newest reading's raw values
    and the newest calibration; ``None`` when either is missing."""
    if cal is None:
        return None
    values = [cal.get("slope"), cal.get("intercept"), cal.get("scale"), newest.get("unfiltered")]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None
    slope, intercept, scale, unfiltered = (float(v) for v in values)  # type: ignore[arg-type]
    filtered = newest.get("filtered")
    sgv = newest["sgv"]
    if slope == 0 or unfiltered == 0 or scale == 0:
        raw = 0.0
    elif not isinstance(filtered, (int, float)) or filtered == 0 or sgv < 40:
        raw = scale * (unfiltered - intercept) / slope
    else:
        ratio = scale * (float(filtered) - intercept) / slope / sgv
        raw = 0.0 if ratio == 0 else scale * (unfiltered - intercept) / slope / ratio
    mgdl = round(raw)
    return {"mgdl": mgdl, "scaled": mgdl, "noiseLabel": "", "display": str(mgdl)}


def properties(reader: ReaderStore, names: set[str]) -> dict[str, Any]:
    """The asked properties the store can answer (see the module's docstring)."""
    readings = _readings(reader, 2 + BUCKETS * 3)
    out: dict[str, Any] = {}
    if not readings:
        return out
    newest = readings[0]
    if "bgnow" in names:
        out["bgnow"] = {
            "mean": newest["sgv"],
            "last": newest["sgv"],
            "mills": newest["date"],
            "sgvs": [_sgv_doc(newest)],
        }
    if "buckets" in names:
        buckets = []
        top = newest["date"]
        for index in range(BUCKETS):
            to_mills = top - index * BUCKET_MS
            from_mills = to_mills - BUCKET_MS
            inside = [r for r in readings if from_mills < r["date"] <= to_mills]
            bucket: dict[str, Any] = {"index": index, "fromMills": from_mills, "toMills": to_mills}
            bucket["sgvs"] = [_sgv_doc(r) for r in inside]
            if inside:
                mean = sum(r["sgv"] for r in inside) / len(inside)
                bucket.update(mean=round(mean, 1), last=inside[0]["sgv"], mills=inside[0]["date"])
            buckets.append(bucket)
        out["buckets"] = buckets
    if "delta" in names and len(readings) > 1:
        previous = readings[1]
        elapsed = (newest["date"] - previous["date"]) / 60_000
        change = newest["sgv"] - previous["sgv"]
        # over more than five minutes, the change is scaled to five minutes (Nightscout's mean5MinsAgo)
        five = change if elapsed <= 5 else round(change * 5 / elapsed, 1) if elapsed else change
        out["delta"] = {
            "absolute": change,
            "elapsedMins": round(elapsed, 2),
            "interpolated": elapsed > 5,
            "mean5MinsAgo": newest["sgv"] - five,
            "mgdl": five,
            "scaled": five,
            "display": f"{five:+g}",
            "previous": {"mean": previous["sgv"], "last": previous["sgv"], "mills": previous["date"]},
        }
    if "direction" in names and isinstance(newest.get("direction"), str):
        value = newest["direction"]
        out["direction"] = {
            "display": ARROWS.get(value, "-"),
            "value": value,
            "label": ARROWS.get(value, "-"),
            "entity": ARROWS.get(value, "-"),
        }
    if "rawbg" in names:
        raw = _rawbg(newest, _newest(reader, "cal"))
        if raw is not None:
            out["rawbg"] = raw
    return out


PROPERTIES_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {name: {"type": "array" if name == "buckets" else "object"} for name in PROPERTIES},
}


def _properties_response(request: Request, access: Access, context: ApiContext, names: set[str]) -> Response:
    access.require_read()
    _require_store(context)
    return context.respond(
        request,
        lambda: Rendered(json.dumps(properties(context.reader, names)).encode("utf-8")),
    )


@router.get(
    "/api/v2/properties",
    summary="Nightscout's computed properties the store can answer (bgnow, delta, direction, buckets, rawbg)",
    responses={
        200: {"description": "the properties", "content": {JSON: {"schema": PROPERTIES_SCHEMA}}},
        **ERROR_RESPONSES,
    },
    openapi_extra={"security": SECURITY},
)
def all_properties(request: Request, access: RequestAccess, context: Context) -> Response:
    return _properties_response(request, access, context, set(PROPERTIES))


@router.get(
    "/api/v2/properties/{names}",
    summary="Only the named properties (comma-separated); those the store cannot answer are absent",
    responses={
        200: {"description": "the properties", "content": {JSON: {"schema": PROPERTIES_SCHEMA}}},
        **ERROR_RESPONSES,
    },
    openapi_extra={"security": SECURITY},
)
def named_properties(
    request: Request,
    names: Annotated[str, Path(pattern=_NAMES)],
    access: RequestAccess,
    context: Context,
) -> Response:
    wanted = {name.strip() for name in names.split(",")}
    if not wanted:
        raise ApiError(400, "Bad Request", "names: expected property names separated by commas")
    return _properties_response(request, access, context, wanted)
