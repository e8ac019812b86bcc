"""Nightscout v1 query strings (``count``, ``find[field][$op]=value``) to store filters.

Nightscout hands ``find`` to MongoDB after a lenient coercion (``parseInt`` on dates, which turns
an ISO string into its year). Here every value is checked: a number where a number belongs, a
time where a time belongs, and a clear 400 naming the parameter otherwise.

Three conditions are not store filters, and ride beside them in :class:`ReadQuery`: ``_id``
(the ObjectId-like id we serve, looked up by the app), and a treatment's ``eventType`` written as
``/pattern/flags`` (Nightscout's regular-expression form, see :mod:`api.patterns`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Final, Literal

import attrs

from api.patterns import Pattern, PatternError, compile_pattern, is_flagged_pattern, is_pattern
from connect.records import Collection, ms_from_iso
from store.terms import FIELD, AnyOf, Condition, Value
from store.terms import Op as SearchOp
from store.values import SQLITE_INT_MAX, Filter, Op

MAX_COUNT: Final = 10_000
DEFAULT_COUNT: Final[dict[Collection, int]] = {
    "entries": 10,
    "treatments": 100,
    "devicestatus": 10,
    "profile": 10,
}
#: the most ``find[...]`` conditions one query may carry; more is a 400 (SQLite refuses an
#: expression of about a thousand terms, and no client needs more than a few)
MAX_FIND: Final = 100
#: Nightscout's treatments default grows to 1000 once the query has a ``find``
DEFAULT_COUNT_WITH_FIND: Final[dict[Collection, int]] = {"treatments": 1000}

Kind = Literal["ms", "time", "int", "text", "id"]

#: query fields per collection: name → (column, how the value is read)
FIELDS: Final[dict[Collection, dict[str, tuple[str, Kind]]]] = {
    "entries": {
        "_id": ("identifier", "id"),
        "date": ("date", "ms"),
        "dateString": ("date", "time"),
        "sysTime": ("date", "time"),
        "created_at": ("date", "time"),
        "type": ("type", "text"),
        "device": ("device", "text"),
        "sgv": ("sgv", "int"),
    },
    "treatments": {
        "_id": ("identifier", "id"),
        "date": ("date", "ms"),
        "created_at": ("date", "time"),
        "dateString": ("date", "time"),
        "timestamp": ("date", "time"),
        "eventType": ("event_type", "text"),
        "device": ("device", "text"),
    },
    "devicestatus": {
        "_id": ("identifier", "id"),
        "date": ("date", "ms"),
        "created_at": ("date", "time"),
        "dateString": ("date", "time"),
        "device": ("device", "text"),
    },
    "profile": {
        "_id": ("identifier", "id"),
        "date": ("date", "ms"),
        "created_at": ("date", "time"),
        "startDate": ("date", "time"),
        "dateString": ("date", "time"),
        "device": ("device", "text"),
    },
}

#: string fields whose ``/pattern/flags`` values are regular expressions (as in Nightscout's
#: treatments; its ``notes`` and ``enteredBy`` are not searchable here)
PATTERN_FIELDS: Final[dict[Collection, frozenset[str]]] = {
    "entries": frozenset(),
    "treatments": frozenset({"eventType"}),
    "devicestatus": frozenset(),
    "profile": frozenset(),
}
#: the operators an ``_id`` may take (an id names one record; ranges of ids mean nothing here)
ID_OPERATORS: Final = ("$eq",)

OPERATORS: Final[dict[str, Op]] = {
    "$eq": "=",
    "$ne": "!=",
    "$gt": ">",
    "$gte": ">=",
    "$lt": "<",
    "$lte": "<=",
}

_FIND = re.compile(r"^find\[([^\[\]]*)\](?:\[([^\[\]]*)\])?(\[\d{0,3}\])?$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
#: MongoDB's comparisons, as store conditions on any field
GENERIC: Final[dict[str, SearchOp]] = {
    "$eq": "eq",
    "$ne": "ne",
    "$gt": "gt",
    "$gte": "gte",
    "$lt": "lt",
    "$lte": "lte",
}
#: operators that take a list (``find[f][$in][]=a&find[f][$in][]=b``)
LISTS: Final = {"$in": "in", "$nin": "nin"}
EXISTS: Final = {"true": True, "1": True, "false": False, "0": False}
_INT = re.compile(r"^[+-]?\d{1,19}$")
#: an ``_id`` as this API serves it (24 hex digits)
OBJECT_ID: Final = re.compile(r"^[0-9a-fA-F]{24}$")
_SPACED_OFFSET = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+) (\d\d:?\d\d)$")
#: how much of a client's parameter name an error message repeats
_NAME_LIMIT: Final = 60


class QueryError(ValueError):
    """The query string cannot be answered; the message names the parameter, never its value."""


@attrs.frozen
class Match:
    """A ``/pattern/flags`` condition on a field (stored in ``column``); ``negate`` for ``$ne``."""

    field: str
    column: str
    pattern: Pattern
    negate: bool = False

    def holds(self, value: object) -> bool:
        return isinstance(value, str) and self.pattern.matches(value) != self.negate


@attrs.frozen
class Find:
    """Every ``find[...]``: store filters, wanted ``_id`` values (all must hold), patterns."""

    filters: tuple[Filter, ...] = ()
    object_ids: tuple[str, ...] = ()
    matches: tuple[Match, ...] = ()
    #: conditions on any field of the document (:mod:`store.search`)
    conditions: tuple[Condition | AnyOf, ...] = ()


@attrs.frozen
class ReadQuery:
    collection: Collection
    filters: tuple[Filter, ...]
    limit: int
    object_ids: tuple[str, ...] = ()
    matches: tuple[Match, ...] = ()
    conditions: tuple[Condition | AnyOf, ...] = ()


def _name(key: str) -> str:
    shown = key if len(key) <= _NAME_LIMIT else key[:_NAME_LIMIT] + "…"
    return shown.encode("ascii", "backslashreplace").decode("ascii")


def parse_count(value: str | None, default: int) -> int:
    """``count``: a whole number; 0 means "no limit" as in MongoDB, bounded by :data:`MAX_COUNT`."""
    if value is None:
        return default
    text = value.strip()
    if not _INT.match(text) or text.startswith("-"):
        raise QueryError("count must be a whole number of documents (0 for the most allowed)")
    count = int(text)
    if count > SQLITE_INT_MAX:
        raise QueryError("count is out of range")
    if count == 0 or count > MAX_COUNT:
        return MAX_COUNT
    return count


def _value(key: str, kind: Kind, raw: str) -> int | str:
    text = raw.strip()
    if kind == "text":
        return raw
    if kind in ("ms", "int"):
        if not _INT.match(text) or abs(int(text)) > SQLITE_INT_MAX:
            what = "epoch milliseconds (a whole number)" if kind == "ms" else "a whole number"
            raise QueryError(f"{_name(key)}: expected {what}")
        return int(text)
    # a time: ISO-8601 (Z, an offset, or UTC when naive), or epoch milliseconds
    if _INT.match(text):
        if abs(int(text)) > SQLITE_INT_MAX:
            raise QueryError(f"{_name(key)}: time out of range")
        return int(text)
    # an unencoded "+02:00" arrives as " 02:00" (a plus in a query string is a space)
    text = _SPACED_OFFSET.sub(r"\1+\2", text)
    try:
        return ms_from_iso(text)
    except (ValueError, OverflowError, OSError):
        raise QueryError(f"{_name(key)}: expected an ISO-8601 time such as 2024-01-18T00:00:00Z") from None


def object_id_value(key: str, raw: str) -> str:
    """A served ``_id`` (24 hex digits, any case), lower-cased."""
    text = raw.strip()
    if not OBJECT_ID.match(text):
        raise QueryError(f"{_name(key)}: expected a 24-hex-digit id as served in _id")
    return text.lower()


def candidates(raw: str) -> tuple[Value, ...]:
    """What a query value may equal: its text, and the number (or boolean) it reads as, so that
    ``30`` matches a document storing the number 30 and one storing the text "30"."""
    out: list[Value] = [raw]
    text = raw.strip()
    if _NUMBER.match(text):
        if _INT.match(text) and abs(int(text)) <= SQLITE_INT_MAX:
            out.append(int(text))
        else:
            number = float(text)
            if math.isfinite(number):
                out.append(number)
    elif raw in ("true", "false"):
        out.append(raw == "true")
    return tuple(out)


def _generic(key: str, field: str, operator: str, raw: str) -> Condition | AnyOf:
    """``find[field][operator]=raw`` on any field of the document (not ``$in``/``$nin``)."""
    if not FIELD.match(field):
        raise QueryError(f"{_name(key)}: not a field name (letters, digits, _ and -, parts joined by dots)")
    if operator == "$exists":
        if raw.strip() not in EXISTS:
            raise QueryError(f"{_name(key)}: $exists takes true or false")
        return Condition(field, "exists", (EXISTS[raw.strip()],))
    # a pattern with $eq (or no operator); with another operator it is the text it is (MongoDB
    # compares a regular expression by no order, so no stored text is above or below one)
    if is_flagged_pattern(raw) and operator == "$eq":
        try:
            pattern = compile_pattern(raw)
        except PatternError as exc:
            raise QueryError(f"{_name(key)}: {exc}") from None
        return Condition(field, "re", (raw,), matcher=pattern.matches)
    values = candidates(raw)
    if operator == "$eq":
        return Condition(field, "in", values)
    if operator == "$ne":
        return Condition(field, "nin", values)
    op = GENERIC[operator]
    # a range compares numbers with numbers and text with text, never booleans
    return AnyOf(tuple(Condition(field, op, (v,)) for v in values if not isinstance(v, bool)))


def parse_find(collection: Collection, params: Iterable[tuple[str, str]]) -> Find:
    """Every ``find[...]`` parameter (all of them must hold); at most :data:`MAX_FIND`.

    A field the store keeps in a column (``date``, ``created_at``, ``eventType`` …) with a
    comparison is read as that column's kind (a time, an id); anything else is any field of the
    document, dots for nested members, compared as MongoDB does (see :func:`candidates`).
    """
    items = [(key, raw) for key, raw in params if key == "find" or key.startswith("find[")]
    if len(items) > MAX_FIND:
        raise QueryError(f"find: {len(items)} conditions; a query may have at most {MAX_FIND}")
    fields = FIELDS[collection]
    filters: list[Filter] = []
    object_ids: list[str] = []
    matches: list[Match] = []
    conditions: list[Condition | AnyOf] = []
    lists: dict[tuple[str, str], list[Value]] = {}
    for key, raw in items:
        match = _FIND.match(key)
        if match is None:
            raise QueryError(f"{_name(key)}: expected find[field] or find[field][$operator]")
        field, operator, index = match.group(1), match.group(2) or "$eq", match.group(3)
        if index is not None and operator not in LISTS:
            raise QueryError(f"{_name(key)}: only $in and $nin take a list")
        if operator not in OPERATORS and operator not in LISTS and operator != "$exists":
            known = ", ".join([*OPERATORS, *LISTS, "$exists"])
            raise QueryError(f"{_name(key)}: unsupported operator {_name(operator)!r} (supported: {known})")
        spec = fields.get(field)
        if spec is not None and spec[1] == "id":
            if operator != "$eq":
                raise QueryError(f"{_name(key)}: _id takes find[_id]=<id> or find[_id][$eq]=<id>")
            object_ids.append(object_id_value(key, raw))
            continue
        if operator in LISTS:
            if not FIELD.match(field):
                raise QueryError(f"{_name(key)}: not a field name")
            lists.setdefault((field, LISTS[operator]), []).extend(candidates(raw))
            continue
        if field in PATTERN_FIELDS[collection] and is_pattern(raw) and operator in ("$eq", "$ne"):
            assert spec is not None
            try:
                pattern = compile_pattern(raw)
            except PatternError as exc:
                raise QueryError(f"{_name(key)}: {exc}") from None
            matches.append(Match(field=field, column=spec[0], pattern=pattern, negate=operator == "$ne"))
            continue
        if spec is not None and spec[1] in ("ms", "time", "text") and operator in OPERATORS:
            if not (spec[1] == "text" and is_flagged_pattern(raw)):
                column, kind = spec
                filters.append(Filter(column=column, op=OPERATORS[operator], value=_value(key, kind, raw)))
                continue
        conditions.append(_generic(key, field, operator, raw))
    for (field, op), values in lists.items():
        unique = {(type(v), v): v for v in values}  # 1, 1.0 and True are equal keys otherwise
        conditions.append(Condition(field, "in" if op == "in" else "nin", tuple(unique.values())))
    return Find(
        filters=tuple(filters),
        object_ids=tuple(object_ids),
        matches=tuple(matches),
        conditions=tuple(conditions),
    )


def parse_read(
    collection: Collection,
    params: Iterable[tuple[str, str]],
    *,
    forced: Iterable[Filter] = (),
    count: int | None = None,
    object_id: str | None = None,
) -> ReadQuery:
    """A whole read: ``count`` (the last one given wins) and every ``find``.

    ``object_id`` is an ``_id`` named by the path (``/entries/<id>``), as if it were a find.
    """
    items = list(params)
    find = parse_find(collection, items)
    default = DEFAULT_COUNT[collection]
    if any(key.startswith("find[") for key, _ in items):
        default = DEFAULT_COUNT_WITH_FIND.get(collection, default)
    counts = [value for key, value in items if key == "count"]
    limit = count if count is not None else parse_count(counts[-1] if counts else None, default)
    return ReadQuery(
        collection=collection,
        filters=(*find.filters, *forced),
        limit=limit,
        object_ids=find.object_ids if object_id is None else (*find.object_ids, object_id),
        matches=find.matches,
        conditions=find.conditions,
    )
