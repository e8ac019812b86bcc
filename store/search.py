"""Nightscout API v3's reads over the store: a search on any field with v3's operators, one
document by identifier, the changes since a time (by ``srv_modified``), and each collection's
last modification.

A v3 filter names a field of the document (dots for nested members) and compares it as MongoDB
does: only values of the same type compare (a number never equals a text, ``$gt`` on a missing
field is false, ``$ne`` and ``$nin`` hold for a missing field). Fields the store keeps in a column
are read from it (``date``, ``srvModified``, ``type``, ``device`` …); any other field is read from
the stored JSON with SQLite's JSON functions. Field names are a closed alphabet (letters,
digits, ``_`` and ``-``; the API refuses others), and every value travels as a bound parameter.

A ``re`` condition carries its own matcher (the API compiles it under the limits of
:mod:`api.patterns`); SQLite calls it through a function registered on the borrowed connection.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final, Protocol

from connect.records import COLLECTIONS, Collection
from store.database import object_id
from store.terms import AnyOf, Condition, Row, Search, Value
from store.values import Where


class Connections(Protocol):
    """Where a search borrows its SQLite connection (the API's reader)."""

    def connection(self) -> AbstractContextManager[sqlite3.Connection]: ...


_SQL_OPS: Final[dict[str, str]] = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}

_COMMON: Final[dict[str, str]] = {
    "identifier": "identifier",
    "date": "date",
    "srvModified": "srv_modified",
    "srvCreated": "srv_created",
    "device": "device",
}
#: v3 fields kept in a column of their own, per collection (each column holds exactly the
#: document's value, or NULL where the document has none)
COLUMNS: Final[dict[Collection, dict[str, str]]] = {
    "entries": {
        **_COMMON,
        "type": "type",
        "sgv": "sgv",
        "direction": "direction",
        "dateString": "date_string",
    },
    "treatments": {**_COMMON, "eventType": "event_type", "created_at": "created_at"},
    "devicestatus": {**_COMMON, "created_at": "created_at"},
    "profile": {**_COMMON, "created_at": "created_at"},
}
#: sorting on these is sorting on ``date`` (the same instant, written as ISO text), on its index
SORTS_AS_DATE: Final = frozenset({"created_at", "dateString"})


_SELECT: Final = "SELECT e.identifier, e.json, e.srv_created, e.srv_modified"
#: deleted documents remembered (not permanently deleted), as rows of the same shape
_SELECT_DELETED: Final = (
    "SELECT d.identifier, d.json, d.srv_created, d.srv_modified, d.seq FROM deleted d "
    "WHERE d.collection = ? AND d.json IS NOT NULL"
)


def _row(values: Sequence[Any]) -> Row:
    identifier, doc, created, modified = values[:4]
    return Row(str(identifier), str(doc), int(created), int(modified))


def _deleted_row(values: Sequence[Any]) -> Row:
    identifier, doc, created, modified = values[:4]
    return Row(str(identifier), str(doc), int(created), int(modified), valid=False)


def _remembers_deletions(conn: sqlite3.Connection) -> bool:
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'deleted'").fetchone()
    return found is not None


def _json_path(field: str) -> str:
    return "$" + "".join(f'."{part}"' for part in field.split("."))


Fragment = tuple[str, list[Any]]


