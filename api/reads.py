"""A parsed v1 read (:class:`api.query.ReadQuery`) turned into the documents it asks for.

Plain filters go to :meth:`StoreReader.doc_texts` as they are. Two conditions need the store's
help first, with a query of their own on a borrowed read-only connection:

* ``_id``: the id we serve is the first 24 hex digits of the record's identifier (a UUID), so the
  identifier is found by prefix on its primary key, and the record's own key columns become
  filters (the delta of a reading is then computed as for any other read);
* a ``/pattern/`` on a string column: the pattern is tried on the column's distinct values
  (a few event types, not every row), and the values it refuses become ``!=`` filters.

Entries get the two fields Nightscout always adds on the way in and we do not store:
``sysTime`` (the reading's time, UTC ISO) and ``utcOffset`` (minutes; the store keeps UTC).
"""

from __future__ import annotations

import json
import re
from typing import Final

from api.query import QueryError, ReadQuery
from connect.records import Collection
from store.abc import ReaderStore
from store.search import where
from store.values import Filter

#: more distinct values than this cannot be matched by a pattern within one request
MAX_DISTINCT: Final = 1000

# the stored JSON is compact: a top-level "dateString" member reads exactly like this (inside a
# string, every quote is escaped, so the pattern cannot match there)
_DATE_STRING = re.compile(r'"dateString":"([^"\\]*)"')


def id_filters(reader: ReaderStore, collection: Collection, wanted: str) -> tuple[Filter, ...] | None:
    """Filters that select the record served with ``_id`` ``wanted``, or ``None`` if none is."""
    return reader.id_filters(collection, wanted)


def distinct_values(reader: ReaderStore, collection: Collection, column: str) -> list[str]:
    """Every value ``column`` holds in ``collection`` (a 400 when there are too many to try)."""
    values = reader.distinct_values(collection, column, MAX_DISTINCT + 1)
    if len(values) > MAX_DISTINCT:
        raise QueryError(f"find: more than {MAX_DISTINCT} distinct values to match a pattern against")
    return values


def with_server_fields(text: str) -> str:
    """An entry's JSON with Nightscout's ``sysTime`` and ``utcOffset`` added."""
    found = _DATE_STRING.search(text)
    if found is None or not text.startswith("{"):
        return text
    return '{"sysTime":"' + found.group(1) + '","utcOffset":0,' + text[1:]


def read_texts(reader: ReaderStore, query: ReadQuery) -> list[str]:
    """The documents ``query`` selects, as JSON texts, newest first."""
    collection = query.collection
    filters = list(query.filters)
    wanted: str | None = None
    if query.object_ids:
        if len(set(query.object_ids)) > 1:
            return []  # every condition must hold, and a record has one id
        wanted = query.object_ids[0]
        keys = id_filters(reader, collection, wanted)
        if keys is None:
            return []
        filters.extend(keys)
    for column in dict.fromkeys(m.column for m in query.matches):
        on_column = [m for m in query.matches if m.column == column]
        values = distinct_values(reader, collection, column)
        refused = [v for v in values if not all(m.holds(v) for m in on_column)]
        if len(refused) == len(values):
            return []
        filters.extend(Filter(column, "!=", value) for value in refused)
    extra = where(collection, query.conditions) if query.conditions else None
    texts = reader.doc_texts(collection, filters, query.limit, extra=extra)
    if wanted is not None:
        head = '{"_id":"' + wanted + '"'
        texts = [text for text in texts if text.startswith(head)]
    if query.matches:
        # a value written after the distinct values were read is not among the refused ones
        texts = [text for text in texts if _holds(text, query)]
    if collection == "entries":
        texts = [with_server_fields(text) for text in texts]
    return texts


def _holds(text: str, query: ReadQuery) -> bool:
    doc = json.loads(text)
    return isinstance(doc, dict) and all(m.holds(doc.get(m.field)) for m in query.matches)


def read_body(reader: ReaderStore, query: ReadQuery) -> bytes:
    """A JSON array of :func:`read_texts`, ready to send."""
    return ("[" + ",".join(read_texts(reader, query)) + "]").encode("utf-8")
