"""The local SQLite store: the journal every frame persists into and every output reads from."""

from store.aio import AsyncStore
from store.database import Store
from store.values import PersistResult

__all__ = ["AsyncStore", "PersistResult", "Store"]
