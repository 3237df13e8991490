"""Receipts: the hashes a receipt commits to, its signatures, and the offline check.

Definitions (stable, so any party can recompute them):

- ``prompt_sha256(job)``: SHA-256 of the canonical JSON of the job without its ids, type
  and tenant tag: model, kind, input (messages, prompts or inputs) and sampling params.
- ``output_sha256``: for text jobs, of the canonical JSON list of choices sorted by index,
  each ``{"index", "text", "token_ids", "eos", "finish_reason"}``; for embedding jobs, of
  ``{"embeddings_b64": [...]}``.

A provider signs the :class:`Receipt` under ``RECEIPT_DOMAIN``. The gateway countersigns
``{"receipt", "provider_signature", "gateway_id", "countersigned_at_ms"}`` under
``COUNTERSIGN_DOMAIN`` with its own key; :func:`verify_countersigned` checks both with
nothing but the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from nacl.signing import SigningKey
from pydantic import BaseModel, ConfigDict, Field

from tessera.protocol import signing
from tessera.protocol.canonical import canonical_bytes, sha256_hex
from tessera.protocol.wire import (
    COUNTERSIGN_DOMAIN,
    RECEIPT_DOMAIN,
    Chunk,
    HexKey,
    HexSig,
    Job,
    Receipt,
)


def prompt_sha256(job: Job) -> str:
    """Hash of what the job asks for, independent of which attempt (job id) carries it
    and of whose it is (the tenant tag differs at every provider)."""
    body = job.model_dump(mode="json", exclude={"type", "job_id", "request_id", "tenant"})
    return sha256_hex(canonical_bytes(body))


def request_id_of(job: Job) -> str:
    """The consumer request a job serves (job ids are ``<request id>.<attempt>``)."""
    return job.request_id or job.job_id.rsplit(".", 1)[0]


@dataclass(slots=True)
class ChoiceOutput:
    """Everything produced for one choice, as chunks delivered it."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    eos: bool = False
    finish_reason: str | None = None

    @property
    def completion_tokens(self) -> int:
        """Sampled tokens: the listed ones plus an end-of-sequence token if one ended it."""
        return len(self.token_ids) + (1 if self.eos else 0)

    def public(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "text": self.text,
            "token_ids": self.token_ids,
            "eos": self.eos,
            "finish_reason": self.finish_reason,
        }


class OutputDigest:
    """Accumulates a text job's chunks (both sides build one) and hashes the result."""

    def __init__(self) -> None:
        self.choices: dict[int, ChoiceOutput] = {}
        self.tokens_mismatched = False  # a chunk whose logprobs do not pair with its ids

    def add(self, chunk: Chunk) -> None:
        choice = self.choices.get(chunk.index)
        if choice is None:
            choice = self.choices[chunk.index] = ChoiceOutput(chunk.index)
        choice.text += chunk.text
        choice.token_ids.extend(chunk.token_ids)
        choice.token_logprobs.extend(chunk.token_logprobs)
        if len(chunk.token_logprobs) != len(chunk.token_ids):
            self.tokens_mismatched = True
        if chunk.eos:
            choice.eos = True
        if chunk.finish_reason is not None:
            choice.finish_reason = chunk.finish_reason

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices.values())

    def ordered(self) -> list[ChoiceOutput]:
        return [self.choices[i] for i in sorted(self.choices)]

    def sha256(self) -> str:
        return sha256_hex(canonical_bytes([c.public() for c in self.ordered()]))


def embeddings_sha256(embeddings_b64: list[str]) -> str:
    return sha256_hex(canonical_bytes({"embeddings_b64": embeddings_b64}))


def receipt_bytes(receipt: Receipt) -> bytes:
    """The receipt's canonical bytes: what its provider signs, and what a countersignature
    covers again inside its own payload."""
    return canonical_bytes(receipt.model_dump(mode="json"))


def sign_receipt(key: SigningKey, receipt: Receipt) -> str:
    return signing.sign_message(key, signing.signed_message(RECEIPT_DOMAIN, receipt_bytes(receipt)))


