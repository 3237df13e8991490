import json

import pytest
from nacl.signing import SigningKey
from pydantic import ValidationError

from tessera.protocol.canonical import canonical_bytes
from tessera.protocol.signing import SignatureInvalid, public_key_hex, sign, verify
from tessera.protocol.wire import (
    REGISTER_DOMAIN,
    Chunk,
    provider_frame_adapter,
    register_payload,
)

from factories import capabilities


def test_canonical_bytes_are_order_independent_and_refuse_nan() -> None:
    assert canonical_bytes({"b": 1, "a": [1, 2]}) == canonical_bytes({"a": [1, 2], "b": 1})
    with pytest.raises(ValueError):
        canonical_bytes({"x": float("nan")})


def test_register_signature_round_trip_and_tamper() -> None:
    key = SigningKey.generate()
    caps = capabilities(key)
    payload = register_payload("00" * 32, caps)
    signature = sign(key, REGISTER_DOMAIN, payload)
    verify(public_key_hex(key), REGISTER_DOMAIN, payload, signature)
    # Another nonce, another domain, another key: all refused.
    with pytest.raises(SignatureInvalid):
        verify(public_key_hex(key), REGISTER_DOMAIN, register_payload("11" * 32, caps), signature)
    with pytest.raises(SignatureInvalid):
        verify(public_key_hex(key), "tessera/other/v1", payload, signature)
    with pytest.raises(SignatureInvalid):
        verify(public_key_hex(SigningKey.generate()), REGISTER_DOMAIN, payload, signature)
    with pytest.raises(SignatureInvalid):
        verify(public_key_hex(key), REGISTER_DOMAIN, payload, "zz")


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "chunk", "job_id": "j", "text": "x", "surprise": 1},  # unknown field
        {"type": "teleport", "job_id": "j"},  # unknown type
        {"type": "done", "job_id": "j", "usage": {"prompt_tokens": -1, "completion_tokens": 0}},
        {
            "type": "chunk",
            "job_id": "j",
            "logprobs": [{"token": "a", "token_id": 1, "logprob": 0.5}],
        },
        {"type": "heartbeat", "active_jobs": "many"},
        [1, 2, 3],
    ],
)
def test_provider_frames_are_strict(frame: object) -> None:
    with pytest.raises(ValidationError):
        provider_frame_adapter.validate_json(json.dumps(frame))


def test_nan_logprob_is_refused() -> None:
    with pytest.raises(ValidationError):
        provider_frame_adapter.validate_json(
            '{"type":"chunk","job_id":"j","logprobs":[{"token":"a","token_id":1,"logprob":NaN}]}'
        )
    assert isinstance(provider_frame_adapter.validate_json('{"type":"chunk","job_id":"j"}'), Chunk)
