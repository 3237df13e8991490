"""Movements that are neither escrow nor stake: minting (dev mode), withdrawing earnings,
clawing back a cheated request's earnings, and paying auditors from the verification pool.

Production deposits arrive through a settlement backend (a later issue); minting is the
dev-mode stand-in for it and goes through the same journal.
"""

from __future__ import annotations

from tessera.ledger.accounts import MINT, VERIFICATION_POOL, balance_of, earnings_of
from tessera.ledger.journal import Entry, Ledger, LedgerError

MINT_KIND = "mint"
WITHDRAW_EARNINGS = "withdraw_earnings"
CLAWBACK = "clawback"
AUDIT_PAY = "audit_pay"


def mint(ledger: Ledger, owner: str, amount: int, reference: str, at: float) -> Entry:
    """Create ``amount`` new base units in ``owner``'s balance."""
    if type(amount) is not int or amount <= 0:
        raise LedgerError("mint a positive integer of base units")
    return ledger.post(
        MINT_KIND, reference, {MINT: -amount, balance_of(owner): amount}, at, unique=True
    )


def withdraw_earnings(
    ledger: Ledger, provider: str, amount: int, reference: str, at: float
) -> Entry:
    """Move earned tokens to the provider's spendable balance (to bond, or pay out)."""
    if type(amount) is not int or amount <= 0:
        raise LedgerError("withdraw a positive integer of base units")
    return ledger.post(
        WITHDRAW_EARNINGS,
        reference,
        {earnings_of(provider): -amount, balance_of(provider): amount},
        at,
        unique=True,
    )


def clawback(
    ledger: Ledger, provider: str, consumer: str, amount: int, reference: str, at: float
) -> Entry:
    """Return a cheated request's earnings from the provider's earnings to its consumer."""
    if type(amount) is not int or amount <= 0:
        raise LedgerError("claw back a positive integer of base units")
    return ledger.post(
        CLAWBACK,
        reference,
        {earnings_of(provider): -amount, balance_of(consumer): amount},
        at,
        unique=True,
    )


def pay_auditor(ledger: Ledger, auditor: str, amount: int, reference: str, at: float) -> Entry:
    """Pay an auditor's work from the verification pool into its earnings."""
    if type(amount) is not int or amount <= 0:
        raise LedgerError("pay a positive integer of base units")
    return ledger.post(
        AUDIT_PAY,
        reference,
        {VERIFICATION_POOL: -amount, earnings_of(auditor): amount},
        at,
        unique=True,
    )