def verify_receipt_signature(receipt: Receipt, signature: str) -> bytes:
    """Raise SignatureInvalid unless the receipt's own provider key signed it; the
    receipt's canonical bytes, for a countersignature to reuse."""
    body = receipt_bytes(receipt)
    signing.verify_message(
        receipt.provider_id, signing.signed_message(RECEIPT_DOMAIN, body), signature
    )
    return body


class CountersignedReceipt(BaseModel):
    """The receipt a consumer fetches: the provider's and the gateway's signatures."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    receipt: Receipt
    provider_signature: HexSig
    gateway_id: Annotated[str, Field(min_length=1, max_length=200)]
    gateway_public_key: HexKey
    countersigned_at_ms: Annotated[int, Field(ge=0)]
    gateway_signature: HexSig

    def countersigned_payload(self) -> dict[str, Any]:
        return countersign_payload(
            self.receipt, self.provider_signature, self.gateway_id, self.countersigned_at_ms
        )


def countersign_payload(
    receipt: Receipt, provider_signature: str, gateway_id: str, at_ms: int
) -> dict[str, Any]:
    return {
        "receipt": receipt.model_dump(mode="json"),
        "provider_signature": provider_signature,
        "gateway_id": gateway_id,
        "countersigned_at_ms": at_ms,
    }


def countersign_canonical(
    receipt_body: bytes, provider_signature: str, gateway_id: str, at_ms: int
) -> bytes:
    """``canonical_bytes(countersign_payload(...))`` around the receipt's canonical bytes as
    they are (``receipt_body``), instead of encoding the receipt a second time. The keys
    are written in canonical (sorted) order; the receipt's are already."""
    return b"".join(
        (
            b'{"countersigned_at_ms":',
            canonical_bytes(at_ms),
            b',"gateway_id":',
            canonical_bytes(gateway_id),
            b',"provider_signature":',
            canonical_bytes(provider_signature),
            b',"receipt":',
            receipt_body,
            b"}",
        )
    )


def countersign(
    key: SigningKey,
    gateway_id: str,
    receipt: Receipt,
    provider_signature: str,
    at_ms: int,
    receipt_body: bytes | None = None,
) -> CountersignedReceipt:
    """The gateway's countersignature; ``receipt_body`` is ``receipt_bytes(receipt)`` where
    the caller has it already (from checking the provider's signature)."""
    body = receipt_bytes(receipt) if receipt_body is None else receipt_body
    canonical = countersign_canonical(body, provider_signature, gateway_id, at_ms)
    return CountersignedReceipt(
        receipt=receipt,
        provider_signature=provider_signature,
        gateway_id=gateway_id,
        gateway_public_key=signing.public_key_hex(key),
        countersigned_at_ms=at_ms,
        gateway_signature=signing.sign_message(
            key, signing.signed_message(COUNTERSIGN_DOMAIN, canonical)
        ),
    )


def verify_countersigned(signed: CountersignedReceipt, gateway_key: str | None = None) -> None:
    """Check both signatures; with ``gateway_key``, also that this gateway countersigned.

    Raises SignatureInvalid naming which check failed.
    """
    try:
        verify_receipt_signature(signed.receipt, signed.provider_signature)
    except signing.SignatureInvalid as exc:
        raise signing.SignatureInvalid("the provider's signature does not verify") from exc
    if gateway_key is not None and gateway_key != signed.gateway_public_key:
        raise signing.SignatureInvalid(
            f"countersigned by gateway key {signed.gateway_public_key[:16]}…, "
            f"not the expected {gateway_key[:16]}…"
        )
    try:
        signing.verify(
            signed.gateway_public_key,
            COUNTERSIGN_DOMAIN,
            signed.countersigned_payload(),
            signed.gateway_signature,
        )
    except signing.SignatureInvalid as exc:
        raise signing.SignatureInvalid("the gateway's countersignature does not verify") from exc
