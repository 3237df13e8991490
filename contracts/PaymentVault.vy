# pragma version ~=0.4.3
"""
@title PaymentVault
@notice Holds every token of the payment path: consumers' deposits (per consumer, per
        gateway, so one gateway cannot spend what a consumer put at another), what
        gateways have collected and not yet paid out, and the insurance pool.
        Both payment legs are cumulative EIP-712 messages: a consumer's (or, for a
        custodial consumer, the gateway signer's) `Spend` lets its gateway collect, and
        a gateway signer's `Cheque` lets a provider be paid. A message pays
        `cumulative - already`, so a replay pays nothing and the latest message
        supersedes all earlier ones. A cheque the gateway's balance cannot cover is
        paid from the gateway's stake (`ChequeBounced`).
@dev Invariants, after every transaction:
     - token.balanceOf(self) == Σ deposits + Σ gateway_balance + insurance_pool;
     - `collected[c][g]` and `paid[g][p]` never decrease;
     - a consumer is never charged more than the largest cumulative it (or, within the
       per-epoch cap it set, its gateway's signer) signed.
"""

from ethereum.ercs import IERC20
from snekmate.utils import ecdsa
from snekmate.utils import eip712_domain_separator

initializes: eip712_domain_separator

exports: eip712_domain_separator.eip712Domain


interface Registry:
    def is_signer(gateway: address, signer: address) -> bool: view
    def gateway_of(signer: address) -> address: view


interface StakeManager:
    def cover_bounce(gateway: address, provider: address, amount: uint256) -> uint256: nonpayable


interface ERC20Permit:
    def permit(
        owner: address,
        spender: address,
        amount: uint256,
        deadline: uint256,
        v: uint8,
        r: bytes32,
        s: bytes32,
    ): nonpayable


event Deposited:
    consumer: indexed(address)
    gateway: indexed(address)
    amount: uint256
    balance: uint256
    custodial_cap: uint256


event CustodialCapSet:
    consumer: indexed(address)
    gateway: indexed(address)
    cap: uint256


event WithdrawRequested:
    consumer: indexed(address)
    gateway: indexed(address)
    unlock_at: uint256


event Withdrawn:
    consumer: indexed(address)
    gateway: indexed(address)
    amount: uint256


event Collected:
    consumer: indexed(address)
    gateway: indexed(address)
    amount: uint256
    collected: uint256


event Paid:
    gateway: indexed(address)
    provider: indexed(address)
    amount: uint256
    paid: uint256


event ChequeBounced:
    gateway: indexed(address)
    provider: indexed(address)
    shortfall: uint256
    covered: uint256


event Settled:
    gateway: indexed(address)
    epoch: uint256
    count: uint256
    total: uint256


event EpochPosted:
    gateway: indexed(address)
    epoch: indexed(uint256)
    ledger_root: bytes32
    spent: uint256
    paid: uint256


event GatewayWithdrawn:
    gateway: indexed(address)
    to: indexed(address)
    amount: uint256
    balance: uint256


event Refunded:
    consumer: indexed(address)
    gateway: indexed(address)
    amount: uint256
    balance: uint256


event InsuranceAdded:
    amount: uint256
    pool: uint256


event InsurancePaid:
    to: indexed(address)
    amount: uint256
    pool: uint256


MAX_SETTLE: constant(uint256) = 256

_SPEND_TYPEHASH: constant(bytes32) = keccak256(
    "Spend(address consumer,address gateway,uint256 cumulative)"
)
_CHEQUE_TYPEHASH: constant(bytes32) = keccak256(
    "Cheque(address gateway,address provider,uint256 cumulative)"
)

token: public(immutable(IERC20))
registry: public(immutable(Registry))
stake_manager: public(immutable(StakeManager))
unlock_period: public(immutable(uint256))
epoch_length: public(immutable(uint256))
governance: public(immutable(address))

# consumer -> gateway -> ...
deposits: public(HashMap[address, HashMap[address, uint256]])
custodial_cap: public(HashMap[address, HashMap[address, uint256]])
unlock_at: public(HashMap[address, HashMap[address, uint256]])
collected: public(HashMap[address, HashMap[address, uint256]])
# What the gateway's signer collected for a custodial consumer in `custodial_epoch`.
custodial_spent: public(HashMap[address, HashMap[address, uint256]])
custodial_epoch: public(HashMap[address, HashMap[address, uint256]])

gateway_balance: public(HashMap[address, uint256])
# gateway -> provider -> cumulative paid
paid: public(HashMap[address, HashMap[address, uint256]])
last_settled_epoch: public(HashMap[address, uint256])
# gateway -> epoch -> ledger root; a posted root never changes.
epoch_root: public(HashMap[address, HashMap[uint256, bytes32]])

insurance_pool: public(uint256)


