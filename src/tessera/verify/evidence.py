"""What of an audit is published: everything a stranger needs to check the verdict (the
numbers per token, the findings, who audited), nothing that reveals what the consumer got.

An auditor's result holds the output it re-ran as text (and an embedding job's vectors):
published as they are, an audit would print a consumer's answer on a public page. Each is
replaced by its SHA-256 and length, which the consumer (who holds the answer, and a
receipt committing to it) can still match; vectors are hashed as their base64 strings
joined by newlines. Pure: JSON in, JSON out; applying it twice
changes nothing, so evidence stored before this rule is cleaned when it is read.
"""

from __future__ import annotations

import hashlib
from typing import Any


def public_evidence(evidence: dict[str, Any]) -> dict[str, Any]:
    """``evidence`` with the auditor's result stripped of output text and vectors."""
    result = evidence.get("result")
    if not isinstance(result, dict):
        return evidence
    return {**evidence, "result": public_result(result)}


def public_result(result: dict[str, Any]) -> dict[str, Any]:
    out = dict(result)
    choices = result.get("choices")
    if isinstance(choices, list):
        out["choices"] = [_choice(c) if isinstance(c, dict) else c for c in choices]
    vectors = out.pop("embeddings_b64", None)
    if isinstance(vectors, list):  # base64 strings: one per input, joined by newlines
        out.update(_digest("embeddings", "\n".join(str(v) for v in vectors)))
        out["embeddings"] = len(vectors)
    return out


def _choice(choice: dict[str, Any]) -> dict[str, Any]:
    out = dict(choice)
    text = out.pop("text", None)
    if isinstance(text, str):
        out.update(_digest("text", text))
    return out


def _digest(name: str, text: str) -> dict[str, Any]:
    return {
        f"{name}_sha256": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
        f"{name}_chars": len(text),
    }
