"""The parts of the OpenAPI document FastAPI cannot infer: Nightscout's bracketed query
parameters, the documents' shapes, and the three ways to present the secret."""

from __future__ import annotations

from typing import Any, Final

from api.patterns import MAX_ALTERNATIONS, MAX_PATTERN, MAX_QUANTIFIERS, MAX_SUBJECT
from api.query import FIELDS, ID_OPERATORS, MAX_COUNT, OPERATORS, PATTERN_FIELDS
from connect.records import Collection
from store.export import BOUND_PATTERN
from store.values import SQLITE_INT_MAX

#: an ISO time as clients send it (UTC "Z", an offset, or a bare date)
ISO_PATTERN: Final = (
    r"^(-?\d{1,18}|20\d\d-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])"
    r"(T([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,6})?)?(Z|[+-](0\d|1[0-3]):[0-5]\d)?)?)$"
)

ERROR_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["status", "message"],
    "properties": {
        "status": {"type": "integer"},
        "message": {"type": "string"},
        "description": {"type": "string"},
    },
}

ERROR_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    400: {
        "description": "the query cannot be answered",
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    },
    401: {
        "description": (
            "missing or wrong secret; without CONNECT_HTTP_SECRET and CONNECT_HTTP_READABLE=true, "
            "always (the description says which setting turns reading on)"
        ),
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    },
    503: {
        "description": "the store cannot be read",
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    },
}

SECURITY_SCHEMES: Final[dict[str, Any]] = {
    "apiSecret": {
        "type": "apiKey",
        "in": "header",
        "name": "api-secret",
        "description": (
            "SHA-1 hex of CONNECT_HTTP_SECRET, as Nightscout's API_SECRET. "
            "`Authorization: Bearer <CONNECT_HTTP_SECRET>` is accepted too; other Authorization "
            "schemes (a reverse proxy's Basic) are left alone."
        ),
    },
    "token": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "CONNECT_HTTP_SECRET itself, or a JWT issued for it",
    },
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": (
            "a JWT from /api/v2/authorization/request/<CONNECT_HTTP_SECRET> (it lives 8 hours), or "
            "the secret itself; API v3 takes only this and ?token= (never api-secret)"
        ),
    },
}
SECURITY: Final[list[dict[str, list[str]]]] = [{"apiSecret": []}, {"token": []}]

_ID: Final = {"type": "string", "pattern": "^[0-9a-f]{24}$"}


def _doc(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["_id", *required],
            "properties": {"_id": _ID, "identifier": {"type": "string"}, **properties},
        },
    }


DOC_SCHEMAS: Final[dict[Collection, dict[str, Any]]] = {
    "entries": _doc(
        ["date", "dateString", "sysTime", "utcOffset", "type", "device"],
        {
            "date": {"type": "integer"},
            "dateString": {"type": "string"},
            "sysTime": {"type": "string"},
            "utcOffset": {"type": "integer"},
            "type": {"type": "string"},
            "device": {"type": "string"},
            "sgv": {"type": "integer"},
            "direction": {"type": "string"},
            "trend": {"type": "integer"},
            "delta": {"type": "number"},
        },
    ),
    "treatments": _doc(
        ["created_at", "eventType", "date"],
        {"created_at": {"type": "string"}, "eventType": {"type": "string"}, "date": {"type": "integer"}},
    ),
    "devicestatus": _doc(
        ["created_at", "device", "date"],
        {"created_at": {"type": "string"}, "device": {"type": "string"}, "date": {"type": "integer"}},
    ),
    "profile": _doc(
        ["startDate", "defaultProfile", "store"],
        {"startDate": {"type": "string"}, "defaultProfile": {"type": "string"}, "store": {"type": "object"}},
    ),
}

STATUS_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": [
        "status",
        "name",
        "version",
        "serverTime",
        "serverTimeEpoch",
        "apiEnabled",
        "settings",
        "authorized",
    ],
    "properties": {
        "status": {"type": "string", "enum": ["ok"]},
        "name": {"type": "string"},
        "version": {
            "type": "string",
            "description": "the Nightscout version whose v1 reads this API follows",
        },
        "connectVersion": {"type": "string", "description": "this program's own version"},
        "serverTime": {"type": "string"},
        "serverTimeEpoch": {"type": "integer"},
        "apiEnabled": {"type": "boolean"},
        "settings": {
            "type": "object",
            "required": ["units", "thresholds"],
            "properties": {
                "units": {"type": "string"},
                "thresholds": {
                    "type": "object",
                    "required": ["bgHigh", "bgTargetTop", "bgTargetBottom", "bgLow"],
                },
            },
        },
        "authorized": {
            "description": "what the request's credentials grant; null for an anonymous request",
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["sub", "permissionGroups"],
                    "properties": {
                        "sub": {"type": "string"},
                        "permissionGroups": {
                            "type": "array",
                            "items": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                },
            ],
        },
    },
}

