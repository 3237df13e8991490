"""Schemathesis against a running gateway with a real provider: every operation, every
check, bounded examples. The server must answer no 5xx, and its OpenAPI document must
state every status, content type, header and constraint it really has, both ways: what
the schema allows is accepted (or refused only for a documented reason such as an unknown
model), what it forbids is refused.

Two runs, both against the shared ``live_network``:

1. The published document as served. Generated model names are unknown, so inference
   requests end at 404 after parsing; this run covers validation, errors and every route.
2. The inference operations with ``model`` pinned to the models actually served, so
   generated requests reach the providers and the SSE and JSON answers are checked too.
   What the published document cannot know about one model is narrowed to that model's
   facts, read from ``/v1/models`` and its ``config.json`` (tool support, embedding
   dimensions, vocabulary) or kept small for a two-core machine (prompt and output
   lengths); routing preferences are left out, since which providers match depends on
   the moment (a policy nobody matches is a 400 by design). A narrowed schema forbids
   what the server rightly takes, so this run generates valid requests only: run 1
   already sends the invalid ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.dev_money import fund_account

from support.live_network import LiveNetwork, create_key

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

EXAMPLES = 8  # per operation and phase: the whole file runs in about 1-2 minutes
INFERENCE = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
SHORT_TEXT = 64  # characters per generated prompt, message or input in the pinned run
FEW = 2  # prompts, inputs, messages or parts per generated request in the pinned run
OUTPUT_TOKENS = 3  # the most a pinned request may ask a provider to generate
SAFE_TOKEN_ID = 999  # every served model's vocabulary is larger


def run_schemathesis(
    spec: str, base: str, api_key: str, workdir: Path, *options: str
) -> tuple[int, str, float]:
    """One CLI run; its exit status, its report and how long it took."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        spec,
        "--url",
        base,
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {api_key}",
        "--max-examples",
        str(EXAMPLES),
        "--workers",
        "1",
        "--seed",
        "20261231",
        "--generation-database",
        "none",
        "--request-timeout",
        "60",
        "--continue-on-failure",
        "--no-color",
        *options,
    ]
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=300, check=False
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


@pytest.fixture(scope="module")
def api_key(live_network: LiveNetwork) -> str:
    """A funded key of its own: the fuzzer funds, spends and reads its own account only."""
    # Its own generous rate: the fuzzer sends requests as fast as the gateway answers,
    # and every one, malformed or not, counts against its key.
    key = create_key(live_network.data_dir, "--rpm", "1000000", "--max-concurrency", "64")
    fund_account(live_network.base, key)
    return key


@pytest.fixture(scope="module")
def spec(live_network: LiveNetwork) -> dict[str, Any]:
    response = httpx.get(f"{live_network.base}/openapi.json", timeout=30)
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def test_published_document_holds_for_every_operation(
    live_network: LiveNetwork, api_key: str, spec: dict[str, Any], tmp_path: Path
) -> None:
    status, report, seconds = run_schemathesis(
        f"{live_network.base}/openapi.json", live_network.base, api_key, tmp_path
    )
    print(f"schemathesis, published document: {seconds:.0f} s\n{report[-3000:]}")
    assert status == 0, report[-20_000:]
    operations = sum(len(item) for item in spec["paths"].values())
    assert f"Tested: {operations}" in report, report[-3000:]


def test_inference_on_the_served_models_holds(
    live_network: LiveNetwork,
    api_key: str,
    spec: dict[str, Any],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    models = httpx.get(
        f"{live_network.base}/v1/models",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=30,
    ).json()["data"]
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    assert vocab > SAFE_TOKEN_ID
    pinned = pin_to_served_models(spec, models)
    path = tmp_path / "pinned.json"
    path.write_text(json.dumps(pinned))
    status, report, seconds = run_schemathesis(
        str(path), live_network.base, api_key, tmp_path, "--mode", "positive"
    )
    print(f"schemathesis, served models: {seconds:.0f} s\n{report[-3000:]}")
    assert status == 0, report[-20_000:]
    assert f"Tested: {len(INFERENCE)}" in report, report[-3000:]


def pin_to_served_models(spec: dict[str, Any], models: list[dict[str, Any]]) -> dict[str, Any]:
    """The inference operations of ``spec``, narrowed to what the served models take."""
    pinned = json.loads(json.dumps(spec))
    pinned["paths"] = {p: item for p, item in spec["paths"].items() if p in INFERENCE}
    schemas = pinned["components"]["schemas"]
    text = [m for m in models if m["kind"] == "text"]
    embedding = [m for m in models if m["kind"] == "embedding"]
    assert text and embedding, models
    for name in ("ChatCompletionRequest", "CompletionRequest", "EmbeddingRequest"):
        served = embedding if name == "EmbeddingRequest" else text
        props = schemas[name]["properties"]
        props["model"] = {"type": "string", "enum": [m["id"] for m in served]}
        for routing in ("models", "provider"):
            props[routing] = {"type": "null"}
        for limit in ("max_tokens", "max_completion_tokens"):
            if limit in props:
                props[limit] = {"type": "integer", "minimum": 1, "maximum": OUTPUT_TOKENS}
        if name == "ChatCompletionRequest" and not any(m["supports_tools"] for m in served):
            props["tools"] = props["functions"] = {"type": "null"}
        if name == "EmbeddingRequest":
            dims = sorted({m["embedding_dimensions"] for m in served})
            props["dimensions"] = {"anyOf": [{"type": "null"}, {"enum": dims}]}
    short([schema for name, schema in schemas.items() if name != "ErrorResponse"])
    return pinned


def short(node: Any) -> None:
    """Every string, list and token id in ``node`` (a schema) small enough to generate
    quickly and to fit any served model's context."""
    if isinstance(node, dict):
        if node.get("type") == "string" and "enum" not in node and "pattern" not in node:
            node["maxLength"] = min(node.get("maxLength", SHORT_TEXT), SHORT_TEXT)
        if node.get("type") == "array":
            node["maxItems"] = min(node.get("maxItems", FEW), FEW)
        if node.get("type") == "integer" and node.get("maximum") == 10_000_000:
            node["maximum"] = SAFE_TOKEN_ID
        for value in node.values():
            short(value)
    elif isinstance(node, list):
        for value in node:
            short(value)
