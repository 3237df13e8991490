"""Escrow: hold the worst case before work starts, capture the real cost, release the rest.

Every request moves through at most one hold and exactly one settlement (capture or
release), each a single balanced entry keyed by the request id, so a retried settlement is
refused rather than charged twice. Open holds are derived from the journal, so a gateway
that crashed can find and settle them on restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tessera.ledger.accounts import (
    FEES,
    VERIFICATION_POOL,
    balance_of,
    earnings_of,
    hold_of,
)
from tessera.ledger.journal import DuplicateEntry, Entry, Ledger, LedgerError, forget_through
from tessera.ledger.pricing import split_fee

HOLD = "hold"
CAPTURE = "capture"
RELEASE = "release"


@dataclass(frozen=True, slots=True)
class OpenHold:
    request_id: str
    consumer: str
    amount: int
    at: float
    memo: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FeePolicy:
    fee_bps: int = 500  # the protocol fee: 5 %
    verification_share_bps: int = 5_000  # half the fee funds the verification pool


class Escrow:
    def __init__(self, ledger: Ledger, fees: FeePolicy | None = None) -> None:
        self.ledger = ledger
        self.fees = fees or FeePolicy()
        self._open: dict[str, OpenHold] = {}
        # The hold each recent settlement closed, by entry id, while ``keep_undo``: what
        # ``untrack`` needs to reopen it. Pruned by ``forget_undo`` once stored.
        self.keep_undo = False
        self._settled: dict[int, OpenHold] = {}
        for entry in ledger.entries:
            self.track(entry)

    def track(self, entry: Entry) -> None:
        if entry.kind == HOLD:
            memo = entry.memo_dict()
            amount = next(p.amount for p in entry.postings if p.amount > 0)
            self._open[entry.reference] = OpenHold(
                entry.reference, memo["consumer"], amount, entry.at, memo
            )
        elif entry.kind in (CAPTURE, RELEASE):
            closed = self._open.pop(entry.reference, None)
            if closed is not None and self.keep_undo:
                self._settled[entry.entry_id] = closed

    def untrack(self, entry: Entry) -> None:
        """Undo ``track(entry)`` for an entry the ledger reverted (newest first)."""
        if entry.kind == HOLD:
            self._open.pop(entry.reference, None)
        elif entry.kind in (CAPTURE, RELEASE):
            closed = self._settled.pop(entry.entry_id, None)
            if closed is not None:
                self._open[entry.reference] = closed

    def forget_undo(self, upto_entry_id: int) -> None:
        """Entries up to ``upto_entry_id`` are stored: they will never be reverted."""
        forget_through(self._settled, upto_entry_id)

    def open_holds(self) -> list[OpenHold]:
        return sorted(self._open.values(), key=lambda h: (h.at, h.request_id))

    def held(self, request_id: str) -> OpenHold | None:
        return self._open.get(request_id)

    def hold(
        self,
        consumer: str,
        request_id: str,
        amount: int,
        at: float,
        memo: Mapping[str, str] | None = None,
    ) -> Entry:
        """Move ``amount`` from the consumer's balance into escrow; InsufficientFunds if short.

        ``memo`` travels with the hold (the key, the model) so a restart can explain it.
        """
        if amount <= 0:
            raise LedgerError("a hold must be positive")
        if request_id in self._open:
            raise DuplicateEntry(f"{request_id} already holds funds")
        entry = self.ledger.post(
            HOLD,
            request_id,
            {balance_of(consumer): -amount, hold_of(consumer): amount},
            at,
            unique=True,
            memo={**(memo or {}), "consumer": consumer},
        )
        self.track(entry)
        return entry

    def capture(
        self,
        request_id: str,
        cost: int,
        provider: str,
        at: float,
        memo: Mapping[str, str] | None = None,
    ) -> Entry:
        """Charge ``cost`` (at most the hold) and give back the rest, in one entry."""
        held = self._open.get(request_id)
        if held is None:
            raise LedgerError(f"no open hold for {request_id}")
        if not 0 <= cost <= held.amount:
            raise LedgerError(f"cost {cost} is outside the hold of {held.amount}")
        to_provider, to_fees, to_verification = split_fee(
            cost, self.fees.fee_bps, self.fees.verification_share_bps
        )
        changes = {
            hold_of(held.consumer): -held.amount,
            balance_of(held.consumer): held.amount - cost,
            earnings_of(provider): to_provider,
            FEES: to_fees,
            VERIFICATION_POOL: to_verification,
        }
        entry = self.ledger.post(
            CAPTURE,
            request_id,
            changes,
            at,
            unique=True,
            memo={**(memo or {}), "provider": provider, "cost": str(cost)},
        )
        self.track(entry)
        return entry

    def release(self, request_id: str, at: float, reason: str = "failed") -> Entry:
        """Give the whole hold back: the work failed, so nobody pays and nobody earns."""
        held = self._open.get(request_id)
        if held is None:
            raise LedgerError(f"no open hold for {request_id}")
        entry = self.ledger.post(
            RELEASE,
            request_id,
            {hold_of(held.consumer): -held.amount, balance_of(held.consumer): held.amount},
            at,
            unique=True,
            memo={"reason": reason},
        )
        self.track(entry)
        return entry
