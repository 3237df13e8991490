"""The ledger core: balanced integer entries, escrow, and invariants under random histories."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tessera.ledger.accounts import (
    FEES,
    MINT,
    TOKEN,
    VERIFICATION_POOL,
    Account,
    AccountKind,
    balance_of,
    earnings_of,
    hold_of,
    unbonding_of,
)
from tessera.ledger.escrow import Escrow, FeePolicy
from tessera.ledger.journal import (
    DuplicateEntry,
    InsufficientFunds,
    Ledger,
    LedgerError,
    UnbalancedEntry,
)
from tessera.ledger.pricing import Price, split_fee
from tessera.ledger.staking import Staking
from tessera.ledger.transfers import mint, withdraw_earnings


def test_entries_must_balance_and_be_integers() -> None:
    ledger = Ledger()
    with pytest.raises(UnbalancedEntry):
        ledger.post("x", "r", {MINT: -5, balance_of("a"): 4}, at=0)
    with pytest.raises(UnbalancedEntry):
        ledger.post("x", "r", {MINT: -0.5, balance_of("a"): 0.5}, at=0)  # type: ignore[dict-item]
    with pytest.raises(UnbalancedEntry):
        ledger.post("x", "r", {MINT: -1}, at=0)
    assert ledger.entries == ()


def test_no_account_but_mint_goes_negative_and_failures_change_nothing() -> None:
    ledger = Ledger()
    mint(ledger, "alice", 10, "m1", at=0)
    with pytest.raises(InsufficientFunds) as info:
        ledger.post("spend", "r", {balance_of("alice"): -11, FEES: 11}, at=1)
    assert info.value.shortfall == 1
    assert ledger.balance(balance_of("alice")) == 10
    assert len(ledger.entries) == 1
    assert ledger.minted == 10


def test_accounts_round_trip_and_reject_bad_owners() -> None:
    for account in (MINT, balance_of("k1"), earnings_of("p" * 64)):
        assert Account.parse(str(account)) == account
    with pytest.raises(ValueError):
        Account(AccountKind.BALANCE, "")
    with pytest.raises(ValueError):
        Account(AccountKind.FEES, "someone")


def test_price_rounds_up_to_a_base_unit() -> None:
    price = Price(input_per_mtok=150 * TOKEN // 1000, output_per_mtok=600 * TOKEN // 1000)
    assert price.cost(1_000_000, 0) == 150 * TOKEN // 1000
    assert price.cost(1, 1) == -(-(150_000_000 + 600_000_000) // 1_000_000)
    assert Price(1, 1).cost(1, 0) == 1  # a millionth of a unit still costs one unit
    assert price.worst_case(10, 100) == price.cost(10, 100)


def test_fee_split_is_exact() -> None:
    for cost in (0, 1, 19, 20, 12345, 10**15 + 7):
        parts = split_fee(cost, 500, 5000)
        assert sum(parts) == cost and min(parts) >= 0


def test_hold_capture_release_happy_path() -> None:
    ledger = Ledger()
    escrow = Escrow(ledger, FeePolicy(fee_bps=1000, verification_share_bps=5000))
    mint(ledger, "alice", 1000, "m1", at=0)
    escrow.hold("alice", "req1", 300, at=1)
    assert ledger.balance(hold_of("alice")) == 300
    escrow.capture("req1", 100, "prov", at=2)
    assert ledger.balance(balance_of("alice")) == 900
    assert ledger.balance(earnings_of("prov")) == 90
    assert ledger.balance(FEES) == 5 and ledger.balance(VERIFICATION_POOL) == 5
    assert ledger.balance(hold_of("alice")) == 0
    with pytest.raises(LedgerError):
        escrow.capture("req1", 100, "prov", at=3)  # settled once; a retry is refused
    with pytest.raises(DuplicateEntry):
        escrow.hold("alice", "req1", 10, at=3)  # a request id is held once, ever
    escrow.hold("alice", "req2", 900, at=4)
    with pytest.raises(InsufficientFunds):
        escrow.hold("alice", "req3", 1, at=5)
    escrow.release("req2", at=6)
    assert ledger.balance(balance_of("alice")) == 900
    assert ledger.check() == []


def test_capture_cannot_exceed_the_hold() -> None:
    ledger = Ledger()
    escrow = Escrow(ledger)
    mint(ledger, "alice", 1000, "m1", at=0)
    escrow.hold("alice", "req1", 100, at=1)
    with pytest.raises(LedgerError):
        escrow.capture("req1", 101, "prov", at=2)
    assert [h.request_id for h in escrow.open_holds()] == ["req1"]


def test_open_holds_are_rebuilt_from_the_journal() -> None:
    ledger = Ledger()
    escrow = Escrow(ledger)
    mint(ledger, "alice", 1000, "m1", at=0)
    escrow.hold("alice", "a", 10, at=1)
    escrow.hold("alice", "b", 20, at=2)
    escrow.capture("a", 5, "prov", at=3)
    # A restarted gateway replays the journal into a new ledger and finds "b" still open.
    restarted = Ledger()
    for entry in ledger.entries:
        restarted.replay(entry, unique=entry.kind in {"hold", "capture", "release", "mint"})
    assert [(h.request_id, h.amount) for h in Escrow(restarted).open_holds()] == [("b", 20)]
    assert restarted.balances() == ledger.balances()


def test_unbonding_waits_out_the_delay_and_stays_slashable() -> None:
    ledger = Ledger()
    staking = Staking(ledger, unbonding_delay_s=100)
    mint(ledger, "prov", 1000, "m1", at=0)
    staking.bond("prov", 600, "b1", at=0)
    staking.unbond("prov", 200, "u1", at=10)
    assert staking.withdraw("prov", "w1", at=50) is None  # not matured yet
    outcome = staking.slash("prov", 700, "cheating", "audit-7", [("alice", 50)], "s1", at=60)
    # 400 bonded go first, then 200 of the unbonding tranche; alice is repaid first.
    assert outcome.taken == 600
    assert outcome.to_consumers == (("alice", 50),)
    assert outcome.to_insurance == 550
    assert staking.bonded("prov") == 0 and staking.tranches("prov") == []
    assert staking.withdraw("prov", "w2", at=200) is None
    assert ledger.balance(balance_of("prov")) == 400
    assert ledger.check() == []


def test_matured_tranches_are_withdrawn_and_state_rebuilds() -> None:
    ledger = Ledger()
    staking = Staking(ledger, unbonding_delay_s=5)
    mint(ledger, "prov", 100, "m1", at=0)
    staking.bond("prov", 100, "b1", at=0)
    staking.unbond("prov", 30, "u1", at=1)
    staking.unbond("prov", 20, "u2", at=4)
    staking.slash("prov", 60, "downtime", "epoch-3", [], "s1", at=5)  # 50 bonded + 10 of u2
    entry = staking.withdraw("prov", "w1", at=7)
    assert entry is not None
    assert ledger.balance(balance_of("prov")) == 30
    rebuilt = Staking(ledger, unbonding_delay_s=5)
    assert [(t.reference, t.amount) for t in rebuilt.tranches("prov")] == [("u2", 10)]
    with pytest.raises(LedgerError):
        staking.slash("nobody", 1, "x", "y", [], "s2", at=8)


CONSUMERS = ["alice", "bob", "carol"]
PROVIDERS = ["p1", "p2"]  # providers are funded or earn, then bond from their balance


class LedgerHistory(RuleBasedStateMachine):
    """Random deposits, requests, cancellations, failures and withdrawals."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.escrow = Escrow(self.ledger, FeePolicy(fee_bps=500, verification_share_bps=4000))
        self.staking = Staking(self.ledger, unbonding_delay_s=5)
        self.clock = 0.0
        self.next_id = 0
        self.captured: set[str] = set()

    def tick(self) -> float:
        self.clock += 1
        return self.clock

    @rule(owner=st.sampled_from(CONSUMERS + PROVIDERS), amount=st.integers(1, 10**12))
    def deposit(self, owner: str, amount: int) -> None:
        self.next_id += 1
        mint(self.ledger, owner, amount, f"dep{self.next_id}", self.tick())

    @rule(owner=st.sampled_from(CONSUMERS), amount=st.integers(1, 10**12))
    def start_request(self, owner: str, amount: int) -> None:
        self.next_id += 1
        before = self.ledger.balance(balance_of(owner))
        try:
            self.escrow.hold(owner, f"req{self.next_id}", amount, self.tick())
        except InsufficientFunds:
            assert amount > before
            assert self.ledger.balance(balance_of(owner)) == before

    @precondition(lambda self: self.escrow.open_holds())
    @rule(data=st.data(), provider=st.sampled_from(PROVIDERS))
    def finish_request(self, data: st.DataObject, provider: str) -> None:
        hold = data.draw(st.sampled_from(self.escrow.open_holds()))
        cost = data.draw(st.integers(0, hold.amount))
        self.escrow.capture(hold.request_id, cost, provider, self.tick())
        self.captured.add(hold.request_id)

    @precondition(lambda self: self.escrow.open_holds())
    @rule(data=st.data())
    def fail_request(self, data: st.DataObject) -> None:
        hold = data.draw(st.sampled_from(self.escrow.open_holds()))
        before = self.ledger.balance(balance_of(hold.consumer))
        self.escrow.release(hold.request_id, self.tick())
        assert self.ledger.balance(balance_of(hold.consumer)) == before + hold.amount

    @precondition(lambda self: self.captured)
    @rule(data=st.data())
    def retry_settlement(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.captured)))
        with pytest.raises(LedgerError):
            self.escrow.capture(request_id, 0, "p1", self.tick())

    @rule(provider=st.sampled_from(PROVIDERS), share=st.floats(0.0, 1.0))
    def withdraw(self, provider: str, share: float) -> None:
        amount = int(self.ledger.balance(earnings_of(provider)) * share)
        if amount > 0:
            self.next_id += 1
            withdraw_earnings(self.ledger, provider, amount, f"wd{self.next_id}", self.tick())

    @rule(provider=st.sampled_from(PROVIDERS), share=st.floats(0.0, 1.0))
    def bond(self, provider: str, share: float) -> None:
        amount = int(self.ledger.balance(balance_of(provider)) * share)
        if amount > 0:
            self.next_id += 1
            self.staking.bond(provider, amount, f"bond{self.next_id}", self.tick())

    @rule(provider=st.sampled_from(PROVIDERS), share=st.floats(0.0, 1.0))
    def unbond(self, provider: str, share: float) -> None:
        amount = int(self.staking.bonded(provider) * share)
        if amount > 0:
            self.next_id += 1
            self.staking.unbond(provider, amount, f"unbond{self.next_id}", self.tick())

    @rule(provider=st.sampled_from(PROVIDERS))
    def withdraw_stake(self, provider: str) -> None:
        self.next_id += 1
        now = self.tick()
        matured = sum(t.amount for t in self.staking.tranches(provider) if t.release_at <= now)
        before = self.ledger.balance(balance_of(provider))
        self.staking.withdraw(provider, f"wds{self.next_id}", now)
        assert self.ledger.balance(balance_of(provider)) == before + matured

    @rule(
        provider=st.sampled_from(PROVIDERS),
        amount=st.integers(1, 10**12),
        victim=st.sampled_from(CONSUMERS),
        loss=st.integers(0, 10**12),
    )
    def slash(self, provider: str, amount: int, victim: str, loss: int) -> None:
        exposed = self.staking.bonded(provider) + sum(
            t.amount for t in self.staking.tranches(provider)
        )
        self.next_id += 1
        if exposed == 0:
            with pytest.raises(LedgerError):
                self.staking.slash(provider, amount, "r", "e", [(victim, loss)], "x", self.tick())
            return
        outcome = self.staking.slash(
            provider,
            amount,
            "cheating",
            "ev",
            [(victim, loss)],
            f"slash{self.next_id}",
            self.tick(),
        )
        assert outcome.taken == min(amount, exposed)
        assert sum(p for _, p in outcome.to_consumers) == min(loss, outcome.taken)

    @invariant()
    def unbonding_accounts_equal_tranches(self) -> None:
        for provider in PROVIDERS:
            tranches = sum(t.amount for t in self.staking.tranches(provider))
            assert self.ledger.balance(unbonding_of(provider)) == tranches

    @invariant()
    def journal_rebuilds_every_balance(self) -> None:
        assert self.ledger.check() == []

    @invariant()
    def all_accounts_sum_to_what_was_minted(self) -> None:
        held = {a: b for a, b in self.ledger.balances().items() if a != MINT}
        assert sum(held.values()) == self.ledger.minted
        assert all(b >= 0 for b in held.values())

    @invariant()
    def escrow_accounts_equal_open_holds(self) -> None:
        for owner in CONSUMERS:
            open_sum = sum(h.amount for h in self.escrow.open_holds() if h.consumer == owner)
            assert self.ledger.balance(hold_of(owner)) == open_sum


TestLedgerHistory = LedgerHistory.TestCase
TestLedgerHistory.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_slashing_table_amounts_and_publication() -> None:
    from tessera.ledger.slashing_table import SlashingTable, SlashRule

    table = SlashingTable()
    assert table.amount("wrong_model", 1000) == 500
    assert table.amount("downtime", 50) == 1  # never zero while stake is exposed
    assert table.amount("downtime", 0) == 0
    assert table.public()[0]["reason"] == "forged_receipt"
    with pytest.raises(KeyError):
        table.amount("being_rude", 10)
    with pytest.raises(ValueError):
        SlashRule("x", 0, False, "")
