"""Stake: bond, unbond through a delay, withdraw, and slash.

Unbonding stake sits in tranches, each released ``unbonding_delay_s`` after it was asked
for and slashable until withdrawn. A slash takes from bonded stake first, then from the
newest tranches; it pays the harmed consumers first (up to what each lost) and the
insurance pool with the rest. Tranche state is rebuilt from the journal's memos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tessera.ledger.accounts import (
    INSURANCE_POOL,
    Account,
    balance_of,
    stake_of,
    unbonding_of,
)
from tessera.ledger.journal import Entry, Ledger, LedgerError, forget_through

BOND = "bond"
UNBOND = "unbond"
WITHDRAW_STAKE = "withdraw_stake"
SLASH = "slash"


@dataclass(slots=True)
class Tranche:
    reference: str
    provider: str
    amount: int
    release_at: float


@dataclass(frozen=True, slots=True)
class SlashOutcome:
    taken: int
    to_consumers: tuple[tuple[str, int], ...]
    to_insurance: int


def _encode(parts: Sequence[tuple[str, int]]) -> str:
    return ";".join(f"{k}={v}" for k, v in parts)


def _decode(text: str) -> list[tuple[str, int]]:
    return [(k, int(v)) for k, _, v in (p.partition("=") for p in text.split(";") if p)]


class Staking:
    def __init__(self, ledger: Ledger, unbonding_delay_s: float) -> None:
        self.ledger = ledger
        self.unbonding_delay_s = unbonding_delay_s
        self._tranches: dict[str, Tranche] = {}
        self.keep_undo = False  # see Escrow.keep_undo
        self._emptied: dict[int, list[Tranche]] = {}  # tranches an entry emptied, by entry id
        for entry in ledger.entries:
            self.track(entry)

    def track(self, entry: Entry) -> None:
        memo = entry.memo_dict()
        if entry.kind == UNBOND:
            amount = next(p.amount for p in entry.postings if p.amount > 0)
            self._tranches[entry.reference] = Tranche(
                entry.reference, memo["provider"], amount, float(memo["release_at"])
            )
        elif entry.kind in (SLASH, WITHDRAW_STAKE):
            for reference, amount in _decode(memo.get("tranches", "")):
                tranche = self._tranches[reference]
                tranche.amount -= amount
                if tranche.amount == 0:
                    del self._tranches[reference]
                    if self.keep_undo:
                        self._emptied.setdefault(entry.entry_id, []).append(tranche)

    def untrack(self, entry: Entry) -> None:
        """Undo ``track(entry)`` for an entry the ledger reverted (newest first)."""
        if entry.kind == UNBOND:
            self._tranches.pop(entry.reference, None)
        elif entry.kind in (SLASH, WITHDRAW_STAKE):
            emptied = {t.reference: t for t in self._emptied.pop(entry.entry_id, [])}
            for reference, amount in _decode(entry.memo_dict().get("tranches", "")):
                tranche = self._tranches.get(reference) or emptied.get(reference)
                if tranche is None:
                    raise LedgerError(f"tranche {reference} cannot be restored")
                tranche.amount += amount
                self._tranches[reference] = tranche

    def covers(self, entry: Entry) -> bool:
        """Whether the tranches ``entry`` (a slash or withdrawal) takes from still hold it."""
        for reference, amount in _decode(entry.memo_dict().get("tranches", "")):
            tranche = self._tranches.get(reference)
            if tranche is None or tranche.amount < amount:
                return False
        return True

    def forget_undo(self, upto_entry_id: int) -> None:
        forget_through(self._emptied, upto_entry_id)

    def bonded(self, provider: str) -> int:
        return self.ledger.balance(stake_of(provider))

    def all_tranches(self) -> list[Tranche]:
        return list(self._tranches.values())

    def tranches(self, provider: str) -> list[Tranche]:
        return sorted(
            (t for t in self._tranches.values() if t.provider == provider),
            key=lambda t: (t.release_at, t.reference),
        )

    def bond(self, provider: str, amount: int, reference: str, at: float) -> Entry:
        _positive(amount)
        return self.ledger.post(
            BOND,
            reference,
            {balance_of(provider): -amount, stake_of(provider): amount},
            at,
            unique=True,
        )

    def unbond(self, provider: str, amount: int, reference: str, at: float) -> Entry:
        _positive(amount)
        entry = self.ledger.post(
            UNBOND,
            reference,
            {stake_of(provider): -amount, unbonding_of(provider): amount},
            at,
            unique=True,
            memo={"provider": provider, "release_at": repr(at + self.unbonding_delay_s)},
        )
        self.track(entry)
        return entry

    def withdraw(self, provider: str, reference: str, at: float) -> Entry | None:
        """Move every matured tranche back to the provider's balance; None if none matured."""
        ready = [(t.reference, t.amount) for t in self.tranches(provider) if t.release_at <= at]
        total = sum(a for _, a in ready)
        if total == 0:
            return None
        entry = self.ledger.post(
            WITHDRAW_STAKE,
            reference,
            {unbonding_of(provider): -total, balance_of(provider): total},
            at,
            unique=True,
            memo={"tranches": _encode(ready)},
        )
        self.track(entry)
        return entry

    def slash(
        self,
        provider: str,
        amount: int,
        reason: str,
        evidence: str,
        harmed: Sequence[tuple[str, int]],
        reference: str,
        at: float,
    ) -> SlashOutcome:
        """Take up to ``amount`` of stake; repay ``harmed`` (consumer, loss) first."""
        _positive(amount)
        from_stake = min(amount, self.bonded(provider))
        left = amount - from_stake
        taken_tranches: list[tuple[str, int]] = []
        for tranche in sorted(self.tranches(provider), key=lambda t: t.release_at, reverse=True):
            if left == 0:
                break
            take = min(left, tranche.amount)
            taken_tranches.append((tranche.reference, take))
            left -= take
        taken = amount - left
        if taken == 0:
            raise LedgerError(f"provider {provider} has no stake to slash")
        remaining = taken
        payouts: dict[str, int] = {}
        for consumer, loss in harmed:
            pay = min(max(loss, 0), remaining)
            if pay:
                payouts[consumer] = payouts.get(consumer, 0) + pay
                remaining -= pay
        changes: dict[Account, int] = {}
        if from_stake:
            changes[stake_of(provider)] = -from_stake
        from_unbonding = taken - from_stake
        if from_unbonding:
            changes[unbonding_of(provider)] = -from_unbonding
        for consumer, pay in payouts.items():
            changes[balance_of(consumer)] = pay
        if remaining:
            changes[INSURANCE_POOL] = remaining
        entry = self.ledger.post(
            SLASH,
            reference,
            changes,
            at,
            unique=True,
            memo={
                "provider": provider,
                "reason": reason,
                "evidence": evidence,
                "tranches": _encode(taken_tranches),
            },
        )
        self.track(entry)
        return SlashOutcome(taken, tuple(payouts.items()), remaining)


def _positive(amount: int) -> None:
    if type(amount) is not int or amount <= 0:
        raise LedgerError("amounts are positive integers of base units")
