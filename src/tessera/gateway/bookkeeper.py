"""The gateway's money desk: the in-memory book, made durable by the journal writer.

Every movement is decided on the book (synchronous, so two requests on the event loop
can never both spend the same tokens) and then queued for the database. Movements that
gate work (a hold) or report money (a capture, a deposit, a stake change) wait until
their entry is stored. On start the stored journal is replayed and checked, and holds a
crash left open are released: the consumer is not charged for work whose outcome the
gateway never recorded, and nothing is ever charged twice because each request id has
one hold and one settlement.

Memory never keeps what disk refused: when the store refuses an entry for good, the
writer hands it back here, the book takes it and every later entry back and posts the
later ones again (see journal_writer.py). The refused entry's caller gets a 503 and
nothing moved for it; everyone else goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from tessera.errors import LedgerUnavailable
from tessera.gateway.journal_writer import JournalRefused, JournalUnavailable, JournalWriter
from tessera.ledger.book import Book, BookPolicy
from tessera.ledger.escrow import CAPTURE, OpenHold
from tessera.ledger.journal import Entry, Ledger, LedgerError
from tessera.ledger.pricing import Price
from tessera.ledger.spend_caps import SpendCaps
from tessera.ledger.staking import SlashOutcome

log = logging.getLogger("tessera.gateway.bookkeeper")

RESTART = "gateway_restart"
# A capture is posted after its answer was sent and nobody waits for it (a stream that
# reports its cost hurries it): it may wait this long to share the next entry's
# transaction. A SIGKILL in that window loses it as it would a capture still queued.
CAPTURE_LINGER_S = 0.005
T = TypeVar("T")


class LedgerStoreLike(Protocol):
    async def load(self) -> list[Entry]: ...
    async def append(self, entries: list[Entry]) -> None: ...
    async def check(self) -> list[str]: ...


class JournalCorrupt(Exception):
    """The stored journal breaks an invariant; the gateway refuses to start on it."""


@dataclass(frozen=True, slots=True)
class Recovery:
    entries: int
    released: tuple[str, ...]
    kept: tuple[OpenHold, ...] = ()  # open holds of replicas still alive (a takeover)


class ChainSlasher(Protocol):
    """Where stake is slashed when it lives on a chain (gateway/chain_watcher.py): the
    slash is proposed there and taken after the challenge window, not booked here."""

    async def propose_slash(
        self,
        provider: str,
        reason: str,
        evidence: str,
        harmed: list[tuple[str, int]],
        reference: str,
    ) -> SlashOutcome: ...


class Bookkeeper:
    def __init__(
        self,
        book: Book,
        writer: JournalWriter,
        *,
        durable_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.book = book
        self.writer = writer
        self.durable_timeout_s = durable_timeout_s
        self.clock = clock
        self.chain_slasher: ChainSlasher | None = None
        # How long a capture may wait for company in the journal (see journal_writer).
        self.capture_linger_s = CAPTURE_LINGER_S

    @classmethod
    async def open(
        cls,
        store: LedgerStoreLike,
        policy: BookPolicy,
        *,
        durable_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        keep: Callable[[OpenHold], bool] | None = None,
    ) -> tuple[Bookkeeper, Recovery]:
        """Replay and check the stored journal, start writing, settle crash leftovers.

        Open holds are crash leftovers, released, unless ``keep`` says otherwise: a replica
        taking the ledger over keeps those of replicas still alive, whose captures come."""
        entries = await store.load()
        try:
            book = Book(policy, entries, retain_entries=False)
        except Exception as exc:
            raise JournalCorrupt(f"the stored journal does not replay: {exc}") from exc
        problems = book.check() + await store.check()
        if problems:
            raise JournalCorrupt("the stored journal is unsound: " + "; ".join(problems[:5]))
        book.keep_undo()
        writer = JournalWriter(store, stored=book.stored)
        keeper = cls(book, writer, durable_timeout_s=durable_timeout_s, clock=clock)
        writer.refused = keeper.take_back
        writer.start()
        released = []
        kept = []
        for hold in book.open_holds():
            if keep is not None and keep(hold):
                kept.append(hold)
                continue
            keeper.release(hold.request_id, RESTART)
            released.append(hold.request_id)
        await keeper.flush()
        if released:
            log.warning("released %d hold(s) a crash left open", len(released))
        return keeper, Recovery(len(entries), tuple(released), tuple(kept))

    async def close(self) -> None:
        await self.writer.close()

    # ------------------------------------------------------------ durability

    def _guard(self) -> None:
        if self.writer.failure is not None:
            raise LedgerUnavailable(
                "The gateway cannot record payments right now, so it takes no paid work; "
                "retry later. (Operators: see the gateway log.)"
            )

    async def durable(self, future: Awaitable[T]) -> T:
        """Wait until ``future``'s entries are stored; LedgerUnavailable if they cannot be.

        Returns what the future gives: the entry as stored (its id may differ from the one
        first posted when an earlier entry was refused and taken back)."""
        self.writer.hurry()  # it may be a lingering capture
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.durable_timeout_s)
        except JournalRefused as exc:
            raise LedgerUnavailable(
                "The gateway's journal could not record this payment, so nothing was "
                "charged or moved. (Operators: see the gateway log.)",
                code="journal_refused",
            ) from exc
        except (TimeoutError, JournalUnavailable) as exc:
            raise LedgerUnavailable(
                "The gateway could not record this payment in time; nothing was charged. "
                "Retry the request."
            ) from exc

    async def flush(self) -> None:
        """Wait until everything posted so far is stored."""
        await self.durable(self.writer.flush_future())

    def _submit(self, entry: Entry, linger_s: float = 0.0) -> asyncio.Future[Entry]:
        return self.writer.submit(entry, linger_s)

    def take_back(self, refused: Entry, later: list[Entry]) -> list[Entry | LedgerError]:
        """The store refused ``refused``: revert it and ``later`` (the entries posted after
        it) and post each later one again if it still holds. The writer's ``refused``."""
        self.book.revert([refused, *later])
        outcomes: list[Entry | LedgerError] = []
        for entry in later:
            try:
                outcomes.append(self.book.repost(entry))
            except LedgerError as exc:
                outcomes.append(exc)
        if refused.kind == CAPTURE:
            # The capture never happened: give the hold back rather than leave it open.
            asyncio.get_running_loop().call_soon(self.release, refused.reference, "not_stored")
        return outcomes

    # ------------------------------------------------------------ requests

    def post_hold(
        self,
        account: str,
        key: str,
        caps: SpendCaps,
        request_id: str,
        amount: int,
        memo: dict[str, str],
    ) -> asyncio.Future[Entry]:
        """Escrow ``amount`` now (InsufficientFunds or CapReached if it cannot be) and
        queue it for the journal; the returned future resolves once it is stored.

        The caller overlaps the write with other work and must pass the future to
        :meth:`confirm_hold` before it reports anything the hold paid for. A crash before
        the hold is stored loses nothing: nothing after it (the capture) can be stored
        either, since the journal stores entries in the order they were posted."""
        self._guard()
        entry = self.book.hold(account, key, caps, request_id, amount, self.clock(), memo)
        future = self._submit(entry)
        future.add_done_callback(_observed)
        return future

    async def confirm_hold(self, request_id: str, stored: asyncio.Future[Entry]) -> None:
        """Wait until a posted hold is stored; release it and raise LedgerUnavailable if it
        cannot be."""
        try:
            await self.durable(stored)
        except BaseException:
            self.release(request_id, "hold_not_stored")
            raise

    async def hold(
        self,
        account: str,
        key: str,
        caps: SpendCaps,
        request_id: str,
        amount: int,
        memo: dict[str, str],
    ) -> None:
        """Escrow ``amount`` and wait until that is stored; release it if it cannot be."""
        stored = self.post_hold(account, key, caps, request_id, amount, memo)
        await self.confirm_hold(request_id, stored)

    def capture(
        self,
        request_id: str,
        price: Price,
        prompt_tokens: int,
        completion_tokens: int,
        provider: str,
    ) -> tuple[int, asyncio.Future[Entry] | None]:
        """Charge what was used; returns (cost, stored-future). Safe to call once per hold."""
        if self.book.escrow.held(request_id) is None:
            return 0, None
        entry, cost = self.book.capture(
            request_id, price, prompt_tokens, completion_tokens, provider, self.clock()
        )
        return cost, self._submit_quietly(entry, self.capture_linger_s)

    def release(self, request_id: str, reason: str) -> None:
        """Give a hold back (failed or abandoned work). A no-op if already settled."""
        if self.book.escrow.held(request_id) is None:
            return
        self._submit_quietly(self.book.release(request_id, self.clock(), reason))

    def _submit_quietly(self, entry: Entry, linger_s: float = 0.0) -> asyncio.Future[Entry] | None:
        try:
            return self._submit(entry, linger_s)
        except JournalUnavailable:
            # The writer already failed: memory is ahead of disk and the gateway refuses
            # new work; the operator restarts it and the stored journal wins.
            log.error("entry %d (%s) not stored: journal unavailable", entry.entry_id, entry.kind)
            return None

    # ------------------------------------------------------------ account and stake moves

    async def _posted(self, entry: Entry | None) -> Entry | None:
        """Store ``entry``; returns it as stored."""
        if entry is None:
            return None
        return await self.durable(self._submit(entry))

    async def mint(self, owner: str, amount: int, reference: str) -> Entry | None:
        self._guard()
        return await self._posted(self.book.mint(owner, amount, reference, self.clock()))

    async def chain_move(self, post: Callable[[Ledger, float], Entry | None]) -> Entry | None:
        """Post one of chain_book's movements (``post(ledger, at)``) and wait until stored."""
        self._guard()
        at = self.clock()
        return await self._posted(self.book.chain_move(lambda ledger: post(ledger, at)))

    async def withdraw_earnings(self, provider: str, amount: int, reference: str) -> Entry | None:
        self._guard()
        entry = self.book.withdraw_earnings(provider, amount, reference, self.clock())
        return await self._posted(entry)

    async def clawback(
        self, provider: str, consumer: str, amount: int, reference: str
    ) -> Entry | None:
        self._guard()
        entry = self.book.clawback(provider, consumer, amount, reference, self.clock())
        return await self._posted(entry)

    async def pay_auditor(self, auditor: str, amount: int, reference: str) -> Entry | None:
        self._guard()
        return await self._posted(self.book.pay_auditor(auditor, amount, reference, self.clock()))

    async def bond(self, provider: str, amount: int, reference: str) -> Entry | None:
        self._guard()
        return await self._posted(self.book.bond(provider, amount, reference, self.clock()))

    async def unbond(self, provider: str, amount: int, reference: str) -> Entry | None:
        self._guard()
        return await self._posted(self.book.unbond(provider, amount, reference, self.clock()))

    async def withdraw_stake(self, provider: str, reference: str) -> Entry | None:
        self._guard()
        return await self._posted(self.book.withdraw_stake(provider, reference, self.clock()))

    async def slash(
        self,
        provider: str,
        reason: str,
        evidence: str,
        harmed: list[tuple[str, int]],
        reference: str,
        amount: int | None = None,
    ) -> SlashOutcome:
        self._guard()
        if self.chain_slasher is not None:  # the stake is on chain: propose it there
            return await self.chain_slasher.propose_slash(
                provider, reason, evidence, harmed, reference
            )
        outcome = self.book.slash(
            provider, reason, evidence, harmed, reference, self.clock(), amount
        )
        await self._posted(self.book.ledger.last)
        return outcome


def _observed(future: asyncio.Future[Entry]) -> None:
    """Mark a hold's failure as seen: the request that posted it may have ended (refused,
    cancelled) before confirming it, and the failure was handled by ``take_back``."""
    if not future.cancelled():
        future.exception()
