"""API v3's CREATE, UPDATE and PATCH as both store backends make them.

The decisions (which stored document a write replaces, whether it counts as new, when it is
refused) are the same over SQLite and PostgreSQL; only the transaction and the four lookups and
writes they are made of speak a backend's SQL. So the decisions are written once, here, and each
backend's store supplies the steps."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Generic, TypeVar

from connect.records import Collection, Record
from store.values import Stored, V3Result

Conn = TypeVar("Conn")


class Gone(LookupError):
    """The document was deleted (API v3 answers 410 Gone)."""


class V3Writes(Generic[Conn]):
    """The v3 writes of a store whose transactions hand out ``Conn`` connections."""

    def transaction(self) -> AbstractContextManager[Conn]:
        raise NotImplementedError

    def _live(self, conn: Conn, collection: Collection, identifier: str) -> Stored:
        """(identifier, document) of the live document stored under ``identifier``, or None."""
        raise NotImplementedError

    def _deleted(self, conn: Conn, collection: Collection, identifier: str) -> bool:
        """Whether a document of ``identifier`` was deleted (and is remembered)."""
        raise NotImplementedError

    def _stored_by_fallback(self, conn: Conn, record: Record) -> str | None:
        """The identifier of a stored document with the same dedupe fallback fields, or None."""
        raise NotImplementedError

    def _write_one(self, conn: Conn, source: str, record: Record, ident: str) -> int:
        """Write ``record`` under ``ident``; its ``srv_modified``."""
        raise NotImplementedError

    def create_v3(self, source: str, record: Record, identifier: str | None) -> V3Result:
        """API v3's CREATE, in one transaction: the document replaces the stored one of the
        sender's ``identifier`` (a deleted one comes back), else the one of the same dedupe
        fallback fields (see :meth:`_stored_by_fallback`), keeping that one's identifier;
        otherwise it is new, under the sender's identifier or its own."""
        with self.transaction() as conn:
            ident: str | None = None
            if identifier is not None:
                live = self._live(conn, record.collection, identifier)
                if live is not None:
                    ident = live[0]
                elif self._deleted(conn, record.collection, identifier):
                    ident = identifier
            if ident is None:
                ident = self._stored_by_fallback(conn, record)
            existing = ident is not None
            ident = ident or identifier or record.identifier
            if not existing and self._live(conn, record.collection, ident) is not None:
                existing = True
            modified = self._write_one(conn, source, record, ident)
        return V3Result(identifier=ident, created=not existing, srv_modified=modified)

    def rewrite_v3(
        self,
        source: str,
        collection: Collection,
        identifier: str,
        build: Callable[[Stored], Record],
        *,
        must_exist: bool,
    ) -> V3Result:
        """API v3's UPDATE (``must_exist=False``: a missing document is created) and PATCH, in
        one transaction: ``build`` makes the new record from the stored document (or from None)
        and may raise to refuse it, leaving the store as it was. A deleted document raises
        :class:`Gone`; a missing one, when it must exist, :class:`KeyError`."""
        with self.transaction() as conn:
            live = self._live(conn, collection, identifier)
            if live is None and self._deleted(conn, collection, identifier):
                raise Gone(identifier)
            if live is None and must_exist:
                raise KeyError(identifier)
            record = build(live)
            if record.collection != collection:
                raise ValueError(f"a {record.collection} record is no {collection} document")
            ident = identifier if live is None else live[0]
            modified = self._write_one(conn, source, record, ident)
        return V3Result(identifier=ident, created=live is None, srv_modified=modified)
