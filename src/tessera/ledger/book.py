"""The book: one ledger and every index the gateway reads from it, kept in step.

Escrow (open holds), staking (tranches) and spend caps are all derived from journal
entries, so the book is rebuilt exactly by replaying the stored journal. Every method is
synchronous and atomic: it checks and posts in one step or raises and changes nothing,
which is what lets concurrent requests on one event loop never overspend.

A book that ``keeps_undo`` can take back its newest entries (``revert``) and post them
again under new ids (``repost``): how the gateway keeps memory equal to disk when the
store refuses one entry after the book applied it. Undo data lives only until
``stored(entry_id)`` says the entries are durable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tessera.ledger.accounts import (
    FEES,
    INSURANCE_POOL,
    MINT,
    VERIFICATION_POOL,
    AccountKind,
    balance_of,
    earnings_of,
    hold_of,
    stake_of,
)
from tessera.ledger.escrow import CAPTURE, HOLD, RELEASE, Escrow, FeePolicy, OpenHold
from tessera.ledger.journal import DuplicateEntry, Entry, Ledger, LedgerError
from tessera.ledger.pricing import Price
from tessera.ledger.slashing_table import SlashingTable
from tessera.ledger.spend_caps import SpendCaps, SpendTracker
from tessera.ledger.staking import (
    SLASH,
    WITHDRAW_STAKE,
    SlashOutcome,
    Staking,
    Tranche,
)
from tessera.ledger.transfers import clawback, mint, pay_auditor, withdraw_earnings


class StakeSource(Protocol):
    """Where bonded stake lives when it is not in the journal (an EVM chain)."""

    def bonded(self, provider: str) -> int: ...

    def staked(self) -> set[str]: ...


class CapReached(LedgerError):
    """The API key's spend cap leaves too little room for this request."""

    def __init__(self, headroom: int, needed: int) -> None:
        super().__init__(f"spend cap leaves {headroom}, the request may cost {needed}")
        self.headroom = headroom
        self.needed = needed


@dataclass(frozen=True, slots=True)
class BookPolicy:
    fees: FeePolicy = field(default_factory=FeePolicy)
    unbonding_delay_s: float = 7 * 86_400.0
    slashing: SlashingTable = field(default_factory=SlashingTable)


@dataclass(frozen=True, slots=True)
class ConsumerView:
    balance: int
    held: int


@dataclass(frozen=True, slots=True)
class ProviderView:
    earnings: int
    balance: int
    bonded: int
    unbonding: tuple[Tranche, ...]


