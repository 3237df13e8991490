"""``tessera catalog calibrate --quick`` on the real tiny model, end to end in process."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tessera.cli import app
from tessera.protocol.wire import SamplingParams
from tessera.provider.backends.base import CancelToken, Delta, Finish
from tessera.provider.backends.sentence_embed import SentenceEmbeddingBackend, default_model_dir
from tessera.provider.backends.transformers_text import TransformersTextBackend
from tessera.provider.model_hash import weights_sha256
from tessera.verify.calibration import Floors
from tessera.verify.catalog import Catalog, CatalogModel

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def calibrated(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog file made by the real CLI, with one unrelated entry that must survive."""
    path = tmp_path_factory.mktemp("catalog") / "catalog.json"
    other = CatalogModel(name="other-model", weights_sha256="ab" * 32, kind="embedding")
    path.write_text(Catalog([other]).to_json(), encoding="utf-8")
    threads = torch.get_num_threads()
    result = CliRunner().invoke(
        app, ["catalog", "calibrate", str(tiny_model_dir), "--catalog", str(path), "--quick"]
    )
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads  # the process-wide setting is restored
    return path


def entry(path: Path) -> CatalogModel:
    model = Catalog.load(path).get("tessera-tiny")
    assert model is not None
    return model


def test_the_entry_pins_the_weights_the_provider_announces(
    calibrated: Path, tiny_model_dir: Path
) -> None:
    model = entry(calibrated)
    assert model.kind == "text"
    assert model.weights_sha256 == weights_sha256(tiny_model_dir)
    assert Catalog.load(calibrated).get("other-model") is not None


def test_the_catalog_file_round_trips(calibrated: Path) -> None:
    text = calibrated.read_text(encoding="utf-8")
    assert Catalog.load(calibrated).to_json() == text
    assert json.loads(text)["version"] == 1


def test_tolerances_sit_above_what_honest_runs_showed(calibrated: Path) -> None:
    model = entry(calibrated)
    tol, cal = model.tolerances, model.calibration
    assert cal.margin == 3.0
    assert cal.tokens > 0
    assert any(r.startswith("generate/bfloat16") for r in cal.runs)
    assert any(r.startswith("score/float32/batch=4") for r in cal.runs)
    floors = Floors()
    assert tol.logprob_abs_max >= max(floors.logprob_abs_max, 3 * cal.observed_logprob_abs_max)
    assert tol.logprob_abs_mean >= max(floors.logprob_abs_mean, 3 * cal.observed_logprob_abs_mean)
    assert tol.greedy_gap >= max(floors.greedy_gap, 3 * cal.observed_greedy_gap)
    assert tol.tail_fraction >= cal.observed_tail_fraction
    # bfloat16 against float32 cannot agree to the last bit: the calibration saw it.
    assert cal.observed_logprob_abs_max > 1e-4
    assert tol.top_k >= 8 and tol.top_k & (tol.top_k - 1) == 0


def test_challenges_hold_the_greedy_reference_with_its_alternatives(
    calibrated: Path, tiny_model_dir: Path
) -> None:
    config = json.loads((tiny_model_dir / "generation_config.json").read_text(encoding="utf-8"))
    eos = config["eos_token_id"]
    eos_ids = set(eos) if isinstance(eos, list) else {eos}
    challenges = entry(calibrated).challenges
    assert len(challenges) == 4
    for challenge in challenges:
        assert challenge.prompt and challenge.prompt_tokens > 0
        assert challenge.max_tokens == 16
        assert challenge.tokens
        assert len(challenge.tokens) <= challenge.max_tokens + (1 if challenge.eos else 0)
        if challenge.eos:  # the model's end-of-sequence token closes the reference
            assert challenge.tokens[-1].id in eos_ids
        else:
            assert len(challenge.tokens) == challenge.max_tokens
        for token in challenge.tokens:
            assert len(token.top) == 8
            ids = [i for i, _ in token.top]
            values = [lp for _, lp in token.top]
            assert values == sorted(values, reverse=True)
            # Greedy: the chosen token is the most likely one, at the log-prob reported.
            assert token.id == ids[0]
            assert token.logprob == pytest.approx(values[0], abs=1e-4)


def test_a_fresh_greedy_run_reproduces_every_challenge(
    calibrated: Path, tiny_model_dir: Path
) -> None:
    """The join challenge is what a provider loading the same weights answers."""

    async def answer(backend: TransformersTextBackend, prompt: str) -> tuple[list[int], bool]:
        ids: list[int] = []
        eos = False
        params = SamplingParams(max_tokens=16, temperature=0.0)
        async for event in backend.stream(prompt, params, CancelToken()):
            if isinstance(event, Delta):
                ids += [lp.token_id for lp in event.logprobs]
            elif isinstance(event, Finish):
                eos = event.eos
        return ids, eos

    backend = TransformersTextBackend.load(tiny_model_dir, dtype="float32")
    try:
        for challenge in entry(calibrated).challenges:
            ids, eos = asyncio.run(answer(backend, challenge.prompt))
            expected = [t.id for t in challenge.tokens]
            assert eos == challenge.eos
            assert ids == (expected[:-1] if eos else expected)
    finally:
        asyncio.run(backend.close())


# ---------------------------------------------------------------- embedding models


@pytest.fixture(scope="module")
def calibrated_minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("catalog") / "catalog.json"
    result = CliRunner().invoke(
        app, ["catalog", "calibrate", "minilm", "--catalog", str(path), "--quick"]
    )
    assert result.exit_code == 0, result.output
    return path


def test_an_embedding_entry_pins_minilm_with_a_cosine_bound(calibrated_minilm: Path) -> None:
    model = Catalog.load(calibrated_minilm).get("all-MiniLM-L6-v2")
    assert model is not None
    assert model.kind == "embedding"
    assert model.weights_sha256 == weights_sha256(default_model_dir())
    cal = model.calibration
    assert cal.observed_min_cosine is not None
    assert any("bfloat16" in r for r in cal.runs) and any("batch=1" in r for r in cal.runs)
    # bfloat16 moves vectors a little; the bound sits below that by the margin.
    assert 0.99 < cal.observed_min_cosine < 1.0
    assert model.tolerances.min_cosine <= 1 - 3 * (1 - cal.observed_min_cosine) + 1e-12
    assert model.tolerances.min_cosine <= 1 - Floors().cosine_slack


def test_a_fresh_backend_passes_the_embedding_challenge(calibrated_minilm: Path) -> None:
    model = Catalog.load(calibrated_minilm).get("all-MiniLM-L6-v2")
    assert model is not None
    [challenge] = model.challenges
    assert len(challenge.inputs) == len(challenge.vectors_b64) == 4
    backend = SentenceEmbeddingBackend.load(device="cpu")
    fresh = asyncio.run(backend.embed(challenge.inputs)).vectors
    for b64, vector in zip(challenge.vectors_b64, fresh, strict=True):
        raw = base64.b64decode(b64)
        reference = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert len(reference) == 384
        dot = math.fsum(x * y for x, y in zip(reference, vector, strict=True))
        norms = math.sqrt(math.fsum(x * x for x in reference) * math.fsum(y * y for y in vector))
        assert dot / norms >= model.tolerances.min_cosine
