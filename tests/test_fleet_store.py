"""The fleet's accounts and leases in a real PostgreSQL (store/fleet.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from connect.errors import StoreUnusable
from store.fleet import SCHEMA_VERSION, FleetStore

LEASE_S = 30.0


@pytest.fixture
def db(postgres_url: str) -> Iterator[FleetStore]:
    with FleetStore.open(postgres_url) as store:
        yield store


def add(db: FleetStore, *names: str) -> None:
    for name in names:
        db.upsert_account(name, f"CONNECT_SOURCE=sim\nCONNECT_SIM_SEED={len(name)}\n")


def expire(url: str, account: str) -> None:
    """The lease runs out now (as if its holder had stopped renewing a lease ago)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE fleet_leases SET expires_at = now() - interval '1 second' WHERE account = %s", (account,)
        )


def test_accounts_are_kept_as_given_and_updated_in_place(db: FleetStore) -> None:
    text = "# alice\nCONNECT_SOURCE=dexcomshare\nCONNECT_SHARE_PASSWORD='p$ss word'\n"
    assert db.upsert_account("alice", text) is True
    assert db.settings(["alice"]) == {"alice": text}
    assert db.upsert_account("alice", text + "CONNECT_BACKFILL_DAYS=2\n") is False
    assert db.settings(["alice"])["alice"].endswith("CONNECT_BACKFILL_DAYS=2\n")
    assert [name for name, _ in db.accounts()] == ["alice"]
    assert db.remove_account("alice") is True
    assert db.remove_account("alice") is False
    assert db.accounts() == []


def test_migration_is_idempotent_and_a_newer_schema_is_refused(postgres_url: str) -> None:
    with FleetStore.open(postgres_url) as first:
        add(first, "alice")
    # opened again (a second process, a restart): nothing lost, the version unchanged
    with FleetStore.open(postgres_url) as again:
        assert again.migrate() == SCHEMA_VERSION
        assert [name for name, _ in again.accounts()] == ["alice"]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO fleet_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreUnusable, match="newer version"):
        FleetStore.open(postgres_url)


def test_processes_starting_together_migrate_once(postgres_url: str) -> None:
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            FleetStore.open(postgres_url).close()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM fleet_schema").fetchone() == (SCHEMA_VERSION,)


