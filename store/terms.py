"""The terms of a search of stored documents (API v3's and v1's ``find``): conditions, their
operators and values, and the rows a search gives back. ``store.search`` turns them into SQLite,
``store.postgres_reader`` into PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, Literal

import attrs

from connect.records import Collection

Op = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "re", "exists"]


#: v3's operators (``exists`` is v1's, from MongoDB: ``find[field][$exists]=true``)
OPERATORS: Final[tuple[Op, ...]] = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "re")


ALL_OPERATORS: Final[frozenset[str]] = frozenset({*OPERATORS, "exists"})


Value = bool | int | float | str


#: a field name: parts of letters, digits, ``_`` and ``-``, joined by dots
FIELD: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$")


@attrs.frozen
class Condition:
    """``field op value``: one value, or several for ``in`` / ``nin``; ``matcher`` for ``re``."""

    field: str
    op: Op
    values: tuple[Value, ...]
    matcher: Callable[[str], bool] | None = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        if not FIELD.match(self.field):
            raise ValueError(f"not a field name: {self.field!r}")
        if self.op not in ALL_OPERATORS:
            raise ValueError(f"unknown operator {self.op!r}")
        if self.op == "exists" and not isinstance(self.values[0], bool):
            raise ValueError("exists takes true or false")
        if self.op == "re" and self.matcher is None:
            raise ValueError("a re condition needs its matcher")
        if self.op not in ("in", "nin", "re") and len(self.values) != 1:
            raise ValueError(f"{self.op} takes one value")


@attrs.frozen
class AnyOf:
    """At least one of ``conditions`` holds (v1 compares a value written ``30`` both as the
    number 30 and as the text "30": each matches the documents that store it so)."""

    conditions: tuple[Condition, ...]


@attrs.frozen
class Search:
    collection: Collection
    conditions: tuple[Condition, ...] = ()
    #: the field to sort on first; the identifier always follows (v3's order)
    sort: str | None = None
    descending: bool = False
    limit: int = 1000
    skip: int = 0


@attrs.frozen
class Row:
    """A stored document with its server times."""

    identifier: str
    json: str
    srv_created: int
    srv_modified: int
    #: False for a deleted document (v3's ``isValid``)
    valid: bool = True