class _Sql:
    """The conditions of a search as SQL, each with its parameters in the order they appear.

    A comparison is ``(type test AND value op ?)``, left unwrapped so that SQLite can use a
    column's index for it; under ``NOT`` (``ne``, ``nin``) a NULL (a missing field) must count
    as false first, hence ``coalesce``.
    """

    def __init__(self, collection: Collection) -> None:
        self.columns = COLUMNS[collection]
        self.matchers: list[Callable[[str], bool]] = []

    def _operand(self, field: str) -> tuple[Fragment, Fragment]:
        """(the value, its type name): a column's ``typeof``, or the JSON member's ``json_type``."""
        column = self.columns.get(field)
        if column is not None:
            return (f"e.{column}", []), (f"typeof(e.{column})", [])
        path = _json_path(field)
        return ("json_extract(e.json, ?)", [path]), ("json_type(e.json, ?)", [path])

    def compare(self, field: str, sql_op: str, value: Value) -> Fragment:
        """``field sql_op value``, true only where both are of one type."""
        if isinstance(value, bool):
            if field in self.columns:
                return "0", []  # no column holds a boolean
            path = _json_path(field)
            kind = "json_type(e.json, ?)"
            sql = f"({kind} IN ('true', 'false') AND ({kind} = 'true') {sql_op} ?)"
            return sql, [path, path, int(value)]
        (value_sql, value_params), (type_sql, type_params) = self._operand(field)
        names = "('integer', 'real')" if isinstance(value, (int, float)) else "('text')"
        return f"({type_sql} IN {names} AND {value_sql} {sql_op} ?)", [*type_params, *value_params, value]

    def condition(self, c: Condition) -> Fragment:
        if c.op in _SQL_OPS:
            return self.compare(c.field, _SQL_OPS[c.op], c.values[0])
        if c.op == "ne":
            sql, params = self.compare(c.field, "=", c.values[0])
            return f"NOT coalesce({sql}, 0)", params
        if c.op in ("in", "nin"):
            parts = [self.compare(c.field, "=", v) for v in c.values]
            anyof = "(" + (" OR ".join(sql for sql, _ in parts) or "0") + ")"
            params = [p for _, ps in parts for p in ps]
            return (anyof, params) if c.op == "in" else (f"NOT coalesce({anyof}, 0)", params)
        if c.op == "exists":
            (value_sql, value_params), (type_sql, type_params) = self._operand(c.field)
            # json_type of a member holding null is 'null', not NULL: it exists (as in MongoDB)
            return f"({type_sql} IS {'NOT ' if c.values[0] else ''}NULL)", type_params
        # re: a text value the condition's matcher accepts
        assert c.matcher is not None
        (value_sql, value_params), (type_sql, type_params) = self._operand(c.field)
        index = len(self.matchers)
        self.matchers.append(c.matcher)
        sql = f"({type_sql} = 'text' AND connect_v3_re(?, {value_sql}))"
        return sql, [*type_params, index, *value_params]

    def item(self, item: Condition | AnyOf) -> Fragment:
        if isinstance(item, Condition):
            return self.condition(item)
        parts = [self.condition(c) for c in item.conditions]
        return "(" + (" OR ".join(f"coalesce({sql}, 0)" for sql, _ in parts) or "0") + ")", [
            p for _, ps in parts for p in ps
        ]


def where(collection: Collection, items: Sequence[Condition | AnyOf]) -> Where:
    """Every one of ``items`` as one condition for :meth:`store.reader.StoreReader.doc_texts`."""
    sql = _Sql(collection)
    fragments = [sql.item(i) for i in items]
    text = " AND ".join(f for f, _ in fragments) or "1"
    params = tuple(p for _, ps in fragments for p in ps)
    matchers = tuple(sql.matchers)

    def matches(index: int, value: object) -> int:
        return int(isinstance(value, str) and matchers[index](value))

    return Where(text, params, (("connect_v3_re", 2, matches),) if matchers else (), tuple(items))


def _use_matchers(conn: sqlite3.Connection, matchers: Sequence[Callable[[str], bool]]) -> None:
    def matches(index: int, value: object) -> int:
        return int(isinstance(value, str) and matchers[index](value))

    conn.create_function("connect_v3_re", 2, matches, deterministic=True)


def search(reader: Connections, query: Search) -> list[Row]:
    """The documents ``query`` selects, in its order, ``skip`` passed over, at most ``limit``."""
    if query.collection not in COLLECTIONS:
        raise ValueError(f"unknown collection {query.collection!r}")
    sql = _Sql(query.collection)
    fragments = [sql.condition(c) for c in query.conditions]
    params: list[Any] = [p for _, ps in fragments for p in ps]
    where = " AND ".join(f for f, _ in fragments)
    direction = "DESC" if query.descending else "ASC"
    order = [f"e.identifier {direction}"]
    if query.sort is not None and query.sort != "identifier":
        if query.sort in sql.columns:
            column = sql.columns[query.sort]
            order.insert(0, f"e.{'date' if query.sort in SORTS_AS_DATE else column} {direction}")
        else:
            order.insert(0, f"json_extract(e.json, ?) {direction}")
            params.append(_json_path(query.sort))
    statement = (
        f"{_SELECT} FROM {query.collection} e"
        + (f" WHERE {where}" if where else "")
        + f" ORDER BY {', '.join(order)} LIMIT ? OFFSET ?"
    )
    with reader.connection() as conn:
        if sql.matchers:
            _use_matchers(conn, sql.matchers)
        rows = conn.execute(statement, [*params, query.limit, query.skip]).fetchall()
    return [_row(r) for r in rows]


