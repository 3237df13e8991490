"""The bookkeeper and its group-committed journal over a real LedgerStore, on both databases.

What must hold: the database always holds a prefix of the in-memory journal, in order; a
hold is stored before ``hold()`` returns; concurrent requests share commits; holds a
crash left open are released exactly once on the next start; an entry the store refuses
is taken back from memory alone (tests/integration/test_journal_refusals.py), a second
gateway on the journal stops all money movement; a transient failure is retried without
doubling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.errors import LedgerUnavailable
from tessera.gateway.bookkeeper import RESTART, Bookkeeper, Recovery
from tessera.gateway.journal_writer import JournalRefused, JournalUnavailable
from tessera.ledger.accounts import TOKEN, Account
from tessera.ledger.book import Book, BookPolicy, ConsumerView
from tessera.ledger.escrow import OpenHold
from tessera.ledger.journal import Entry
from tessera.ledger.pricing import Price
from tessera.ledger.spend_caps import SpendCaps
from tessera.store.engine import create_engine
from tessera.store.errors import StoreError
from tessera.store.ledger import LedgerStore

pytestmark = pytest.mark.integration

POLICY = BookPolicy()
CAPS = SpendCaps()
KEY = "key_0000000000000001"
ALICE = "acct_00000000000000a1"
PROVIDER = "ab" * 32  # provider ids are 64 hex characters
PRICE = Price(input_per_mtok=2 * TOKEN, output_per_mtok=6 * TOKEN)
NEVER_AGAIN = range(0)


class FlakyLedgerStore(LedgerStore):
    """A real LedgerStore whose appends numbered in ``failing`` raise ``error``.

    ``after_commit`` raises once the batch is committed: the case where the writer cannot
    know whether its transaction went through and must send the batch again.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        error: StoreError,
        *,
        failing: range = NEVER_AGAIN,
        after_commit: bool = False,
    ) -> None:
        super().__init__(engine)
        self.error = error
        self.failing = failing
        self.after_commit = after_commit
        self.sent: list[list[int]] = []  # entry ids of every append call, in call order

    def fail_from_next_append(self) -> None:
        self.failing = range(len(self.sent) + 1, 10**9)

    async def append(self, entries: Sequence[Entry]) -> None:
        self.sent.append([entry.entry_id for entry in entries])
        fails = len(self.sent) in self.failing
        if fails and not self.after_commit:
            raise self.error
        await super().append(entries)
        if fails:
            raise self.error


def consumer(index: int) -> str:
    return f"acct_{index:016x}"


async def settle(keeper: Bookkeeper, account: str, request_id: str, amount: int, used: int) -> int:
    """One request as the gateway pays for it: a durable hold, then a stored capture."""
    await keeper.hold(account, KEY, CAPS, request_id, amount, {"model": "tiny"})
    cost, stored = keeper.capture(request_id, PRICE, 10 * used, used, PROVIDER)
    assert stored is not None
    await keeper.durable(stored)
    return cost


async def settle_held(keeper: Bookkeeper, request_id: str) -> int:
    """Capture an open hold and wait until the capture is stored."""
    cost, stored = keeper.capture(request_id, PRICE, 300, 100, PROVIDER)
    assert stored is not None
    await keeper.durable(stored)
    return cost


def recording(keeper: Bookkeeper) -> list[Entry]:
    """Every entry the book posts from now on, in order.

    Read from the book's listeners: the gateway's book need not keep its journal in
    memory (the database holds it), only balances and indexes.
    """
    posted: list[Entry] = []
    keeper.book.listeners.append(posted.append)
    return posted


def book_state(book: Book) -> tuple[dict[Account, int], list[OpenHold]]:
    return dict(book.ledger.balances()), book.open_holds()


async def assert_disk_equals_memory(
    store: LedgerStore, keeper: Bookkeeper, journal: list[Entry]
) -> None:
    """The database holds exactly ``journal``, in order, and the book's balances."""
    await keeper.flush()
    assert await store.load() == journal
    assert await store.balances() == keeper.book.ledger.balances()
    assert await store.check() == []
    assert keeper.book.check() == []


