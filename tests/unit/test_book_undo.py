"""Entries that must never reach a store that would refuse them, and entries taken back.

The ledger refuses, before anything moves, an entry whose texts or balances would not fit
the stored journal. A book that keeps undo data can take back its newest entries exactly
(what the gateway does when the store refuses one after all) and post them again.
"""

from __future__ import annotations

import pytest

from tessera.ledger.accounts import MAX_UNITS, TOKEN, balance_of
from tessera.ledger.book import Book, BookPolicy
from tessera.ledger.journal import (
    MAX_MEMO_CHARS,
    MAX_REFERENCE_CHARS,
    EntryTooLarge,
    InsufficientFunds,
    LedgerError,
)
from tessera.ledger.pricing import Price
from tessera.ledger.spend_caps import SpendCaps

NO_CAPS = SpendCaps()
PROVIDER = "ab" * 32


def state(book: Book) -> tuple[object, ...]:
    """Everything a book derives from its journal, to compare two books."""
    return (
        dict(book.ledger.balances()),
        book.ledger.entry_count,
        book.open_holds(),
        sorted((t.reference, t.amount, t.release_at) for t in book.staking.all_tranches()),
        book.spend.spent("key1", 10.0),
        book.check(),
    )


@pytest.mark.parametrize(
    ("reference", "field"),
    [
        ("r" * (MAX_REFERENCE_CHARS + 1), "reference"),
        ("dep\x00nul", "reference"),
        ("dep-\ud800", "reference"),
    ],
    ids=["too-long", "nul", "lone-surrogate"],
)
def test_a_reference_the_journal_cannot_store_is_refused_before_anything_moves(
    reference: str, field: str
) -> None:
    book = Book(BookPolicy())
    before = state(book)
    with pytest.raises(EntryTooLarge) as refused:
        book.mint("alice", TOKEN, reference, at=1.0)
    assert refused.value.field == field
    assert state(book) == before
    book.mint("alice", TOKEN, "r" * MAX_REFERENCE_CHARS, at=1.0)  # the bound itself fits
    assert book.consumer("alice").balance == TOKEN


def test_an_overlong_memo_or_owner_and_a_balance_past_64_bits_are_refused() -> None:
    book = Book(BookPolicy())
    book.mint("alice", MAX_UNITS, "dep-1", at=1.0)
    before = state(book)
    with pytest.raises(EntryTooLarge):
        book.hold("alice", "key1", NO_CAPS, "req1", 1, 2.0, {"model": "m" * MAX_MEMO_CHARS})
    with pytest.raises(EntryTooLarge):
        book.mint("a" * 200, TOKEN, "dep-2", at=1.0)
    book.mint("bob", MAX_UNITS, "dep-3", at=1.0)  # the mint account at -2**63: still fits
    with pytest.raises(EntryTooLarge):  # one more unit would pass a BIGINT
        book.mint("carol", 1, "dep-4", at=1.0)
    assert book.consumer("carol").balance == 0
    assert book.ledger.minted == 2 * MAX_UNITS == 2**63
    assert before[1] == book.ledger.entry_count - 1


def test_reverting_the_newest_entries_restores_the_book_exactly() -> None:
    book = Book(BookPolicy(unbonding_delay_s=5.0), retain_entries=False)
    book.keep_undo()
    book.mint("alice", 10 * TOKEN, "dep-1", at=1.0)
    book.mint(PROVIDER, 10 * TOKEN, "dep-p", at=1.0)
    book.bond(PROVIDER, 6 * TOKEN, "bond-1", at=1.0)
    book.unbond(PROVIDER, 2 * TOKEN, "unbond-1", at=1.0)
    book.hold("alice", "key1", NO_CAPS, "req-open", TOKEN, 2.0, {"model": "m"})
    book.hold("alice", "key1", NO_CAPS, "req-cap", 2 * TOKEN, 2.0, {"model": "m"})
    book.hold("alice", "key1", NO_CAPS, "req-rel", TOKEN, 2.0, {"model": "m"})
    before = state(book)
    capture, _ = book.capture("req-cap", Price(TOKEN, TOKEN), 1, 0, PROVIDER, at=3.0)
    release = book.release("req-rel", at=3.0, reason="failed")
    mint = book.mint("alice", TOKEN, "dep-2", at=3.0)
    new_hold = book.hold("alice", "key1", NO_CAPS, "req-new", 9 * TOKEN, 3.0, {"model": "m"})
    withdraw = book.withdraw_stake(PROVIDER, "withdraw-1", at=9.0)
    assert withdraw is not None
    book.slash(PROVIDER, "downtime", "{}", [], "slash-1", at=9.0, amount=5 * TOKEN)
    slash = book.ledger.last
    assert slash is not None and slash.kind == "slash"
    book.revert([capture, release, mint, new_hold, withdraw, slash])
    assert state(book) == before
    with pytest.raises(LedgerError):  # only the newest entry can be taken back
        book.revert([capture])

    # Posted again (the mint refused by the store), each where it still holds.
    reposted = book.repost(capture)
    assert (reposted.entry_id, reposted.kind) == (before[1] + 1, "capture")
    book.repost(release)
    with pytest.raises(InsufficientFunds):  # it spent what the refused mint gave
        book.repost(new_hold)
    book.repost(withdraw)
    assert book.staking.all_tranches() == []
    # 10 minted, 1 held by req-open, req-cap cost 1 token-per-million; the provider's
    # matured tranche came back to its balance.
    cost = Price(TOKEN, TOKEN).cost(1, 0)
    assert book.consumer("alice").balance == 9 * TOKEN - cost
    assert book.ledger.balance(balance_of(PROVIDER)) == 6 * TOKEN
    assert book.check() == []


def test_a_settlement_cannot_be_posted_again_once_its_hold_is_gone() -> None:
    book = Book(BookPolicy())
    book.keep_undo()
    book.mint("alice", 10 * TOKEN, "dep-1", at=1.0)
    book.hold("alice", "key1", NO_CAPS, "req1", TOKEN, 2.0, {"model": "m"})
    book.hold("alice", "key1", NO_CAPS, "req2", TOKEN, 2.0, {"model": "m"})
    capture, _ = book.capture("req1", Price(TOKEN, TOKEN), 1, 0, PROVIDER, at=3.0)
    book.revert([capture])
    assert book.escrow.held("req1") is not None  # open again
    # Settled another way meanwhile: the capture is refused even though alice's hold
    # account (req2's money) could cover it.
    book.release("req1", at=3.0, reason="failed")
    with pytest.raises(LedgerError, match="no open hold"):
        book.repost(capture)
    assert book.consumer("alice").held == TOKEN
