"""The book: spend caps, quotes and slashing by the table, on the real ledger."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.ledger.accounts import TOKEN, balance_of
from tessera.ledger.book import Book, BookPolicy, CapReached
from tessera.ledger.journal import DuplicateEntry, InsufficientFunds, LedgerError
from tessera.ledger.pricing import Price
from tessera.ledger.spend_caps import DAY_S, SpendCaps
from tessera.market.quotes import (
    MaxPrice,
    output_token_bound,
    prompt_token_bound,
    quote,
)
from tessera.protocol.wire import ChatMessage, Job, ModelOffer, SamplingParams

NO_CAPS = SpendCaps()


def funded(amount: int = 1_000) -> Book:
    book = Book(BookPolicy())
    book.mint("alice", amount, "dep-1", at=1.0)
    return book


def test_hold_capture_charges_real_usage_never_more_than_held() -> None:
    book = funded()
    book.hold("alice", "key1", NO_CAPS, "req1", 500, at=2.0)
    entry, cost = book.capture("req1", Price(TOKEN, TOKEN), 1, 1, "prov", at=3.0)
    assert cost == 500  # 2 tokens at 1 token each would be 2*10^9: capped by the hold
    assert book.consumer("alice").balance == 500
    assert entry.memo_dict()["cost"] == "500"


def test_total_cap_counts_open_holds() -> None:
    book = funded()
    caps = SpendCaps(total=300)
    book.hold("alice", "k", caps, "a", 200, at=2.0)
    with pytest.raises(CapReached) as refused:
        book.hold("alice", "k", caps, "b", 200, at=2.0)
    assert refused.value.headroom == 100
    book.release("a", at=3.0, reason="failed")
    book.hold("alice", "k", caps, "b", 200, at=4.0)  # the released hold freed its room
    book.capture("b", Price(0, 1_000_000), 0, 150, "p", at=5.0)
    assert book.spend.spent("k", 5.0) == (150, 150, 0)
    assert book.spendable("alice", "k", caps, 5.0) == 150


def test_daily_cap_resets_at_utc_midnight() -> None:
    book = funded()
    caps = SpendCaps(daily=100)
    day = 10 * DAY_S
    book.hold("alice", "k", caps, "a", 100, at=day + 5)
    book.capture("a", Price(0, 100_000_000), 0, 1, "p", at=day + 6)
    with pytest.raises(CapReached):
        book.hold("alice", "k", caps, "b", 1, at=day + 7)
    book.hold("alice", "k", caps, "b", 100, at=day + DAY_S)  # the next day


def test_caps_are_rebuilt_from_the_journal() -> None:
    book = funded()
    caps = SpendCaps(total=500)
    book.hold("alice", "k", caps, "a", 300, at=2.0)
    book.capture("a", Price(0, 100_000_000), 0, 1, "p", at=3.0)
    book.hold("alice", "k", caps, "b", 100, at=4.0)
    rebuilt = Book(BookPolicy(), book.ledger.entries)
    assert rebuilt.spend.spent("k", 4.0) == book.spend.spent("k", 4.0) == (100, 100, 100)
    assert [h.request_id for h in rebuilt.open_holds()] == ["b"]
    assert rebuilt.check() == []


def test_slash_uses_the_table_and_repays_the_harmed_first() -> None:
    book = Book(BookPolicy())
    book.mint("prov", 1_000, "m", at=1.0)
    book.bond("prov", 1_000, "b1", at=1.0)
    outcome = book.slash("prov", "downtime", "epoch 7", [("alice", 4)], "s1", at=2.0)
    assert outcome.taken == 10  # 100 bps of 1,000
    assert outcome.to_consumers == (("alice", 4),)
    assert outcome.to_insurance == 6
    with pytest.raises(KeyError):
        book.slash("prov", "made_up", "", [], "s2", at=3.0)
    assert book.check() == []


def chat_job(text: str, max_tokens: int = 10) -> Job:
    return Job(
        job_id="r.0",
        model="m",
        kind="chat",
        messages=[ChatMessage(role="user", content=text)],
        params=SamplingParams(max_tokens=max_tokens),
    )


def test_prompt_bound_covers_bytes_and_is_capped_by_context() -> None:
    job = chat_job("héllo")  # 6 bytes
    assert prompt_token_bound(job, 10_000) == 16 + 32 + 6
    assert prompt_token_bound(job, 20) == 20
    assert output_token_bound(job) == 10
    many = Job(
        job_id="r.0",
        model="m",
        kind="completion",
        prompts=["ab", [1, 2, 3]],
        params=SamplingParams(max_tokens=5),
    )
    assert prompt_token_bound(many, 100) == (16 + 2) + (16 + 3)
    assert output_token_bound(many) == 10


def test_quote_holds_the_dearest_affordable_worst_case() -> None:
    assert quote([10, 30, 20], spendable=25) == quote([10, 20], spendable=25)
    assert quote([10, 30, 20], spendable=25).hold == 20  # type: ignore[union-attr]
    assert quote([10, 30], spendable=9) is None
    assert quote([], spendable=100) is None


def test_max_price_filters_offers() -> None:
    offer = ModelOffer(
        name="m",
        weights_sha256="ab" * 32,
        kind="text",
        context_length=64,
        price_input_per_mtok=100,
        price_output_per_mtok=300,
    )
    assert MaxPrice().allows(offer)
    assert MaxPrice(prompt=100, completion=300).allows(offer)
    assert not MaxPrice(completion=299).allows(offer)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["hold", "capture", "release"]), st.integers(1, 400)),
        max_size=60,
    ),
    st.integers(0, 1_500),
    st.integers(0, 1_000),
)
def test_no_sequence_passes_a_cap_or_the_balance(
    steps: list[tuple[str, int]], cap: int, deposit: int
) -> None:
    book = Book(BookPolicy())
    if deposit:
        book.mint("alice", deposit, "dep", at=0.0)
    caps = SpendCaps(total=cap)
    open_ids: list[str] = []
    for n, (action, amount) in enumerate(steps):
        at = float(n + 1)
        if action == "hold":
            try:
                book.hold("alice", "k", caps, f"r{n}", amount, at)
                open_ids.append(f"r{n}")
            except (CapReached, InsufficientFunds):
                pass
        elif open_ids:
            request = open_ids.pop(amount % len(open_ids))
            if action == "capture":
                book.capture(request, Price(0, 1_000_000), 0, amount, "p", at)
            else:
                book.release(request, at, "failed")
        total, _, held = book.spend.spent("k", at)
        assert total + held <= cap
        assert book.ledger.balance(balance_of("alice")) >= 0
        assert book.check() == []


def test_a_gateway_book_keeps_balances_not_entries() -> None:
    kept, lean = Book(BookPolicy()), Book(BookPolicy(), retain_entries=False)
    for book in (kept, lean):
        book.mint("alice", 1_000, "dep", at=1.0)
        book.hold("alice", "k", NO_CAPS, "r1", 300, at=2.0)
        book.capture("r1", Price(0, 1_000_000), 0, 120, "prov", at=3.0)
        book.hold("alice", "k", NO_CAPS, "r2", 50, at=4.0)
    assert lean.ledger.entries == () and lean.ledger.entry_count == 4
    assert lean.ledger.balances() == kept.ledger.balances()
    assert [h.request_id for h in lean.open_holds()] == ["r2"]
    assert lean.check() == [] and kept.check() == []
    replayed = Book(BookPolicy(), kept.ledger.entries, retain_entries=False)
    assert replayed.ledger.balances() == kept.ledger.balances()
    assert replayed.spend.spent("k", 4.0) == kept.spend.spent("k", 4.0)


def test_a_gateway_book_forgets_settled_request_keys_but_never_settles_twice() -> None:
    book = Book(BookPolicy(), retain_entries=False)
    book.mint("alice", 1_000, "dep", at=1.0)
    book.hold("alice", "k", NO_CAPS, "r1", 300, at=2.0)
    with pytest.raises(LedgerError):
        book.hold("alice", "k", NO_CAPS, "r1", 300, at=2.5)  # an open hold is not doubled
    book.release("r1", at=3.0, reason="failed")
    with pytest.raises(LedgerError):
        book.release("r1", at=4.0, reason="failed")
    with pytest.raises(LedgerError):
        book.capture("r1", Price(0, 1), 0, 1, "prov", at=4.0)
    with pytest.raises(DuplicateEntry):
        book.mint("alice", 5, "dep", at=5.0)  # client references stay remembered
    assert book.ledger._unique == {("mint", "dep")}
