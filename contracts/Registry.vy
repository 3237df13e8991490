# pragma version ~=0.4.3
"""
@title Registry
@notice Public directory of who speaks for whom.
        - A provider's Ethereum account binds its Ed25519 node key. The binding is keyed
          by the account that sent it, so nobody can squat another's key; the Ed25519
          signature over `binding_digest` is stored, not checked (the EVM has no
          Ed25519), and every reader checks it before believing the binding.
        - A gateway (its owner address) names the hot key that signs its cheques and
          custodial spends. A retired key stays valid for `signer_grace` seconds so the
          cheques it already handed out stay cashable.
@dev Invariants: a binding's nonce only increases; `is_signer(g, s)` is true only for
     g's current signer (g itself until it names one) or a key g retired less than
     `signer_grace` seconds ago; `gateway_of(s)` names at most one gateway per key.
"""

from snekmate.utils import eip712_domain_separator

initializes: eip712_domain_separator

exports: eip712_domain_separator.eip712Domain


struct Binding:
    key: bytes32
    valid_until: uint64
    nonce: uint64
    signature: Bytes[64]


event Bound:
    account: indexed(address)
    key: indexed(bytes32)
    valid_until: uint64
    nonce: uint64
    signature: Bytes[64]


event GatewaySigner:
    gateway: indexed(address)
    signer: indexed(address)
    previous: address


_BINDING_TYPEHASH: constant(bytes32) = keccak256(
    "ProviderBinding(address account,bytes32 key,uint64 validUntil,uint64 nonce)"
)

signer_grace: public(immutable(uint256))

bindings: public(HashMap[address, Binding])

# The key a gateway named last; empty means the gateway signs with its own address.
signer_of: public(HashMap[address, address])
# gateway -> retired key -> first second at which it no longer signs for the gateway.
retired_until: public(HashMap[address, HashMap[address, uint256]])
# Reverse of `signer_of`, so a hot key can act for its gateway (PaymentVault.settle).
gateway_of: public(HashMap[address, address])


@deploy
def __init__(signer_grace_: uint256):
    eip712_domain_separator.__init__("Tessera", "1")
    signer_grace = signer_grace_


@external
@view
def binding_digest(account: address, key: bytes32, valid_until: uint64, nonce: uint64) -> bytes32:
    """
    @notice The EIP-712 digest the provider's Ed25519 key signs for `bind`.
    """
    return self._binding_digest(account, key, valid_until, nonce)


@external
def bind(key: bytes32, valid_until: uint64, nonce: uint64, signature: Bytes[64]):
    """
    @notice Binds the caller's account to the Ed25519 `key`. `nonce` must exceed the
            caller's previous binding nonce (the first one must be at least 1), so an
            old binding can never be replayed over a newer one.
    """
    assert convert(valid_until, uint256) >= block.timestamp, "registry: binding expired"
    assert nonce > self.bindings[msg.sender].nonce, "registry: nonce not increasing"
    self.bindings[msg.sender] = Binding(
        key=key, valid_until=valid_until, nonce=nonce, signature=signature
    )
    log Bound(
        account=msg.sender, key=key, valid_until=valid_until, nonce=nonce, signature=signature
    )


@external
def set_gateway_signer(signer: address):
    """
    @notice The caller (a gateway's owner address) names `signer` as the key that signs
            its cheques and custodial spends; the previous key (the gateway itself if it
            never named one) keeps signing for `signer_grace` seconds. Naming itself
            returns the gateway to signing with its own address.
    @dev A key already named by another gateway is refused, so one gateway cannot take
         over another's hot key. A gateway may always name itself, which also undoes
         another gateway naming its address.
    """
    assert signer != empty(address), "registry: empty signer"
    holder: address = self.gateway_of[signer]
    assert (
        holder == empty(address) or holder == msg.sender or signer == msg.sender
    ), "registry: signer taken"

    previous: address = self._current_signer(msg.sender)
    if previous != signer:
        self.retired_until[msg.sender][previous] = block.timestamp + signer_grace
        if self.gateway_of[previous] == msg.sender:
            self.gateway_of[previous] = empty(address)
    # A key named again is current, not retired.
    self.retired_until[msg.sender][signer] = 0
    self.signer_of[msg.sender] = signer
    self.gateway_of[signer] = msg.sender
    log GatewaySigner(gateway=msg.sender, signer=signer, previous=previous)


@external
@view
def is_signer(gateway: address, signer: address) -> bool:
    """
    @notice Whether `signer` may sign cheques and custodial spends for `gateway` now.
    """
    if signer == empty(address):
        return False
    if signer == self._current_signer(gateway):
        return True
    return block.timestamp < self.retired_until[gateway][signer]


@external
@view
def current_signer(gateway: address) -> address:
    """
    @notice The key that signs for `gateway` now, ignoring retired keys in their grace.
    """
    return self._current_signer(gateway)


@internal
@view
def _current_signer(gateway: address) -> address:
    named: address = self.signer_of[gateway]
    if named == empty(address):
        return gateway
    return named


@internal
@view
def _binding_digest(account: address, key: bytes32, valid_until: uint64, nonce: uint64) -> bytes32:
    return eip712_domain_separator._hash_typed_data_v4(
        keccak256(abi_encode(_BINDING_TYPEHASH, account, key, valid_until, nonce))
    )