@deploy
def __init__(
    token_: IERC20,
    registry_: Registry,
    stake_manager_: StakeManager,
    unlock_period_: uint256,
    epoch_length_: uint256,
    governance_: address,
):
    assert epoch_length_ > 0, "vault: zero epoch length"
    eip712_domain_separator.__init__("Tessera", "1")
    token = token_
    registry = registry_
    stake_manager = stake_manager_
    unlock_period = unlock_period_
    epoch_length = epoch_length_
    governance = governance_


# --- digests ---------------------------------------------------------------------------


@external
@view
def spend_digest(consumer: address, gateway: address, cumulative: uint256) -> bytes32:
    """
    @notice The EIP-712 digest a `Spend` signature signs, for clients to cross-check.
    """
    return self._spend_digest(consumer, gateway, cumulative)


@external
@view
def cheque_digest(gateway: address, provider: address, cumulative: uint256) -> bytes32:
    """
    @notice The EIP-712 digest a `Cheque` signature signs, for clients to cross-check.
    """
    return self._cheque_digest(gateway, provider, cumulative)


@external
@view
def current_epoch() -> uint256:
    """
    @notice The vault epoch that custodial caps count in.
    """
    return block.timestamp // epoch_length


@external
@view
def custodial_left(consumer: address, gateway: address) -> uint256:
    """
    @notice What the gateway's signer may still collect for `consumer` this epoch.
    """
    return self._custodial_left(consumer, gateway, block.timestamp // epoch_length)


# --- consumers -------------------------------------------------------------------------


@external
@nonreentrant
def deposit(gateway: address, amount: uint256, custodial_cap: uint256):
    """
    @notice Adds `amount` (after `approve`) to the caller's deposit at `gateway`, sets
            what `gateway`'s signer may collect per epoch without the caller's own
            signature, and cancels a pending withdrawal.
    """
    self._deposit(msg.sender, gateway, amount, custodial_cap)


@external
@nonreentrant
def deposit_with_permit(
    gateway: address,
    amount: uint256,
    custodial_cap: uint256,
    deadline: uint256,
    v: uint8,
    r: bytes32,
    s: bytes32,
):
    """
    @notice `deposit` with an EIP-2612 permit for `amount`, so it takes one transaction.
    @dev A permit someone else submitted first makes ours fail; the allowance it set is
         still there, so the failure is ignored and `transferFrom` decides.
    """
    # The outcome is deliberately unused: `transferFrom` below checks the allowance.
    permitted: bool = raw_call(
        token.address,
        abi_encode(
            msg.sender, self, amount, deadline, v, r, s, method_id=method_id(
                "permit(address,address,uint256,uint256,uint8,bytes32,bytes32)"
            )
        ),
        revert_on_failure=False,
    )
    self._deposit(msg.sender, gateway, amount, custodial_cap)


@external
def set_custodial_cap(gateway: address, cap: uint256):
    """
    @notice Sets what `gateway`'s signer may collect per vault epoch for the caller
            (0: only the caller's own `Spend` signatures collect).
    """
    self.custodial_cap[msg.sender][gateway] = cap
    log CustodialCapSet(consumer=msg.sender, gateway=gateway, cap=cap)


@external
def request_withdraw(gateway: address):
    """
    @notice Starts the unlock of the caller's deposit at `gateway`. Until it unlocks,
            the gateway may still collect the spends the caller signed; after, it may not.
    """
    unlock: uint256 = block.timestamp + unlock_period
    self.unlock_at[msg.sender][gateway] = unlock
    log WithdrawRequested(consumer=msg.sender, gateway=gateway, unlock_at=unlock)


@external
@nonreentrant
def withdraw(gateway: address):
    """
    @notice Pays the caller its whole deposit at `gateway` once the unlock has passed;
            the gateway takes no part. The unlock stays passed until the next deposit,
            so refunds credited later are withdrawable at once.
    """
    unlock: uint256 = self.unlock_at[msg.sender][gateway]
    assert unlock != 0, "vault: no withdrawal requested"
    assert block.timestamp >= unlock, "vault: still locked"
    amount: uint256 = self.deposits[msg.sender][gateway]
    assert amount > 0, "vault: nothing to withdraw"
    self.deposits[msg.sender][gateway] = 0
    assert extcall token.transfer(msg.sender, amount, default_return_value=True)
    log Withdrawn(consumer=msg.sender, gateway=gateway, amount=amount)


# --- gateways --------------------------------------------------------------------------


@external
def collect(consumer: address, gateway: address, cumulative: uint256, signature: Bytes[65]) -> uint256:
    """
    @notice Anyone submits a `Spend(consumer, gateway, cumulative)` signed by the
            consumer, or by the gateway's signer within the consumer's per-epoch
            custodial cap. Moves `min(cumulative - collected, deposit, cap left)` from the
            deposit to the gateway's balance and returns it; what could not be taken
            stays collectible later. Refused once a requested withdrawal has unlocked.
    """
    unlock: uint256 = self.unlock_at[consumer][gateway]
    assert unlock == 0 or block.timestamp < unlock, "vault: withdrawal unlocked"
    signer: address = self._recover(self._spend_digest(consumer, gateway, cumulative), signature)
    custodial: bool = signer != consumer
    if custodial:
        assert staticcall registry.is_signer(gateway, signer), "vault: bad spend signer"

    already: uint256 = self.collected[consumer][gateway]
    amount: uint256 = 0
    if cumulative > already:
        amount = min(cumulative - already, self.deposits[consumer][gateway])
    if custodial:
        epoch: uint256 = block.timestamp // epoch_length
        amount = min(amount, self._custodial_left(consumer, gateway, epoch))
        if self.custodial_epoch[consumer][gateway] != epoch:
            self.custodial_epoch[consumer][gateway] = epoch
            self.custodial_spent[consumer][gateway] = 0
        self.custodial_spent[consumer][gateway] += amount

    self.deposits[consumer][gateway] -= amount
    self.gateway_balance[gateway] += amount
    self.collected[consumer][gateway] = already + amount
    log Collected(consumer=consumer, gateway=gateway, amount=amount, collected=already + amount)
    return amount


@external
@nonreentrant
def cash(gateway: address, provider: address, cumulative: uint256, signature: Bytes[65]) -> uint256:
    """
    @notice Anyone submits a `Cheque(gateway, provider, cumulative)` signed by the
            gateway's signer. Pays the provider `cumulative - paid` from the gateway's
            balance, the shortfall from the gateway's stake; returns what was paid.
            What neither covers stays cashable later.
    """
    signer: address = self._recover(self._cheque_digest(gateway, provider, cumulative), signature)
    assert staticcall registry.is_signer(gateway, signer), "vault: bad cheque signer"

    already: uint256 = self.paid[gateway][provider]
    if cumulative <= already:
        log Paid(gateway=gateway, provider=provider, amount=0, paid=already)
        return 0
    owed: uint256 = cumulative - already
    from_balance: uint256 = min(owed, self.gateway_balance[gateway])
    self.gateway_balance[gateway] -= from_balance
    self.paid[gateway][provider] = already + from_balance
    if from_balance > 0:
        assert extcall token.transfer(provider, from_balance, default_return_value=True)

    covered: uint256 = 0
    if owed > from_balance:
        shortfall: uint256 = owed - from_balance
        covered = extcall stake_manager.cover_bounce(gateway, provider, shortfall)
        assert covered <= shortfall, "vault: over-covered bounce"
        self.paid[gateway][provider] += covered
        log ChequeBounced(gateway=gateway, provider=provider, shortfall=shortfall, covered=covered)

    total: uint256 = from_balance + covered
    log Paid(gateway=gateway, provider=provider, amount=total, paid=already + total)
    return total


@external
@nonreentrant
def settle(
    epoch: uint256,
    providers: DynArray[address, MAX_SETTLE],
    cumulatives: DynArray[uint256, MAX_SETTLE],
):
    """
    @notice The gateway, or its current signer, pays its providers up to the given
            cumulatives from its balance, without signatures (the push path of `cash`).
            `epoch` must exceed the last settled one, so a re-sent batch is refused.
            Entries owed nothing, or more than the balance left, are skipped: the
            provider can still `cash` its cheque.
    """
    gateway: address = self._acting_gateway()
    assert len(providers) == len(cumulatives), "vault: length mismatch"
    assert epoch > self.last_settled_epoch[gateway], "vault: epoch already settled"
    self.last_settled_epoch[gateway] = epoch

    balance: uint256 = self.gateway_balance[gateway]
    count: uint256 = 0
    total: uint256 = 0
    for i: uint256 in range(len(providers), bound=MAX_SETTLE):
        provider: address = providers[i]
        already: uint256 = self.paid[gateway][provider]
        if cumulatives[i] <= already:
            continue
        owed: uint256 = cumulatives[i] - already
        if owed > balance:
            continue
        balance -= owed
        self.paid[gateway][provider] = cumulatives[i]
        assert extcall token.transfer(provider, owed, default_return_value=True)
        log Paid(gateway=gateway, provider=provider, amount=owed, paid=cumulatives[i])
        count += 1
        total += owed
    self.gateway_balance[gateway] = balance
    log Settled(gateway=gateway, epoch=epoch, count=count, total=total)


@external
def post_epoch(epoch: uint256, ledger_root: bytes32, spent: uint256, paid: uint256):
    """
    @notice The gateway, or its current signer, commits to the root of its ledger for
            `epoch` (for audit, not for funds). A root, once posted, never changes;
            posting the same root again is harmless.
    """
    gateway: address = self._acting_gateway()
    posted: bytes32 = self.epoch_root[gateway][epoch]
    assert posted == empty(bytes32) or posted == ledger_root, "vault: epoch root differs"
    self.epoch_root[gateway][epoch] = ledger_root
    log EpochPosted(gateway=gateway, epoch=epoch, ledger_root=ledger_root, spent=spent, paid=paid)


@external
@nonreentrant
def gateway_withdraw(amount: uint256, to: address):
    """
    @notice The gateway (its owner address, not its signer) takes `amount` of its earned
            balance to `to`.
    """
    balance: uint256 = self.gateway_balance[msg.sender]
    assert amount <= balance, "vault: balance too low"
    assert to != empty(address), "vault: empty recipient"
    self.gateway_balance[msg.sender] = balance - amount
    assert extcall token.transfer(to, amount, default_return_value=True)
    log GatewayWithdrawn(gateway=msg.sender, to=to, amount=amount, balance=balance - amount)


# --- stake manager and governance ------------------------------------------------------


@external
def credit_refund(consumer: address, gateway: address, amount: uint256):
    """
    @notice Stake manager only, after it transferred `amount` here: a slash refund,
            added to the consumer's deposit at `gateway` (withdrawable like any deposit).
    """
    assert msg.sender == stake_manager.address, "vault: not the stake manager"
    balance: uint256 = self.deposits[consumer][gateway] + amount
    self.deposits[consumer][gateway] = balance
    log Refunded(consumer=consumer, gateway=gateway, amount=amount, balance=balance)


@external
def add_insurance(amount: uint256):
    """
    @notice Stake manager only, after it transferred `amount` here: slashed stake left
            after refunds.
    """
    assert msg.sender == stake_manager.address, "vault: not the stake manager"
    pool: uint256 = self.insurance_pool + amount
    self.insurance_pool = pool
    log InsuranceAdded(amount=amount, pool=pool)


@external
@nonreentrant
def pay_insurance(to: address, amount: uint256):
    """
    @notice Governance pays a claim from the insurance pool.
    """
    assert msg.sender == governance, "vault: not governance"
    pool: uint256 = self.insurance_pool
    assert amount <= pool, "vault: pool too low"
    self.insurance_pool = pool - amount
    assert extcall token.transfer(to, amount, default_return_value=True)
    log InsurancePaid(to=to, amount=amount, pool=pool - amount)


# --- internals -------------------------------------------------------------------------


@internal
def _deposit(consumer: address, gateway: address, amount: uint256, custodial_cap: uint256):
    assert gateway != empty(address), "vault: empty gateway"
    balance: uint256 = self.deposits[consumer][gateway] + amount
    self.deposits[consumer][gateway] = balance
    self.custodial_cap[consumer][gateway] = custodial_cap
    self.unlock_at[consumer][gateway] = 0
    if amount > 0:
        assert extcall token.transferFrom(consumer, self, amount, default_return_value=True)
    log Deposited(
        consumer=consumer, gateway=gateway, amount=amount, balance=balance, custodial_cap=custodial_cap
    )


@internal
@view
def _acting_gateway() -> address:
    # A gateway's hot key acts for it; any other caller acts for itself.
    gateway: address = staticcall registry.gateway_of(msg.sender)
    if gateway == empty(address):
        return msg.sender
    return gateway


@internal
@view
def _custodial_left(consumer: address, gateway: address, epoch: uint256) -> uint256:
    cap: uint256 = self.custodial_cap[consumer][gateway]
    spent: uint256 = 0
    if self.custodial_epoch[consumer][gateway] == epoch:
        spent = self.custodial_spent[consumer][gateway]
    if spent >= cap:
        return 0
    return cap - spent


@internal
@pure
def _recover(digest: bytes32, signature: Bytes[65]) -> address:
    # Only the 65-byte r || s || v form; ecdsa refuses high s, and ecrecover yields no
    # signer (refused) for a v other than 27 or 28.
    assert len(signature) == 65, "vault: signature not 65 bytes"
    return ecdsa._recover_sig(digest, signature)


@internal
@view
def _spend_digest(consumer: address, gateway: address, cumulative: uint256) -> bytes32:
    return eip712_domain_separator._hash_typed_data_v4(
        keccak256(abi_encode(_SPEND_TYPEHASH, consumer, gateway, cumulative))
    )


@internal
@view
def _cheque_digest(gateway: address, provider: address, cumulative: uint256) -> bytes32:
    return eip712_domain_separator._hash_typed_data_v4(
        keccak256(abi_encode(_CHEQUE_TYPEHASH, gateway, provider, cumulative))
    )
