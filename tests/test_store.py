"""The store: schema, idempotent upserts, frame transactions, checkpoints, cursors, readers."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from connect.records import Batch, DeviceStatus, Entry, Treatment
from store import AsyncStore, Store
from store.abc import WriterStore
from store.database import row_for
from store.postgres import PostgresStore
from store.schema import SCHEMA_VERSION, SchemaTooNew
from store.values import PushKey
from tests.stores import MakeStore, query

T0 = 1_700_000_000_000


def readings(n: int, start: int = T0) -> list[Entry]:
    return [Entry(type="sgv", date=start + i * 300_000, device="d", sgv=100 + i % 50) for i in range(n)]


def test_schema_is_versioned_and_wal(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    columns = {row[1] for row in conn.execute("PRAGMA table_info(entries)")}
    assert {"identifier", "date", "sgv", "direction", "type", "device", "json", "seq"} <= columns
    store.close()
    Store(tmp_path / "s.db").close()  # reopening migrates nothing and fails nothing


def test_a_new_store_has_the_schema_and_rows_every_migration_step_makes(tmp_path: Path) -> None:
    from sqlite_utils import Database

    from store.schema import MIGRATIONS

    Store(tmp_path / "new.db").close()
    stepwise = sqlite3.connect(tmp_path / "steps.db", isolation_level=None)
    for version, step in enumerate(MIGRATIONS):
        step(Database(stepwise))
        stepwise.execute(f"PRAGMA user_version = {version + 1}")
    new = sqlite3.connect(tmp_path / "new.db")

    def schema(conn: sqlite3.Connection) -> set[tuple[str, str, str, str]]:
        return set(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))

    assert schema(new) == schema(stepwise)
    assert new.execute("PRAGMA user_version").fetchone() == stepwise.execute("PRAGMA user_version").fetchone()
    assert list(new.execute("SELECT * FROM sequence")) == list(stepwise.execute("SELECT * FROM sequence"))


def test_a_store_a_daemon_creates_is_the_store_migration_makes(tmp_path: Path) -> None:
    # the daemon's open writes a new store from an image; nothing may tell it from one SQLite made
    Store.open(str(tmp_path / "daemon.db")).close()
    Store(tmp_path / "migrated.db").close()
    daemon = sqlite3.connect(tmp_path / "daemon.db")
    migrated = sqlite3.connect(tmp_path / "migrated.db")
    for statement in (
        "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name",
        "PRAGMA user_version",
        "PRAGMA journal_mode",
        "PRAGMA page_size",
        "PRAGMA encoding",
        "PRAGMA auto_vacuum",
        "SELECT * FROM sequence",
    ):
        assert list(daemon.execute(statement)) == list(migrated.execute(statement)), statement
    assert daemon.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert not (tmp_path / "daemon.db-new").exists()  # nothing left beside it
    store = Store.open(str(tmp_path / "daemon.db"))  # and it takes writes and reopens as any store
    store.persist_frame("sim", "SimEntries", Batch.of(readings(3), covered={"entries": T0 + 600_000}))
    store.close()
    assert Store.open(str(tmp_path / "daemon.db")).checkpoints("sim", "SimEntries") == {
        "entries": T0 + 600_000
    }


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew):
        Store(tmp_path / "s.db")


def fail_inserts_of(store: WriterStore, sgv: int) -> None:
    """Make the store refuse to write an entry of ``sgv`` (a fault in the middle of a frame)."""
    if isinstance(store, Store):
        store.conn.execute(
            f"CREATE TRIGGER boom BEFORE INSERT ON entries WHEN NEW.sgv = {sgv} "
            "BEGIN SELECT RAISE(ABORT, 'x'); END"
        )
        return
    assert isinstance(store, PostgresStore)
    with store.pool.connection() as conn:
        conn.execute(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = 'check_violation'; END $$"
        )
        conn.execute(
            f"CREATE TRIGGER boom BEFORE INSERT ON entries FOR EACH ROW WHEN (NEW.sgv = {sgv}) "
            "EXECUTE FUNCTION boom()".encode()
        )


def test_upserts_are_idempotent_and_changes_get_a_new_seq(make_store: MakeStore) -> None:
    store = make_store()
    batch = Batch.of(readings(10))
    assert store.persist_frame("src", "loop", batch).total == 10
    assert store.persist_frame("src", "loop", batch).total == 0
    assert store.count("entries") == 10
    seq_before = store.max_seq("entries")
    corrected = Entry(type="sgv", date=T0, device="d", sgv=180)
    assert store.persist_frame("src", "loop", Batch.of([corrected])).total == 1
    assert store.max_seq("entries") > seq_before
    assert store.count("entries") == 10
    ((sgv, text),) = query(store, "SELECT sgv, json FROM entries WHERE date = ?", T0)
    assert sgv == 180 and json.loads(text)["sgv"] == 180


def test_frame_and_checkpoint_commit_together(make_store: MakeStore) -> None:
    store = make_store()
    store.persist_frame("src", "loop", Batch.of(readings(3)))
    assert store.checkpoints("src", "loop") == {"entries": T0 + 600_000}
    bad = Batch.of([*readings(3, start=T0 + 3_600_000)])
    # a failure inside the transaction leaves neither rows nor checkpoint behind
    fail_inserts_of(store, 102)
    with pytest.raises(Exception, match="x"):
        store.persist_frame("src", "loop", bad)
    assert store.count("entries") == 3
    assert store.checkpoints("src", "loop") == {"entries": T0 + 600_000}


def test_checkpoints_never_go_backwards_and_covered_advances_them(make_store: MakeStore) -> None:
    store = make_store()
    store.persist_frame("src", "loop", Batch.of(readings(3)))
    store.persist_frame("src", "loop", Batch.of(readings(1)))
    assert store.checkpoints("src", "loop")["entries"] == T0 + 600_000
    store.persist_frame("src", "loop", Batch(covered={"entries": T0 + 10 * 86_400_000}))
    assert store.checkpoints("src", "loop")["entries"] == T0 + 10 * 86_400_000
    assert store.checkpoints("src", "other") == {}


def test_cursors_pending_lag_and_set_aside(make_store: MakeStore) -> None:
    store = make_store()
    store.persist_frame(
        "src", "loop", Batch.of([*readings(5), Treatment(event_type="Note", date=T0, device="d")])
    )
    assert store.lag("ns") == 6
    pending = store.pending("ns", "entries", limit=3)
    assert [p.doc["sgv"] for p in pending] == [100, 101, 102]
    store.advance("ns", "entries", pending[-1].seq)
    assert store.lag("ns", "entries") == 2
    store.advance("ns", "entries", 0)  # never backwards
    assert store.lag("ns", "entries") == 2
    rest = store.pending("ns", "entries")
    store.set_aside("ns", "entries", rest[0].seq, rest[-1].seq, len(rest), 400, "bad request")
    assert store.lag("ns", "entries") == 0 and store.rejected_count("ns") == 2
    assert store.lag("mqtt") == 6  # every output has its own cursor


async def test_async_store_serialises_writes_through_a_thread(make_store: MakeStore) -> None:
    astore = AsyncStore(make_store())
    assert astore.inline is False
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(
                astore.persist_frame, "src", f"loop{i}", Batch.of(readings(50, start=T0 + i * 10**8))
            )
    assert await astore.count("entries") == 250


def test_readers_see_committed_data_while_a_write_is_open(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.persist_frame("src", "loop", Batch.of(readings(10)))
    reader = sqlite3.connect(tmp_path / "s.db", timeout=0.1)
    store.conn.execute("BEGIN IMMEDIATE")
    store.conn.executemany(
        "INSERT INTO entries (identifier, seq, date, json) VALUES (?, ?, ?, '{}')",
        [(f"x{i}", 10_000 + i, T0 + i) for i in range(1000)],
    )
    assert reader.execute("SELECT count(*) FROM entries").fetchone()[0] == 10  # not blocked, not dirty
    store.conn.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM entries").fetchone()[0] == 1010


def test_stored_rows_are_pinned_byte_for_byte() -> None:
    # the stored JSON is what the standard encoder writes (compact, sorted, non-ASCII escaped):
    # a row whose text changed would be written again and delivered again
    from store.database import row_for, stored_json

    entry = Entry(
        type="sgv", date=1_700_000_000_000, device="xDrip-DexcomG6", sgv=120, direction="Flat", delta=-1.5
    )
    assert row_for(entry, "sim", 7, now=1_700_000_300_000) == (
        "6aa9aca1-40fa-57fe-b237-c0a983100d88", 7, 1_700_000_000_000, "2023-11-14T22:13:20.000Z", "sgv",
        120, "Flat", "xDrip-DexcomG6", "sim",
        '{"date":1700000000000,"dateString":"2023-11-14T22:13:20.000Z","delta":-1.5,'
        '"device":"xDrip-DexcomG6","direction":"Flat","identifier":"6aa9aca1-40fa-57fe-b237-c0a983100d88",'
        '"sgv":120,"trend":4,"type":"sgv"}',
        1_700_000_300_000, 1_700_000_300_000,
    )  # fmt: skip
    treatment = Treatment(
        event_type="Meal Bolus",
        date=1_700_000_000_000,
        device="pump",
        insulin=2.5,
        carbs=30.0,
        notes="café ☕",
    )
    assert row_for(treatment, "sim", 8, now=1)[9] == (
        '{"carbs":30.0,"created_at":"2023-11-14T22:13:20.000Z","date":1700000000000,"device":"pump",'
        '"eventType":"Meal Bolus","identifier":"0f831bce-10ba-59c2-8334-33423209cfa8","insulin":2.5,'
        '"notes":"caf\\u00e9 \\u2615"}'
    )
    for doc in ({"big": 2**70, "b": [1.5, None, True]}, {1: "a"}, {"z": {"y": 0.25, "x": "q"}}):
        assert stored_json(doc) == json.dumps(doc, separators=(",", ":"), sort_keys=True)


# --- the contract, continued: both backends -------------------------------------------------------


def test_outputs_read_the_stored_json_byte_for_byte(make_store: MakeStore) -> None:
    store = make_store()
    treatment = Treatment(
        event_type="Meal Bolus", date=T0, device="pump", insulin=2.5, carbs=30.0, notes="café ☕"
    )
    entry = Entry(type="sgv", date=T0, device="d", sgv=120, direction="Flat", delta=-1.5)
    store.persist_frame("src", "loop", Batch.of([entry, treatment]))
    (e,) = store.pending_rows("ns", "entries", 10)
    (t,) = store.pending_rows("ns", "treatments", 10)
    assert e.text == row_for(entry, "src", 1, now=0)[9] and e.source == "src"
    assert t.text == row_for(treatment, "src", 1, now=0)[9]
    assert '"notes":"caf\\u00e9 \\u2615"' in t.text and '"carbs":30.0' in t.text
    assert store.rows_after("entries", 0, 10) == [e]
    assert store.docs("treatments") == [json.loads(t.text)]


def test_pushes_replace_by_key_and_by_id_and_deletes_find_them(make_store: MakeStore) -> None:
    from store.database import object_id

    store = make_store()
    first = Entry(type="sgv", date=T0, device="phone", sgv=100)
    again = Entry(type="sgv", date=T0, device="other", sgv=101)  # same time and type: replaces it
    result = store.persist_push("push@site", [PushKey(first)])
    assert store.persist_push("push@site", [PushKey(again)]).identifiers == result.identifiers
    assert store.count("entries") == 1 and store.docs("entries")[0]["sgv"] == 101
    oid = object_id(result.identifiers[0])
    named = Entry(type="sgv", date=T0 + 1, device="phone", sgv=150)
    assert store.persist_push("push@site", [PushKey(named, object_id=oid)]).identifiers == result.identifiers
    assert store.docs("entries")[0]["date"] == T0 + 1
    with pytest.raises(KeyError):
        store.persist_push("push@site", [PushKey(named, object_id="0" * 24, must_exist=True)])
    assert store.count("entries") == 1
    status = DeviceStatus(device="phone", date=T0, payload={"uploader": {"battery": 50}})
    store.persist_push("push@site", [PushKey(status)])
    assert store.pending_rows("ns", "devicestatus", 10)[0].source == "push@site"
    assert store.delete_pushed("entries", oid) and not store.delete_pushed("entries", oid)
    assert store.count("entries") == 0 and store.count("devicestatus") == 1


def test_status_events_cursors_and_the_newest_reading(make_store: MakeStore) -> None:
    store = make_store()
    assert store.load_status() == {} and store.status_of("daemon") is None
    store.save_status("daemon", {"sources": [{"source": "sim"}], "n": 1})
    store.save_status("daemon", {"sources": [{"source": "sim"}], "n": 2})
    assert store.status_of("daemon") == {"sources": [{"source": "sim"}], "n": 2}
    assert store.load_status() == {"daemon": {"sources": [{"source": "sim"}], "n": 2}}
    store.ensure_cursors("hook", ["events", "entries"])
    store.ensure_cursors("hook", ["events"])
    assert (
        store.cursor("hook", "events") == 0 and store.events_after(0) == [] and store.events_lag("hook") == 0
    )
    for i in range(60):
        store.log_delivery("h", f"e{i}", i, "glucose:new", "{}", outcome="ok", status=200, at=T0 + i)
    assert len(query(store, "SELECT event_id FROM webhook_log WHERE hook = ?", "h")) == 50
    assert store.sgv_summary() == (0, None) and store.newest_sgv() is None
    store.persist_frame("src", "loop", Batch.of(readings(4)))
    count, newest = store.sgv_summary()
    assert count == 4 and newest is not None and newest[:2] == (T0 + 900_000, 103)
    top = store.newest_sgv()
    assert top is not None and top.doc()["sgv"] == 103
    upto = store.newest_sgv(upto_seq=2)
    assert upto is not None and upto.doc()["sgv"] == 101
    assert store.sgv_before(T0 + 900_000, T0 + 300_000) == 102
    assert store.sgv_before(T0 + 300_000, T0 + 300_000) is None
    assert store.newest_date("entries") == T0 + 900_000 and store.newest_date("profile") is None


def test_each_account_sees_only_its_own_rows(make_store: MakeStore) -> None:
    alice, bob = make_store("alice"), make_store("bob")
    alice.persist_frame("sim", "loop", Batch.of(readings(3)))
    bob.persist_frame("sim", "loop", Batch.of(readings(5)))  # the same records, by identifier
    alice.advance("ns", "entries", alice.max_seq("entries"))
    assert alice.count("entries") == 3 and bob.count("entries") == 5
    assert alice.lag("ns") == 0 and bob.lag("ns") == 5
    assert alice.checkpoints("sim", "loop") == {"entries": T0 + 600_000}
    assert bob.checkpoints("sim", "loop") == {"entries": T0 + 1_200_000}
    bob.save_status("daemon", {"who": "bob"})
    assert alice.status_of("daemon") is None
    bob.set_aside("ns", "entries", 1, 1, 1, 400, "no")
    assert alice.rejected() == [] and bob.rejected_count("ns") == 1


def test_a_lost_server_connection_is_a_store_error_until_a_write_commits(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, account="a")
    astore = AsyncStore(store, inline=True)
    with store.pool.connection() as conn:
        conn.execute("SELECT 1")
    # the server ends every session of this database (a restart, a failover)
    with psycopg_admin(postgres_url) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    async def main() -> None:
        from connect.errors import StoreError

        with pytest.raises(StoreError) as caught:
            await astore.persist_frame("sim", "loop", Batch.of(readings(2)))
        assert str(caught.value).startswith("store postgresql://connect@127.0.0.1:")
        assert astore.health["state"] == "failing"
        await astore.persist_frame("sim", "loop", Batch.of(readings(2)))  # a fresh connection
        assert astore.health["state"] == "ok" and await astore.count("entries") == 2

    trio.run(main)
    store.close()


def psycopg_admin(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    from connect.errors import StoreUnusable
    from tests.mosquitto import free_port

    url = f"postgresql://connect:hunter2-secret@127.0.0.1:{free_port()}/connect"
    with pytest.raises(StoreUnusable) as caught:
        PostgresStore.open(url)
    message = str(caught.value)
    assert "hunter2" not in message and "\n" not in message
    assert message.startswith(
        f"store postgresql://connect@127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}/connect"
    )


def test_one_daemon_per_account_and_the_lock_goes_with_it(postgres_url: str) -> None:
    from connect.errors import StoreUnusable

    alice = PostgresStore.open(postgres_url, account="alice")
    with pytest.raises(StoreUnusable, match="account 'alice' is in use by another daemon"):
        PostgresStore.open(postgres_url, account="alice")
    bob = PostgresStore.open(postgres_url, account="bob")  # another account of the same database
    # the daemons of one process share one pool: connections grow with it, not with accounts
    assert bob.pool is alice.pool and bob.pool.get_stats()["pool_size"] <= 8
    alice.close()
    PostgresStore.open(postgres_url, account="alice").close()
    bob.close()
    assert bob.pool.closed  # the last account out closes it
    # a daemon of another process holds carol: the server says so
    from store.postgres import account_lock_key

    with psycopg_admin(postgres_url) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (account_lock_key("carol"),))
        with pytest.raises(StoreUnusable, match="account 'carol' is in use by another daemon"):
            PostgresStore.open(postgres_url, account="carol")
    PostgresStore.open(postgres_url, account="carol").close()  # its session ended: free again


def test_many_accounts_locks_are_reserved_at_once_and_the_unused_given_back(postgres_url: str) -> None:
    """``--accounts-dir`` takes every account's lock in one statement before opening their
    stores: each open finds its own, one held elsewhere still fails its open in one line, and
    the locks of accounts never opened are free again after."""
    from connect.errors import StoreUnusable
    from store.postgres import account_lock_key, reserved

    def free(other: Any, account: str) -> bool:
        row = other.execute("SELECT pg_try_advisory_lock(%s)", (account_lock_key(account),)).fetchone()
        if row[0]:
            other.execute("SELECT pg_advisory_unlock(%s)", (account_lock_key(account),))
        return bool(row[0])

    with psycopg_admin(postgres_url) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (account_lock_key("dave"),))  # another daemon's
        with reserved(postgres_url, ["alice", "bob", "carol", "dave"]):
            assert not any(free(other, a) for a in ("alice", "bob", "carol"))  # taken for this process
            alice = PostgresStore.open(postgres_url, account="alice")
            bob = PostgresStore.open(postgres_url, account="bob")
            with pytest.raises(StoreUnusable, match="account 'dave' is in use by another daemon"):
                PostgresStore.open(postgres_url, account="dave")
            with pytest.raises(StoreUnusable, match="account 'alice' is in use by another daemon"):
                PostgresStore.open(postgres_url, account="alice")  # a reservation is used once
        assert free(other, "carol")  # never opened: given back
        assert not free(other, "alice") and not free(other, "bob")  # held by their stores
        alice.close()
        bob.close()
        assert free(other, "alice") and free(other, "bob")


def test_a_lost_lock_session_is_replaced_and_a_taken_account_stops_writing(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session holding the accounts' locks ends (a server restart, an operator's
    pg_terminate_backend): the next write takes every lock again on a new session; an account
    another daemon took in between cannot write (a fault of the store, retried) until that
    daemon lets go."""
    from connect.errors import StoreError
    from connect.records import Batch, Entry
    from store import postgres as pg

    monkeypatch.setattr(pg, "LOCK_CHECK_S", 0.0)
    alice = PostgresStore.open(postgres_url, account="alice")
    bob = PostgresStore.open(postgres_url, account="bob")
    frame = Batch.of([Entry(type="sgv", date=1_700_000_000_000, device="d", sgv=100)])

    def end_lock_session(other: Any) -> None:
        other.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = %s",
            (pg.locks_application_name(),),
        )

    with psycopg_admin(postgres_url) as other:
        end_lock_session(other)
        # the server forgot the locks: another daemon starts for bob meanwhile
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (pg.account_lock_key("bob"),)).fetchone()[0]
        alice.persist_frame("sim:alice", "entries", frame)  # alice's lock taken again first
        assert not other.execute(
            "SELECT pg_try_advisory_lock(%s)", (pg.account_lock_key("alice"),)
        ).fetchone()[0]
        with pytest.raises(StoreError, match="account 'bob' is in use by another daemon") as caught:
            bob.persist_frame("sim:bob", "entries", frame)
        assert bob.as_store_error(caught.value) is caught.value  # a fault: the frame is retried
        with pytest.raises(StoreError):
            bob.save_status("daemon", {"state": "ok"})
        assert bob.count("entries") == 0
        other.execute("SELECT pg_advisory_unlock(%s)", (pg.account_lock_key("bob"),))  # it stops
        bob.persist_frame("sim:bob", "entries", frame)
        assert bob.count("entries") == 1
        assert not other.execute("SELECT pg_try_advisory_lock(%s)", (pg.account_lock_key("bob"),)).fetchone()[
            0
        ]
    alice.close()
    bob.close()
