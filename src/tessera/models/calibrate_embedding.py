"""Calibration of an embedding model: how far honest vectors for the same input drift.

Runs (each embeds every input): float32 with each thread count of the plan, all inputs in
one padded batch (the first of these is the reference); float32 one input per call (no
padding); bfloat16 batched and one per call. The least cosine between any two runs' vectors
for the same input, widened by the margin (see
:func:`~tessera.verify.calibration.derive_embedding`), becomes ``min_cosine``. The join
challenge is the inputs with their reference vectors (float32 little-endian, base64), as a
provider's ``embeddings_b64`` carries them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path

from rich.progress import Progress

from tessera.errors import ConfigError
from tessera.models.calibrate import (
    CalibrationReport,
    CosinePair,
    Plan,
    progress_advance,
    progress_task,
    set_threads,
)
from tessera.provider.backends.sentence_embed import SentenceEmbeddingBackend, default_model_dir
from tessera.provider.jobs import encode_vector
from tessera.verify.calibration import derive_embedding
from tessera.verify.catalog import CatalogModel, Challenge


async def calibrate_embedding(
    model_dir: Path | None, name: str | None, plan: Plan, progress: Progress | None
) -> CalibrationReport:
    """Calibrate the sentence-transformers model in ``model_dir`` (None: the bundled MiniLM)."""
    inputs = list(plan.inputs)
    named = {"name": name} if name else {}
    backend = await asyncio.to_thread(SentenceEmbeddingBackend.load, model_dir, **named)
    half = await asyncio.to_thread(_bfloat16_copy, model_dir or default_model_dir(), backend)
    runs = [
        (f"embed/float32/threads={t}/batch={len(inputs)}", backend, t, True) for t in plan.threads
    ]
    runs += [
        ("embed/float32/batch=1", backend, plan.threads[0], False),
        (f"embed/bfloat16/batch={len(inputs)}", half, plan.threads[0], True),
        ("embed/bfloat16/batch=1", half, plan.threads[0], False),
    ]
    task = progress_task(progress, "embedding", len(runs))
    vectors: dict[str, list[list[float]]] = {}
    tokens = 0
    try:
        for run_name, model, threads, batched in runs:
            set_threads(threads)
            if batched:
                result = await model.embed(inputs)
                vectors[run_name], tokens = result.vectors, tokens + result.prompt_tokens
            else:
                vectors[run_name] = []
                for text in inputs:
                    result = await model.embed([text])
                    vectors[run_name] += result.vectors
                    tokens += result.prompt_tokens
            progress_advance(progress, task)
    finally:
        await backend.close()
        await half.close()
    pairs = tuple(
        CosinePair(a, b, len(inputs), min(_cosines(vectors[a], vectors[b])))
        for a, b in itertools.combinations(vectors, 2)
    )
    tolerances, calibration = derive_embedding(
        [p.worst for p in pairs], list(vectors), tokens, margin=plan.margin
    )
    reference = vectors[runs[0][0]]
    entry = CatalogModel(
        name=backend.info.name,
        weights_sha256=backend.info.weights_sha256,
        kind="embedding",
        tolerances=tolerances,
        challenges=[Challenge(inputs=inputs, vectors_b64=[encode_vector(v) for v in reference])],
        calibration=calibration,
    )
    return CalibrationReport(model=entry, cosines=pairs)


def _bfloat16_copy(model_dir: Path, like: SentenceEmbeddingBackend) -> SentenceEmbeddingBackend:
    """The same weights cast to bfloat16 (the backend loads float32 only), announced alike."""
    import torch
    from sentence_transformers import SentenceTransformer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load {model_dir} in bfloat16: {exc}") from exc
    return SentenceEmbeddingBackend(model.to(torch.bfloat16).eval(), like.info)


def _cosines(first: Sequence[Sequence[float]], second: Sequence[Sequence[float]]) -> list[float]:
    """Cosine of each pair of vectors, in float64."""
    import torch

    a = torch.tensor(first, dtype=torch.float64)
    b = torch.tensor(second, dtype=torch.float64)
    values: list[float] = torch.nn.functional.cosine_similarity(a, b, dim=-1).tolist()
    return values