CONNECT_STATUS_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["serverTime", "serverTimeEpoch", "store"],
    "properties": {
        "serverTime": {"type": "string"},
        "serverTimeEpoch": {"type": "integer"},
        "sources": {"type": "array"},
        "outputs": {"type": "array"},
        "store": {
            "type": "object",
            "required": ["collections", "delivery"],
            "properties": {
                "collections": {"type": "object"},
                "delivery": {"type": "object"},
                # the daemon's writes: "ok", or "failing" with the error (a full disk)
                "state": {"type": "string", "enum": ["ok", "failing"]},
                "error": {"type": "string"},
            },
        },
    },
}

PROBE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"type": "string"}, "problems": {"type": "array", "items": {"type": "string"}}},
}

VERIFYAUTH_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["status", "message"],
    "properties": {
        "status": {"type": "integer"},
        "message": {
            "type": "object",
            "required": ["canRead", "canWrite", "isAdmin", "message"],
            "properties": {
                "canRead": {"type": "boolean"},
                "canWrite": {"type": "boolean"},
                "isAdmin": {"type": "boolean"},
                "message": {"type": "string"},
            },
        },
    },
}


#: alternative names of a time field, answered but not listed (keeps the document small)
UNLISTED: Final[frozenset[str]] = frozenset({"sysTime", "timestamp"})
LISTED_TIME: Final[dict[Collection, str]] = {
    "entries": "dateString",
    "treatments": "created_at",
    "devicestatus": "created_at",
    "profile": "startDate",
}


def _listed(collection: Collection, field: str, kind: str) -> bool:
    if field in UNLISTED:
        return False
    return kind != "time" or LISTED_TIME[collection] == field


def _value_schema(kind: str) -> dict[str, Any]:
    if kind == "ms":
        return {"type": "integer", "minimum": -SQLITE_INT_MAX, "maximum": SQLITE_INT_MAX}
    if kind == "time":
        return {"type": "string", "pattern": ISO_PATTERN}
    if kind == "id":
        return {"type": "string", "pattern": "^[0-9a-fA-F]{24}$"}
    return {"type": "string"}


PATTERN_DESCRIPTION: Final = (
    "a value, or /pattern/flags (Nightscout's regular-expression form; flags i, m, s, g, u): "
    f"at most {MAX_PATTERN} characters and {MAX_QUANTIFIERS} quantifiers, none on a group, no "
    f"backreferences, at most {MAX_ALTERNATIONS} | beside a quantifier; tried on values of at most "
    f"{MAX_SUBJECT} characters; anything else is a 400"
)


#: fields with no column of their own, documented as examples: any field of a document may be
#: searched (dots for nested members, ``$in``/``$nin`` as ``find[field][$in][]=value``)
ANY_FIELDS: Final[dict[Collection, tuple[str, ...]]] = {
    "entries": ("direction",),
    "treatments": ("carbs", "insulin", "enteredBy"),
    "devicestatus": ("pump.reservoir",),
    "profile": ("units",),
}
ANY_FIELD_DESCRIPTION: Final = (
    "any field of the document (dots for nested members), compared as MongoDB does: a value that "
    "reads as a number matches stored numbers as numbers and stored text as text; also $in, $nin "
    "(find[field][$in][]=a&find[field][$in][]=b), $exists and /pattern/flags"
)


def _operators(kind: str) -> tuple[str, ...]:
    # an id names one record: only equality means something
    return ID_OPERATORS if kind == "id" else tuple(OPERATORS)