async def test_mint_hold_capture_and_release_are_stored_in_order(
    store_engine: AsyncEngine,
) -> None:
    store = LedgerStore(store_engine)
    keeper, recovery = await Bookkeeper.open(store, POLICY)
    try:
        assert recovery == Recovery(entries=0, released=())
        posted = recording(keeper)
        await keeper.mint(ALICE, 10 * TOKEN, "dep-1")
        await keeper.hold(ALICE, KEY, CAPS, "req-1", TOKEN, {"model": "tiny"})
        # hold() returns only once the hold is in the database.
        assert [entry.kind for entry in await store.entries_for("req-1")] == ["hold"]

        cost, stored = keeper.capture("req-1", PRICE, 1_000, 500, PROVIDER)
        assert stored is not None
        await keeper.durable(stored)
        await keeper.hold(ALICE, KEY, CAPS, "req-2", TOKEN, {"model": "tiny"})
        keeper.release("req-2", "provider_failed")
        await keeper.flush()

        loaded = await store.load()
        assert [(entry.entry_id, entry.kind, entry.reference) for entry in loaded] == [
            (1, "mint", "dep-1"),
            (2, "hold", "req-1"),
            (3, "capture", "req-1"),
            (4, "hold", "req-2"),
            (5, "release", "req-2"),
        ]
        assert cost == PRICE.cost(1_000, 500) == 5_000_000
        assert keeper.book.consumer(ALICE) == ConsumerView(balance=10 * TOKEN - cost, held=0)
        await assert_disk_equals_memory(store, keeper, posted)
        # A settled request settles once: a second capture or release is a no-op.
        assert keeper.capture("req-1", PRICE, 1_000, 500, PROVIDER) == (0, None)
        keeper.release("req-2", "again")
        assert len(posted) == keeper.writer.written == 5
    finally:
        await keeper.close()


async def test_concurrent_requests_share_commits_and_disk_equals_memory(
    store_engine: AsyncEngine,
) -> None:
    store = LedgerStore(store_engine)
    keeper, _ = await Bookkeeper.open(store, POLICY)
    posted = recording(keeper)
    try:
        accounts = [consumer(index) for index in range(10)]
        for account in accounts:
            await keeper.mint(account, 100 * TOKEN, f"dep-{account}")
        batches_before, entries_before = keeper.writer.batches, keeper.writer.written

        async def flow(index: int) -> int:
            account, request_id = accounts[index % len(accounts)], f"req-{index:03d}"
            if index % 5 == 0:  # failed work: the hold is given back
                await keeper.hold(account, KEY, CAPS, request_id, TOKEN, {"model": "tiny"})
                keeper.release(request_id, "provider_failed")
                return 0
            return await settle(keeper, account, request_id, TOKEN, used=index)

        costs = await asyncio.gather(*(flow(index) for index in range(200)))
        await keeper.flush()

        flow_entries = keeper.writer.written - entries_before
        flow_batches = keeper.writer.batches - batches_before
        assert flow_entries == 400
        # Group commit: requests arriving during a write share the next transaction.
        assert flow_batches <= flow_entries // 20, (flow_batches, flow_entries)
        await assert_disk_equals_memory(store, keeper, posted)
        spent = sum(100 * TOKEN - keeper.book.consumer(a).balance for a in accounts)
        assert spent == sum(costs) > 0
        assert keeper.book.open_holds() == []
    finally:
        await keeper.close()


async def test_one_request_at_a_time_pays_one_commit_for_its_capture_and_the_next_hold(
    store_engine: AsyncEngine,
) -> None:
    """A capture lingers (nobody waits for it: its answer was sent) and goes with the next
    request's hold; with nothing after it, it goes alone once its time is up."""
    store = FlakyLedgerStore(store_engine, StoreError("unused"))
    keeper, _ = await Bookkeeper.open(store, POLICY)
    keeper.capture_linger_s = 0.2
    posted = recording(keeper)
    try:
        await keeper.mint(ALICE, 100 * TOKEN, "dep-1")
        for number in range(5):
            request_id = f"req-{number}"
            await keeper.hold(ALICE, KEY, CAPS, request_id, TOKEN, {"model": "tiny"})
            keeper.capture(request_id, PRICE, 100, 10, PROVIDER)
        assert [len(ids) for ids in store.sent[1:]] == [1, 2, 2, 2, 2]  # hold; capture + hold
        loop = asyncio.get_running_loop()
        started = loop.time()
        while len(store.sent) < 7:
            await asyncio.sleep(0.01)
        assert loop.time() - started >= 0.15  # the last capture waited for company
        assert store.sent[-1] == [posted[-1].entry_id]
        await assert_disk_equals_memory(store, keeper, posted)
    finally:
        await keeper.close()


