"""On-chain movements in the journal: balanced, idempotent per event, and reconcilable."""

from __future__ import annotations

import pytest

from tessera.ledger import chain_book as cb
from tessera.ledger.accounts import (
    CHAIN,
    UNCOLLECTED,
    balance_of,
    cheques_of,
    earnings_of,
    withdrawing_of,
)
from tessera.ledger.book import Book, BookPolicy
from tessera.ledger.journal import DuplicateEntry, InsufficientFunds, LedgerError
from tessera.ledger.pricing import Price
from tessera.ledger.spend_caps import SpendCaps

T = 1_000.0


def deposit(book: Book, account: str, amount: int, log_index: int = 0) -> None:
    key = cb.chain_event_key("0xAB" + "00" * 31, log_index)
    cb.credit_deposit(book.ledger, account, amount, key, T)


def test_a_deposit_is_credited_once_per_event() -> None:
    book = Book(BookPolicy())
    deposit(book, "acct", 500)
    with pytest.raises(DuplicateEntry):
        deposit(book, "acct", 500)
    deposit(book, "acct", 200, log_index=1)
    assert book.ledger.balance(balance_of("acct")) == 700
    assert cb.backing(book.ledger) == 700
    assert book.check() == []


@pytest.mark.parametrize("amount", [0, -5, 1.5, True])
def test_amounts_must_be_positive_integers(amount: object) -> None:
    book = Book(BookPolicy())
    with pytest.raises(LedgerError):
        cb.credit_deposit(book.ledger, "acct", amount, "k", T)  # type: ignore[arg-type]
    assert book.ledger.entry_count == 0


def test_a_withdrawal_request_freezes_the_balance_and_a_deposit_cancels_it() -> None:
    book = Book(BookPolicy())
    deposit(book, "acct", 1_000)
    cb.freeze_for_withdrawal(book.ledger, "acct", "req1", T)
    assert book.ledger.balance(balance_of("acct")) == 0
    assert book.ledger.balance(withdrawing_of("acct")) == 1_000
    assert cb.freeze_for_withdrawal(book.ledger, "acct", "req2", T) is None  # nothing left
    cb.unfreeze(book.ledger, "acct", "dep2", T)
    assert book.ledger.balance(balance_of("acct")) == 1_000
    assert book.check() == []


def test_a_withdrawal_takes_the_frozen_balance_and_books_uncollected_spend_as_loss() -> None:
    book = Book(BookPolicy())
    deposit(book, "acct", 1_000)
    cb.freeze_for_withdrawal(book.ledger, "acct", "req", T)
    # The vault paid out 1,000 but 300 had been spent here: the frozen 700 is the
    # consumer's, the 300 is spend the gateway never collected.
    book.ledger.post("test_spend", "s", {withdrawing_of("acct"): -300, earnings_of("p"): 300}, T)
    cb.book_withdrawal(book.ledger, "acct", 1_000, "w", T)
    assert book.ledger.balance(withdrawing_of("acct")) == 0
    assert book.ledger.balance(UNCOLLECTED) == -300
    assert cb.backing(book.ledger) == 0
    assert book.check() == []


def test_a_withdrawal_of_less_than_frozen_returns_the_rest() -> None:
    book = Book(BookPolicy())
    deposit(book, "acct", 1_000)
    cb.freeze_for_withdrawal(book.ledger, "acct", "req", T)
    cb.book_withdrawal(book.ledger, "acct", 600, "w", T)
    assert book.ledger.balance(balance_of("acct")) == 400
    assert book.ledger.balance(UNCOLLECTED) == 0


def test_cheques_bound_what_the_vault_can_pay() -> None:
    book = Book(BookPolicy())
    deposit(book, "acct", 10_000)
    book.hold("acct", "key", SpendCaps(), "r1", 10_000, T, {})
    book.capture("r1", Price(1_000_000_000, 1_000_000_000), 1, 2, "prov", T)
    earned = book.ledger.balance(earnings_of("prov"))
    assert earned > 0
    cb.issue_cheque(book.ledger, "prov", earned, "cheque:prov:1", T)
    with pytest.raises(InsufficientFunds):
        cb.issue_cheque(book.ledger, "prov", 1, "cheque:prov:2", T)
    with pytest.raises(InsufficientFunds):
        cb.book_payment(book.ledger, "prov", earned + 1, "paid", T)
    cb.book_payment(book.ledger, "prov", earned, "paid", T)
    assert book.ledger.balance(cheques_of("prov")) == 0
    assert book.check() == []


def test_backing_matches_the_vault_after_collect_and_payout() -> None:
    book = Book(BookPolicy())
    deposit(book, "acct", 10_000)
    book.hold("acct", "key", SpendCaps(), "r1", 5_000, T, {})
    cost = book.capture("r1", Price(1_000_000_000, 1_000_000_000), 3, 2, "prov", T)[1]
    spent = cb.spent_since_credit(book.ledger, "acct", credited=10_000, held=0)
    assert spent == cost
    # The gateway collected ``spent`` (deposit -> its balance), then paid the provider.
    earned = book.ledger.balance(earnings_of("prov"))
    cb.issue_cheque(book.ledger, "prov", earned, "c", T)
    cb.book_payment(book.ledger, "prov", earned, "p", T)
    vault = cb.VaultView(
        linked_deposits=10_000 - spent, unlinked_deposits=0, gateway_balance=spent - earned
    )
    assert cb.backing_problems(book.ledger, vault) == []
    wrong = cb.VaultView(linked_deposits=10_000, unlinked_deposits=0, gateway_balance=0)
    (problem,) = cb.backing_problems(book.ledger, wrong)
    assert "vault holds 10000" in problem
    assert book.ledger.balance(CHAIN) == -(10_000 - earned)


def test_push_threshold_scales_with_the_gas_price() -> None:
    # 50k gas at 2 gwei is 1e14 wei; at 1e15 wei a token that is 0.1 token; at most 1 %
    # of a payout on gas: 10 tokens.
    assert cb.push_threshold(2 * 10**9, 50_000, 10**15, 100) == 10 * 10**9
    assert cb.push_threshold(4 * 10**9, 50_000, 10**15, 100) == 20 * 10**9
    assert cb.push_threshold(0, 50_000, 10**15, 100) == 0
    assert cb.push_threshold(1, 1, 10**30, 100) == 1  # rounds up, never to 0 when gas costs


def test_the_ledger_root_commits_to_every_balance() -> None:
    book = Book(BookPolicy())
    deposit(book, "a", 500)
    deposit(book, "b", 300, log_index=1)
    root = cb.ledger_root(book.ledger.balances())
    assert len(root) == 32
    assert cb.ledger_root(dict(reversed(list(book.ledger.balances().items())))) == root
    changed = dict(book.ledger.balances())
    changed[balance_of("a")] += 1
    assert cb.ledger_root(changed) != root
    assert cb.ledger_root({}) == bytes(32)
