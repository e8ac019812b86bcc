"""``nightscout-connect rejected [retry]``: the records an output set aside, and sending them again.

An output sets a record aside when the far side refuses it for good (a 4xx other than auth):
the record stays in the store, its cursor moves on, and the ``rejected`` table notes it. After
the cause is fixed (a site upgraded, a proxy's rule corrected), ``rejected retry`` queues those
records again: the output's next pass sends them before anything new, and each one leaves the
table when the far side takes it (or is set aside again, with the new reason, when it does not).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from connect.loading import UsageError, load_settings, take_option
from connect.logs import configure
from connect.records import COLLECTIONS, Collection, iso_from_ms
from store.abc import WriterStore
from store.database import Store
from store.values import RejectedGroup

RETRY_HINT = "send them again: nightscout-connect rejected retry [--output NAME] [--collection NAME]"


def _collection(value: str | None) -> Collection | None:
    if value is None:
        return None
    for name in COLLECTIONS:
        if value == name:
            return name
    raise UsageError([f"--collection: must be one of {', '.join(COLLECTIONS)}"])


def table(groups: Sequence[RejectedGroup]) -> list[str]:
    """One line per output, collection, status code and reason, under a header."""
    header = ("OUTPUT", "COLLECTION", "STATUS", "RECORDS", "STATE", "LAST SET ASIDE", "REASON")
    rows = [
        (
            g.output, g.collection, str(g.status), str(g.records),
            "queued for retry" if g.queued else "set aside", iso_from_ms(g.last_at)[:19] + "Z", g.reason,
        )
        for g in groups
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in [header, *rows]
    ]


def cmd_rejected(args: Sequence[str]) -> int:
    """``rejected [--output NAME] [--collection NAME]``: list; ``rejected retry …``: queue again."""
    rest = list(args)
    retry = bool(rest) and rest[0] == "retry"
    if retry:
        rest = rest[1:]
    if rest and not rest[0].startswith("-"):
        raise UsageError(
            [
                f"rejected: unknown action {rest[0]!r}; use `rejected` to list or `rejected retry` to send again"
            ]
        )
    output, rest = take_option(rest, "--output", "name an output (nightscout or mqtt)")
    chosen, rest = take_option(rest, "--collection", f"name one of {', '.join(COLLECTIONS)}")
    collection = _collection(chosen)
    settings, _ = load_settings(rest, source_name="sim")
    configure(fmt=settings.log_format, level=settings.log_level)
    store: WriterStore
    if settings.store_url is not None:
        from store.postgres import PostgresStore

        store = PostgresStore.open(settings.store_url.get_secret_value(), account=settings.account)
    else:
        path = settings.store_path
        if path == ":memory:" or not os.path.exists(path):
            raise UsageError([f"--store-path / CONNECT_STORE_PATH: no store at {path!r}"])
        store = Store(path)
    try:
        if retry:
            return _retry(store, output, collection)
        groups = store.rejected(output, collection)
    finally:
        store.close()
    if not groups:
        print("no records set aside")
        return 0
    print("\n".join(table(groups)))
    if any(not g.queued for g in groups):
        print(RETRY_HINT)
    return 0


def _retry(store: WriterStore, output: str | None, collection: Collection | None) -> int:
    queued = store.queue_retry(output, collection)
    if not queued:
        print("nothing set aside to send again")
        return 0
    total = sum(queued.values())
    detail = ", ".join(f"{key} {n}" for key, n in sorted(queued.items()))
    print(f"queued {total} records for another try ({detail})")
    print(
        "each output's next delivery pass sends them first: `nightscout-connect once`, or a running "
        "daemon after its next frame"
    )
    return 0


__all__ = ["cmd_rejected", "table"]