async def test_waiting_for_a_lingering_capture_writes_it_at_once(
    store_engine: AsyncEngine,
) -> None:
    """A stream that reports its cost waits for its capture; a flush waits for everything:
    neither waits out the linger."""
    store = LedgerStore(store_engine)
    keeper, _ = await Bookkeeper.open(store, POLICY)
    keeper.capture_linger_s = 30.0
    try:
        await keeper.mint(ALICE, 100 * TOKEN, "dep-1")
        await keeper.hold(ALICE, KEY, CAPS, "req-1", TOKEN, {"model": "tiny"})
        _, stored = keeper.capture("req-1", PRICE, 100, 10, PROVIDER)
        assert stored is not None
        await asyncio.wait_for(keeper.durable(stored), 5)
        await keeper.hold(ALICE, KEY, CAPS, "req-2", TOKEN, {"model": "tiny"})
        keeper.capture("req-2", PRICE, 100, 10, PROVIDER)
        await asyncio.wait_for(keeper.flush(), 5)
        assert [e.kind for e in await store.entries_for("req-2")] == ["hold", "capture"]
    finally:
        await asyncio.wait_for(keeper.close(), 5)


async def test_holds_a_crash_left_open_are_released_once_on_the_next_start(
    migrated_url: str,
) -> None:
    requests = [f"req-{index}" for index in range(5)]
    engine = create_engine(migrated_url)
    try:
        store = LedgerStore(engine)
        keeper, _ = await Bookkeeper.open(store, POLICY)
        before_crash = recording(keeper)
        await keeper.mint(ALICE, 10 * TOKEN, "dep-1")
        for request_id in requests:
            await keeper.hold(ALICE, KEY, CAPS, request_id, TOKEN, {"model": "tiny"})
        costs = [await settle_held(keeper, request_id) for request_id in requests[:2]]
        # The crash: nothing settles the other three; every hold is already stored.
        assert keeper.writer.pending == 0
        await keeper.writer.close()
        assert await store.load() == before_crash
        kinds = [entry.kind for entry in before_crash]
        assert kinds == ["mint", *["hold"] * 5, *["capture"] * 2]
    finally:
        await engine.dispose()

    engine = create_engine(migrated_url)
    try:
        store = LedgerStore(engine)
        keeper, recovery = await Bookkeeper.open(store, POLICY)
        try:
            assert recovery.entries == 8
            assert sorted(recovery.released) == requests[2:]
            assert keeper.book.consumer(ALICE) == ConsumerView(10 * TOKEN - sum(costs), held=0)
            assert keeper.book.open_holds() == []
            journal = await store.load()
            assert journal[:8] == before_crash
            released = [(e.kind, e.reference, e.memo_dict()["reason"]) for e in journal[8:]]
            assert released == [("release", r, RESTART) for r in recovery.released]
            await assert_disk_equals_memory(store, keeper, journal)
        finally:
            await keeper.close()

        again, second = await Bookkeeper.open(store, POLICY)
        try:
            assert second == Recovery(entries=11, released=())
            assert again.writer.written == 0
            assert again.book.consumer(ALICE) == ConsumerView(10 * TOKEN - sum(costs), held=0)
            await assert_disk_equals_memory(store, again, journal)
        finally:
            await again.close()
    finally:
        await engine.dispose()


async def test_a_second_gateway_on_the_journal_fails_its_waiters_and_takes_no_work(
    store_engine: AsyncEngine,
) -> None:
    ours_store, theirs_store = LedgerStore(store_engine), LedgerStore(store_engine)
    ours, _ = await Bookkeeper.open(ours_store, POLICY)
    ours_posted = recording(ours)
    try:
        await ours.mint(ALICE, 10 * TOKEN, "dep-1")
        theirs, recovery = await Bookkeeper.open(theirs_store, POLICY)
        try:
            assert recovery == Recovery(entries=1, released=())
            heard: list[str] = []
            theirs.writer.stopped.append(heard.append)
            await ours.hold(ALICE, KEY, CAPS, "req-ours", TOKEN, {"model": "tiny"})
            # Both books number their next entry 2: theirs collides with ours on disk.
            pending = [
                theirs.book.hold(ALICE, KEY, CAPS, f"req-{i}", TOKEN, theirs.clock())
                for i in range(3)
            ]
            futures = [theirs.writer.submit(entry) for entry in pending]
            for future in futures:
                with pytest.raises(JournalUnavailable, match="another gateway"):
                    await future
            assert theirs.writer.failure is not None

            theirs_posted = recording(theirs)
            before = book_state(theirs.book)
            with pytest.raises(LedgerUnavailable) as refused:
                await theirs.hold(ALICE, KEY, CAPS, "req-late", TOKEN, {"model": "tiny"})
            assert refused.value.status_code == 503
            with pytest.raises(LedgerUnavailable):
                await theirs.mint(ALICE, TOKEN, "dep-2")
            assert book_state(theirs.book) == before
            assert theirs_posted == []
            with pytest.raises(JournalUnavailable):
                theirs.writer.submit(pending[0])
            # The writer said once that it stopped, and why (the owner checks its lock then).
            assert len(heard) == 1 and "another gateway" in heard[0], heard
        finally:
            await theirs.close()
        # Our journal is untouched by theirs.
        await assert_disk_equals_memory(ours_store, ours, ours_posted)
    finally:
        await ours.close()