def read_parameters(collection: Collection, with_count: bool) -> list[dict[str, Any]]:
    """``count`` and every ``find[field]`` / ``find[field][$op]`` the collection answers."""
    params: list[dict[str, Any]] = []
    if with_count:
        params.append(
            {
                "name": "count",
                "in": "query",
                "required": False,
                "description": f"how many documents, newest first (0 or more than {MAX_COUNT} means {MAX_COUNT})",
                "schema": {"type": "integer", "minimum": 0, "maximum": SQLITE_INT_MAX},
            }
        )
    for field, (_column, kind) in FIELDS[collection].items():
        if not _listed(collection, field, kind):
            continue
        schema = _value_schema(kind)
        for suffix in ("", *(f"[{op}]" for op in _operators(kind))):
            param: dict[str, Any] = {
                "name": f"find[{field}]{suffix}",
                "in": "query",
                "required": False,
                "schema": schema,
            }
            if field in PATTERN_FIELDS[collection]:
                param["description"] = PATTERN_DESCRIPTION
            elif kind == "id":
                param["description"] = "the _id this API serves (24 hex digits)"
            params.append(param)
    for field in ANY_FIELDS[collection]:
        for suffix in ("", "[$ne]", "[$gt]", "[$gte]", "[$lt]", "[$lte]"):
            params.append(
                {
                    "name": f"find[{field}]{suffix}",
                    "in": "query",
                    "required": False,
                    "description": ANY_FIELD_DESCRIPTION,
                    "schema": {"type": "string"},
                }
            )
        params.append(
            {
                "name": f"find[{field}][$exists]",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": ["true", "false"]},
            }
        )
    return params


EPISODES_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["since", "until", "episodes"],
    "properties": {
        "since": {"type": "integer"},
        "until": {"type": "integer"},
        "episodes": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["account", "kind", "start", "end"],
                "properties": {
                    "account": {"type": "string"},
                    "kind": {"enum": ["urgent_low", "low", "normal", "high", "urgent_high", "stale"]},
                    "start": {"type": "integer"},
                    "end": {"type": ["integer", "null"]},
                    "sgv_min": {"type": ["integer", "null"]},
                    "sgv_max": {"type": ["integer", "null"]},
                    "readings": {"type": "integer"},
                },
            },
        },
    },
}

WEBHOOKS_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["webhooks"],
    "properties": {
        "webhooks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "recent"],
                "properties": {
                    "name": {"type": "string"},
                    "target": {"type": ["string", "null"]},
                    "state": {"type": ["string", "null"]},
                    "recent": {
                        "type": "array",
                        "maxItems": 50,
                        "items": {
                            "type": "object",
                            "required": ["id", "seq", "event", "attempts", "outcome", "at", "payload"],
                            "properties": {
                                "id": {"type": "string"},
                                "seq": {"type": "integer"},
                                "event": {"type": "string"},
                                "attempts": {"type": "integer"},
                                "status": {"type": ["integer", "null"]},
                                "outcome": {"type": "string"},
                                "at": {"type": "integer"},
                                "payload": {},
                            },
                        },
                    },
                },
            },
        }
    },
}
# --- API v3 (Nightscout's lib/api3 swagger, for the reads served here) ---------------------------

V3_SECURITY: Final[list[dict[str, list[str]]]] = [{"bearer": []}, {"token": []}]

V3_ERROR_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "integer"},
        "message": {"type": "string"},
        "description": {"type": "string"},
    },
}


def _v3_error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": V3_ERROR_SCHEMA}}}


V3_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    400: _v3_error("a parameter v3 cannot answer (its message says which)"),
    401: _v3_error("no token, or a wrong one (Bearer JWT or ?token=)"),
    404: _v3_error("a collection v3 does not know, or no document with this identifier"),
    410: _v3_error("the document with this identifier was deleted"),
    503: _v3_error("the store cannot be read"),
}
#: a path parameter with a line break in it matches no route
UNROUTABLE: Final[dict[int | str, dict[str, Any]]] = {
    404: {
        "description": "a path parameter with a line break in it (no route takes one)",
        "content": {"application/json": {"schema": ERROR_SCHEMA}},
    },
}
NOT_MODIFIED: Final[dict[int | str, dict[str, Any]]] = {
    304: {"description": "If-None-Match names this answer's ETag: nothing changed (no body)"},
}

V3_DOCUMENT: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "identifier": {"type": "string"},
        "date": {"type": "integer"},
        "utcOffset": {"type": "integer"},
        "device": {"type": "string"},
        "app": {"type": "string"},
        "srvCreated": {"type": "integer"},
        "srvModified": {"type": "integer"},
        "isValid": {"type": "boolean"},
    },
}


def v3_result(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status", "result"],
        "properties": {"status": {"type": "integer", "enum": [200]}, "result": result},
    }


