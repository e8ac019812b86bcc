"""One account's read-only view of a PostgreSQL store: what :class:`store.reader.StoreReader`
answers over a SQLite file, for the Nightscout v1 reads, the status page, the alerts routes and
the metrics.

Documents are served exactly as the SQLite reader serves them: the stored JSON with ``_id``
(and ``mills``, and a CGM reading's computed ``delta``) spliced in front, by the same
:func:`store.reader.splice`. Readings of the same time are ordered by their first write, then
``seq`` (SQLite's reader uses its ``rowid``, the order rows were first inserted: the same order
for every row written once).

Not here: a search on any field (``find`` on a field without a column, and API v3's searches),
which the SQLite reader runs through functions registered on its connection.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import psycopg
import psycopg_pool

from connect.errors import StoreError, StoreUnusable
from connect.records import COLLECTIONS, EVENTS, Collection
from store.postgres import Conn, _one_line, _q, display_url, is_store_url, open_pool
from store.postgres_schema import SCHEMA_VERSION, current_version
from store.reader import DELTA_WINDOW_MS, FILTER_COLUMNS, KEY_COLUMNS, WITH_MILLS, _delta, splice
from store.search import COLUMNS as SEARCH_COLUMNS
from store.search import SORTS_AS_DATE
from store.terms import AnyOf, Condition, Search, Value
from store.terms import Row as SearchRow
from store.values import OPS, Dose, Filter, Reading, RejectedGroup, StoredEpisode, Where

_ORDER: Final = "e.date DESC, e.srv_created DESC, e.seq DESC"


class PostgresReader:
    """Read-only queries for one ``account``; safe to use from many threads at once (each use
    borrows a pooled connection). ``PostgresReader(url)`` has a pool of its own;
    ``PostgresReader(pool, account=…)`` shares one."""

    def __init__(self, url_or_pool: str | psycopg_pool.ConnectionPool, *, account: str = "") -> None:
        if isinstance(url_or_pool, str):
            self.pool = open_pool(url_or_pool, name="nightscout-connect-reader")
            self._owns_pool = True
            self.path = display_url(url_or_pool)
        else:
            self.pool = url_or_pool
            self._owns_pool = False
            info = url_or_pool.conninfo
            self.path = display_url(info) if isinstance(info, str) and is_store_url(info) else "postgresql"
        self.account = account

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        """A pooled connection for this use only; a lost server or a pool with no free
        connection is a :class:`StoreError` (the API answers 503), without the password."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreError(f"store {self.path}: {_one_line(exc)}") from exc

    def close(self) -> None:
        if self._owns_pool:
            self.pool.close()

    def __enter__(self) -> PostgresReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- documents ------------------------------------------------------------------------

    def _where(self, collection: Collection, filters: Sequence[Filter]) -> tuple[str, list[Any]]:
        allowed = FILTER_COLUMNS[collection]
        clauses = ["e.account = %s"]
        params: list[Any] = [self.account]
        for f in filters:
            if f.column not in allowed or f.op not in OPS:
                raise ValueError(f"cannot filter {collection} on {f.column!r}")
            # text compares byte by byte, as SQLite compares it
            collate = ' COLLATE "C"' if isinstance(f.value, str) else ""
            clauses.append(f"e.{f.column}{collate} {f.op} %s")
            params.append(f.value)
        return " WHERE " + " AND ".join(clauses), params

    def doc_texts(
        self,
        collection: Collection,
        filters: Sequence[Filter] = (),
        limit: int = 10,
        *,
        page_deltas: bool = True,
        extra: Where | None = None,
    ) -> list[str]:
        """The newest ``limit`` documents matching every filter, as JSON texts, newest first
        (see :meth:`store.reader.StoreReader.doc_texts`; ``page_deltas`` is accepted and has no
        effect: the previous reading is always looked up, one index probe per row)."""
        if collection not in COLLECTIONS:
            raise ValueError(f"unknown collection {collection!r}")
        where, params = self._where(collection, filters)
        # a find on any field: the same conditions as PostgreSQL; a pattern's matcher is Python's,
        # so with one the rows are filtered here and the limit applied after
        matchers: list[Condition] = []
        if extra is not None:
            search = _PgSearch(collection)
            for item in extra.items:
                if isinstance(item, Condition) and item.op == "re":
                    matchers.append(item)
                    continue
                sql, item_params = search.item(item)
                where += f" AND {sql}"
                params.extend(item_params)
        if matchers:
            pairs = self._doc_texts(collection, where, params, None)
            return [t for t, stored in pairs if all(_matches(c, stored) for c in matchers)][:limit]
        return [text for text, _ in self._doc_texts(collection, where, params, limit)]

    def _doc_texts(
        self, collection: Collection, where: str, params: list[Any], limit: int | None
    ) -> list[tuple[str, str]]:
        """Each document as served, with the JSON as stored (what conditions are judged on)."""
        tail = " LIMIT %s" if limit is not None else ""
        params = [*params, limit] if limit is not None else list(params)
        if collection != "entries":
            sql = f"SELECT e.identifier, e.json, e.date FROM {collection} e{where} ORDER BY {_ORDER}{tail}"
            with self.connection() as conn:
                rows = conn.execute(_q(sql), params).fetchall()
            served = collection in WITH_MILLS
            return [
                (splice(doc, identifier, mills=date if served else None), doc)
                for identifier, doc, date in rows
            ]
        sql = (
            "SELECT e.identifier, e.json, e.sgv, e.date, p.sgv, p.date FROM entries e "
            "LEFT JOIN LATERAL (SELECT q.sgv, q.date FROM entries q WHERE q.account = e.account "
            "AND e.type = 'sgv' AND q.type = 'sgv' AND q.device = e.device AND q.date < e.date "
            "AND q.date >= e.date - %s AND q.sgv IS NOT NULL "
            "ORDER BY q.date DESC, q.srv_created DESC, q.seq DESC LIMIT 1) p ON true"
            f"{where} ORDER BY {_ORDER}{tail}"
        )
        with self.connection() as conn:
            rows = conn.execute(_q(sql), [DELTA_WINDOW_MS, *params]).fetchall()
        out: list[tuple[str, str]] = []
        for identifier, doc, sgv, date, prev_sgv, prev_date in rows:
            if prev_sgv is None or sgv is None or '"delta":' in doc:
                out.append((splice(doc, identifier, mills=date), doc))
            else:
                out.append((splice(doc, identifier, _delta(sgv, date, prev_sgv, prev_date), mills=date), doc))
        return out

    def body(self, collection: Collection, filters: Sequence[Filter] = (), limit: int = 10) -> bytes:
        """A JSON array of :meth:`doc_texts`, ready to send."""
        return ("[" + ",".join(self.doc_texts(collection, filters, limit)) + "]").encode("utf-8")

    def docs(
        self, collection: Collection, filters: Sequence[Filter] = (), limit: int = 10
    ) -> list[dict[str, Any]]:
        return [json.loads(text) for text in self.doc_texts(collection, filters, limit)]

    def id_filters(self, collection: Collection, wanted: str) -> tuple[Filter, ...] | None:
        """Filters that select the record served with ``_id`` ``wanted``, or None if none is."""
        columns = KEY_COLUMNS[collection]
        with self.connection() as conn:
            row = conn.execute(
                _q(
                    f"SELECT {', '.join(columns)} FROM {collection} WHERE account = %s AND object_id = %s LIMIT 1"
                ),
                (self.account, wanted.lower()),
            ).fetchone()
        if row is None:
            return None
        return tuple(
            Filter(column, "=", value)
            for column, value in zip(columns, row, strict=True)
            if isinstance(value, (int, str))
        )

    def distinct_values(self, collection: Collection, column: str, limit: int) -> list[str]:
        """Up to ``limit`` values ``column`` holds in ``collection``."""
        if column not in FILTER_COLUMNS[collection]:
            raise ValueError(f"cannot read the values of {collection}.{column}")
        with self.connection() as conn:
            rows = conn.execute(
                _q(
                    f"SELECT DISTINCT {column} FROM {collection} WHERE account = %s AND {column} IS NOT NULL LIMIT %s"
                ),
                (self.account, limit),
            ).fetchall()
        return [str(value) for (value,) in rows]

    def pages_between(self, collection: Collection, since: int, until: int, page: int) -> Iterator[list[str]]:
        """The stored JSON of the records with ``since <= date <= until``, oldest first (then by
        ``seq``), ``page`` rows at a time, each page a query of its own."""
        base = f"SELECT date, seq, json FROM {collection} WHERE account = %s AND date >= %s AND date <= %s"
        last: tuple[int, int] | None = None
        params: tuple[Any, ...]
        while True:
            with self.connection() as conn:
                if last is None:
                    sql, params = f"{base} ORDER BY date, seq LIMIT %s", (self.account, since, until, page)
                else:
                    sql = f"{base} AND (date, seq) > (%s, %s) ORDER BY date, seq LIMIT %s"
                    params = (self.account, last[0], until, last[0], last[1], page)
                rows = conn.execute(_q(sql), params).fetchall()
            if not rows:
                return
            yield [str(doc) for _date, _seq, doc in rows]
            if len(rows) < page:
                return
            last = (int(rows[-1][0]), int(rows[-1][1]))

    def devices(self, collection: Collection) -> list[tuple[str, int]]:
        """Every device of a collection with the time of its newest record, newest first."""
        with self.connection() as conn:
            rows = conn.execute(
                _q(
                    f"SELECT device, max(date) AS newest FROM {collection} WHERE account = %s "
                    'AND device IS NOT NULL GROUP BY device ORDER BY newest DESC, device COLLATE "C"'
                ),
                (self.account,),
            ).fetchall()
        return [(str(device), int(newest)) for device, newest in rows]

    # --- API v3's reads by identifier and by time of change ----------------------------------

    _V3: Final = "SELECT identifier, json, srv_created, srv_modified"

    @staticmethod
    def _v3_rows(rows: Sequence[Sequence[Any]], *, valid: bool = True) -> list[SearchRow]:
        return [
            SearchRow(str(i), str(doc), int(created), int(modified), valid=valid)
            for i, doc, created, modified in rows
        ]

    def one(self, collection: Collection, identifier: str) -> SearchRow | None:
        """The document with this identifier, or served with this 24-hex ``_id`` (v3's
        fallback); a deleted one comes with ``valid`` False."""
        with self.connection() as conn:
            rows = conn.execute(
                _q(f"{self._V3} FROM {collection} WHERE account = %s AND identifier = %s"),
                (self.account, identifier),
            ).fetchall()
            if rows:
                return self._v3_rows(rows)[0]
            gone = conn.execute(
                f"{self._V3} FROM deleted WHERE account = %s AND collection = %s AND identifier = %s "
                "AND json IS NOT NULL",
                (self.account, collection, identifier),
            ).fetchall()
            if gone:
                return self._v3_rows(gone, valid=False)[0]
            if re.fullmatch(r"[0-9a-f]{24}", identifier.lower()):
                rows = conn.execute(
                    _q(f"{self._V3} FROM {collection} WHERE account = %s AND object_id = %s LIMIT 1"),
                    (self.account, identifier.lower()),
                ).fetchall()
        found = self._v3_rows(rows)
        return found[0] if found else None

    def history(
        self, collection: Collection, since: int, limit: int, *, inclusive: bool = False
    ) -> list[SearchRow]:
        """Documents changed after ``since``, oldest change first, deleted ones among them
        (``valid`` False), never part of one instant's changes (see :func:`store.search.history`)."""
        op = ">=" if inclusive else ">"

        def changed(conn: Conn, where: str, params: tuple[Any, ...], tail: str = "") -> list[SearchRow]:
            sql = (
                f"SELECT identifier, json, srv_created, srv_modified, seq, 1 FROM {collection} "
                f"WHERE account = %s AND srv_modified {where} UNION ALL "
                "SELECT identifier, json, srv_created, srv_modified, seq, 0 FROM deleted "
                f"WHERE account = %s AND collection = %s AND json IS NOT NULL AND srv_modified {where} "
                f"ORDER BY 4, 5 {tail}"
            )
            found = conn.execute(
                _q(sql), (self.account, *params, self.account, collection, *params)
            ).fetchall()
            return [
                SearchRow(str(i), str(doc), int(created), int(modified), valid=bool(live))
                for i, doc, created, modified, _seq, live in found
            ]

        with self.connection() as conn:
            rows = changed(conn, f"{op} %s", (since,), f"LIMIT {int(limit) + 1}")
            if len(rows) <= limit:
                return rows
            last = rows[limit - 1].srv_modified
            if rows[limit].srv_modified != last:
                return rows[:limit]
            kept = [row for row in rows[:limit] if row.srv_modified != last]
            if kept:
                return kept
            return changed(conn, "= %s", (last,))

    def search(self, query: Search) -> list[SearchRow]:
        """API v3's search (see :func:`store.search.search`): the same conditions with the same
        MongoDB-like typing, on the columns where the store keeps a field and on the stored
        JSON (read as ``jsonb``) otherwise. A ``re`` condition's matcher is Python's: the rows
        the other conditions select are filtered here, then skipped and limited."""
        if query.collection not in COLLECTIONS:
            raise ValueError(f"unknown collection {query.collection!r}")
        sql = _PgSearch(query.collection)
        fragments = [sql.condition(c) for c in query.conditions if c.op != "re"]
        matchers = [c for c in query.conditions if c.op == "re"]
        params: list[Any] = [self.account]
        where = " AND ".join(["e.account = %s", *(f for f, _ in fragments)])
        params += [p for _, ps in fragments for p in ps]
        direction = "DESC" if query.descending else "ASC"
        order = [f'e.identifier COLLATE "C" {direction}']
        if query.sort is not None and query.sort != "identifier":
            if query.sort in sql.columns:
                column = "date" if query.sort in SORTS_AS_DATE else sql.columns[query.sort]
                nulls = "NULLS LAST" if query.descending else "NULLS FIRST"  # SQLite: NULL is least
                collate = ' COLLATE "C"' if column in _TEXT_COLUMNS else ""
                order.insert(0, f"e.{column}{collate} {direction} {nulls}")
            else:
                # SQLite's order of json_extract's values: missing and null, numbers (and
                # booleans, as 0 and 1), then text
                value = "(e.json::jsonb #> %s::text[])"
                nulls = "NULLS LAST" if query.descending else "NULLS FIRST"  # SQLite: NULL is least
                order[:0] = [
                    f"CASE jsonb_typeof({value}) WHEN 'number' THEN 1 WHEN 'boolean' THEN 1 "
                    f"WHEN 'string' THEN 2 WHEN 'object' THEN 2 WHEN 'array' THEN 2 ELSE 0 END {direction}",
                    f"CASE jsonb_typeof({value}) WHEN 'number' THEN ({value})::numeric "
                    f"WHEN 'boolean' THEN ({value})::boolean::int END {direction} {nulls}",
                    f"CASE jsonb_typeof({value}) WHEN 'string' THEN {value} #>> '{{}}' "
                    f"WHEN 'object' THEN ({value})::text WHEN 'array' THEN ({value})::text END "
                    f'COLLATE "C" {direction} {nulls}',
                ]
                params += [_path(query.sort)] * 8  # one per use of the member above
        statement = f"SELECT e.identifier, e.json, e.srv_created, e.srv_modified FROM {query.collection} e WHERE {where} "
        statement += f"ORDER BY {', '.join(order)}"
        if not matchers:
            statement += " LIMIT %s OFFSET %s"
            params += [query.limit, query.skip]
        with self.connection() as conn:
            rows = self._v3_rows(conn.execute(_q(statement), params).fetchall())
        if not matchers:
            return rows
        kept = [row for row in rows if all(_matches(c, row.json) for c in matchers)]
        return kept[query.skip : query.skip + query.limit]

    def last_modified(self) -> dict[Collection, int]:
        """Per collection holding documents: its newest ``srv_modified`` or record time."""
        out: dict[Collection, int] = {}
        with self.connection() as conn:
            for name in COLLECTIONS:
                row = conn.execute(
                    _q(f"SELECT max(srv_modified), max(date) FROM {name} WHERE account = %s"), (self.account,)
                ).fetchone()
                times = [int(t) for t in (row or ()) if t is not None]
                # a deletion is a modification too
                gone = conn.execute(
                    "SELECT max(srv_modified) FROM deleted WHERE account = %s AND collection = %s "
                    "AND json IS NOT NULL",
                    (self.account, name),
                ).fetchone()
                times += [int(gone[0])] if gone is not None and gone[0] is not None else []
                if times:
                    out[name] = max(times)
        return out

    # --- what the status page and the status API show ----------------------------------------

    def readings(self, since_ms: int, until_ms: int) -> list[Reading]:
        """CGM readings with ``since_ms <= date <= until_ms``, oldest first."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT date, sgv, direction, device FROM entries WHERE account = %s AND type = 'sgv' "
                "AND sgv IS NOT NULL AND date >= %s AND date <= %s ORDER BY date, srv_created, seq",
                (self.account, since_ms, until_ms),
            ).fetchall()
        return [Reading(int(d), int(s), direction, str(device)) for d, s, direction, device in rows]

    def latest_reading(self) -> Reading | None:
        with self.connection() as conn:
            row = conn.execute(
                "SELECT date, sgv, direction, device FROM entries WHERE account = %s AND type = 'sgv' "
                "AND sgv IS NOT NULL ORDER BY date DESC, srv_created DESC, seq DESC LIMIT 1",
                (self.account,),
            ).fetchone()
        return None if row is None else Reading(int(row[0]), int(row[1]), row[2], str(row[3]))

    def latest_delta(self) -> float | None:
        """The newest CGM reading's ``delta`` as ``/api/v1/entries/current.json`` serves it."""
        texts = self.doc_texts("entries", [Filter("type", "=", "sgv")], limit=1)
        if not texts:
            return None
        delta = json.loads(texts[0]).get("delta")
        return float(delta) if isinstance(delta, (int, float)) and not isinstance(delta, bool) else None

    def doses(self, since_ms: int, until_ms: int) -> list[Dose]:
        """Treatments with carbs or insulin and ``since_ms <= date <= until_ms``, oldest first."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT date, event_type, insulin, carbs FROM treatments WHERE account = %s AND date >= %s "
                "AND date <= %s AND (insulin > 0 OR carbs > 0) ORDER BY date, srv_created, seq",
                (self.account, since_ms, until_ms),
            ).fetchall()
        return [
            Dose(
                int(d),
                None if e is None else str(e),
                None if i is None else float(i),
                None if c is None else float(c),
            )
            for d, e, i, c in rows
        ]

    def collections(self) -> dict[str, dict[str, int | None]]:
        """Records stored and the newest record time, per collection."""
        out: dict[str, dict[str, int | None]] = {}
        with self.connection() as conn:
            for name in COLLECTIONS:
                row = conn.execute(
                    _q(f"SELECT count(*), max(date) FROM {name} WHERE account = %s"), (self.account,)
                ).fetchone()
                count, newest = row if row is not None else (0, None)
                out[name] = {"records": int(count), "newest": None if newest is None else int(newest)}
        return out

    def outputs(self) -> list[str]:
        """Every output that has a delivery cursor for this account."""
        with self.connection() as conn:
            rows = conn.execute(
                'SELECT DISTINCT output COLLATE "C" FROM cursors WHERE account = %s ORDER BY 1',
                (self.account,),
            ).fetchall()
        return [str(name) for (name,) in rows]

    def lag(self, outputs: Iterable[str]) -> dict[str, dict[str, int]]:
        """Records each output has not delivered yet, per collection (see StoreReader.lag)."""
        result: dict[str, dict[str, int]] = {}
        with self.connection() as conn:
            for output in outputs:
                cursors = {
                    str(c): int(s)
                    for c, s in conn.execute(
                        "SELECT collection, seq FROM cursors WHERE account = %s AND output = %s",
                        (self.account, output),
                    ).fetchall()
                }
                per: dict[str, int] = {}
                delivers_events = EVENTS in cursors
                for name in COLLECTIONS:
                    if delivers_events and name not in cursors:
                        continue
                    after = cursors.get(name, 0)
                    per[name] = self._count(
                        conn, f"SELECT count(*) FROM {name} WHERE account = %s AND seq > %s", after
                    ) + self._count(
                        conn,
                        f"SELECT count(*) FROM rejected r JOIN {name} c "
                        "ON c.account = r.account AND c.seq BETWEEN r.first_seq AND r.last_seq "
                        f"WHERE r.account = %s AND r.output = %s AND r.collection = '{name}' AND r.retry = 1 "
                        "AND c.seq <= %s",
                        output,
                        after,
                    )
                if delivers_events:
                    per[EVENTS] = self._count(
                        conn, "SELECT count(*) FROM events WHERE account = %s AND seq > %s", cursors[EVENTS]
                    )
                result[output] = per
        return result

    def _count(self, conn: Conn, sql: str, *params: Any) -> int:
        row = conn.execute(_q(sql), (self.account, *params)).fetchone()
        return 0 if row is None else int(row[0])

    def rejected(self) -> list[RejectedGroup]:
        """Records the outputs set aside, grouped (see :meth:`store.database.Store.rejected`)."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT output, collection, status, error, retry, sum(records), min(at), max(at) "
                "FROM rejected WHERE account = %s GROUP BY output, collection, status, error, retry "
                'ORDER BY output COLLATE "C", collection COLLATE "C", retry, min(at)',
                (self.account,),
            ).fetchall()
        return [
            RejectedGroup(
                output=str(out), collection=str(coll), status=int(status), reason=str(error or ""),
                records=int(records), queued=bool(retry), first_at=int(first), last_at=int(last),
            )
            for out, coll, status, error, retry, records, first, last in rows
        ]  # fmt: skip

    def episodes(self, since_ms: int, until_ms: int, *, account: str | None = None) -> list[StoredEpisode]:
        """Episodes that overlap ``[since_ms, until_ms]``, oldest first (``account``: the alert key)."""
        sql = (
            "SELECT alert_key, kind, start_at, end_at, sgv_min, sgv_max, readings FROM episodes "
            "WHERE account = %s AND start_at <= %s AND (end_at IS NULL OR end_at >= %s)"
        )
        params: list[Any] = [self.account, until_ms, since_ms]
        if account is not None:
            sql += " AND alert_key = %s"
            params.append(account)
        sql += " ORDER BY start_at, id"
        with self.connection() as conn:
            rows = conn.execute(_q(sql), params).fetchall()
        return [
            StoredEpisode(str(a), str(k), int(s), None if e is None else int(e), lo, hi, int(n))
            for a, k, s, e, lo, hi, n in rows
        ]

    def webhook_log(self) -> dict[str, list[dict[str, Any]]]:
        """The payloads each webhook was last sent (newest first) and what became of them."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT hook, event_id, seq, event, attempts, status, outcome, at, body FROM webhook_log "
                'WHERE account = %s ORDER BY hook COLLATE "C", seq DESC',
                (self.account,),
            ).fetchall()
        for hook, event_id, seq, event, attempts, status, outcome, at, body in rows:
            try:
                payload: Any = json.loads(body)
            except ValueError:
                payload = body
            out.setdefault(str(hook), []).append(
                {
                    "id": event_id, "seq": int(seq), "event": event, "attempts": int(attempts),
                    "status": status, "outcome": outcome, "at": int(at), "payload": payload,
                }
            )  # fmt: skip
        return out

    def saved_status(self, key: str = "daemon") -> dict[str, Any]:
        """The status snapshot this account's daemon last wrote."""
        with self.connection() as conn:
            row = conn.execute(
                "SELECT json FROM machine_status WHERE account = %s AND key = %s", (self.account, key)
            ).fetchone()
        if row is None:
            return {"sources": [], "outputs": []}
        loaded = json.loads(row[0])
        return loaded if isinstance(loaded, dict) else {"sources": [], "outputs": []}

    def status_row(self, key: str = "daemon") -> tuple[dict[str, Any], int] | None:
        """The status snapshot ``key`` and when it was written (epoch ms), if it was."""
        with self.connection() as conn:
            row = conn.execute(
                "SELECT json, updated_at FROM machine_status WHERE account = %s AND key = %s",
                (self.account, key),
            ).fetchone()
        if row is None:
            return None
        loaded = json.loads(row[0])
        return (loaded if isinstance(loaded, dict) else {}), int(row[1])

    def revision(self) -> int:
        """The account's newest ``seq``: it grows whenever one of its documents is written,
        changed or deleted."""
        tables = (*COLLECTIONS, "deleted")
        sql = "SELECT greatest(" + ", ".join(
            f"(SELECT coalesce(max(seq), 0) FROM {name} WHERE account = %s)" for name in tables
        ) + ")"  # fmt: skip
        with self.connection() as conn:
            row = conn.execute(_q(sql), [self.account] * len(tables)).fetchone()
        return 0 if row is None else int(row[0])

    def ping(self) -> int:
        """Check that the store can be read; returns its schema version."""
        with self.connection() as conn:
            version = current_version(conn)
            conn.execute("SELECT 1 FROM entries WHERE account = %s LIMIT 1", (self.account,)).fetchall()
        return version

    def verify(self) -> int:
        """The database as a reader needs it: a store of ours, not of a newer version; its schema
        version, or :class:`StoreUnusable` in one line naming the store without its password."""
        where = f"store {self.path}"
        try:
            with self.connection() as conn:
                version = current_version(conn)
        except (psycopg.Error, StoreError) as exc:
            raise StoreUnusable(f"{where}: cannot be read ({_one_line(exc)})") from None
        if version > SCHEMA_VERSION:
            raise StoreUnusable(
                f"{where}: migrated by a newer version of nightscout-connect (schema {version}; "
                f"this version knows up to {SCHEMA_VERSION}); upgrade to serve it"
            )
        if version == 0:
            raise StoreUnusable(f"{where}: is not a nightscout-connect store (no schema)")
        return version