async def test_a_store_refusing_every_entry_moves_no_money_and_memory_stays_equal_to_disk(
    store_engine: AsyncEngine,
) -> None:
    store = FlakyLedgerStore(store_engine, StoreError("the disk is full"))
    keeper, _ = await Bookkeeper.open(store, POLICY)
    requests = [f"req-{index}" for index in range(4)]
    try:
        await keeper.mint(ALICE, 10 * TOKEN, "dep-1")
        await asyncio.gather(
            *(keeper.hold(ALICE, KEY, CAPS, r, TOKEN, {"model": "tiny"}) for r in requests)
        )
        on_disk = await store.load()
        store.fail_from_next_append()

        stored: list[asyncio.Future[Entry]] = []

        async def capture(request_id: str) -> None:
            _, future = keeper.capture(request_id, PRICE, 300, 100, PROVIDER)
            assert future is not None
            stored.append(future)
            await keeper.durable(future)

        # Two captures and two new holds, in one batch that the store refuses.
        outcomes = await asyncio.gather(
            capture(requests[0]),
            capture(requests[1]),
            keeper.hold(ALICE, KEY, CAPS, "req-x", TOKEN, {"model": "tiny"}),
            keeper.hold(ALICE, KEY, CAPS, "req-y", TOKEN, {"model": "tiny"}),
            return_exceptions=True,
        )
        for error in outcomes:
            assert isinstance(error, LedgerUnavailable)
            assert isinstance(error.__cause__, JournalRefused)
        assert len(stored) == 2
        for future in stored:
            with pytest.raises(JournalRefused, match="the disk is full"):
                await future
        assert [6, 7, 8, 9] in store.sent  # the batch, then its entries bisected
        await keeper.flush()
        # Each entry was refused on its own and taken back: memory holds what disk holds,
        # and the writer still takes work.
        assert keeper.writer.failure is None and keeper.writer.refusals >= 4
        assert keeper.book.escrow.held("req-x") is None
        assert await store.load() == on_disk
        replayed = Book(POLICY, on_disk)
        assert keeper.book.ledger.balances() == replayed.ledger.balances()
        assert keeper.book.open_holds() == replayed.open_holds()

        # The disk has room again: money moves with no restart.
        store.failing = NEVER_AGAIN
        costs = [await settle_held(keeper, request_id) for request_id in requests]
        assert keeper.book.consumer(ALICE) == ConsumerView(10 * TOKEN - sum(costs), held=0)
        await keeper.flush()
        assert await store.check() == []
        assert await store.balances() == keeper.book.ledger.balances()
    finally:
        await keeper.close()


@pytest.mark.parametrize("after_commit", [False, True], ids=["before-commit", "after-commit"])
async def test_a_transient_failure_is_retried_and_stores_each_entry_once(
    store_engine: AsyncEngine, after_commit: bool
) -> None:
    error = StoreError("lost the connection to the database", retryable=True)
    store = FlakyLedgerStore(store_engine, error, after_commit=after_commit)
    keeper, _ = await Bookkeeper.open(store, POLICY)
    posted = recording(keeper)
    try:
        await keeper.mint(ALICE, 100 * TOKEN, "dep-1")
        store.failing = range(len(store.sent) + 1, len(store.sent) + 2)  # the next append, once

        costs = await asyncio.gather(
            *(settle(keeper, ALICE, f"req-{i:02d}", TOKEN, used=i + 1) for i in range(20))
        )

        failed = store.failing.start - 1
        assert store.sent[failed + 1] == store.sent[failed]  # the same batch, sent again
        assert keeper.writer.failure is None
        assert keeper.writer.written == len(posted) == 41
        await assert_disk_equals_memory(store, keeper, posted)
        assert keeper.book.consumer(ALICE) == ConsumerView(100 * TOKEN - sum(costs), held=0)
    finally:
        await keeper.close()
