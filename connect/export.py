"""``nightscout-connect export``: the records of a time range, oldest first, as CSV, JSON or
NDJSON, to stdout or a file, read from the store a page at a time (memory stays bounded
whatever the range). The range includes both ends; a day as ``--to`` includes all of that day.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, Final

from connect.loading import UsageError, load_settings, take_option
from connect.records import COLLECTIONS, Collection
from store.abc import ReaderStore
from store.export import EARLIEST, FORMATS, LATEST, Format, export_chunks, time_bound
from store.reader import StoreReader

HELP: Final = """usage: nightscout-connect export [--from DATE] [--to DATE] [--collection C]
                                 [--format csv|json|ndjson] [--output FILE]
                                 [--store-path PATH | --store-url URL [--account NAME]]

The records of a time range, oldest first, read from the store a page at a time.

  --from DATE        the first day or time to include (default: the oldest record)
  --to DATE          the last day or time to include; the end is inclusive: --to 2024-01-31
                     includes all of January 31st (UTC) (default: the newest record)
  --collection C     entries (default), treatments, devicestatus or profile
  --format F         csv (default: a header line, then a line per record), json (one array)
                     or ndjson (a JSON document per line)
  --output FILE      write FILE (it appears once the export is complete) instead of stdout
  --store-path PATH  the store file (default: CONNECT_STORE_PATH, else nightscout-connect.db)
  --store-url URL    a PostgreSQL store instead (default: CONNECT_STORE_URL), and of it the
  --account NAME     account NAME's records (default: CONNECT_ACCOUNT); both read as `run`
                     reads them (flags, CONNECT_* variables, a .env file), checked alike

DATE is a day (2024-01-31, UTC), an ISO-8601 time (2024-01-31T08:00:00+01:00; UTC when it
names no offset) or epoch milliseconds.
"""


def _choice(value: str | None, choices: Sequence[str], flag: str, default: str) -> str:
    if value is None:
        return default
    if value not in choices:
        raise UsageError([f"{flag}: must be {', '.join(choices[:-1])} or {choices[-1]}, not {value!r}"])
    return value


def _bound(value: str | None, flag: str, *, end: bool) -> int:
    if value is None:
        return LATEST if end else EARLIEST
    try:
        return time_bound(value, end=end)
    except ValueError as exc:
        raise UsageError([f"{flag}: {exc}"]) from None


def _write(chunks: Iterable[bytes], out: BinaryIO) -> None:
    for chunk in chunks:
        out.write(chunk)
    out.flush()


def run_export(args: Sequence[str]) -> int:
    if any(arg in ("-h", "--help") for arg in args):
        print(HELP)
        return 0
    rest = list(args)
    since_text, rest = take_option(rest, "--from", "name a day, a time or epoch milliseconds")
    until_text, rest = take_option(rest, "--to", "name a day, a time or epoch milliseconds")
    collection_text, rest = take_option(
        rest, "--collection", "name entries, treatments, devicestatus or profile"
    )
    format_text, rest = take_option(rest, "--format", "name csv, json or ndjson")
    output, rest = take_option(rest, "--output", "name the file to write")
    # the store as every command names it: through the settings (flags, variables, .env)
    store_args: list[str] = []
    for flag, need in (
        ("--store-path", "name the store file"),
        ("--store-url", "name the PostgreSQL store"),
        ("--account", "name the account"),
    ):
        value, rest = take_option(rest, flag, need)
        if value is not None:
            store_args += [flag, value]
    if rest:
        raise UsageError(
            [f"export: unknown argument {rest[0]!r} (nightscout-connect export --help lists them)"]
        )
    collection: Collection = next(
        c for c in COLLECTIONS if c == _choice(collection_text, COLLECTIONS, "--collection", "entries")
    )
    fmt: Format = next(f for f in FORMATS if f == _choice(format_text, FORMATS, "--format", "csv"))
    since = _bound(since_text, "--from", end=False)
    until = _bound(until_text, "--to", end=True)
    settings, _ = load_settings(store_args, source_name="sim")
    # a file named here is the store, whatever database the environment names
    url = None if "--store-path" in store_args and "--store-url" not in store_args else settings.store_url
    reader: ReaderStore
    if url is not None:
        from store.postgres_reader import PostgresReader

        reader = PostgresReader(url.get_secret_value(), account=settings.account)
    else:
        path = settings.store_path
        if path == ":memory:" or not Path(path).is_file():
            raise UsageError([f"--store-path / CONNECT_STORE_PATH: no store at {path!r}"])
        reader = StoreReader(path)

    with contextlib.closing(reader):
        chunks = export_chunks(reader, collection, fmt, since, until)
        if output is None:
            try:
                _write(chunks, sys.stdout.buffer)
            except BrokenPipeError:
                # the reader went away (| head): what it wanted it has; say nothing more
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return 0
        target = Path(output)
        partial = target.with_name(target.name + ".part")
        try:
            with partial.open("wb") as out:
                _write(chunks, out)
            partial.replace(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return 0
