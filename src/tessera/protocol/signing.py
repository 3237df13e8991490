"""Ed25519 identities: sign and verify canonical payloads.

A provider's identity is its public key (64 hex chars). Every message that matters
carries a signature over ``canonical_bytes(payload)`` prefixed by a domain tag, so a
signature made for one purpose can never be replayed as another.
"""

from __future__ import annotations

from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from tessera.protocol.canonical import canonical_bytes


class SignatureInvalid(ValueError):
    """The signature does not match the payload and key."""


def _message(domain: str, payload: Any) -> bytes:
    return signed_message(domain, canonical_bytes(payload))


def signed_message(domain: str, canonical: bytes) -> bytes:
    """What a signature covers: the domain tag, then the payload's canonical bytes."""
    return domain.encode("ascii") + b"\n" + canonical


def new_signing_key() -> SigningKey:
    return SigningKey.generate()


def public_key_hex(key: SigningKey) -> str:
    return key.verify_key.encode().hex()


def sign(key: SigningKey, domain: str, payload: Any) -> str:
    """Hex Ed25519 signature of ``payload`` under ``domain``."""
    return sign_message(key, _message(domain, payload))


def sign_message(key: SigningKey, message: bytes) -> str:
    """``sign`` for a message already built with :func:`signed_message`."""
    return key.sign(message).signature.hex()


def verify(public_key: str, domain: str, payload: Any, signature: str) -> None:
    """Raise SignatureInvalid unless ``signature`` signs ``payload`` for ``public_key``."""
    verify_message(public_key, _message(domain, payload), signature)


def verify_message(public_key: str, message: bytes, signature: str) -> None:
    """``verify`` for a message already built with :func:`signed_message`."""
    try:
        VerifyKey(bytes.fromhex(public_key)).verify(message, bytes.fromhex(signature))
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise SignatureInvalid("signature does not verify") from exc
