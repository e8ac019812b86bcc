"""The parts of the OpenAPI document FastAPI cannot infer: Nightscout's bracketed query
parameters, the documents' shapes, and the three ways to present the secret."""

from __future__ import annotations

from typing import Any, Final

from api.patterns import MAX_ALTERNATIONS, MAX_PATTERN, MAX_QUANTIFIERS, MAX_SUBJECT
from api.query import FIELDS, ID_OPERATORS, MAX_COUNT, OPERATORS, PATTERN_FIELDS
from connect.records import Collection
from store.reader import SQLITE_INT_MAX

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
    "token": {"type": "apiKey", "in": "query", "name": "token", "description": "CONNECT_HTTP_SECRET itself"},
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
    if kind in ("ms", "int"):
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
