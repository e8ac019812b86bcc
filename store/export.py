"""Exports of a time range, and each device's newest record, read from the store in pages.

An export walks the range oldest first, one page of :data:`PAGE` rows per query (keyset on
``(date, rowid)``): memory stays bounded by a page whatever the range, and no read transaction
stays open between pages (the writer's checkpoints are never held back by a slow reader).
A record written while an export runs is in it when its time is still ahead of the walk.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any, Final, Literal

from connect.records import Collection, ms_from_iso
from store.abc import ReaderStore
from store.values import SQLITE_INT_MAX

Format = Literal["csv", "json", "ndjson"]
FORMATS: Final[tuple[Format, ...]] = ("csv", "json", "ndjson")
MEDIA_TYPES: Final[dict[Format, str]] = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "ndjson": "application/x-ndjson",
}
#: rows per query
PAGE: Final = 500
DAY_MS: Final = 86_400_000
#: the earliest and latest times a range can name
EARLIEST: Final = -SQLITE_INT_MAX
LATEST: Final = SQLITE_INT_MAX

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: what an export bound may be over the API, exactly (its OpenAPI pattern too): epoch ms, or a
#: real day of 2000–2099 (29 February in leap years only), with an optional ISO-8601 time
BOUND_PATTERN: Final = (
    r"^(-?\d{1,18}|(20\d\d-((0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31)"
    r"|20(0[48]|[2468][048]|[13579][26])-02-29)"
    r"(T([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,6})?)?(Z|[+-](0\d|1[0-3]):[0-5]\d)?)?)$"
)
_BOUND = re.compile(BOUND_PATTERN)
_EPOCH_MS = re.compile(r"^-?\d{1,18}$")
#: an unencoded "+02:00" in a query string arrives as " 02:00"
_SPACED_OFFSET = re.compile(r"^(\d{4}-\d\d-\d\dT[\d:.]+) (\d\d:?\d\d)$")


def time_bound(text: str, *, end: bool) -> int:
    """One end of an export's range, in epoch ms: epoch ms, an ISO-8601 time (UTC unless it names
    an offset), or a day (UTC). The range is inclusive at both ends, so as its end a day stands
    for its last millisecond: ``--to 2024-01-31`` includes all of January 31st.

    Raises :class:`ValueError` with a message fit for a person.
    """
    value = text.strip()
    if _EPOCH_MS.match(value):
        return int(value)
    value = _SPACED_OFFSET.sub(r"\1+\2", value)
    try:
        ms = ms_from_iso(value)
    except (ValueError, OverflowError, OSError):
        raise ValueError("expected a day (2024-01-31), an ISO-8601 time or epoch milliseconds") from None
    return ms + DAY_MS - 1 if end and _DAY.match(value) else ms


#: an export's CSV columns per collection; ``document`` is the whole record as JSON (for the
#: nested collections, whose fields vary by device)
CSV_COLUMNS: Final[dict[Collection, tuple[str, ...]]] = {
    "entries": ("dateString", "date", "type", "sgv", "direction", "trend", "mbg", "noise", "device", "identifier"),
    "treatments": (
        "created_at", "date", "eventType", "insulin", "carbs", "duration", "rate", "absolute", "percent",
        "glucose", "glucoseType", "units", "notes", "enteredBy", "device", "identifier",
    ),
    "devicestatus": ("created_at", "date", "device", "identifier", "document"),
    "profile": ("startDate", "date", "defaultProfile", "units", "device", "identifier", "document"),
}  # fmt: skip


def stored_pages(
    reader: ReaderStore, collection: Collection, since: int, until: int, *, page: int | None = None
) -> Iterator[list[str]]:
    """The stored JSON of the records with ``since <= date <= until``, oldest first, a page
    (:data:`PAGE` rows unless told) at a time."""
    return reader.pages_between(collection, since, until, PAGE if page is None else page)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def csv_lines(collection: Collection, docs: Sequence[str], *, header: bool) -> str:
    """CSV rows (and the header first, when asked) for stored documents."""
    columns = CSV_COLUMNS[collection]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(columns)
    for text in docs:
        doc = json.loads(text)
        writer.writerow(_cell(text if column == "document" else doc.get(column)) for column in columns)
    return out.getvalue()


def export_chunks(
    reader: ReaderStore,
    collection: Collection,
    fmt: Format,
    since: int,
    until: int,
    *,
    page: int | None = None,
) -> Iterator[bytes]:
    """An export of ``since <= date <= until``, oldest first, as chunks to write one after another.

    csv: a header line, then a line per record; ndjson: a JSON document per line; json: one
    array. A chunk holds one page.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    if fmt == "csv":
        yield csv_lines(collection, [], header=True).encode("utf-8")
    if fmt == "json":
        yield b"["
    started = False
    for docs in stored_pages(reader, collection, since, until, page=page):
        if fmt == "csv":
            yield csv_lines(collection, docs, header=False).encode("utf-8")
        elif fmt == "ndjson":
            yield ("\n".join(docs) + "\n").encode("utf-8")
        else:
            yield (("," if started else "") + ",".join(docs)).encode("utf-8")
        started = True
    if fmt == "json":
        yield b"]\n"


def devices(reader: ReaderStore, collection: Collection) -> list[tuple[str, int]]:
    """Every device of a collection with the time of its newest record, newest first."""
    return reader.devices(collection)
