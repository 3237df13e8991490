# pragma version ~=0.4.3
"""
@title StakeManager
@notice Holds the stake that providers and gateways put at risk, and takes it when a
        k-of-n committee proves an offence (after a window in which governance may veto)
        or when a gateway's cheque bounces (PaymentVault.cash, automatically).
        Unbonding stake stays slashable until it is withdrawn, so leaving does not
        escape a slash for evidence younger than the unbonding period.
        A slash pays harmed consumers first (credited to their vault deposits), then
        the vault's insurance pool; nothing is burnt and nothing stays here.
@dev Invariant: token.balanceOf(self) == Σ (bonded + unbonding) over all accounts.
"""

from ethereum.ercs import IERC20


interface PaymentVault:
    def credit_refund(consumer: address, gateway: address, amount: uint256): nonpayable
    def add_insurance(amount: uint256): nonpayable


struct Refund:
    consumer: address
    gateway: address
    amount: uint256


struct Proposal:
    offender: address
    kind: uint8
    evidence: bytes32
    proposed_at: uint256
    approvals: uint256
    committee_version: uint256
    executed: bool
    vetoed: bool


event Bonded:
    account: indexed(address)
    amount: uint256
    bonded: uint256


event Unbonded:
    account: indexed(address)
    amount: uint256
    unbonding: uint256
    unlock_at: uint256


event StakeWithdrawn:
    account: indexed(address)
    amount: uint256


event SlashProposed:
    id: indexed(uint256)
    offender: indexed(address)
    kind: uint8
    evidence: bytes32


event SlashApproved:
    id: indexed(uint256)
    member: indexed(address)
    approvals: uint256


event SlashVetoed:
    id: indexed(uint256)


event SlashExecuted:
    id: indexed(uint256)
    offender: indexed(address)
    amount: uint256
    refunded: uint256
    to_insurance: uint256


event BounceCovered:
    gateway: indexed(address)
    provider: indexed(address)
    amount: uint256


event CommitteeSet:
    members: DynArray[address, MAX_MEMBERS]
    threshold: uint256
    version: uint256


event VaultSet:
    vault: indexed(address)


MAX_MEMBERS: constant(uint256) = 16
MAX_REFUNDS: constant(uint256) = 32
BPS: constant(uint256) = 10_000

# Offence kinds, the same rules as tessera.ledger.slashing_table.DEFAULT_RULES.
FORGED_RECEIPT: constant(uint8) = 1
WRONG_MODEL: constant(uint8) = 2
TAMPERED_OUTPUT: constant(uint8) = 3
DOWNTIME: constant(uint8) = 4

token: public(immutable(IERC20))
unbonding_period: public(immutable(uint256))
challenge_period: public(immutable(uint256))
governance: public(immutable(address))
min_member_stake: public(immutable(uint256))

vault: public(address)

bonded: public(HashMap[address, uint256])
unbonding: public(HashMap[address, uint256])
unlock_at: public(HashMap[address, uint256])

committee: public(DynArray[address, MAX_MEMBERS])
is_member: public(HashMap[address, bool])
threshold: public(uint256)
# Bumped by every committee change; a proposal from an older committee can no longer
# be approved or executed (the new committee proposes it again if it agrees).
committee_version: public(uint256)

proposal_count: public(uint256)
proposals: public(HashMap[uint256, Proposal])
refunds: HashMap[uint256, DynArray[Refund, MAX_REFUNDS]]
approved: public(HashMap[uint256, HashMap[address, bool]])
# keccak(offender, kind, evidence) -> the last proposal that used it, so one piece of
# evidence cannot be slashed twice; it frees again once that proposal is vetoed or lapses.
evidence_proposal: public(HashMap[bytes32, uint256])


@deploy
def __init__(
    token_: IERC20,
    unbonding_period_: uint256,
    challenge_period_: uint256,
    governance_: address,
    committee_: DynArray[address, MAX_MEMBERS],
    threshold_: uint256,
    min_member_stake_: uint256,
):
    token = token_
    unbonding_period = unbonding_period_
    challenge_period = challenge_period_
    governance = governance_
    min_member_stake = min_member_stake_
    self._set_committee(committee_, threshold_)


# --- stake -----------------------------------------------------------------------------


@external
@nonreentrant
def bond(amount: uint256):
    """
    @notice Moves `amount` from the caller (after `approve`) into its bonded stake.
    """
    assert amount > 0, "stake: zero amount"
    self.bonded[msg.sender] += amount
    assert extcall token.transferFrom(msg.sender, self, amount, default_return_value=True)
    log Bonded(account=msg.sender, amount=amount, bonded=self.bonded[msg.sender])


