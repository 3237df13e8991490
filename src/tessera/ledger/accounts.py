"""Ledger accounts: who holds value, named so a journal line reads on its own.

Every account but ``mint``, ``chain`` and ``uncollected`` is an asset someone holds and can
never go below zero. ``mint`` is where dev-mode tokens come from: its balance is minus
everything ever minted. ``chain`` is where on-chain tokens come from: minus its balance is
what the gateway's vault holds for the ledger (deposits credited, less payouts and
withdrawals; see chain_book.py). ``uncollected`` is minus what consumers withdrew on chain
after spending it here, before the gateway collected it: the operator's loss. So the
balances of all accounts always sum to zero.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum

TOKEN = 10**9  # base units in one token; every amount is an int of base units
MAX_UNITS = 2**62  # the largest amount accepted from outside: sums stay in a 64-bit integer


class AccountKind(StrEnum):
    BALANCE = "balance"  # a consumer's (or provider's) spendable tokens
    HOLD = "hold"  # tokens held in escrow for a consumer's running requests
    EARNINGS = "earnings"  # a provider's earnings, withdrawable
    STAKE = "stake"  # a provider's bonded stake
    UNBONDING = "unbonding"  # stake on its way out, still slashable
    MINT = "mint"
    FEES = "fees"
    VERIFICATION_POOL = "verification_pool"
    INSURANCE_POOL = "insurance_pool"
    CHAIN = "chain"  # the vault's side of every on-chain movement (may go negative)
    CHEQUES = "cheques"  # a provider's earnings promised by signed cheques, not yet paid
    UNCOLLECTED = "uncollected"  # spend withdrawn on chain before it was collected (<= 0)
    WITHDRAWING = "withdrawing"  # a consumer's balance frozen by a withdrawal on chain


SYSTEM_KINDS = frozenset(
    {
        AccountKind.MINT,
        AccountKind.FEES,
        AccountKind.VERIFICATION_POOL,
        AccountKind.INSURANCE_POOL,
        AccountKind.CHAIN,
        AccountKind.UNCOLLECTED,
    }
)
NEGATIVE_KINDS = frozenset({AccountKind.MINT, AccountKind.CHAIN, AccountKind.UNCOLLECTED})


@dataclass(frozen=True, slots=True, order=True)
class Account:
    kind: AccountKind
    owner: str = ""

    def __post_init__(self) -> None:
        if (self.kind in SYSTEM_KINDS) != (self.owner == ""):
            raise ValueError(
                f"account {self.kind} {'takes no' if self.owner else 'needs an'} owner"
            )
        if ":" in self.owner:
            raise ValueError("an account owner may not contain ':'")

    def __str__(self) -> str:
        return f"{self.kind}:{self.owner}" if self.owner else str(self.kind)

    @classmethod
    def parse(cls, text: str) -> Account:
        kind, _, owner = text.partition(":")
        return cls(AccountKind(kind), owner)

    @property
    def may_go_negative(self) -> bool:
        return self.kind in NEGATIVE_KINDS


MINT = Account(AccountKind.MINT)
FEES = Account(AccountKind.FEES)
VERIFICATION_POOL = Account(AccountKind.VERIFICATION_POOL)
INSURANCE_POOL = Account(AccountKind.INSURANCE_POOL)
CHAIN = Account(AccountKind.CHAIN)
UNCOLLECTED = Account(AccountKind.UNCOLLECTED)


def balance_of(owner: str) -> Account:
    return Account(AccountKind.BALANCE, owner)


def hold_of(owner: str) -> Account:
    return Account(AccountKind.HOLD, owner)


def earnings_of(provider: str) -> Account:
    return Account(AccountKind.EARNINGS, provider)


@functools.lru_cache(maxsize=65_536)
def stake_of(provider: str) -> Account:
    """The provider's stake account (cached: the router asks for every candidate's bond
    several times per request, and building a validated account costs microseconds)."""
    return Account(AccountKind.STAKE, provider)


def unbonding_of(provider: str) -> Account:
    return Account(AccountKind.UNBONDING, provider)


def withdrawing_of(owner: str) -> Account:
    return Account(AccountKind.WITHDRAWING, owner)


def cheques_of(provider: str) -> Account:
    return Account(AccountKind.CHEQUES, provider)
