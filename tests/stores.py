"""Both store backends for the contract tests: ``make_store`` (conftest.py) gives a SQLite store
or a PostgreSQL store (a fresh database on the private cluster), and :func:`query` reads either
with the same SQL (the tables have the same columns; ``?`` placeholders)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from store.abc import WriterStore
from store.database import Store
from store.postgres import PostgresStore

BACKENDS = ("sqlite", "postgres")


class MakeStore(Protocol):
    def __call__(self, account: str = "") -> WriterStore: ...


def query(store: WriterStore, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` over the store's own tables (all accounts: a test database holds the
    accounts the test made)."""
    if isinstance(store, Store):
        return [tuple(row) for row in store.conn.execute(sql, params).fetchall()]
    assert isinstance(store, PostgresStore)
    with store.pool.connection() as conn:
        return [tuple(row) for row in conn.execute(sql.replace("?", "%s").encode(), params).fetchall()]


def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """Stores of one backend (``request.param``), each account its own (a SQLite file per
    account; one PostgreSQL database for all), closed afterwards."""
    made: list[WriterStore] = []
    url: str | None = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")

    def make(account: str = "") -> WriterStore:
        store: WriterStore
        if url is None:
            store = Store(tmp_path / f"{account or 'store'}.db")
        else:
            store = PostgresStore(url, account=account)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
