"""Nightscout's v1 API as clients use it: entries, treatments, devicestatus and profiles,
status.json, and verifyauth.

Read handlers are plain functions, so FastAPI runs them on worker threads, each with its own
read-only store connection: the event loop that runs the machines never waits on SQLite. Bodies
are built from the stored JSON without re-encoding, once per store revision (the ``ETag``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Final

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from api.access import RequestAccess
from api.cache import Rendered
from api.context import ApiContext, Context
from api.errors import StoreUnavailable
from api.openapi import (
    DOC_SCHEMAS,
    ERROR_RESPONSES,
    SECURITY,
    STATUS_SCHEMA,
    VERIFYAUTH_SCHEMA,
    read_parameters,
)
from api.query import OBJECT_ID, parse_read
from api.reads import read_body, read_texts
from api.responses import JSON, json_response
from api.version import NAME, connect_version
from connect.records import Collection, iso_from_ms
from store.values import Filter

#: the Nightscout release whose v1 reads this API follows. status.json's ``version`` is what
#: clients compare against their minimum Nightscout (uploaders parse major.minor.patch and warn
#: below 0.10.2; Nightscout 15 added the fields served here), so it must read as a Nightscout
#: version; our own version goes in ``connectVersion``
NIGHTSCOUT_VERSION: Final = "15.0.7"
#: /api/v1/entries/<spec>: a served _id, or an entry type (Nightscout's /entries/<type>)
ENTRY_SPEC: Final = r"^([0-9a-fA-F]{24}|[A-Za-z][A-Za-z0-9_-]{0,31})(\.json)?$"

router = APIRouter()


def _require_store(context: ApiContext) -> None:
    """Documents are served only while the daemon can write the store: while it cannot (a full
    disk) what the store holds is falling behind, and clients are told so, not served it."""
    if context.store_failing():
        raise StoreUnavailable()


def _operation_id(path: str) -> str:
    return path.strip("/").replace("/", "_").replace(".", "_")


def _read_endpoint(
    collection: Collection, *, forced: tuple[Filter, ...], count: int | None
) -> Callable[..., Response]:
    def handler(request: Request, access: RequestAccess, context: Context) -> Response:
        access.require_read()
        _require_store(context)
        query = parse_read(collection, request.query_params.multi_items(), forced=forced, count=count)
        return context.respond(request, lambda: Rendered(read_body(context.reader, query)))

    return handler


def _add_read(
    paths: list[str],
    collection: Collection,
    summary: str,
    *,
    forced: tuple[Filter, ...] = (),
    count: int | None = None,
) -> None:
    endpoint = _read_endpoint(collection, forced=forced, count=count)
    for i, path in enumerate(paths):
        router.add_api_route(
            path,
            endpoint,
            methods=["GET"],
            summary=summary,
            operation_id=_operation_id(path),
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


_add_read(["/api/v1/entries.json", "/api/v1/entries", "/api/v1/entries/"], "entries", "Entries")
for _kind in ("sgv", "mbg", "cal"):
    _add_read(
        [f"/api/v1/entries/{_kind}.json", f"/api/v1/entries/{_kind}"],
        "entries",
        f"Entries of type {_kind}",
        forced=(Filter("type", "=", _kind),),
    )
_add_read(["/api/v1/entries/current.json", "/api/v1/entries/current"], "entries", "The newest entry", count=1)

#: Nightscout's text formats of entries: the extension, its media type and its separator
TEXT_FORMATS: Final = {
    "txt": ("text/plain; charset=utf-8", "\t"),
    "tsv": ("text/tab-separated-values; charset=utf-8", "\t"),
    "csv": ("text/csv; charset=utf-8", ","),
}
#: the columns of a line, in Nightscout's order
TEXT_COLUMNS: Final = ("dateString", "date", "sgv", "direction", "device")


def _text_cell(value: object) -> str:
    """A cell as Nightscout writes it: text quoted (JSON), numbers as they are, nothing for a
    missing value."""
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False)


def entry_lines(texts: list[str], separator: str) -> bytes:
    """Entries as Nightscout's text formats: one line per entry, newest first."""
    lines = []
    for text in texts:
        doc = json.loads(text)
        lines.append(separator.join(_text_cell(doc.get(column)) for column in TEXT_COLUMNS) + "\n")
    return "".join(lines).encode("utf-8")


def _text_endpoint(forced: tuple[Filter, ...], media_type: str, separator: str) -> Callable[..., Response]:
    def handler(request: Request, access: RequestAccess, context: Context) -> Response:
        access.require_read()
        _require_store(context)
        query = parse_read("entries", request.query_params.multi_items(), forced=forced)
        return context.respond(
            request,
            lambda: Rendered(
                entry_lines(read_texts(context.reader, query), separator), media_type=media_type
            ),
        )

    return handler