def one(reader: Connections, collection: Collection, identifier: str) -> Row | None:
    """The document with this identifier, or served with this 24-hex ``_id`` (v3's fallback);
    a deleted one comes with ``valid`` False."""
    with reader.connection() as conn:
        found = conn.execute(
            f"{_SELECT} FROM {collection} e WHERE e.identifier = ?", (identifier,)
        ).fetchone()
        if found is not None:
            return _row(found)
        if _remembers_deletions(conn):
            gone = conn.execute(
                f"{_SELECT_DELETED} AND d.identifier = ?", (collection, identifier)
            ).fetchone()
            if gone is not None:
                return _deleted_row(gone)
        wanted = identifier.lower()
        if not re.fullmatch(r"[0-9a-f]{24}", wanted):
            return None
        prefix = f"{wanted[:8]}-{wanted[8:12]}-{wanted[12:16]}-{wanted[16:20]}-{wanted[20:24]}"
        # "~" sorts after every hex digit: the range is the identifiers that start with prefix
        candidates = conn.execute(
            f"{_SELECT} FROM {collection} e WHERE e.identifier >= ? AND e.identifier < ? LIMIT 8",
            (prefix, prefix + "~"),
        ).fetchall()
    for candidate in candidates:
        if object_id(str(candidate[0])) == wanted:
            return _row(candidate)
    return None


def history(
    reader: Connections, collection: Collection, since: int, limit: int, *, inclusive: bool = False
) -> list[Row]:
    """Documents changed after ``since`` (epoch ms; at or after it when ``inclusive``), oldest
    change first, at most ``limit`` — but never part of the documents changed at one instant.
    Deleted documents are among them (``valid`` False), so a syncing client learns of them.

    A client resumes from the newest ``srvModified`` it got, asking for what changed *after* it:
    a page that stopped among documents written in the same millisecond would lose the rest of
    them. So a page ends before such an instant, unless that instant alone fills the page; then
    the page holds all of it, even beyond ``limit``.
    """
    op = ">=" if inclusive else ">"
    with reader.connection() as conn:
        deletions = _remembers_deletions(conn)

        def changed(where: str, params: tuple[Any, ...], tail: str = "") -> list[Row]:
            live = f"SELECT e.identifier, e.json, e.srv_created, e.srv_modified, e.seq, 1 FROM {collection} e"
            sql = f"{live} WHERE e.srv_modified {where}"
            args: tuple[Any, ...] = params
            if deletions:
                sql += f" UNION ALL {_SELECT_DELETED.replace('d.seq', 'd.seq, 0')} AND d.srv_modified {where}"
                args = (*params, collection, *params)
            found = conn.execute(f"{sql} ORDER BY 4, 5 {tail}", args).fetchall()
            return [_row(r) if r[5] else _deleted_row(r) for r in found]

        rows = changed(f"{op} ?", (since,), f"LIMIT {int(limit) + 1}")
        if len(rows) <= limit:
            return rows
        last = rows[limit - 1].srv_modified
        if rows[limit].srv_modified != last:
            return rows[:limit]
        kept = [row for row in rows[:limit] if row.srv_modified != last]
        if kept:
            return kept
        return changed("= ?", (last,))


def last_modified(reader: Connections) -> dict[Collection, int]:
    """Per collection that holds documents: its newest ``srv_modified``, or its newest record's
    time when that is later (v3 looks at both, for documents written without server times)."""
    out: dict[Collection, int] = {}
    with reader.connection() as conn:
        deletions = _remembers_deletions(conn)
        for name in COLLECTIONS:
            modified, newest = conn.execute(f"SELECT max(srv_modified), max(date) FROM {name}").fetchone()
            times = [int(t) for t in (modified, newest) if t is not None]
            if deletions:
                # a deletion is a modification too
                (gone,) = conn.execute(
                    "SELECT max(srv_modified) FROM deleted WHERE collection = ? AND json IS NOT NULL", (name,)
                ).fetchone()
                times += [int(gone)] if gone is not None else []
            if times:
                out[name] = max(times)
    return out
