"""What the chain's events do to the journal: pure postings, one per on-chain movement.

The vault holds the tokens (contracts/PaymentVault.vy); the journal says whose they are.
Every token the vault holds for this gateway entered the journal through ``chain``, so at
any finalized block

    -balance(chain) == Σ credited deposits and refunds - payouts - withdrawals

and :func:`backing_problems` compares that with what the vault itself reports. Each
posting is keyed by the event that caused it (``chain_event_key``), posted ``unique``, so
reading a block twice (a restart, an overlapping poll) never moves money twice.

A consumer who asks to withdraw on chain can no longer spend here: the request freezes
their balance into ``withdrawing`` (the gateway then collects what they spent) until the
withdrawal pays out, or a new deposit cancels it. A payout larger than what was frozen is
spend the gateway failed to collect in time; the gap is posted to ``uncollected`` (its
loss), never taken from anyone else.

Providers are paid by cheques: issuing one moves earnings to the provider's ``cheques``;
the vault's ``Paid`` event moves them out to ``chain``. A cheque is cumulative (what the
vault paid the provider + what its ``cheques`` account holds), so the vault can never pay
one provider more than the journal moved to ``cheques`` for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tessera.ledger.accounts import (
    CHAIN,
    FEES,
    TOKEN,
    UNCOLLECTED,
    Account,
    balance_of,
    cheques_of,
    earnings_of,
    withdrawing_of,
)
from tessera.ledger.journal import Entry, Ledger, LedgerError

CHAIN_DEPOSIT = "chain_deposit"
CHAIN_REFUND = "chain_refund"
WITHDRAW_REQUESTED = "chain_withdraw_requested"
WITHDRAW_CANCELLED = "chain_withdraw_cancelled"
CHAIN_WITHDRAWAL = "chain_withdrawal"
CHEQUE = "cheque"
CHAIN_PAYMENT = "chain_payment"
BOUNCE_COVERED = "chain_bounce_covered"
CHAIN_KINDS = frozenset(
    {
        CHAIN_DEPOSIT,
        CHAIN_REFUND,
        WITHDRAW_REQUESTED,
        WITHDRAW_CANCELLED,
        CHAIN_WITHDRAWAL,
        CHEQUE,
        CHAIN_PAYMENT,
        BOUNCE_COVERED,
    }
)


def chain_event_key(tx_hash: str, log_index: int) -> str:
    """The journal reference of an on-chain event: unique per log on the canonical chain
    (only finalized blocks are booked, so a reorg cannot replace one)."""
    return f"{tx_hash.lower()}:{log_index}"


def _positive(amount: int, what: str) -> None:
    if type(amount) is not int or amount <= 0:
        raise LedgerError(f"{what} must be a positive integer of base units")


def credit_deposit(
    ledger: Ledger, account: str, amount: int, reference: str, at: float, *, refund: bool = False
) -> Entry:
    """Tokens deposited (or refunded by a slash) in the vault for ``account``."""
    _positive(amount, "a deposit")
    return ledger.post(
        CHAIN_REFUND if refund else CHAIN_DEPOSIT,
        reference,
        {CHAIN: -amount, balance_of(account): amount},
        at,
        unique=True,
    )


def freeze_for_withdrawal(ledger: Ledger, account: str, reference: str, at: float) -> Entry | None:
    """A withdrawal was requested on chain: nothing more may be spent here. Holds of
    requests already running stay; what they release returns to the balance and is frozen
    by the next call (the watcher calls this again when the withdrawal pays out)."""
    amount = ledger.balance(balance_of(account))
    if amount == 0:
        return None
    return ledger.post(
        WITHDRAW_REQUESTED,
        reference,
        {balance_of(account): -amount, withdrawing_of(account): amount},
        at,
        unique=True,
    )


def unfreeze(ledger: Ledger, account: str, reference: str, at: float) -> Entry | None:
    """A new deposit cancelled the pending withdrawal: the frozen balance is spendable again."""
    amount = ledger.balance(withdrawing_of(account))
    if amount == 0:
        return None
    return ledger.post(
        WITHDRAW_CANCELLED,
        reference,
        {withdrawing_of(account): -amount, balance_of(account): amount},
        at,
        unique=True,
    )


def book_withdrawal(ledger: Ledger, account: str, amount: int, reference: str, at: float) -> Entry:
    """The vault paid ``amount`` out to the consumer. It comes from the frozen balance, then
    from the spendable one (a hold released after the freeze); any rest was spent here and
    never collected, and is the gateway's loss in ``uncollected``. What was frozen beyond
    ``amount`` (collected on chain but not spent here, which the gateway never does) goes
    back to the balance."""
    _positive(amount, "a withdrawal")
    frozen = ledger.balance(withdrawing_of(account))
    spendable = ledger.balance(balance_of(account))
    from_frozen = min(frozen, amount)
    from_balance = min(spendable, amount - from_frozen)
    lost = amount - from_frozen - from_balance
    changes = {
        CHAIN: amount,
        withdrawing_of(account): -frozen,
        balance_of(account): (frozen - from_frozen) - from_balance,
        UNCOLLECTED: -lost,
    }
    return ledger.post(CHAIN_WITHDRAWAL, reference, changes, at, unique=True)


def issue_cheque(ledger: Ledger, provider: str, amount: int, reference: str, at: float) -> Entry:
    """Promise ``amount`` of the provider's earnings by a signed cheque."""
    _positive(amount, "a cheque")
    return ledger.post(
        CHEQUE,
        reference,
        {earnings_of(provider): -amount, cheques_of(provider): amount},
        at,
        unique=True,
    )


