"""LedgerStore on a real database: exact round trips, idempotent retries, and a check that finds tampering."""

from __future__ import annotations

import random
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.ledger.accounts import FEES, MINT, TOKEN, balance_of
from tessera.ledger.escrow import Escrow
from tessera.ledger.journal import Entry, Ledger, LedgerError, Posting
from tessera.ledger.staking import Staking
from tessera.ledger.transfers import mint, withdraw_earnings
from tessera.store.errors import StoreError
from tessera.store.ledger import LedgerStore
from tessera.store.tables import ledger_entries

pytestmark = pytest.mark.integration

CONSUMERS = ["acct_00000000000000a1", "acct_00000000000000b2", "acct_00000000000000c3"]
PROVIDERS = ["ab" * 32, "cd" * 32]  # provider ids are 64 hex characters
T0 = 1_700_000_000.0


def random_history(seed: int, steps: int) -> Ledger:
    """A ledger driven by the real policy objects through mints, holds, captures,
    releases, bonds, unbonds, stake withdrawals, slashes and earnings withdrawals."""
    rng = random.Random(seed)
    ledger = Ledger()
    escrow = Escrow(ledger)
    staking = Staking(ledger, unbonding_delay_s=5.0)
    clock = T0
    for step in range(steps):
        clock += rng.random()  # non-round floats: ``at`` must come back bit for bit
        consumer, provider = rng.choice(CONSUMERS), rng.choice(PROVIDERS)
        action = rng.randrange(9)
        try:
            if action == 0:
                mint(
                    ledger,
                    rng.choice(CONSUMERS + PROVIDERS),
                    rng.randint(1, 10 * TOKEN),
                    f"dep{step}",
                    clock,
                )
            elif action in (1, 2):
                escrow.hold(consumer, f"req{step}", rng.randint(1, TOKEN), clock)
            elif action == 3 and escrow.open_holds():
                held = rng.choice(escrow.open_holds())
                escrow.capture(held.request_id, rng.randint(0, held.amount), provider, clock)
            elif action == 4 and escrow.open_holds():
                escrow.release(rng.choice(escrow.open_holds()).request_id, clock)
            elif action == 5:
                staking.bond(provider, rng.randint(1, TOKEN), f"bond{step}", clock)
            elif action == 6:
                staking.unbond(provider, rng.randint(1, TOKEN), f"unbond{step}", clock)
            elif action == 7:
                staking.withdraw(provider, f"wds{step}", clock)
            else:
                harmed = [(consumer, rng.randint(0, TOKEN))]
                staking.slash(
                    provider,
                    rng.randint(1, TOKEN),
                    "downtime",
                    f"ev{step}",
                    harmed,
                    f"slash{step}",
                    clock,
                )
        except LedgerError:
            pass  # refused (not enough funds or stake): the ledger is unchanged
        if action == 8 and rng.random() < 0.3:
            try:
                withdraw_earnings(ledger, provider, rng.randint(1, TOKEN), f"wde{step}", clock)
            except LedgerError:
                pass
    return ledger


def replayed(entries: list[Entry]) -> Ledger:
    ledger = Ledger()
    for entry in entries:
        ledger.replay(entry)
    return ledger


async def execute(engine: AsyncEngine, sql: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def entry_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(ledger_entries))).scalar_one()
        )


async def test_append_then_load_round_trips_exactly(store_engine: AsyncEngine) -> None:
    ledger = random_history(seed=1, steps=300)
    kinds = {entry.kind for entry in ledger.entries}
    assert {"mint", "hold", "capture", "release", "bond", "unbond", "slash"} <= kinds
    # Floats that are not short decimals, and a memo with keys out of order and non-ASCII text.
    mint(ledger, CONSUMERS[0], 5, "odd-time", 0.1 + 0.2)
    ledger.post(
        "adjust",
        "memo-check",
        {balance_of(CONSUMERS[0]): -5, FEES: 5},
        T0 + 1 / 3,
        memo={"zeta": "ünïcode ✓", "alpha": '{"json": "inside"}', "mid": ""},
    )
    store = LedgerStore(store_engine)

    await store.append(ledger.entries)

    loaded = await store.load()
    assert loaded == list(ledger.entries)
    assert [entry.at for entry in loaded] == [entry.at for entry in ledger.entries]
    assert loaded[-1].memo == (("alpha", '{"json": "inside"}'), ("mid", ""), ("zeta", "ünïcode ✓"))
    assert replayed(loaded).balances() == ledger.balances()
    assert await store.check() == []


async def test_empty_database_loads_nothing_and_is_sound(store_engine: AsyncEngine) -> None:
    store = LedgerStore(store_engine)
    await store.append([])
    assert await store.load() == []
    assert await store.balances() == {}
    assert await store.check() == []


