"""An entry the database refuses is taken back; the journal goes on for everyone else.

Issue 11, finding 1: one entry the store refused used to stop the journal writer for good
(every later paid request a 503 until a restart) with the refused entry still applied in
memory. The databases here refuse entries themselves, through a trigger the test adds, so
the refusals bypass every bound the API and the ledger put in front of the store.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.errors import LedgerUnavailable
from tessera.gateway.bookkeeper import Bookkeeper
from tessera.ledger.accounts import TOKEN, hold_of
from tessera.ledger.book import Book, BookPolicy, ConsumerView
from tessera.ledger.journal import Entry
from tessera.ledger.pricing import Price
from tessera.ledger.spend_caps import SpendCaps
from tessera.store.ledger import LedgerStore

pytestmark = pytest.mark.integration

POLICY = BookPolicy()
CAPS = SpendCaps()
ALICE, BOB = "acct_00000000000000a1", "acct_00000000000000b0"
ALICE_KEY, BOB_KEY = "key_00000000000000a1", "key_00000000000000b0"
PROVIDER = "ab" * 32
PRICE = Price(input_per_mtok=2 * TOKEN, output_per_mtok=6 * TOKEN)
MEMO = {"model": "tiny"}


async def refuse_in_database(engine: AsyncEngine, condition: str) -> None:
    """Make the database itself refuse every ledger entry row matching ``condition``
    (SQL over ``NEW.kind`` and ``NEW.reference``), as a narrower column or a constraint
    would."""
    async with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            await conn.execute(
                text(
                    "CREATE TRIGGER refuse_entries BEFORE INSERT ON ledger_entries "
                    f"WHEN {condition} BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                )
            )
        else:
            await conn.execute(
                text(
                    "CREATE FUNCTION refuse_entries() RETURNS trigger AS $$ BEGIN "
                    f"IF {condition} THEN RAISE EXCEPTION 'refused by the test'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER refuse_entries BEFORE INSERT ON ledger_entries "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_entries()"
                )
            )


async def assert_disk_equals_memory(store: LedgerStore, keeper: Bookkeeper) -> None:
    """What `tessera ledger check` proves, plus: the book in memory is the stored one."""
    await keeper.flush()
    assert await store.check() == []
    replayed = Book(POLICY, await store.load())
    assert replayed.check() == []
    assert replayed.ledger.balances() == keeper.book.ledger.balances()
    assert await store.balances() == keeper.book.ledger.balances()
    assert replayed.open_holds() == keeper.book.open_holds()
    assert replayed.ledger.entry_count == keeper.book.ledger.entry_count
    assert keeper.book.check() == []


async def test_a_refused_entry_fails_alone_and_the_rest_are_stored(
    store_engine: AsyncEngine,
) -> None:
    await refuse_in_database(store_engine, "length(NEW.reference) > 40")
    store = LedgerStore(store_engine)
    keeper, _ = await Bookkeeper.open(store, POLICY)
    try:
        await keeper.mint(ALICE, 10 * TOKEN, "dep-alice")
        doomed = "dep-" + "x" * 60  # within the ledger's bound, beyond the database's
        # Posted together, written in one batch: the refused mint sits in the middle, and
        # Bob's hold spends what only that mint gave him.
        outcomes = await asyncio.gather(
            keeper.hold(ALICE, ALICE_KEY, CAPS, "req-1", TOKEN, MEMO),
            keeper.hold(ALICE, ALICE_KEY, CAPS, "req-2", TOKEN, MEMO),
            keeper.mint(BOB, 5 * TOKEN, doomed),
            keeper.hold(BOB, BOB_KEY, CAPS, "req-bob", TOKEN, MEMO),
            keeper.hold(ALICE, ALICE_KEY, CAPS, "req-3", TOKEN, MEMO),
            keeper.mint(ALICE, TOKEN, "dep-alice-2"),
            return_exceptions=True,
        )
        for index in (2, 3):
            error = outcomes[index]
            assert isinstance(error, LedgerUnavailable), outcomes
            assert (error.status_code, error.code) == (503, "journal_refused")
        assert [o for i, o in enumerate(outcomes) if i not in (2, 3) and o is not None] == [
            outcomes[5]
        ]
        late_mint = outcomes[5]
        assert isinstance(late_mint, Entry)
        # The entry reported is the one stored, under the id it got once the mint was gone.
        assert await store.entries_for("dep-alice-2") == [late_mint]
        assert await store.entries_for(doomed) == []
        assert keeper.writer.failure is None and keeper.writer.refusals == 1

        assert keeper.book.consumer(BOB) == ConsumerView(balance=0, held=0)
        assert keeper.book.escrow.held("req-bob") is None
        assert keeper.book.spend.spent(BOB_KEY, keeper.clock()) == (0, 0, 0)
        assert keeper.book.consumer(ALICE) == ConsumerView(8 * TOKEN, held=3 * TOKEN)
        await assert_disk_equals_memory(store, keeper)

        # Paid work goes on: the open holds settle, new ones are taken.
        for request_id in ("req-1", "req-2", "req-3"):
            _, stored = keeper.capture(request_id, PRICE, 300, 100, PROVIDER)
            assert stored is not None
            await keeper.durable(stored)
        await keeper.hold(ALICE, ALICE_KEY, CAPS, "req-4", TOKEN, MEMO)
        with pytest.raises(LedgerUnavailable):  # the same reference is refused again
            await keeper.mint(BOB, TOKEN, doomed)
        await keeper.mint(BOB, TOKEN, "dep-bob")
        assert keeper.book.consumer(BOB) == ConsumerView(balance=TOKEN, held=0)
        await assert_disk_equals_memory(store, keeper)
        assert keeper.writer.refusals == 2 and keeper.writer.failure is None
    finally:
        await keeper.close()

    # A restart finds the same journal: nothing of the refused entries, nothing lost.
    restarted, recovery = await Bookkeeper.open(store, POLICY)
    try:
        assert recovery.released == ("req-4",)
        assert restarted.book.consumer(BOB) == ConsumerView(balance=TOKEN, held=0)
        await assert_disk_equals_memory(store, restarted)
    finally:
        await restarted.close()


async def test_a_refused_capture_gives_the_hold_back(store_engine: AsyncEngine) -> None:
    await refuse_in_database(store_engine, "NEW.kind = 'capture' AND NEW.reference = 'req-bad'")
    store = LedgerStore(store_engine)
    keeper, _ = await Bookkeeper.open(store, POLICY)
    try:
        await keeper.mint(ALICE, 10 * TOKEN, "dep-alice")
        for request_id in ("req-bad", "req-good"):
            await keeper.hold(ALICE, ALICE_KEY, CAPS, request_id, TOKEN, MEMO)
        cost_bad, bad = keeper.capture("req-bad", PRICE, 300, 100, PROVIDER)
        cost_good, good = keeper.capture("req-good", PRICE, 300, 100, PROVIDER)
        assert bad is not None and good is not None and cost_bad == cost_good > 0
        with pytest.raises(LedgerUnavailable) as refused:
            await keeper.durable(bad)
        assert refused.value.code == "journal_refused"
        assert (await keeper.durable(good)).kind == "capture"
        await asyncio.sleep(0)  # the release of the refused capture's hold is queued
        await keeper.flush()
        # Nothing charged for the refused capture: its hold went back to Alice.
        assert keeper.book.consumer(ALICE) == ConsumerView(10 * TOKEN - cost_good, held=0)
        assert keeper.book.ledger.balance(hold_of(ALICE)) == 0
        kinds = [entry.kind for entry in await store.entries_for("req-bad")]
        assert kinds == ["hold", "release"]
        await assert_disk_equals_memory(store, keeper)
    finally:
        await keeper.close()
