"""The Lease machine: what a fleet process renews, claims, gives back and stops, and when."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statemachine.exceptions import TransitionNotAllowed

from machines.decisions import ClaimLeases, RenewLeases, StopAccounts, WaitUntil
from machines.lease import LeaseMachine, LeasePolicy, fair_share
from machines.timing import Backoff

LEASE = 60_000
EVERY = LEASE // 3  # renewals at a third of the lease
VALID = LEASE - LEASE // 4  # an account runs at most this long after a renewal was sent


def machine(**policy: object) -> LeaseMachine:
    return LeaseMachine(LeasePolicy(lease_ms=LEASE, **policy))  # type: ignore[arg-type]


SETTLE = 2_000  # a new process renews twice, this far apart, before its first claim


def settled(m: LeaseMachine, accounts: int, holders: int, at: int = 0) -> LeaseMachine:
    """``m`` after its first renewal and the one a settle later, at ``at``."""
    assert m.next(at - SETTLE) == RenewLeases()
    m.renewed(at - SETTLE, at - SETTLE, [], accounts, holders)
    assert m.next(at - 1) == WaitUntil(at)
    assert m.next(at) == RenewLeases()
    m.renewed(at, at, [], accounts, holders)
    return m


def holding(names: list[str], *, accounts: int = 10, holders: int = 1, at: int = 0) -> LeaseMachine:
    """A machine that renewed at ``at`` and then claimed ``names``."""
    m = settled(machine(), accounts, holders, at)
    decision = m.next(at)
    assert isinstance(decision, ClaimLeases)
    m.claimed(at, at, names)
    return m


@pytest.mark.parametrize(
    ("accounts", "holders", "cap", "share"),
    [
        (100, 1, None, 100),
        (100, 2, None, 50),
        (100, 3, None, 34),  # every account finds a process: 34 + 34 + 32
        (100, 3, 20, 20),
        (0, 3, None, 0),
        (5, 0, None, 5),  # before its own heartbeat counts, a process counts itself
        (1, 4, None, 1),
    ],
)
def test_fair_share(accounts: int, holders: int, cap: int | None, share: int) -> None:
    assert fair_share(accounts, holders, cap) == share


@pytest.mark.parametrize(
    ("accounts", "caps", "mine", "share"),
    [
        # a process capped below the even share takes its cap; the others share the rest
        (100, [10, None, None], None, 45),
        (100, [10, None, None], 10, 10),
        (100, [10, 20, None], None, 70),
        (100, [10, 20, None], 20, 20),
        # everybody capped: what does not fit stays unrun
        (100, [10, 10], 10, 10),
        # caps above the even share change nothing
        (100, [50, 60, None], None, 34),
    ],
)
def test_fair_share_with_every_process_cap(
    accounts: int, caps: list[int | None], mine: int | None, share: int
) -> None:
    assert fair_share(accounts, len(caps), mine, caps) == share
    # and between them the processes have room for every account they can take
    total = sum(fair_share(accounts, len(caps), cap, caps) for cap in caps)
    assert total >= min(accounts, sum(c if c is not None else accounts for c in caps))


def test_first_it_says_it_is_alive_then_claims_its_share() -> None:
    m = machine()
    assert m.next(0) == RenewLeases()
    m.renewed(0, 5, [], accounts=100, holders=2)
    # a new process looks again before it takes anything: others may be starting too
    assert m.next(5) == WaitUntil(SETTLE)
    assert m.next(SETTLE) == RenewLeases()
    m.renewed(SETTLE, SETTLE + 5, [], accounts=100, holders=3)
    assert m.next(SETTLE + 5) == ClaimLeases(34)
    m.claimed(SETTLE + 5, SETTLE + 10, [f"a{i}" for i in range(30)])  # the others hold the rest
    # nothing more to take until the next renewal brings fresh counts
    assert m.next(SETTLE + 10) == WaitUntil(SETTLE + EVERY)
    assert m.next(SETTLE + EVERY) == RenewLeases()


def test_renewal_is_due_at_a_third_of_the_lease_and_extends_every_held_lease() -> None:
    m = holding(["a", "b"])
    assert m.next(EVERY - 1) == WaitUntil(EVERY)
    assert m.next(EVERY) == RenewLeases()
    m.renewed(EVERY, EVERY + 50, ["a", "b"], accounts=2, holders=1)
    assert m.deadline == EVERY + VALID
    assert m.next(EVERY + 50) == WaitUntil(2 * EVERY)


def test_a_lease_not_renewed_in_time_stops_its_account_before_it_lapses() -> None:
    m = holding(["a", "b"])
    assert m.next(EVERY) == RenewLeases()
    m.failed(EVERY + 10, rand=0.0)
    # retried after a second, then again, while the lease lasts
    assert m.next(EVERY + 10) == WaitUntil(EVERY + 1_010)
    assert m.next(EVERY + 1_010) == RenewLeases()
    m.failed(EVERY + 1_020)
    assert m.next(EVERY + 1_020) == WaitUntil(EVERY + 3_020)
    # no renewal got through: at three quarters of the lease both accounts stop, unreleased
    assert m.next(VALID) == StopAccounts(frozenset({"a", "b"}), release=False)
    m.stopped()
    assert m.held == frozenset()
    assert VALID < LEASE  # stopped while the database still counts the lease as this process's


def test_a_lease_taken_over_in_the_database_stops_its_account_at_once() -> None:
    m = holding(["a", "b"])
    m.next(EVERY)
    m.renewed(EVERY, EVERY + 5, ["a"], accounts=2, holders=2)
    assert m.next(EVERY + 5) == StopAccounts(frozenset({"b"}), release=False)


def test_accounts_beyond_the_share_are_given_back() -> None:
    m = holding([f"a{i}" for i in range(10)])
    m.next(EVERY)
    m.renewed(EVERY, EVERY, [f"a{i}" for i in range(10)], accounts=10, holders=3)  # two more came
    assert m.next(EVERY) == StopAccounts(frozenset({"a4", "a5", "a6", "a7", "a8", "a9"}), release=True)
    m.stopped()
    assert len(m.held) == 4
    assert m.next(EVERY) == WaitUntil(2 * EVERY)


def test_the_cap_limits_what_a_process_takes() -> None:
    m = settled(machine(max_accounts=3), accounts=100, holders=1)
    assert m.next(0) == ClaimLeases(3)


def test_a_failed_claim_is_tried_again_after_a_backoff() -> None:
    m = settled(machine(), accounts=5, holders=1)
    assert m.next(0) == ClaimLeases(5)
    m.failed(100)
    assert m.next(100) == WaitUntil(1_100)
    assert m.next(1_100) == ClaimLeases(5)


def test_an_account_that_ended_is_released_and_not_claimed_again_for_a_while() -> None:
    m = holding(["a", "b"], accounts=2)
    m.ended("a", EVERY - 5_000)
    assert m.next(EVERY - 5_000) == StopAccounts(frozenset({"a"}), release=True)
    m.stopped()
    assert m.next(EVERY - 5_000) == WaitUntil(EVERY)
    m.next(EVERY)
    m.renewed(EVERY, EVERY, ["b"], accounts=2, holders=1)
    assert m.next(EVERY) == ClaimLeases(1, skip=frozenset({"a"}))  # cooling: 10 s after the first end
    m.claimed(EVERY, EVERY, [])
    m.next(2 * EVERY)
    m.renewed(2 * EVERY, 2 * EVERY, ["b"], accounts=2, holders=1)
    assert m.next(2 * EVERY) == ClaimLeases(1)  # the cooldown is over


def test_a_lease_the_database_names_but_this_process_never_started_is_given_back() -> None:
    m = holding(["a"])
    m.next(EVERY)
    # a claim whose answer was lost (timed out) committed "z" anyway
    m.renewed(EVERY, EVERY, ["a", "z"], accounts=5, holders=1)
    assert m.next(EVERY) == StopAccounts(frozenset({"z"}), release=True)


def test_shutdown_stops_and_releases_everything_and_ends_the_machine() -> None:
    m = holding(["a", "b"])
    assert m.shutdown() == StopAccounts(frozenset({"a", "b"}), release=True)
    assert m.closed.is_active
    with pytest.raises(TransitionNotAllowed):
        m.renewed(0, 0, [], 1, 1)


def test_outcomes_out_of_turn_are_refused() -> None:
    m = machine()
    with pytest.raises(TransitionNotAllowed):
        m.claimed(0, 0, ["a"])
    m.next(0)  # renewing
    with pytest.raises(TransitionNotAllowed):
        m.stopped()


# --- invariants over any run ---------------------------------------------------------------------

STEP = st.one_of(
    st.tuples(st.just("ok"), st.integers(0, 30), st.integers(1, 5), st.integers(0, 40_000)),
    st.tuples(st.just("fail"), st.integers(0, 0), st.integers(0, 0), st.integers(0, 40_000)),
    st.tuples(st.just("taken"), st.integers(0, 0), st.integers(0, 0), st.integers(0, 40_000)),
    st.tuples(st.just("end"), st.integers(0, 0), st.integers(0, 0), st.integers(0, 40_000)),
)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(STEP, min_size=1, max_size=60),
    cap=st.one_of(st.none(), st.integers(1, 10)),
    free=st.integers(0, 30),
)
def test_never_more_than_the_share_and_never_past_the_lease(
    steps: list[tuple[str, int, int, int]], cap: int | None, free: int
) -> None:
    """Whatever the database answers and whenever it fails: a claim never asks beyond the fair
    share, a held account is never kept past its lease (the driver is told to stop it no later
    than three quarters of the way, and never asked to sleep past that), and a renewal is due
    before any held lease needs it."""
    m = LeaseMachine(LeasePolicy(lease_ms=LEASE, max_accounts=cap, retry=Backoff(base=1.0, cap=60.0)))
    now = 0
    sent_at: dict[str, int] = {}  # when the renewal or claim that last covered each account was sent
    counter = 0
    counts = (0, 1)
    for kind, accounts, holders, advance in steps:
        for _ in range(8):  # every decision due at this moment
            decision = m.next(now)
            for name, sent in sent_at.items():
                if name in m.held:
                    assert now < sent + LEASE, "an account ran past its lease"
            if isinstance(decision, WaitUntil):
                assert decision.until > now
                if m.held:
                    assert decision.until <= min(sent_at[n] for n in m.held) + VALID
                break
            if isinstance(decision, RenewLeases):
                if kind == "fail":
                    m.failed(now)
                    continue
                still = sorted(m.held)
                if kind == "taken" and still:
                    still = still[1:]
                m.renewed(now, now, still, accounts, holders)
                counts = (accounts, holders)
                for name in still:
                    sent_at[name] = now
            elif isinstance(decision, ClaimLeases):
                # the share the last renewal's counts give (a claim only follows a renewal)
                share = fair_share(*counts, cap)
                assert len(m.held) + decision.count <= share, "asked beyond the share"
                if kind == "fail":
                    m.failed(now)
                    continue
                got = []
                for _ in range(min(decision.count, free)):
                    counter += 1
                    got.append(f"n{counter}")
                m.claimed(now, now, got)
                for name in got:
                    sent_at[name] = now
                assert len(m.held) <= share
            elif isinstance(decision, StopAccounts):
                assert not (decision.names & m.held)
                m.stopped()
        if kind == "end" and m.held:
            m.ended(sorted(m.held)[0], now)
        # the renewal is scheduled before any held lease would need stopping
        if m.held and m.failures == 0:
            assert m.renew_at < min(sent_at[n] for n in m.held) + VALID
        now += advance
