"""Real backends for the provider tests: the tiny chat model (float32 on this CPU) and
all-MiniLM-L6-v2, each loaded once per session, computing on one torch thread (see
support/torch_threads.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.provider.backends.sentence_embed import SentenceEmbeddingBackend
from tessera.provider.backends.transformers_text import TransformersTextBackend

from support.torch_threads import one_torch_thread


@pytest.fixture(scope="module", autouse=True)
def torch_on_one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def text_backend(tiny_model_dir: Path) -> Iterator[TransformersTextBackend]:
    backend = TransformersTextBackend.load(tiny_model_dir, device="cpu", dtype="float32")
    yield backend
    asyncio.run(backend.close())


@pytest.fixture(scope="session")
def embed_backend() -> SentenceEmbeddingBackend:
    return SentenceEmbeddingBackend.load(device="cpu")