class Book:
    def __init__(
        self, policy: BookPolicy, entries: Iterable[Entry] = (), retain_entries: bool = True
    ) -> None:
        self.policy = policy
        self.ledger = Ledger(retain_entries, guarded_kinds=frozenset({HOLD, CAPTURE, RELEASE}))
        self.escrow = Escrow(self.ledger, policy.fees)
        self.staking = Staking(self.ledger, policy.unbonding_delay_s)
        self.spend = SpendTracker()
        for entry in entries:
            self.ledger.replay(entry, unique=True)
            self.escrow.track(entry)
            self.staking.track(entry)
            self.spend.track(entry)
        self.listeners: list[Callable[[Entry], None]] = []
        self.chain_stake: StakeSource | None = None

    # ------------------------------------------------------------ undo

    def keep_undo(self) -> None:
        """From now on remember what each entry displaced, so ``revert`` can restore it."""
        self.escrow.keep_undo = self.staking.keep_undo = self.spend.keep_undo = True

    def stored(self, upto_entry_id: int) -> None:
        """Entries up to ``upto_entry_id`` are durable: forget their undo data."""
        self.escrow.forget_undo(upto_entry_id)
        self.staking.forget_undo(upto_entry_id)
        self.spend.forget_undo(upto_entry_id)

    def revert(self, entries: Sequence[Entry]) -> None:
        """Take back ``entries``, the newest ones of the journal in order, newest first.

        The book is then exactly as it was before the first of them was posted.
        """
        for entry in reversed(entries):
            self.ledger.revert(entry)
            self.escrow.untrack(entry)
            self.staking.untrack(entry)
            self.spend.untrack(entry)

    def repost(self, entry: Entry) -> Entry:
        """Post a reverted ``entry`` again, as the next entry, if it still holds without
        what was reverted with it; LedgerError (and no change) if it does not."""
        if entry.kind == HOLD and self.escrow.held(entry.reference) is not None:
            raise DuplicateEntry(f"{entry.reference} already holds funds")
        if entry.kind in (CAPTURE, RELEASE):
            held = self.escrow.held(entry.reference)
            if held is None or -held.amount not in (p.amount for p in entry.postings):
                raise LedgerError(f"no open hold for {entry.reference} any more")
        if entry.kind in (SLASH, WITHDRAW_STAKE) and not self.staking.covers(entry):
            raise LedgerError(f"the stake {entry.reference} takes is no longer there")
        posted = self.ledger.post(
            entry.kind,
            entry.reference,
            {p.account: p.amount for p in entry.postings},
            entry.at,
            unique=True,
            memo=entry.memo_dict(),
        )
        self.escrow.track(posted)
        self.staking.track(posted)
        return self._posted(posted)

    def _posted(self, entry: Entry) -> Entry:
        self.spend.track(entry)
        for listener in self.listeners:
            listener(entry)
        return entry

    # ------------------------------------------------------------ reads

    def consumer(self, account: str) -> ConsumerView:
        return ConsumerView(
            self.ledger.balance(balance_of(account)), self.ledger.balance(hold_of(account))
        )

    def provider(self, provider: str) -> ProviderView:
        return ProviderView(
            earnings=self.ledger.balance(earnings_of(provider)),
            balance=self.ledger.balance(balance_of(provider)),
            bonded=self.bonded(provider),
            unbonding=tuple(self.staking.tranches(provider)),
        )

    def system(self) -> dict[str, int]:
        return {
            "minted": self.ledger.minted,
            "fees": self.ledger.balance(FEES),
            "verification_pool": self.ledger.balance(VERIFICATION_POOL),
            "insurance_pool": self.ledger.balance(INSURANCE_POOL),
            "entries": self.ledger.entry_count,
        }

    def spendable(self, account: str, key: str, caps: SpendCaps, at: float) -> int:
        """What a request under ``key`` may hold now: balance, limited by the key's caps."""
        balance = self.ledger.balance(balance_of(account))
        room = self.spend.headroom(key, caps, at)
        return balance if room is None else min(balance, room)

    def bonded(self, provider: str) -> int:
        """The stake the router counts: the journal's, or the chain's when one is
        configured (``chain_stake``, an in-memory index the chain watcher keeps)."""
        if self.chain_stake is not None:
            return self.chain_stake.bonded(provider)
        return self.ledger.balance(stake_of(provider))

    def staked_providers(self) -> set[str]:
        """Providers that may have stake, for those asking for every stake at once."""
        if self.chain_stake is not None:
            return self.chain_stake.staked()
        return {a.owner for a in self.ledger.balances() if a.kind is AccountKind.STAKE}

    # ------------------------------------------------------------ requests

    def hold(
        self,
        account: str,
        key: str,
        caps: SpendCaps,
        request_id: str,
        amount: int,
        at: float,
        memo: dict[str, str] | None = None,
    ) -> Entry:
        """Escrow ``amount`` for a request, within the balance and the key's caps."""
        room = self.spend.headroom(key, caps, at)
        if room is not None and amount > room:
            raise CapReached(room, amount)
        entry = self.escrow.hold(account, request_id, amount, at, {**(memo or {}), "key": key})
        return self._posted(entry)

    def capture(
        self,
        request_id: str,
        price: Price,
        prompt_tokens: int,
        completion_tokens: int,
        provider: str,
        at: float,
    ) -> tuple[Entry, int]:
        """Charge the real cost (never more than was held) and return the rest."""
        held = self.escrow.held(request_id)
        if held is None:
            raise LedgerError(f"no open hold for {request_id}")
        cost = min(price.cost(prompt_tokens, completion_tokens), held.amount)
        memo = {"prompt_tokens": str(prompt_tokens), "completion_tokens": str(completion_tokens)}
        entry = self.escrow.capture(request_id, cost, provider, at, memo)
        return self._posted(entry), cost

    def release(self, request_id: str, at: float, reason: str) -> Entry:
        return self._posted(self.escrow.release(request_id, at, reason))

    def open_holds(self) -> list[OpenHold]:
        return self.escrow.open_holds()

    # ------------------------------------------------------------ deposits and stake

    def mint(self, owner: str, amount: int, reference: str, at: float) -> Entry:
        return self._posted(mint(self.ledger, owner, amount, reference, at))

    def chain_move(self, post: Callable[[Ledger], Entry | None]) -> Entry | None:
        """Apply one of chain_book's postings (``post`` takes the ledger), keeping the
        indexes in step; None when it had nothing to move."""
        entry = post(self.ledger)
        return None if entry is None else self._posted(entry)

    def withdraw_earnings(self, provider: str, amount: int, reference: str, at: float) -> Entry:
        return self._posted(withdraw_earnings(self.ledger, provider, amount, reference, at))

    def clawback(
        self, provider: str, consumer: str, amount: int, reference: str, at: float
    ) -> Entry | None:
        """Refund up to ``amount`` of a provider's earnings to a consumer; None if none left."""
        amount = min(amount, self.ledger.balance(earnings_of(provider)))
        if amount <= 0:
            return None
        return self._posted(clawback(self.ledger, provider, consumer, amount, reference, at))

    def pay_auditor(self, auditor: str, amount: int, reference: str, at: float) -> Entry | None:
        """Pay up to ``amount`` from the verification pool; None when the pool is empty."""
        amount = min(amount, self.ledger.balance(VERIFICATION_POOL))
        if amount <= 0:
            return None
        return self._posted(pay_auditor(self.ledger, auditor, amount, reference, at))

    def bond(self, provider: str, amount: int, reference: str, at: float) -> Entry:
        return self._posted(self.staking.bond(provider, amount, reference, at))

    def unbond(self, provider: str, amount: int, reference: str, at: float) -> Entry:
        return self._posted(self.staking.unbond(provider, amount, reference, at))

    def withdraw_stake(self, provider: str, reference: str, at: float) -> Entry | None:
        entry = self.staking.withdraw(provider, reference, at)
        return None if entry is None else self._posted(entry)

    def slash(
        self,
        provider: str,
        reason: str,
        evidence: str,
        harmed: Sequence[tuple[str, int]],
        reference: str,
        at: float,
        amount: int | None = None,
    ) -> SlashOutcome:
        """Slash by the table's share for ``reason`` unless an explicit amount is given."""
        if amount is None:
            exposed = self.staking.bonded(provider) + sum(
                t.amount for t in self.staking.tranches(provider)
            )
            amount = self.policy.slashing.amount(reason, exposed)
        else:
            self.policy.slashing.rule(reason)  # an unknown reason is refused either way
        outcome = self.staking.slash(provider, amount, reason, evidence, harmed, reference, at)
        assert self.ledger.last is not None
        self._posted(self.ledger.last)
        return outcome

    def check(self) -> list[str]:
        problems = self.ledger.check()
        held = sum(h.amount for h in self.open_holds())
        balances = self.ledger.balances()
        in_escrow = sum(b for a, b in balances.items() if a.kind is AccountKind.HOLD)
        if held != in_escrow:
            problems.append(f"open holds total {held} but hold accounts hold {in_escrow}")
        if self.ledger.balance(MINT) > 0:
            problems.append("the mint account is positive")
        unbonding = sum(b for a, b in balances.items() if a.kind is AccountKind.UNBONDING)
        tranches = sum(t.amount for t in self.staking.all_tranches())
        if unbonding != tranches:
            problems.append(f"unbonding accounts hold {unbonding} but tranches total {tranches}")
        return problems