def test_an_unreachable_database_is_one_line_without_credentials() -> None:
    with pytest.raises(StoreUnusable) as caught:
        FleetStore.open("postgresql://user:hunter2-secret@127.0.0.1:1/db", timeout=2)
    assert "hunter2-secret" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_two_holders_never_hold_one_account(db: FleetStore, postgres_url: str) -> None:
    names = [f"a{i:02}" for i in range(40)]
    add(db, *names)
    taken: dict[str, list[str]] = {}
    barrier = threading.Barrier(4)

    def claim(holder: str) -> None:
        with FleetStore.open(postgres_url) as own:
            barrier.wait()
            got: list[str] = []
            while True:
                claimed = own.claim(holder, LEASE_S, 3)
                if not claimed:
                    break
                got.extend(claimed)
            taken[holder] = got

    threads = [threading.Thread(target=claim, args=(f"h{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [name for got in taken.values() for name in got]
    assert sorted(every) == names  # each account taken once, by one holder
    # and the database agrees with what each holder was told
    with psycopg.connect(postgres_url) as conn:
        rows = dict(conn.execute("SELECT account, holder FROM fleet_leases").fetchall())
    for holder, got in taken.items():
        assert all(rows[name] == holder for name in got)


def test_a_held_lease_is_not_taken_and_a_lapsed_one_is(db: FleetStore, postgres_url: str) -> None:
    add(db, "alice", "bob")
    assert sorted(db.claim("one", LEASE_S, 5)) == ["alice", "bob"]
    assert db.claim("two", LEASE_S, 5) == {}
    expire(postgres_url, "alice")
    # the lapsed lease is no longer renewed for its old holder …
    assert db.renew("one", LEASE_S).held == frozenset({"bob"})
    # … and another process takes it over, with the account's settings
    claimed = db.claim("two", LEASE_S, 5)
    assert list(claimed) == ["alice"]
    assert "CONNECT_SOURCE=sim" in claimed["alice"].settings
    assert db.renew("one", LEASE_S).held == frozenset({"bob"})
    assert db.renew("two", LEASE_S).held == frozenset({"alice"})


def test_renewal_counts_accounts_and_live_holders(db: FleetStore, postgres_url: str) -> None:
    add(db, "a", "b", "c")
    assert db.renew("one", LEASE_S).holders == 1
    renewal = db.renew("two", LEASE_S)
    assert (renewal.accounts, renewal.holders) == (3, 2)
    assert sorted(db.renew("three", LEASE_S, max_accounts=5).caps, key=str) == [5, None, None]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE fleet_holders SET expires_at = now() - interval '1 second' WHERE holder <> 'two'"
        )
    assert db.renew("two", LEASE_S).holders == 1


def test_skipped_accounts_are_not_claimed_and_release_frees_at_once(db: FleetStore) -> None:
    add(db, "a", "b", "c")
    first = db.claim("one", LEASE_S, 5, skip=["b"])
    assert sorted(first) == ["a", "c"]
    db.release("one", {"a": first["a"].token})
    db.release("two", {"c": first["c"].token})  # not two's: nothing happens
    assert sorted(db.claim("two", LEASE_S, 5)) == ["a", "b"]
    db.leave("one")
    assert list(db.claim("two", LEASE_S, 5)) == ["c"]


def test_a_late_release_does_not_free_a_lease_taken_again(db: FleetStore, postgres_url: str) -> None:
    """A release that arrives after its lease lapsed and the same process took the account
    again names the old lease: the new one stays held."""
    add(db, "a")
    old = db.claim("one", LEASE_S, 1)["a"].token
    expire(postgres_url, "a")
    new = db.claim("one", LEASE_S, 1)["a"].token
    assert new != old
    db.release("one", {"a": old})
    assert db.renew("one", LEASE_S).tokens == {"a": new}
    assert db.claim("two", LEASE_S, 1) == {}


def test_fleet_rows_say_who_holds_what_and_what_it_said(db: FleetStore, postgres_url: str) -> None:
    add(db, "alice", "bob", "carol")
    db.claim("host:1:aa", LEASE_S, 2)
    db.publish(
        "host:1:aa", [("alice", "running", 1_700_000_000_000, None), ("bob", "failing", None, "refused")]
    )
    db.publish("someone-else", [("alice", "stolen", None, None)])  # not its lease: ignored
    expire(postgres_url, "bob")
    rows = {row.account: row.as_dict() for row in db.fleet()}
    assert rows["alice"] == {
        "account": "alice",
        "holder": "host:1:aa",
        "state": "running",
        "last_success": 1_700_000_000_000,
        "last_error": None,
    }
    assert rows["bob"]["holder"] is None and rows["bob"]["state"] == "lapsed"
    assert rows["carol"] == {
        "account": "carol",
        "holder": None,
        "state": "unclaimed",
        "last_success": None,
        "last_error": None,
    }


def test_publishing_the_same_state_writes_nothing(db: FleetStore, postgres_url: str) -> None:
    add(db, "alice")
    db.claim("one", LEASE_S, 1)
    db.publish("one", [("alice", "running", 5, None)])

    def reported() -> object:
        with psycopg.connect(postgres_url) as conn:
            row = conn.execute("SELECT reported_at FROM fleet_leases WHERE account = 'alice'").fetchone()
            return None if row is None else row[0]

    first = reported()
    time.sleep(0.01)
    db.publish("one", [("alice", "running", 5, None)])
    assert reported() == first
    db.publish("one", [("alice", "running", 6, None)])
    assert reported() != first