@external
def unbond(amount: uint256):
    """
    @notice Starts releasing `amount` of the caller's bonded stake. The delay restarts
            for the whole unbonding amount, and unbonding stake stays slashable.
    """
    assert amount > 0, "stake: zero amount"
    assert amount <= self.bonded[msg.sender], "stake: not bonded"
    self.bonded[msg.sender] -= amount
    self.unbonding[msg.sender] += amount
    self.unlock_at[msg.sender] = block.timestamp + unbonding_period
    log Unbonded(
        account=msg.sender,
        amount=amount,
        unbonding=self.unbonding[msg.sender],
        unlock_at=self.unlock_at[msg.sender],
    )


@external
@nonreentrant
def withdraw():
    """
    @notice Pays the caller all of its unbonding stake once the delay has passed.
    """
    amount: uint256 = self.unbonding[msg.sender]
    assert amount > 0, "stake: nothing unbonding"
    assert block.timestamp >= self.unlock_at[msg.sender], "stake: still locked"
    self.unbonding[msg.sender] = 0
    assert extcall token.transfer(msg.sender, amount, default_return_value=True)
    log StakeWithdrawn(account=msg.sender, amount=amount)


@external
@view
def slashable(account: address) -> uint256:
    return self.bonded[account] + self.unbonding[account]


@external
@pure
def slash_bps(kind: uint8) -> uint256:
    """
    @notice The share of slashable stake an offence of `kind` takes, in basis points
            (0 for an unknown kind).
    """
    return self._slash_bps(kind)


# --- committee slashing ----------------------------------------------------------------


@external
def propose_slash(
    offender: address,
    kind: uint8,
    evidence: bytes32,
    refund_consumers: DynArray[address, MAX_REFUNDS],
    refund_gateways: DynArray[address, MAX_REFUNDS],
    refund_amounts: DynArray[uint256, MAX_REFUNDS],
) -> uint256:
    """
    @notice A committee member proposes to slash `offender` for an offence of `kind`,
            refunding each harmed consumer (at the gateway it paid) up to its amount,
            in order. Counts as the proposer's approval. Ids start at 1.
    """
    self._check_member(msg.sender)
    assert offender != empty(address), "stake: empty offender"
    assert self._slash_bps(kind) > 0, "stake: unknown kind"
    n: uint256 = len(refund_consumers)
    assert len(refund_gateways) == n and len(refund_amounts) == n, "stake: refund lengths"
    evidence_key: bytes32 = keccak256(abi_encode(offender, kind, evidence))
    assert not self._is_live(self.evidence_proposal[evidence_key]), "stake: evidence already used"

    listed: DynArray[Refund, MAX_REFUNDS] = []
    for i: uint256 in range(n, bound=MAX_REFUNDS):
        assert refund_consumers[i] != empty(address), "stake: empty consumer"
        listed.append(
            Refund(
                consumer=refund_consumers[i], gateway=refund_gateways[i], amount=refund_amounts[i]
            )
        )

    id: uint256 = self.proposal_count + 1
    self.proposal_count = id
    self.proposals[id] = Proposal(
        offender=offender,
        kind=kind,
        evidence=evidence,
        proposed_at=block.timestamp,
        approvals=1,
        committee_version=self.committee_version,
        executed=False,
        vetoed=False,
    )
    self.refunds[id] = listed
    self.evidence_proposal[evidence_key] = id
    self.approved[id][msg.sender] = True
    log SlashProposed(id=id, offender=offender, kind=kind, evidence=evidence)
    log SlashApproved(id=id, member=msg.sender, approvals=1)
    return id


@external
def approve_slash(id: uint256):
    """
    @notice Another committee member approves proposal `id`; each member once.
    """
    self._check_member(msg.sender)
    proposal: Proposal = self._open_proposal(id)
    assert not self.approved[id][msg.sender], "stake: already approved"
    self.approved[id][msg.sender] = True
    self.proposals[id].approvals = proposal.approvals + 1
    log SlashApproved(id=id, member=msg.sender, approvals=proposal.approvals + 1)


@external
def veto_slash(id: uint256):
    """
    @notice Governance cancels proposal `id` while its challenge window is open.
    """
    assert msg.sender == governance, "stake: not governance"
    proposal: Proposal = self._open_proposal(id)
    assert block.timestamp < proposal.proposed_at + challenge_period, "stake: window closed"
    self.proposals[id].vetoed = True
    log SlashVetoed(id=id)


