"""Deploys the four contracts in titanoboa and signs their EIP-712 messages.

The digests are computed here from the type strings, independently of the contracts,
so every signature a test makes also checks the contract's encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boa
from eth_abi import encode
from eth_account import Account
from eth_utils import keccak

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"
TOKEN = 10**9  # base units per TSR, the ledger's unit

UNBONDING_S = 60
CHALLENGE_S = 30
UNLOCK_S = 20
EPOCH_S = 3600
SIGNER_GRACE_S = 10
MIN_MEMBER_STAKE = 100 * TOKEN

KIND_FORGED, KIND_WRONG_MODEL, KIND_TAMPERED, KIND_DOWNTIME = 1, 2, 3, 4
SLASH_BPS = {KIND_FORGED: 10_000, KIND_WRONG_MODEL: 5_000, KIND_TAMPERED: 5_000, KIND_DOWNTIME: 100}

_DOMAIN_TYPE = b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
_SPEND_TYPE = b"Spend(address consumer,address gateway,uint256 cumulative)"
_CHEQUE_TYPE = b"Cheque(address gateway,address provider,uint256 cumulative)"
_BINDING_TYPE = b"ProviderBinding(address account,bytes32 key,uint64 validUntil,uint64 nonce)"
_PERMIT_TYPE = b"Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"


@dataclass(frozen=True)
class Actor:
    """A named account whose private key the test holds."""

    name: str
    key: bytes
    address: str


def actor(name: str) -> Actor:
    key = keccak(text=f"tessera-test:{name}")
    return Actor(name, key, Account.from_key(key).address)


def domain_separator(name: str, version: str, verifying: str) -> bytes:
    chain_id = boa.env.evm.patch.chain_id
    return keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [keccak(_DOMAIN_TYPE), keccak(text=name), keccak(text=version), chain_id, verifying],
        )
    )


def typed_digest(
    separator: bytes, type_string: bytes, types: list[str], values: list[Any]
) -> bytes:
    struct_hash = keccak(encode(["bytes32", *types], [keccak(type_string), *values]))
    return keccak(b"\x19\x01" + separator + struct_hash)


def spend_digest(vault: Any, consumer: str, gateway: str, cumulative: int) -> bytes:
    return typed_digest(
        domain_separator("Tessera", "1", vault.address),
        _SPEND_TYPE,
        ["address", "address", "uint256"],
        [consumer, gateway, cumulative],
    )


def cheque_digest(vault: Any, gateway: str, provider: str, cumulative: int) -> bytes:
    return typed_digest(
        domain_separator("Tessera", "1", vault.address),
        _CHEQUE_TYPE,
        ["address", "address", "uint256"],
        [gateway, provider, cumulative],
    )


def binding_digest(registry: Any, account: str, key: bytes, valid_until: int, nonce: int) -> bytes:
    return typed_digest(
        domain_separator("Tessera", "1", registry.address),
        _BINDING_TYPE,
        ["address", "bytes32", "uint64", "uint64"],
        [account, key, valid_until, nonce],
    )


def sign(signer: Actor, digest: bytes) -> bytes:
    """A 65-byte r || s || v signature (v = 27 or 28, low s)."""
    return bytes(Account.from_key(signer.key).unsafe_sign_hash(digest).signature)


def sign_spend(signer: Actor, vault: Any, consumer: str, gateway: str, cumulative: int) -> bytes:
    return sign(signer, spend_digest(vault, consumer, gateway, cumulative))


def sign_cheque(signer: Actor, vault: Any, gateway: str, provider: str, cumulative: int) -> bytes:
    return sign(signer, cheque_digest(vault, gateway, provider, cumulative))


def sign_permit(
    owner: Actor, token: Any, spender: str, value: int, deadline: int
) -> tuple[int, bytes, bytes]:
    digest = typed_digest(
        domain_separator("Tessera Token", "1", token.address),
        _PERMIT_TYPE,
        ["address", "address", "uint256", "uint256", "uint256"],
        [owner.address, spender, value, token.nonces(owner.address), deadline],
    )
    signed = Account.from_key(owner.key).unsafe_sign_hash(digest)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


@dataclass(frozen=True)
class Blueprints:
    """Each contract compiled once; `deploy` makes a fresh instance."""

    token: Any
    registry: Any
    stake: Any
    vault: Any

    @classmethod
    def compile(cls) -> Blueprints:
        return cls(
            token=boa.load_partial(str(CONTRACTS / "Token.vy")),
            registry=boa.load_partial(str(CONTRACTS / "Registry.vy")),
            stake=boa.load_partial(str(CONTRACTS / "StakeManager.vy")),
            vault=boa.load_partial(str(CONTRACTS / "PaymentVault.vy")),
        )


@dataclass(frozen=True)
class System:
    """One deployment of the four contracts, wired as in production."""

    token: Any
    registry: Any
    stake: Any
    vault: Any
    governance: Actor
    committee: tuple[Actor, ...]


def deploy(blueprints: Blueprints, *, threshold: int = 2, members: int = 3) -> System:
    governance = actor("governance")
    committee = tuple(actor(f"member{i}") for i in range(members))
    with boa.env.prank(governance.address):
        token = blueprints.token.deploy()
        registry = blueprints.registry.deploy(SIGNER_GRACE_S)
        stake = blueprints.stake.deploy(
            token.address,
            UNBONDING_S,
            CHALLENGE_S,
            governance.address,
            [m.address for m in committee],
            threshold,
            MIN_MEMBER_STAKE,
        )
        vault = blueprints.vault.deploy(
            token.address, registry.address, stake.address, UNLOCK_S, EPOCH_S, governance.address
        )
        stake.set_vault(vault.address)
    return System(token, registry, stake, vault, governance, committee)


def fund(system: System, who: str, amount: int, spender: str | None = None) -> None:
    """Mints `amount` to `who` and, when given, approves `spender` for it."""
    system.token.mint(who, amount, sender=system.governance.address)
    if spender is not None:
        system.token.approve(spender, amount, sender=who)


def events(contract: Any, name: str) -> list[Any]:
    """The `name` events of the last call made through `contract` (any emitter)."""
    return [log for log in contract.get_logs() if type(log).__name__ == name]


def bond(system: System, who: str, amount: int) -> None:
    fund(system, who, amount, system.stake.address)
    system.stake.bond(amount, sender=who)


def seat_committee(system: System) -> None:
    """Bonds the minimum stake for every committee member, so each may vote."""
    for member in system.committee:
        bond(system, member.address, MIN_MEMBER_STAKE)
