"""Nightscout API v3's query strings and documents (cgm-remote-monitor 15.0.7, ``lib/api3``).

A search's query string holds ``limit`` (1–1000, default 1000), ``skip``, ``sort`` or
``sort$desc`` (not both), ``fields`` (``_all`` or a comma-separated list) and filters:
``field=value`` or ``field$op=value`` with ``op`` among ``eq ne gt gte lt lte in nin re``
(``in``/``nin`` take values separated by ``|``). A value that reads as a number is a number,
``true``/``false`` are booleans and ``'quoted'`` text loses its quotes; on ``date``,
``srvModified`` and ``srvCreated`` a time (epoch ms, epoch s or ISO-8601) becomes epoch ms, on
``created_at`` an ISO-8601 UTC string. A value that fits nothing stays text and matches what it
equals (a ``date`` never equals text: the search is then empty, as in Nightscout).

Where v3 is loose, we refuse with a 400 rather than guess: a field name outside letters,
digits, ``_``, ``-`` and dots, more than :data:`MAX_CONDITIONS` filters or :data:`MAX_VALUES`
values, an empty ``limit`` or ``skip``, and a ``re`` pattern outside the limits of
:mod:`api.patterns` (it runs on this server, on text of at most 64 characters).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, Final, cast

from api.errors import V3Error
from api.patterns import PatternError, compile_pattern
from connect.records import COLLECTIONS, Collection, iso_from_ms, ms_from_iso
from store.terms import FIELD, OPERATORS, Condition, Op, Row, Search, Value
from store.values import SQLITE_INT_MAX

API_VERSION: Final = "3.0.3-alpha"
#: every collection v3 knows; the store keeps four, the other two are always empty here
V3_COLLECTIONS: Final = ("devicestatus", "entries", "food", "profile", "settings", "treatments")
MAX_LIMIT: Final = 1000
MAX_CONDITIONS: Final = 16
MAX_VALUES: Final = 64
#: Nightscout's MIN_TIMESTAMP (2000-01-01): below it a number is read as epoch seconds
MIN_TIMESTAMP: Final = 946_684_800_000
#: v3's reserved parameters, and ``secret`` (a credential elsewhere in this API, never a filter)
RESERVED: Final = frozenset({"token", "secret", "sort", "sort$desc", "limit", "skip", "fields", "now"})
#: JavaScript's latest date, in epoch ms
MAX_TIME: Final = 8_640_000_000_000_000
TIME_FIELDS: Final = frozenset({"date", "srvModified", "srvCreated"})

BAD_LIMIT: Final = "Parameter limit out of tolerance"
BAD_SKIP: Final = "Parameter skip out of tolerance"
SORT_AND_DESC: Final = "Parameters sort and sort_desc cannot be combined"
BAD_LAST_MODIFIED: Final = "Bad or missing Last-Modified header/parameter"
BAD_COLLECTION: Final = "Bad operation or collection"
MISSING_TOKEN: Final = "Missing or bad access token or JWT"

_FILTER = re.compile(r"^(.*)\$([a-zA-Z]+)$", re.DOTALL)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_WHOLE = re.compile(r"^[+-]?\d+$")
_DIGITS = re.compile(r"^\d{1,18}$")
_WHOLE_PARAM = re.compile(r"^\d{1,19}$")
#: how much of a client's parameter name a message repeats
_NAME_LIMIT: Final = 60


def _name(text: str) -> str:
    shown = text if len(text) <= _NAME_LIMIT else text[:_NAME_LIMIT] + "…"
    return shown.encode("ascii", "backslashreplace").decode("ascii")


def bad(message: str) -> V3Error:
    return V3Error(400, message)


def stored(name: str) -> Collection | None:
    """The store's collection of this name; ``None`` for one it does not keep (food, settings)."""
    for collection in COLLECTIONS:
        if collection == name:
            return collection
    return None


def collection_of(name: str) -> str:
    """A v3 collection by its path name, or a 404 as v3 answers an unknown one."""
    if name not in V3_COLLECTIONS:
        raise V3Error(404, BAD_COLLECTION)
    return name


# --- values ------------------------------------------------------------------------------


def _number(text: str) -> int | float | None:
    stripped = text.strip()
    if not _NUMBER.match(stripped):
        return None
    if _WHOLE.match(stripped):
        whole = int(stripped)
        if abs(whole) <= SQLITE_INT_MAX:
            return whole
    number = float(stripped)
    return number if math.isfinite(number) else None


