"""The EIP-712 messages of contracts/SPEC.md, encoded here byte for byte as the contracts do.

Domain ``{name: "Tessera", version: "1", chainId, verifyingContract}``; the verifying
contract is the Registry for a ``ProviderBinding`` and the PaymentVault for a ``Spend`` or
a ``Cheque``. A digest is ``keccak256(0x1901 || domainSeparator || structHash)``.

* ``ProviderBinding(address account,bytes32 key,uint64 validUntil,uint64 nonce)`` is
  signed by the provider's **Ed25519** key over the 32-byte digest, checked off chain
  (:func:`verify_binding`), since the EVM has no Ed25519.
* ``Spend(address consumer,address gateway,uint256 cumulative)`` and
  ``Cheque(address gateway,address provider,uint256 cumulative)`` are secp256k1
  signatures, 65 bytes ``r || s || v`` with v 27 or 28 and low s (the vault refuses
  others). Amounts are cumulative base units, so a replay pays nothing.

Encoders are our own (a few lines, no private eth-account API); the tests compare them with
``eth_account.messages.encode_typed_data`` and with the contracts' own digest views.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi import encode
from eth_account import Account
from eth_keys import keys
from eth_keys.exceptions import BadSignature
from eth_utils import is_address, keccak, to_checksum_address

from tessera.errors import ConfigError, InvalidRequest

DOMAIN_NAME = "Tessera"
DOMAIN_VERSION = "1"
_DOMAIN_TYPE = b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
BINDING_TYPE = b"ProviderBinding(address account,bytes32 key,uint64 validUntil,uint64 nonce)"
SPEND_TYPE = b"Spend(address consumer,address gateway,uint256 cumulative)"
CHEQUE_TYPE = b"Cheque(address gateway,address provider,uint256 cumulative)"
# secp256k1's order over 2: the vault (snekmate ecdsa) refuses a signature with s above it.
_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


def domain_separator(chain_id: int, verifying_contract: str, name: str = DOMAIN_NAME) -> bytes:
    return keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                keccak(_DOMAIN_TYPE),
                keccak(name.encode()),
                keccak(DOMAIN_VERSION.encode()),
                chain_id,
                verifying_contract,
            ],
        )
    )


def typed_digest(domain: bytes, struct_hash: bytes) -> bytes:
    return keccak(b"\x19\x01" + domain + struct_hash)


def binding_digest(
    chain_id: int, registry: str, account: str, key: bytes, valid_until: int, nonce: int
) -> bytes:
    """What the provider's Ed25519 key signs to bind itself to ``account``."""
    if len(key) != 32:
        raise InvalidRequest("an Ed25519 public key is 32 bytes")
    struct = keccak(
        encode(
            ["bytes32", "address", "bytes32", "uint64", "uint64"],
            [keccak(BINDING_TYPE), account, key, valid_until, nonce],
        )
    )
    return typed_digest(domain_separator(chain_id, registry), struct)


def spend_digest(chain_id: int, vault: str, consumer: str, gateway: str, cumulative: int) -> bytes:
    struct = keccak(
        encode(
            ["bytes32", "address", "address", "uint256"],
            [keccak(SPEND_TYPE), consumer, gateway, cumulative],
        )
    )
    return typed_digest(domain_separator(chain_id, vault), struct)


def cheque_digest(chain_id: int, vault: str, gateway: str, provider: str, cumulative: int) -> bytes:
    struct = keccak(
        encode(
            ["bytes32", "address", "address", "uint256"],
            [keccak(CHEQUE_TYPE), gateway, provider, cumulative],
        )
    )
    return typed_digest(domain_separator(chain_id, vault), struct)


def sign_digest(private_key: bytes | str, digest: bytes) -> bytes:
    """A 65-byte ``r || s || v`` secp256k1 signature (v 27/28, low s) over ``digest``."""
    signed = Account.unsafe_sign_hash(digest, private_key)
    return bytes(signed.signature)


def recover_signer(digest: bytes, signature: bytes) -> str:
    """The checksummed address that signed ``digest``, with the vault's own rules (65 bytes,
    v 27/28, low s); InvalidRequest for anything the vault would refuse."""
    if len(signature) != 65:
        raise InvalidRequest("a signature is 65 bytes r || s || v")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28) or s > _HALF_N or r == 0 or s == 0:
        raise InvalidRequest("the signature is not in the canonical form (v 27/28, low s)")
    try:
        public = keys.Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(digest)
    except BadSignature as exc:
        raise InvalidRequest("the signature does not recover to any address") from exc
    return public.to_checksum_address()