for _extension, (_media, _separator) in TEXT_FORMATS.items():
    for _kind, _forced in (
        ("", ()),
        ("/sgv", (Filter("type", "=", "sgv"),)),
        ("/mbg", (Filter("type", "=", "mbg"),)),
        ("/cal", (Filter("type", "=", "cal"),)),
    ):
        _path = f"/api/v1/entries{_kind}.{_extension}"
        router.add_api_route(
            _path,
            _text_endpoint(_forced, _media, _separator),
            methods=["GET"],
            summary=f"Entries{' of type ' + _kind[1:] if _kind else ''} as {_extension} "
            "(dateString, date, sgv, direction, device)",
            operation_id=_operation_id(_path),
            include_in_schema=_kind in ("", "/sgv"),
            responses={
                200: {
                    "description": "one line per entry, newest first; text quoted as JSON",
                    "content": {_media.split(";")[0]: {"schema": {"type": "string"}}},
                },
                **ERROR_RESPONSES,
            },
            openapi_extra={"parameters": read_parameters("entries", True), "security": SECURITY},
        )


# after the fixed /entries/... routes, which take precedence over this pattern
@router.get(
    "/api/v1/entries/{spec}",
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
def entry_by_spec(
    request: Request,
    spec: Annotated[str, Path(pattern=ENTRY_SPEC)],
    access: RequestAccess,
    context: Context,
) -> Response:
    access.require_read()
    _require_store(context)
    name = spec.removesuffix(".json")
    items = request.query_params.multi_items()
    if OBJECT_ID.match(name):
        query = parse_read("entries", items, object_id=name.lower())
    else:
        query = parse_read("entries", items, forced=(Filter("type", "=", name),))
    return context.respond(request, lambda: Rendered(read_body(context.reader, query)))


_add_read(["/api/v1/treatments.json", "/api/v1/treatments"], "treatments", "Treatments")
_add_read(["/api/v1/devicestatus.json", "/api/v1/devicestatus"], "devicestatus", "Device status")


def current_profile(request: Request, access: RequestAccess, context: Context) -> Response:
    """Nightscout's ``/profile/current``: the newest profile document itself (not a list), or
    ``null`` when the store holds none."""
    access.require_read()
    _require_store(context)
    query = parse_read("profile", (), count=1)

    def render() -> Rendered:
        texts = read_texts(context.reader, query)
        return Rendered((texts[0] if texts else "null").encode("utf-8"))

    return context.respond(request, render)


for _i, _path in enumerate(("/api/v1/profile/current.json", "/api/v1/profile/current")):
    router.add_api_route(
        _path,
        current_profile,
        methods=["GET"],
        summary="The current profile (the newest profile document)",
        operation_id=_operation_id(_path),
        include_in_schema=_i == 0,
        responses={
            200: {
                "description": "the newest profile document, or null when there is none",
                "content": {JSON: {"schema": {"anyOf": [DOC_SCHEMAS["profile"]["items"], {"type": "null"}]}}},
            },
            **ERROR_RESPONSES,
        },
        openapi_extra={"security": SECURITY},
    )
_add_read(["/api/v1/profile.json", "/api/v1/profile", "/api/v1/profiles"], "profile", "Profiles")


def site_status(access: RequestAccess, context: Context) -> Response:
    access.require_read()
    now = context.clock()
    limits = context.display.thresholds
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
            "units": "mmol" if context.display.mmol else "mg/dl",
            "timeFormat": 24,
            "customTitle": NAME,
            "theme": "default",
            "language": "en",
            "alarmTypes": ["simple"],
            "authDefaultRoles": "readable" if context.settings.http_readable else "denied",
            # in mg/dL, as Nightscout keeps them after converting a site's mmol/L values
            "thresholds": {
                "bgHigh": round(limits.urgent_high),
                "bgTargetTop": round(limits.high),
                "bgTargetBottom": round(limits.low),
                "bgLow": round(limits.urgent_low),
            },
            "DEFAULT_FEATURES": [],
            "enable": [],
        },
        "extendedSettings": {},
        "authorized": access.grant(),
        "runtimeState": "loaded",
    }
    return json_response(doc)


for _i, _path in enumerate(("/api/v1/status.json", "/api/v1/status")):
    router.add_api_route(
        _path,
        site_status,
        methods=["GET"],
        summary="Site status (Nightscout's status.json)",
        operation_id=_operation_id(_path),
        include_in_schema=_i == 0,
        responses={
            200: {"description": "status", "content": {JSON: {"schema": STATUS_SCHEMA}}},
            **ERROR_RESPONSES,
        },
        openapi_extra={"security": SECURITY},
    )


@router.get(
    "/api/v1/verifyauth",
    summary="Whether the offered credentials may read",
    responses={200: {"description": "verdict", "content": {JSON: {"schema": VERIFYAUTH_SCHEMA}}}},
)
def verifyauth(access: RequestAccess) -> Response:
    # open, as in Nightscout: it tells a client whether its credentials work
    valid = access.credentials_valid()
    can_read = access.may_read()
    message = {
        "canRead": can_read,
        "canWrite": False,
        "isAdmin": bool(valid),
        "message": "OK" if can_read else "UNAUTHORIZED",
        "rolefound": "FOUND" if valid else "NOTFOUND",
        "permissions": "ROLE" if valid else "DEFAULT",
    }
    return json_response({"status": 200, "message": message})
