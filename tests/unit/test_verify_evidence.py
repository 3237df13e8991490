"""Published audit evidence keeps every number and drops the consumer's output: the
auditor's decoded text and an embedding's vectors become a hash and a length."""

from __future__ import annotations

import hashlib

from tessera.verify.evidence import public_evidence

TEXT = "the answer only the consumer may read"


def test_an_auditors_text_becomes_its_hash_and_length() -> None:
    token = {"rank": 1, "logprob": -0.1, "top_logprob": -0.1}
    evidence = {
        "verdict": {"passed": False, "reason": "tampered_output", "findings": [], "stats": {}},
        "result": {
            "job_id": "j",
            "choices": [{"index": 0, "prompt_tokens": 3, "tokens": [token], "end": token,
                         "text": TEXT}],
            "prompt_tokens": 3,
        },
    }  # fmt: skip
    public = public_evidence(evidence)
    (choice,) = public["result"]["choices"]
    assert "text" not in choice and TEXT not in repr(public)
    assert choice["text_sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    assert choice["text_chars"] == len(TEXT)
    assert choice["tokens"] == [token] and public["verdict"] == evidence["verdict"]
    assert evidence["result"]["choices"][0]["text"] == TEXT  # the input is not changed
    assert public_evidence(public) == public  # stored evidence can be cleaned again


def test_vectors_become_a_hash_and_a_count() -> None:
    vectors = ["AAAA", "BBBB"]
    public = public_evidence({"result": {"job_id": "j", "embeddings_b64": vectors}})
    assert "embeddings_b64" not in public["result"] and public["result"]["embeddings"] == 2
    digest = hashlib.sha256(b"AAAA\nBBBB").hexdigest()
    assert public["result"]["embeddings_sha256"] == digest


def test_evidence_without_a_result_is_left_as_it_is() -> None:
    problem = {"problem": "backend_crashed: the auditor's backend failed"}
    assert public_evidence(problem) == problem
    odd = {"result": "not an object"}
    assert public_evidence(odd) == odd