V3_VERSION_RESULT: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["version", "apiVersion", "srvDate", "storage"],
    "properties": {
        "version": {"type": "string"},
        "apiVersion": {"type": "string"},
        "srvDate": {"type": "integer"},
        "storage": {
            "type": "object",
            "required": ["storage", "version"],
            "properties": {"storage": {"type": "string"}, "version": {"type": "string"}},
        },
    },
}
V3_STATUS_RESULT: Final[dict[str, Any]] = {
    **V3_VERSION_RESULT,
    "required": [*V3_VERSION_RESULT["required"], "apiPermissions"],
    "properties": {
        **V3_VERSION_RESULT["properties"],
        "apiPermissions": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
V3_LAST_MODIFIED_RESULT: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["srvDate", "collections"],
    "properties": {
        "srvDate": {"type": "integer"},
        "collections": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
}
V3_DOCUMENTS: Final[dict[str, Any]] = v3_result({"type": "array", "items": V3_DOCUMENT})
V3_ONE: Final[dict[str, Any]] = v3_result(V3_DOCUMENT)

AUTHORIZATION_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["token", "sub", "permissionGroups", "iat", "exp"],
    "properties": {
        "token": {"type": "string"},
        "sub": {"type": "string"},
        "permissionGroups": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
        "iat": {"type": "integer"},
        "exp": {"type": "integer"},
    },
}

#: a field name as a v3 filter or sort may name it (store.search.FIELD); empty: not given
V3_FIELD_PATTERN: Final = r"^([A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7})?$"


def v3_collection_parameter(collections: tuple[str, ...]) -> dict[str, Any]:
    return {
        "name": "collection",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": list(collections)},
    }


def v3_common_parameters(max_limit: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": f"at most this many documents (1–{max_limit}, default {max_limit})",
            "schema": {"type": "integer", "minimum": 1, "maximum": max_limit},
        },
        {
            "name": "fields",
            "in": "query",
            "required": False,
            "description": "_all (the default) or the fields to keep, comma-separated",
            "schema": {"type": "string"},
        },
    ]


def v3_search_parameters(max_limit: int, max_values: int) -> list[dict[str, Any]]:
    """The paging and sorting parameters, and a sample of filters (any field takes any operator:
    ``field$op=value``; documented here are those a schema-driven client can exercise)."""
    text: dict[str, Any] = {"type": "string"}
    many = {"type": "string", "pattern": r"^[^|]*(\|[^|]*){0," + str(max_values - 1) + "}$"}
    filters = {
        "type": text,
        "type$in": many,
        "device": text,
        "device$ne": text,
        "date$gte": text,
        "date$lt": text,
        "sgv$gt": text,
        "eventType$nin": many,
        "created_at$gt": text,
        "srvModified$gt": text,
    }
    return [
        *v3_common_parameters(max_limit),
        {
            "name": "skip",
            "in": "query",
            "required": False,
            "description": "pass over this many documents first",
            "schema": {"type": "integer", "minimum": 0, "maximum": SQLITE_INT_MAX},
        },
        {
            "name": "sort",
            "in": "query",
            "required": False,
            "description": "the field to sort on, ascending (then the identifier); not with sort$desc",
            "schema": {"type": "string", "pattern": V3_FIELD_PATTERN},
        },
        {
            "name": "sort$desc",
            "in": "query",
            "required": False,
            "description": "the field to sort on, descending; not with sort",
            "schema": {"type": "string", "pattern": V3_FIELD_PATTERN},
        },
        *(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": "a filter: field$op=value, op among eq ne gt gte lt lte in nin re",
                "schema": schema,
            }
            for name, schema in filters.items()
        ),
    ]


def export_parameters(collections: tuple[str, ...]) -> list[dict[str, Any]]:
    # empty: not given (a form's blank field)
    time_schema = {"type": "string", "pattern": "^$|" + BOUND_PATTERN}
    return [
        {
            "name": "collection",
            "in": "query",
            "required": False,
            "description": "what to export (default entries)",
            "schema": {"type": "string", "enum": list(collections)},
        },
        {
            "name": "from",
            "in": "query",
            "required": False,
            "description": "the first record's time or day (UTC), inclusive; default: the oldest",
            "schema": time_schema,
        },
        {
            "name": "to",
            "in": "query",
            "required": False,
            "description": "the last time or day (UTC), inclusive: a day includes all of it; default: the newest",
            "schema": time_schema,
        },
    ]