@dataclass(frozen=True, slots=True)
class Binding:
    """A provider's binding of its Ed25519 ``key`` to an Ethereum ``account``."""

    account: str
    key: bytes
    valid_until: int
    nonce: int
    signature: bytes  # 64-byte Ed25519 signature over the binding digest


def sign_binding(
    signing_key: Any, chain_id: int, registry: str, account: str, valid_until: int, nonce: int
) -> Binding:
    """``signing_key`` is a PyNaCl ``SigningKey`` (the provider's key file)."""
    key = bytes(signing_key.verify_key)
    digest = binding_digest(chain_id, registry, account, key, valid_until, nonce)
    signature = bytes(signing_key.sign(digest).signature)
    return Binding(to_checksum_address(account), key, valid_until, nonce, signature)


def verify_binding(
    chain_id: int,
    registry: str,
    binding: Binding,
    public_key: bytes,
    *,
    now_unix_s: float | None = None,
) -> bool:
    """True only if ``binding`` names ``public_key`` and that key signed it for this
    chain and registry (and, given ``now_unix_s``, it has not expired)."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    if bytes(binding.key) != bytes(public_key) or len(public_key) != 32:
        return False
    if now_unix_s is not None and binding.valid_until < now_unix_s:
        return False
    digest = binding_digest(
        chain_id, registry, binding.account, binding.key, binding.valid_until, binding.nonce
    )
    try:
        VerifyKey(bytes(public_key)).verify(digest, bytes(binding.signature))
    except (BadSignatureError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class SignedCheque:
    """A gateway's cumulative ``Cheque`` for a provider, as it is handed over and cashed.

    JSON form: ``{"chain_id", "vault", "gateway", "provider", "cumulative" (int base
    units), "signature" (0x hex)}``.
    """

    chain_id: int
    vault: str
    gateway: str
    provider: str
    cumulative: int
    signature: bytes

    def digest(self) -> bytes:
        return cheque_digest(
            self.chain_id, self.vault, self.gateway, self.provider, self.cumulative
        )

    def signer(self) -> str:
        return recover_signer(self.digest(), self.signature)

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "vault": self.vault,
            "gateway": self.gateway,
            "provider": self.provider,
            "cumulative": self.cumulative,
            "signature": "0x" + self.signature.hex(),
        }

    @classmethod
    def from_json(cls, raw: Any, source: str = "cheque") -> SignedCheque:
        try:
            fields = {
                name: raw[name]
                for name in ("chain_id", "vault", "gateway", "provider", "cumulative", "signature")
            }
            for name in ("vault", "gateway", "provider"):
                if not is_address(fields[name]):
                    raise ValueError(f"{name} is not an address")
            if type(fields["chain_id"]) is not int or type(fields["cumulative"]) is not int:
                raise ValueError("chain_id and cumulative must be integers")
            if fields["cumulative"] < 0:
                raise ValueError("cumulative must not be negative")
            signature = bytes.fromhex(str(fields["signature"]).removeprefix("0x"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source} is not a cheque: {exc}") from exc
        return cls(
            chain_id=fields["chain_id"],
            vault=to_checksum_address(fields["vault"]),
            gateway=to_checksum_address(fields["gateway"]),
            provider=to_checksum_address(fields["provider"]),
            cumulative=fields["cumulative"],
            signature=signature,
        )

    @classmethod
    def load(cls, path: Path) -> SignedCheque:
        try:
            raw = json.loads(Path(path).expanduser().read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read cheque file {path}: {exc}") from exc
        return cls.from_json(raw, source=str(path))


def sign_cheque(
    private_key: bytes | str,
    chain_id: int,
    vault: str,
    gateway: str,
    provider: str,
    cumulative: int,
) -> SignedCheque:
    """The gateway's signer signs ``Cheque(gateway, provider, cumulative)``."""
    digest = cheque_digest(chain_id, vault, gateway, provider, cumulative)
    return SignedCheque(
        chain_id,
        to_checksum_address(vault),
        to_checksum_address(gateway),
        to_checksum_address(provider),
        cumulative,
        sign_digest(private_key, digest),
    )


def sign_spend(
    private_key: bytes | str,
    chain_id: int,
    vault: str,
    consumer: str,
    gateway: str,
    cumulative: int,
) -> bytes:
    """A consumer's (or a custodial gateway signer's) signature on ``Spend``."""
    return sign_digest(private_key, spend_digest(chain_id, vault, consumer, gateway, cumulative))