async def test_retried_batch_skips_what_is_stored(store_engine: AsyncEngine) -> None:
    """A batch whose commit outcome was unclear is sent again: nothing doubles, nothing fails."""
    entries = list(random_history(seed=2, steps=80).entries)
    store = LedgerStore(store_engine)
    await store.append(entries[:10])
    await store.append(entries[:25])  # 1..10 stored already, 11..25 new
    await store.append(entries[:25])  # all stored: a no-op

    assert await entry_count(store_engine) == 25
    assert await store.load() == entries[:25]
    assert await store.balances() == replayed(entries[:25]).balances()
    assert await store.check() == []


async def test_a_different_entry_under_a_stored_id_is_not_skipped(
    store_engine: AsyncEngine,
) -> None:
    """Skipping by id alone would silently drop a second writer's entries."""
    ours = list(random_history(seed=2, steps=40).entries)
    theirs = list(random_history(seed=9, steps=40).entries)
    store = LedgerStore(store_engine)
    await store.append(ours[:5])

    with pytest.raises(StoreError, match="entry 1 in the database is not the one being retried"):
        await store.append(theirs[:8])

    assert await store.load() == ours[:5]


async def test_a_gap_is_refused_and_nothing_is_written(store_engine: AsyncEngine) -> None:
    entries = list(random_history(seed=3, steps=40).entries)
    store = LedgerStore(store_engine)
    await store.append(entries[:5])

    with pytest.raises(StoreError) as info:
        await store.append(entries[6:9])  # ids 7..9: 6 is missing
    assert info.value.message == (
        "journal gap: the database holds up to 5, got 7; is another gateway writing this journal?"
    )
    with pytest.raises(StoreError, match="entry 6 is followed by 8"):
        await store.append([entries[5], entries[7]])

    assert await store.load() == entries[:5]
    assert await store.balances() == replayed(entries[:5]).balances()


async def test_a_second_entry_of_one_kind_and_reference_is_refused(
    store_engine: AsyncEngine,
) -> None:
    ledger = Ledger()
    first = mint(ledger, CONSUMERS[0], 100, "dep-1", T0)
    store = LedgerStore(store_engine)
    await store.append([first])
    again = Entry(
        entry_id=2,
        kind="mint",
        reference="dep-1",
        postings=(Posting(balance_of(CONSUMERS[1]), 7), Posting(MINT, -7)),
        at=T0 + 1,
    )
    with pytest.raises(StoreError, match="constraint"):
        await store.append([again])
    assert await store.load() == [first]

    # The same reference under another kind is the normal hold-then-capture case.
    other_kind = Entry(2, "grant", "dep-1", again.postings, T0 + 1)
    await store.append([other_kind])
    assert await store.entries_for("dep-1") == [first, other_kind]


@pytest.mark.parametrize("seed", [4, 5])
async def test_balances_equal_an_in_memory_ledger_after_random_batches(
    store_engine: AsyncEngine, seed: int
) -> None:
    ledger = random_history(seed=seed, steps=400)
    entries = list(ledger.entries)
    store = LedgerStore(store_engine)
    rng = random.Random(seed)
    start = 0
    while start < len(entries):
        end = start + rng.randint(1, 40)
        await store.append(entries[start:end])
        start = end

    assert await store.balances() == ledger.balances()
    assert sum(ledger.balances().values()) == 0
    assert await store.check() == []
    async with store_engine.connect() as conn:
        last_ids = {
            row.account: row.last_entry_id
            for row in await conn.execute(
                text("SELECT account, last_entry_id FROM ledger_balances")
            )
        }
    # Each balance row names the last batch that moved it, never a later one.
    assert max(last_ids.values()) == len(entries)
    assert all(1 <= value <= len(entries) for value in last_ids.values())


