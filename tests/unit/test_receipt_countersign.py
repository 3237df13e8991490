"""A countersignature built around the checked receipt's bytes is the one built from the
receipt itself: same canonical payload, same signature, verifiable from the file."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from tessera.protocol.canonical import canonical_bytes
from tessera.protocol.receipts import (
    countersign,
    countersign_canonical,
    countersign_payload,
    receipt_bytes,
    sign_receipt,
    verify_countersigned,
    verify_receipt_signature,
)
from tessera.protocol.signing import SignatureInvalid, public_key_hex
from tessera.protocol.wire import Receipt
from tessera.verify.receipts import CheckedBodies

PROVIDER = SigningKey(bytes(range(32)))
GATEWAY = SigningKey(bytes(range(1, 33)))


def receipt(job: str = "req_1.0", prompt_tokens: int = 12, model: str = "mock") -> Receipt:
    return Receipt(
        request_id=job.rsplit(".", 1)[0],
        job_id=job,
        provider_id=public_key_hex(PROVIDER),
        model=model,
        weights_sha256="be" * 32,
        kind="chat",
        prompt_sha256="1" * 64,
        output_sha256="2" * 64,
        prompt_tokens=prompt_tokens,
        completion_tokens=4,
        price_input_per_mtok=100,
        price_output_per_mtok=300,
        started_at_ms=1_000,
        finished_at_ms=1_250,
    )


@settings(max_examples=200, deadline=None)
@given(
    gateway_id=st.text(min_size=1, max_size=200),
    model=st.text(min_size=1, max_size=200),
    at_ms=st.integers(min_value=0, max_value=2**63),
    prompt_tokens=st.integers(min_value=0, max_value=10_000_000),
)
def test_the_spliced_payload_is_the_canonical_one(
    gateway_id: str, model: str, at_ms: int, prompt_tokens: int
) -> None:
    r = receipt(prompt_tokens=prompt_tokens, model=model)
    signature = sign_receipt(PROVIDER, r)
    spliced = countersign_canonical(receipt_bytes(r), signature, gateway_id, at_ms)
    assert spliced == canonical_bytes(countersign_payload(r, signature, gateway_id, at_ms))


def test_countersigning_with_the_checked_bytes_signs_the_same() -> None:
    r = receipt()
    signature = sign_receipt(PROVIDER, r)
    body = verify_receipt_signature(r, signature)
    assert body == receipt_bytes(r)
    reused = countersign(GATEWAY, 'gw-é"1', r, signature, 1_234, receipt_body=body)
    fresh = countersign(GATEWAY, 'gw-é"1', r, signature, 1_234)
    assert reused == fresh
    verify_countersigned(reused, public_key_hex(GATEWAY))


def test_bytes_of_another_receipt_make_a_countersignature_that_fails() -> None:
    """Why CheckedBodies hands bytes back only for the very receipt checked."""
    r, other = receipt(), receipt(prompt_tokens=13)
    signed = countersign(
        GATEWAY, "gw", r, sign_receipt(PROVIDER, r), 1, receipt_body=receipt_bytes(other)
    )
    with pytest.raises(SignatureInvalid, match="gateway's countersignature"):
        verify_countersigned(signed)


def test_checked_bodies_belong_to_the_receipt_checked() -> None:
    bodies = CheckedBodies(limit=2)
    first, second, third = receipt("a.0"), receipt("b.0"), receipt("c.0")
    for r in (first, second):
        bodies.keep(r, receipt_bytes(r))
    # Same job id, another receipt object: encoded afresh, and the entry is spent.
    assert bodies.take(receipt("a.0", prompt_tokens=99)) is None
    assert bodies.take(first) is None
    assert bodies.take(second) == receipt_bytes(second)
    assert bodies.take(second) is None
    # Bounded: the oldest of three goes.
    for r in (first, second, third):
        bodies.keep(r, receipt_bytes(r))
    assert len(bodies) == 2
    assert bodies.take(first) is None
    assert bodies.take(third) == receipt_bytes(third)
