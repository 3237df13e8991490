"""Checking a provider's receipt against what the gateway itself saw.

The gateway accepts a receipt only if the provider's key signed it, it names this very job
(a receipt from another request is a replay), and every field agrees with the job, the
offer it ran under, and the output the gateway relayed. Problems fall in two kinds, which
are also slashing-table reasons:

- ``forged_receipt``: the signature does not verify, the signer is not the provider on
  the connection, or the receipt names another job or request (a replay);
- ``tampered_output``: a signed receipt whose content contradicts the job or the output:
  model, weights, prices, prompt or output hash, or token counts.

Both are proven by the signed receipt and the gateway's record of the job, with no audit
needed. A missing receipt is refused too (``missing_receipt``) but proves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.protocol.receipts import (
    OutputDigest,
    embeddings_sha256,
    prompt_sha256,
    request_id_of,
    verify_receipt_signature,
)
from tessera.protocol.signing import SignatureInvalid
from tessera.protocol.wire import Done, Job, ModelOffer, Receipt

MISSING = "missing_receipt"
FORGED = "forged_receipt"
TAMPERED = "tampered_output"


@dataclass(frozen=True, slots=True)
class ReceiptCheck:
    """``problem`` is None for a good receipt, else MISSING, FORGED or TAMPERED."""

    problem: str | None
    detail: str = ""
    # A good receipt's canonical bytes, as its signature was checked over: the
    # countersignature covers them again (protocol.receipts.countersign).
    signed_body: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def slashable(self) -> bool:
        return self.problem in (FORGED, TAMPERED)


def check_receipt(
    done: Done,
    *,
    provider_id: str,
    job: Job,
    offer: ModelOffer,
    digest: OutputDigest | None,
) -> ReceiptCheck:
    """Is ``done.receipt`` a true, signed account of ``job`` as the gateway relayed it?

    ``digest`` holds the text chunks relayed (None for embedding jobs).
    """
    receipt, signature = done.receipt, done.receipt_signature
    if receipt is None or signature is None:
        return ReceiptCheck(MISSING, "the done frame carries no signed receipt")
    if receipt.provider_id != provider_id:
        return ReceiptCheck(FORGED, "the receipt names another provider")
    try:
        signed_body = verify_receipt_signature(receipt, signature)
    except SignatureInvalid:
        return ReceiptCheck(FORGED, "the receipt signature does not verify")
    if receipt.job_id != job.job_id or receipt.request_id != request_id_of(job):
        return ReceiptCheck(FORGED, f"the receipt is for job {receipt.job_id}, not {job.job_id}")
    expected = {
        "model": (receipt.model, job.model),
        "weights_sha256": (receipt.weights_sha256, offer.weights_sha256),
        "kind": (receipt.kind, job.kind),
        "price_input_per_mtok": (receipt.price_input_per_mtok, offer.price_input_per_mtok),
        "price_output_per_mtok": (receipt.price_output_per_mtok, offer.price_output_per_mtok),
        "prompt_sha256": (receipt.prompt_sha256, prompt_sha256(job)),
        "prompt_tokens": (receipt.prompt_tokens, done.usage.prompt_tokens),
        "completion_tokens": (receipt.completion_tokens, done.usage.completion_tokens),
    }
    if job.kind == "embedding":
        expected["output_sha256"] = (
            receipt.output_sha256,
            embeddings_sha256(done.embeddings_b64 or []),
        )
        expected["completion_tokens"] = (receipt.completion_tokens, 0)
    else:
        if digest is None:
            return ReceiptCheck(TAMPERED, "a text job finished without output")
        if digest.tokens_mismatched:
            return ReceiptCheck(TAMPERED, "chunks whose token ids and logprobs do not pair up")
        expected["output_sha256"] = (receipt.output_sha256, digest.sha256())
        expected["completion_tokens (output)"] = (
            receipt.completion_tokens,
            digest.completion_tokens,
        )
    wrong = [name for name, (got, want) in expected.items() if got != want]
    if receipt.finished_at_ms < receipt.started_at_ms:
        wrong.append("finished_at_ms")
    if wrong:
        return ReceiptCheck(TAMPERED, "the receipt disagrees on " + ", ".join(wrong))
    return ReceiptCheck(None, signed_body=signed_body)


class CheckedBodies:
    """Good receipts' canonical bytes, from their check to their countersignature.

    Checking a receipt encodes it canonically; countersigning it would encode it again.
    Kept by job id and handed back only for the very receipt that was checked (another
    receipt under the same job id is encoded afresh). At most ``limit`` are kept: answers
    checked but never delivered are dropped oldest first.
    """

    def __init__(self, limit: int = 4_096) -> None:
        self.limit = limit
        self._bodies: dict[str, tuple[Receipt, bytes]] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def keep(self, receipt: Receipt, body: bytes) -> None:
        self._bodies[receipt.job_id] = (receipt, body)
        if len(self._bodies) > self.limit:
            del self._bodies[next(iter(self._bodies))]

    def take(self, receipt: Receipt) -> bytes | None:
        checked, body = self._bodies.pop(receipt.job_id, (None, None))
        return body if checked is receipt else None