#: the text columns among those searches read (compared byte by byte, as SQLite compares text)
_TEXT_COLUMNS: Final = frozenset(
    {"identifier", "type", "direction", "date_string", "device", "event_type", "created_at"}
)


def _path(field: str) -> list[str]:
    return field.split(".")


def _member(doc: Any, field: str) -> tuple[bool, Any]:
    """Whether the stored JSON has ``field`` (dots for nested members), and its value."""
    for part in field.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return False, None
        doc = doc[part]
    return True, doc


def _matches(c: Condition, text: str) -> bool:
    """A ``re`` condition on one stored document: a text value the matcher accepts."""
    assert c.matcher is not None
    found, value = _member(json.loads(text), c.field)
    return found and isinstance(value, str) and c.matcher(value)


class _PgSearch:
    """The conditions of a v3 search as PostgreSQL (see :class:`store.search._Sql`): a
    comparison holds only where the document's value and the compared value are of one type."""

    def __init__(self, collection: Collection) -> None:
        self.columns = SEARCH_COLUMNS[collection]

    def compare(self, field: str, sql_op: str, value: Value) -> tuple[str, list[Any]]:
        column = self.columns.get(field)
        if column is not None:
            numeric = column not in _TEXT_COLUMNS
            if isinstance(value, bool) or numeric != isinstance(value, (int, float)):
                return "false", []  # no column holds a boolean; a number never equals a text
            collate = "" if numeric else ' COLLATE "C"'
            return f"(e.{column} IS NOT NULL AND e.{column}{collate} {sql_op} %s)", [value]
        member = "(e.json::jsonb #> %s::text[])"
        path = _path(field)
        # CASE, not AND: PostgreSQL may evaluate both sides of an AND, and a cast of a value of
        # another type would fail
        if isinstance(value, bool):
            kind, cast = "boolean", f"({member})::boolean"
        elif isinstance(value, (int, float)):
            kind, cast = "number", f"({member})::numeric"
        else:
            kind, cast = "string", f"({member} #>> '{{}}') COLLATE \"C\""
        sql = f"(CASE WHEN jsonb_typeof({member}) = '{kind}' THEN {cast} {sql_op} %s ELSE false END)"
        return sql, [path, path, value]

    def item(self, item: Condition | AnyOf) -> tuple[str, list[Any]]:
        """A condition, or several of which one must hold (v1's number-or-text comparisons)."""
        if isinstance(item, Condition):
            return self.condition(item)
        parts = [self.condition(c) for c in item.conditions]
        sql = "(" + (" OR ".join(f"coalesce({p}, false)" for p, _ in parts) or "false") + ")"
        return sql, [v for _, ps in parts for v in ps]

    def condition(self, c: Condition) -> tuple[str, list[Any]]:
        if c.op in _PG_OPS:
            return self.compare(c.field, _PG_OPS[c.op], c.values[0])
        if c.op == "ne":
            sql, params = self.compare(c.field, "=", c.values[0])
            return f"NOT coalesce({sql}, false)", params
        if c.op in ("in", "nin"):
            parts = [self.compare(c.field, "=", v) for v in c.values]
            anyof = "(" + (" OR ".join(sql for sql, _ in parts) or "false") + ")"
            params = [p for _, ps in parts for p in ps]
            return (anyof, params) if c.op == "in" else (f"NOT coalesce({anyof}, false)", params)
        if c.op == "exists":
            column = self.columns.get(c.field)
            negate = "NOT " if c.values[0] else ""
            if column is not None:
                return f"(e.{column} IS {negate}NULL)", []
            # a member holding JSON null exists (as in MongoDB): #> gives jsonb 'null', not NULL
            return f"((e.json::jsonb #> %s::text[]) IS {negate}NULL)", [_path(c.field)]
        raise ValueError(f"operator {c.op!r} is not run as SQL")


_PG_OPS: Final[dict[str, str]] = {"eq": "=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


__all__ = ["PostgresReader"]