@external
@nonreentrant
def execute_slash(id: uint256):
    """
    @notice Anyone executes proposal `id` once it has `threshold` approvals and its
            challenge window has passed. Takes `max(1, slashable * bps / 10000)` (bonded
            first, then unbonding), refunds the listed consumers in order, and sends the
            rest to the vault's insurance pool.
    """
    proposal: Proposal = self._open_proposal(id)
    assert proposal.approvals >= self.threshold, "stake: not enough approvals"
    assert block.timestamp >= proposal.proposed_at + challenge_period, "stake: in challenge window"
    vault: address = self.vault
    assert vault != empty(address), "stake: no vault"
    self.proposals[id].executed = True

    slashable: uint256 = self.bonded[proposal.offender] + self.unbonding[proposal.offender]
    amount: uint256 = 0
    if slashable > 0:
        amount = max(1, slashable * self._slash_bps(proposal.kind) // BPS)
    self._take(proposal.offender, amount)

    refunded: uint256 = 0
    if amount > 0:
        assert extcall token.transfer(vault, amount, default_return_value=True)
        for refund: Refund in self.refunds[id]:
            pay: uint256 = min(refund.amount, amount - refunded)
            if pay == 0:
                continue
            refunded += pay
            extcall PaymentVault(vault).credit_refund(refund.consumer, refund.gateway, pay)
        if amount > refunded:
            extcall PaymentVault(vault).add_insurance(amount - refunded)
    log SlashExecuted(
        id=id,
        offender=proposal.offender,
        amount=amount,
        refunded=refunded,
        to_insurance=amount - refunded,
    )


@external
@view
def proposal_refunds(id: uint256) -> DynArray[Refund, MAX_REFUNDS]:
    return self.refunds[id]


@external
def set_committee(members: DynArray[address, MAX_MEMBERS], threshold: uint256):
    """
    @notice Governance replaces the committee; pending proposals lapse.
    """
    assert msg.sender == governance, "stake: not governance"
    self._set_committee(members, threshold)


# --- bounces and wiring ----------------------------------------------------------------


@external
@nonreentrant
def cover_bounce(gateway: address, provider: address, amount: uint256) -> uint256:
    """
    @notice Vault only: pays `provider` up to `amount` from `gateway`'s slashable stake
            (bonded, then unbonding) when the gateway's cheque bounced; returns what it paid.
    """
    assert msg.sender == self.vault, "stake: not the vault"
    covered: uint256 = min(amount, self.bonded[gateway] + self.unbonding[gateway])
    if covered == 0:
        return 0
    self._take(gateway, covered)
    assert extcall token.transfer(provider, covered, default_return_value=True)
    log BounceCovered(gateway=gateway, provider=provider, amount=covered)
    return covered


@external
def set_vault(vault: address):
    """
    @notice Governance names the PaymentVault, once.
    """
    assert msg.sender == governance, "stake: not governance"
    assert self.vault == empty(address), "stake: vault already set"
    assert vault != empty(address), "stake: empty vault"
    self.vault = vault
    log VaultSet(vault=vault)


# --- internals -------------------------------------------------------------------------


@internal
@pure
def _slash_bps(kind: uint8) -> uint256:
    if kind == FORGED_RECEIPT:
        return 10_000
    if kind == WRONG_MODEL or kind == TAMPERED_OUTPUT:
        return 5_000
    if kind == DOWNTIME:
        return 100
    return 0


@internal
def _take(account: address, amount: uint256):
    # Bonded stake first, so a provider who unbonds loses its exit queue last.
    from_bonded: uint256 = min(amount, self.bonded[account])
    self.bonded[account] -= from_bonded
    self.unbonding[account] -= amount - from_bonded


@internal
@view
def _check_member(member: address):
    assert self.is_member[member], "stake: not a committee member"
    assert self.bonded[member] >= min_member_stake, "stake: member stake too low"


@internal
@view
def _open_proposal(id: uint256) -> Proposal:
    proposal: Proposal = self.proposals[id]
    assert proposal.offender != empty(address), "stake: no such proposal"
    assert not proposal.executed, "stake: already executed"
    assert not proposal.vetoed, "stake: vetoed"
    assert proposal.committee_version == self.committee_version, "stake: committee changed"
    return proposal


@internal
@view
def _is_live(id: uint256) -> bool:
    # Executed, or pending under the current committee; a vetoed or lapsed claim may be
    # brought again.
    if id == 0:
        return False
    proposal: Proposal = self.proposals[id]
    if proposal.executed:
        return True
    return not proposal.vetoed and proposal.committee_version == self.committee_version


@internal
def _set_committee(members: DynArray[address, MAX_MEMBERS], threshold: uint256):
    assert threshold >= 1 and threshold <= len(members), "stake: bad threshold"
    for old: address in self.committee:
        self.is_member[old] = False
    for member: address in members:
        assert member != empty(address), "stake: empty member"
        assert not self.is_member[member], "stake: duplicate member"
        self.is_member[member] = True
    self.committee = members
    self.threshold = threshold
    self.committee_version += 1
    log CommitteeSet(members=members, threshold=threshold, version=self.committee_version)