async def test_entries_for_a_request_returns_its_hold_and_settlement(
    store_engine: AsyncEngine,
) -> None:
    ledger = Ledger()
    escrow = Escrow(ledger)
    mint(ledger, CONSUMERS[0], 10 * TOKEN, "dep-1", T0)
    hold = escrow.hold(CONSUMERS[0], "req_abc", TOKEN, T0 + 1)
    escrow.hold(CONSUMERS[0], "req_other", TOKEN, T0 + 2)
    capture = escrow.capture("req_abc", TOKEN // 3, PROVIDERS[0], T0 + 3)
    store = LedgerStore(store_engine)
    await store.append(ledger.entries)

    assert await store.entries_for("req_abc") == [hold, capture]
    assert await store.entries_for("req_missing") == []


async def test_a_2000_entry_batch_is_a_handful_of_statements(store_engine: AsyncEngine) -> None:
    """The group-commit path: one transaction, executemany, not one round trip per entry."""
    ledger = Ledger()
    escrow = Escrow(ledger)
    for index in range(500):
        consumer = f"acct_{index:016x}"
        mint(ledger, consumer, TOKEN, f"dep{index}", T0 + index)
        escrow.hold(consumer, f"req{index}", TOKEN // 2, T0 + index + 0.25)
        if index % 2:
            escrow.capture(f"req{index}", TOKEN // 7, PROVIDERS[index % 2], T0 + index + 0.5)
        else:
            escrow.release(f"req{index}", T0 + index + 0.5)
        ledger.post("adjust", f"adj{index}", {balance_of(consumer): -1, FEES: 1}, T0 + index + 0.75)
    assert len(ledger.entries) == 2000
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(store_engine.sync_engine, "before_cursor_execute", count)
    try:
        await LedgerStore(store_engine).append(ledger.entries)
    finally:
        event.remove(store_engine.sync_engine, "before_cursor_execute", count)

    # BEGIN, max(entry_id), then entries, postings and balances (the driver may page a
    # big executemany into a few statements); far from 2,000 round trips.
    assert len(statements) <= 12, statements
    store = LedgerStore(store_engine)
    assert await store.load() == list(ledger.entries)
    assert await store.balances() == ledger.balances()
    assert await store.check() == []


def simple_history() -> Ledger:
    """1: mint 100 to A; 2: mint 50 to B; 3: A holds 30; 4: the hold is captured at 20."""
    ledger = Ledger()
    escrow = Escrow(ledger)
    mint(ledger, CONSUMERS[0], 100, "dep-a", T0)
    mint(ledger, CONSUMERS[1], 50, "dep-b", T0 + 1)
    escrow.hold(CONSUMERS[0], "req-1", 30, T0 + 2)
    escrow.capture("req-1", 20, PROVIDERS[0], T0 + 3)
    return ledger


async def test_check_finds_a_tampered_posting(store_engine: AsyncEngine) -> None:
    store = LedgerStore(store_engine)
    await store.append(simple_history().entries)
    alice = str(balance_of(CONSUMERS[0]))
    await execute(
        store_engine,
        "UPDATE ledger_postings SET amount = amount + 7 WHERE entry_id = 1 AND account = :a",
        a=alice,
    )

    problems = await store.check()

    assert "entry 1: postings sum to 7, not 0" in problems
    assert f"{alice}: ledger_balances holds 80, the postings sum to 87" in problems
    assert "the postings of all accounts sum to 7, not 0" in problems
    assert len(problems) == 3, problems
    with pytest.raises(StoreError, match="stored ledger entry 1 is unsound"):
        await store.load()


async def test_check_finds_a_tampered_balance(store_engine: AsyncEngine) -> None:
    store = LedgerStore(store_engine)
    await store.append(simple_history().entries)
    await execute(
        store_engine, "UPDATE ledger_balances SET balance = balance - 3 WHERE account = 'fees'"
    )

    assert await store.check() == [
        "fees: ledger_balances holds -2, the postings sum to 1",
        "the ledger_balances rows sum to -3, not 0",
    ]


async def test_check_finds_missing_entries_and_negative_accounts(
    store_engine: AsyncEngine,
) -> None:
    store = LedgerStore(store_engine)
    await store.append(simple_history().entries)
    alice, bob = str(balance_of(CONSUMERS[0])), str(balance_of(CONSUMERS[1]))
    await execute(store_engine, "DELETE FROM ledger_postings WHERE entry_id IN (1, 2)")
    await execute(store_engine, "DELETE FROM ledger_entries WHERE entry_id IN (1, 2)")

    problems = await store.check()

    assert problems == [
        "entry ids start at 3, not 1",
        f"{alice}: ledger_balances holds 80, the postings sum to -20",
        f"{bob}: ledger_balances holds 50, the postings sum to 0",
        "mint: ledger_balances holds -150, the postings sum to 0",
        f"{alice} is negative: its postings sum to -20, below 0",
    ]


async def test_check_finds_a_gap_and_a_lone_posting(store_engine: AsyncEngine) -> None:
    ledger = simple_history()
    mint(ledger, CONSUMERS[2], 9, "dep-c", T0 + 4)
    store = LedgerStore(store_engine)
    await store.append(ledger.entries)
    await execute(store_engine, "DELETE FROM ledger_postings WHERE entry_id IN (2, 3)")
    await execute(store_engine, "DELETE FROM ledger_entries WHERE entry_id IN (2, 3)")
    await execute(
        store_engine, "DELETE FROM ledger_postings WHERE entry_id = 5 AND account = 'mint'"
    )

    problems = await store.check()

    assert "entry 5 has 1 posting(s), needs at least 2" in problems
    assert "entry 5: postings sum to 9, not 0" in problems
    assert "entry ids jump from 1 to 4: 2..3 missing" in problems
    assert "the postings of all accounts sum to 9, not 0" in problems
