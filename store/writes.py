"""The writes whose decisions both store backends share: pushed records (the write API and the
MQTT subscription, deduplicated as Nightscout does) and API v3's CREATE, UPDATE and PATCH.

The decisions (which stored document a write replaces, whether it counts as new, when it is
refused) are the same over SQLite and PostgreSQL; only the transaction and the lookups and writes
they are made of speak a backend's SQL. So the decisions are written once, here, and each
backend's store supplies the steps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Generic, TypeVar

from connect.records import Collection, Entry, Record
from store.values import PushKey, PushResult, Stored, V3Result

Conn = TypeVar("Conn")


class Gone(LookupError):
    """The document was deleted (API v3 answers 410 Gone)."""


class SharedWrites(Generic[Conn]):
    """The shared writes of a store whose transactions hand out ``Conn`` connections."""

    def transaction(self) -> AbstractContextManager[Conn]:
        raise NotImplementedError

    def _upsert(
        self, conn: Conn, source: str, records: Sequence[Record], identifiers: Sequence[str] | None = None
    ) -> dict[str, int]:
        """Write ``records`` (under ``identifiers`` when given); rows written per collection."""
        raise NotImplementedError

    def _stored_by_object_id(self, conn: Conn, collection: Collection, oid: str) -> str | None:
        """The identifier of the record served with ``_id`` ``oid``, or None."""
        raise NotImplementedError

    def _stored_by_key(self, conn: Conn, record: Record) -> str | None:
        """The identifier of a stored record with Nightscout's dedupe key of ``record``, or None."""
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

    def persist_push(self, source: str, pushed: Sequence[PushKey]) -> PushResult:
        """Write pushed records in one transaction, deduplicated as Nightscout does: a record
        named by ``_id`` replaces that record (absent: a :class:`KeyError`, nothing written); an
        entry replaces the stored one of the same date and type, a treatment the one of its
        sender's ``identifier`` or else of the same created_at and eventType; a device status is
        kept under its device and time. Records later in ``pushed`` win over earlier ones.
        ``source`` is the origin the rows carry (the Nightscout output skips its own site's)."""
        chosen: list[str] = []
        with self.transaction() as conn:
            claimed: dict[tuple[str, int, str], str] = {}
            for item in pushed:
                record = item.record
                ident: str | None = None
                if item.object_id is not None:
                    ident = self._stored_by_object_id(conn, record.collection, item.object_id)
                    if ident is None and item.must_exist:
                        raise KeyError(item.object_id)
                if ident is None and item.identifier is not None:
                    ident = item.identifier
                kind = record.type if isinstance(record, Entry) else getattr(record, "event_type", "")
                key = (record.collection, record.date, kind)
                if ident is None and record.collection in {"entries", "treatments"}:
                    ident = claimed.get(key) or self._stored_by_key(conn, record)
                ident = ident or record.identifier
                claimed[key] = ident
                chosen.append(ident)
            written = self._upsert(conn, source, [item.record for item in pushed], chosen)
        return PushResult(identifiers=chosen, written=written)

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