def time_ms(value: Value) -> int | None:
    """v3's reading of a time: epoch ms, epoch seconds (below 2000-01-01 as ms), ISO-8601 or
    RFC 2822; ``None`` when it is none of them or before 2000."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        ms = value if value >= MIN_TIMESTAMP else value * 1000
        if not MIN_TIMESTAMP <= ms <= MAX_TIME:
            return None
        return int(ms)
    text = value.strip()
    try:
        ms = ms_from_iso(text)
    except (ValueError, OverflowError, OSError):
        try:
            ms = int(parsedate_to_datetime(text).timestamp() * 1000)
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    return ms if MIN_TIMESTAMP <= ms <= MAX_TIME else None


def parse_value(field: str, raw: str) -> Value:
    """A filter's value as v3 reads it (see the module's docstring)."""
    value: Value = raw
    number = _number(raw)
    if number is not None:
        value = number
    elif raw == "true":
        value = True
    elif raw == "false":
        value = False
    elif len(raw) >= 2 and raw.startswith("'") and raw.endswith("'"):
        value = raw[1:-1]
    if field in TIME_FIELDS:
        ms = time_ms(value)
        if ms is not None:
            return ms
    if field == "created_at":
        ms = time_ms(value)
        if ms is not None:
            return iso_from_ms(ms)
    return value


# --- a search ------------------------------------------------------------------------------


def _whole(raw: str, message: str, *, least: int, most: int) -> int:
    text = raw.strip()
    if not _WHOLE_PARAM.match(text) or not least <= int(text) <= most:
        raise bad(message)
    return int(text)


def parse_limit(params: Sequence[tuple[str, str]]) -> int:
    given = [v for k, v in params if k == "limit"]
    if not given:
        return MAX_LIMIT
    return _whole(given[-1], BAD_LIMIT, least=1, most=MAX_LIMIT)


def parse_fields(params: Sequence[tuple[str, str]]) -> tuple[str, ...] | None:
    """The fields a client asked for; ``None`` for all of them."""
    given = [v for k, v in params if k == "fields"]
    if not given or given[-1] in ("", "_all"):
        return None
    return tuple(given[-1].split(","))


def _condition(key: str, raw: str) -> Condition:
    field, op = key, "eq"
    match = _FILTER.match(key)
    if match is not None:
        field, op = match.group(1), match.group(2)
        if op not in OPERATORS:
            raise bad(f"Unsupported filter operator {_name(op)}")
    if not FIELD.match(field):
        raise bad(f"Unsupported filter field {_name(field)}")
    operator = cast(Op, op)
    if operator == "re":
        try:
            pattern = compile_pattern(f"/{raw}/")
        except PatternError as exc:
            raise bad(f"Unsupported regular expression in {_name(key)}: {exc}") from None
        return Condition(field, "re", (raw,), matcher=pattern.matches)
    if operator in ("in", "nin"):
        pieces = raw.split("|")
        if len(pieces) > MAX_VALUES:
            raise bad(f"{_name(key)}: at most {MAX_VALUES} values")
        return Condition(field, operator, tuple(parse_value(field, piece) for piece in pieces))
    return Condition(field, operator, (parse_value(field, raw),))


def parse_search(collection: Collection, params: Sequence[tuple[str, str]]) -> Search:
    """A v3 search's query string (every parameter that is not reserved is a filter)."""
    conditions = [_condition(k, v) for k, v in params if k not in RESERVED]
    if len(conditions) > MAX_CONDITIONS:
        raise bad(f"At most {MAX_CONDITIONS} filters")
    sorts = [v for k, v in params if k == "sort" and v]
    descending = [v for k, v in params if k == "sort$desc" and v]
    if sorts and descending:
        raise bad(SORT_AND_DESC)
    sort = (descending or sorts)[-1] if (descending or sorts) else None
    if sort is not None and not FIELD.match(sort):
        raise bad(f"Unsupported sort field {_name(sort)}")
    skips = [v for k, v in params if k == "skip"]
    skip = _whole(skips[-1], BAD_SKIP, least=0, most=SQLITE_INT_MAX) if skips else 0
    return Search(
        collection=collection,
        conditions=tuple(conditions),
        sort=sort,
        descending=bool(descending),
        limit=parse_limit(params),
        skip=skip,
    )


def parse_last_modified(raw: str) -> int:
    """``/history/{lastModified}``: epoch ms (or seconds, below 2000-01-01 in ms), or ISO-8601.
    Any whole number is taken: 0 asks for every change."""
    text = raw.strip()
    if _DIGITS.match(text):
        value = int(text)
        if value < MIN_TIMESTAMP and value * 1000 >= MIN_TIMESTAMP:
            return value * 1000
        return value
    ms = time_ms(text) if not _NUMBER.match(text) else None
    if ms is None:
        raise bad(BAD_LAST_MODIFIED)
    return ms


#: an HTTP date as RFC 9110 prefers it (the days a month always has: a schema-driven client
#: generating from it never writes an impossible date)
HTTP_DATE_PATTERN: Final = (
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), (0[1-9]|1\d|2[0-8]) "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (19[7-9]\d|2\d{3}) "
    r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d GMT$"
)


def parse_http_date(header: str | None) -> int:
    """The ``Last-Modified`` request header of ``/history``, floored to the second."""
    if header is None:
        raise bad(BAD_LAST_MODIFIED)
    try:
        parsed = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        raise bad(BAD_LAST_MODIFIED) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp()) * 1000


# --- documents and answers -----------------------------------------------------------------


def http_date(ms: int) -> str:
    """An HTTP date (``Wed, 17 Oct 2018 05:13:00 GMT``)."""
    return format_datetime(datetime.fromtimestamp(ms / 1000, tz=UTC), usegmt=True)


def document(collection: str, row: Row, fields: tuple[str, ...] | None) -> dict[str, Any]:
    """A stored document as v3 serves it: the server fields added (no ``_id``: v3 addresses a
    document by its ``identifier``), then cut to ``fields`` when asked."""
    doc: dict[str, Any] = json.loads(row.json)
    doc.pop("_id", None)
    doc.setdefault("identifier", row.identifier)
    doc.setdefault("utcOffset", 0)  # the store keeps UTC
    if collection == "entries" and "dateString" in doc:
        doc.setdefault("sysTime", doc["dateString"])
    doc["srvCreated"] = row.srv_created
    doc["srvModified"] = row.srv_modified
    doc["isValid"] = row.valid
    if fields is not None:
        doc = {k: v for k, v in doc.items() if k in fields}
    return doc


def envelope(result: Any, status: int = 200) -> bytes:
    """v3's answer: ``{"status": …, "result": …}``."""
    return json.dumps({"status": status, "result": result}, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8"
    )


def documents(collection: str, rows: Iterable[Row], fields: tuple[str, ...] | None) -> list[dict[str, Any]]:
    return [document(collection, row, fields) for row in rows]
