"""What the four contracts should do, in plain Python, for the property tests.

Every method mirrors one contract call: it either returns what the call should return
and applies its effects, or raises `Refused` with the revert reason (None when the token
refuses, whose reason is not ours), applying nothing. Checks run in the contracts' order
so the reasons match.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from contract_kit import (
    CHALLENGE_S,
    EPOCH_S,
    MIN_MEMBER_STAKE,
    SIGNER_GRACE_S,
    SLASH_BPS,
    UNBONDING_S,
    UNLOCK_S,
)

Pair = tuple[str, str]


class Refused(Exception):
    """The call should revert with `reason` (None: any reason)."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason)
        self.reason = reason


def _require(condition: bool, reason: str | None) -> None:
    if not condition:
        raise Refused(reason)


@dataclass
class Proposal:
    offender: str
    kind: int
    evidence: bytes
    proposed_at: int
    refunds: list[tuple[str, str, int]]
    approvals: set[str]
    executed: bool = False
    vetoed: bool = False


@dataclass
class Model:
    members: tuple[str, ...]
    threshold: int
    governance: str
    wallet: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    # vault, keyed (consumer, gateway) or (gateway, provider)
    deposits: defaultdict[Pair, int] = field(default_factory=lambda: defaultdict(int))
    cap: defaultdict[Pair, int] = field(default_factory=lambda: defaultdict(int))
    unlock_at: defaultdict[Pair, int] = field(default_factory=lambda: defaultdict(int))
    collected: defaultdict[Pair, int] = field(default_factory=lambda: defaultdict(int))
    custodial: dict[Pair, tuple[int, int]] = field(default_factory=dict)  # epoch, spent
    gateway_balance: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    paid: defaultdict[Pair, int] = field(default_factory=lambda: defaultdict(int))
    last_settled: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    insurance: int = 0
    # stake
    bonded: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    unbonding: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    stake_unlock: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    proposals: list[Proposal] = field(default_factory=list)  # id = index + 1
    evidence_ids: dict[tuple[str, int, bytes], int] = field(default_factory=dict)
    # registry
    signer_of: dict[str, str] = field(default_factory=dict)
    retired_until: defaultdict[Pair, int] = field(default_factory=lambda: defaultdict(int))
    gateway_of: dict[str, str] = field(default_factory=dict)

    # --- registry ------------------------------------------------------------------------

    def current_signer(self, gateway: str) -> str:
        return self.signer_of.get(gateway, gateway)

    def is_signer(self, gateway: str, key: str, now: int) -> bool:
        return key == self.current_signer(gateway) or now < self.retired_until[gateway, key]

    def set_gateway_signer(self, gateway: str, key: str, now: int) -> None:
        holder = self.gateway_of.get(key)
        _require(holder in (None, gateway) or key == gateway, "registry: signer taken")
        previous = self.current_signer(gateway)
        if previous != key:
            self.retired_until[gateway, previous] = now + SIGNER_GRACE_S
            if self.gateway_of.get(previous) == gateway:
                del self.gateway_of[previous]
        self.retired_until[gateway, key] = 0
        self.signer_of[gateway] = key
        self.gateway_of[key] = gateway

    # --- stake ---------------------------------------------------------------------------

    def slashable(self, account: str) -> int:
        return self.bonded[account] + self.unbonding[account]

    def _take(self, account: str, amount: int) -> None:
        from_bonded = min(amount, self.bonded[account])
        self.bonded[account] -= from_bonded
        self.unbonding[account] -= amount - from_bonded
        assert self.unbonding[account] >= 0

    def bond(self, account: str, amount: int) -> None:
        _require(amount > 0, "stake: zero amount")
        _require(amount <= self.wallet[account], None)
        self.wallet[account] -= amount
        self.bonded[account] += amount

    def unbond(self, account: str, amount: int, now: int) -> None:
        _require(amount > 0, "stake: zero amount")
        _require(amount <= self.bonded[account], "stake: not bonded")
        self.bonded[account] -= amount
        self.unbonding[account] += amount
        self.stake_unlock[account] = now + UNBONDING_S

    def withdraw_stake(self, account: str, now: int) -> int:
        amount = self.unbonding[account]
        _require(amount > 0, "stake: nothing unbonding")
        _require(now >= self.stake_unlock[account], "stake: still locked")
        self.unbonding[account] = 0
        self.wallet[account] += amount
        return amount

    def _check_member(self, member: str) -> None:
        _require(member in self.members, "stake: not a committee member")
        _require(self.bonded[member] >= MIN_MEMBER_STAKE, "stake: member stake too low")

    def _open(self, id_: int) -> Proposal:
        _require(1 <= id_ <= len(self.proposals), "stake: no such proposal")
        proposal = self.proposals[id_ - 1]
        _require(not proposal.executed, "stake: already executed")
        _require(not proposal.vetoed, "stake: vetoed")
        return proposal

    def propose(
        self,
        member: str,
        offender: str,
        kind: int,
        evidence: bytes,
        refunds: list[tuple[str, str, int]],
        now: int,
    ) -> int:
        self._check_member(member)
        _require(SLASH_BPS.get(kind, 0) > 0, "stake: unknown kind")
        previous = self.evidence_ids.get((offender, kind, evidence))
        if previous is not None:
            used = self.proposals[previous - 1]
            _require(not used.executed and used.vetoed, "stake: evidence already used")
        self.proposals.append(
            Proposal(offender, kind, evidence, now, list(refunds), approvals={member})
        )
        id_ = len(self.proposals)
        self.evidence_ids[offender, kind, evidence] = id_
        return id_

    def approve(self, member: str, id_: int) -> None:
        self._check_member(member)
        proposal = self._open(id_)
        _require(member not in proposal.approvals, "stake: already approved")
        proposal.approvals.add(member)

    def veto(self, caller: str, id_: int, now: int) -> None:
        _require(caller == self.governance, "stake: not governance")
        proposal = self._open(id_)
        _require(now < proposal.proposed_at + CHALLENGE_S, "stake: window closed")
        proposal.vetoed = True

    def execute(self, id_: int, now: int) -> tuple[int, int]:
        """Returns (amount slashed, refunded)."""
        proposal = self._open(id_)
        _require(len(proposal.approvals) >= self.threshold, "stake: not enough approvals")
        _require(now >= proposal.proposed_at + CHALLENGE_S, "stake: in challenge window")
        proposal.executed = True
        slashable = self.slashable(proposal.offender)
        amount = max(1, slashable * SLASH_BPS[proposal.kind] // 10_000) if slashable else 0
        self._take(proposal.offender, amount)
        refunded = 0
        for consumer, gateway, wanted in proposal.refunds:
            pay = min(wanted, amount - refunded)
            self.deposits[consumer, gateway] += pay
            refunded += pay
        self.insurance += amount - refunded
        return amount, refunded

    # --- vault: consumers ----------------------------------------------------------------

    def deposit(self, consumer: str, gateway: str, amount: int, cap: int) -> None:
        _require(amount <= self.wallet[consumer], None)
        self.wallet[consumer] -= amount
        self.deposits[consumer, gateway] += amount
        self.cap[consumer, gateway] = cap
        self.unlock_at[consumer, gateway] = 0

    def request_withdraw(self, consumer: str, gateway: str, now: int) -> None:
        self.unlock_at[consumer, gateway] = now + UNLOCK_S

    def withdraw(self, consumer: str, gateway: str, now: int) -> int:
        unlock = self.unlock_at[consumer, gateway]
        _require(unlock != 0, "vault: no withdrawal requested")
        _require(now >= unlock, "vault: still locked")
        amount = self.deposits[consumer, gateway]
        _require(amount > 0, "vault: nothing to withdraw")
        self.deposits[consumer, gateway] = 0
        self.wallet[consumer] += amount
        return amount

    # --- vault: gateways -----------------------------------------------------------------

    def custodial_left(self, consumer: str, gateway: str, now: int) -> int:
        epoch, spent = self.custodial.get((consumer, gateway), (0, 0))
        if epoch != now // EPOCH_S:
            spent = 0
        return max(0, self.cap[consumer, gateway] - spent)

    def collect(self, consumer: str, gateway: str, cumulative: int, signer: str, now: int) -> int:
        pair = (consumer, gateway)
        unlock = self.unlock_at[pair]
        _require(unlock == 0 or now < unlock, "vault: withdrawal unlocked")
        custodial = signer != consumer
        if custodial:
            _require(self.is_signer(gateway, signer, now), "vault: bad spend signer")
        amount = min(max(0, cumulative - self.collected[pair]), self.deposits[pair])
        if custodial:
            amount = min(amount, self.custodial_left(consumer, gateway, now))
            epoch, spent = self.custodial.get(pair, (0, 0))
            if epoch != now // EPOCH_S:
                spent = 0
            self.custodial[pair] = (now // EPOCH_S, spent + amount)
        self.deposits[pair] -= amount
        self.gateway_balance[gateway] += amount
        self.collected[pair] += amount
        return amount

    def cash(self, gateway: str, provider: str, cumulative: int, signer: str, now: int) -> int:
        _require(self.is_signer(gateway, signer, now), "vault: bad cheque signer")
        pair = (gateway, provider)
        owed = max(0, cumulative - self.paid[pair])
        from_balance = min(owed, self.gateway_balance[gateway])
        covered = min(owed - from_balance, self.slashable(gateway))
        self._take(gateway, covered)
        self.gateway_balance[gateway] -= from_balance
        self.paid[pair] += from_balance + covered
        self.wallet[provider] += from_balance + covered
        return from_balance + covered

    def settle(self, caller: str, epoch: int, entries: list[tuple[str, int]]) -> int:
        gateway = self.gateway_of.get(caller, caller)
        _require(epoch > self.last_settled[gateway], "vault: epoch already settled")
        self.last_settled[gateway] = epoch
        total = 0
        for provider, cumulative in entries:
            owed = cumulative - self.paid[gateway, provider]
            if owed <= 0 or owed > self.gateway_balance[gateway]:
                continue
            self.gateway_balance[gateway] -= owed
            self.paid[gateway, provider] = cumulative
            self.wallet[provider] += owed
            total += owed
        return total

    def gateway_withdraw(self, gateway: str, amount: int) -> None:
        _require(amount <= self.gateway_balance[gateway], "vault: balance too low")
        self.gateway_balance[gateway] -= amount
        self.wallet[gateway] += amount