def book_payment(ledger: Ledger, provider: str, amount: int, reference: str, at: float) -> Entry:
    """The vault paid the provider's cheque (cashed by them, or pushed by ``settle``)."""
    _positive(amount, "a payment")
    return ledger.post(
        CHAIN_PAYMENT, reference, {cheques_of(provider): -amount, CHAIN: amount}, at, unique=True
    )


def book_bounce_cover(ledger: Ledger, covered: int, reference: str, at: float) -> Entry:
    """The gateway's bond paid ``covered`` of a cheque its vault balance could not: the
    provider was paid (``book_payment`` books the whole payment as leaving the vault), but
    that part left the stake manager instead, so the vault still holds it. Those tokens
    are the operator's, owed back for its bond: they go to the fees account."""
    _positive(covered, "a covered bounce")
    return ledger.post(BOUNCE_COVERED, reference, {CHAIN: -covered, FEES: covered}, at, unique=True)


@dataclass(frozen=True, slots=True)
class VaultView:
    """What the vault reports for this gateway at one block: Σ deposits of the consumers
    the journal knows, deposits of addresses nobody linked yet, and the gateway's balance."""

    linked_deposits: int
    unlinked_deposits: int
    gateway_balance: int


def backing(ledger: Ledger) -> int:
    """Tokens the journal says the vault holds for it."""
    return -ledger.balance(CHAIN)


def spent_since_credit(ledger: Ledger, account: str, credited: int, held: int) -> int:
    """What ``account`` spent here out of ``credited`` (all its deposits and refunds), which
    the gateway may collect: credited less what it still owns (balance, frozen, held)."""
    owns = ledger.balance(balance_of(account)) + ledger.balance(withdrawing_of(account)) + held
    return credited - owns


def backing_problems(ledger: Ledger, vault: VaultView) -> list[str]:
    """Why the journal and the vault disagree; empty when they match to the unit.

    The vault holds every credited token that has not left it: consumers' deposits not yet
    collected and the gateway's balance (collected, not yet paid out)."""
    on_chain = vault.linked_deposits + vault.gateway_balance
    journal = backing(ledger)
    problems = []
    if journal != on_chain:
        problems.append(
            f"the journal backs {journal} base units on chain but the vault holds {on_chain} "
            f"(linked deposits {vault.linked_deposits} + gateway balance "
            f"{vault.gateway_balance})"
        )
    if ledger.balance(UNCOLLECTED) > 0:
        problems.append("the uncollected account is positive")
    return problems


def push_threshold(
    gas_price_wei: int, gas_per_payment: int, wei_per_token: int, max_gas_share_bps: int
) -> int:
    """The smallest payout (base units) worth pushing: one whose gas costs at most
    ``max_gas_share_bps`` of it. Smaller ones wait, or are cashed from their cheque."""
    gas_wei = gas_price_wei * gas_per_payment
    return -(-gas_wei * 10_000 * TOKEN // (wei_per_token * max_gas_share_bps))


def ledger_root(balances: Mapping[Account, int]) -> bytes:
    """A Merkle root (keccak-256) over every non-zero balance, leaves sorted by account:
    posted on chain each epoch so anyone holding the journal can prove a balance against
    it. Leaf: keccak(account UTF-8 || 0x00 || balance as 16-byte signed big-endian); a
    node hashes its two children in order; an odd one out is carried up as is."""
    from eth_utils.crypto import keccak

    level = [
        keccak(str(account).encode() + b"\0" + amount.to_bytes(16, "big", signed=True))
        for account, amount in sorted(balances.items())
        if amount != 0
    ]
    if not level:
        return bytes(32)
    while len(level) > 1:
        paired = [keccak(level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]
