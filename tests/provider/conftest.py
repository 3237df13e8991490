"""Real backends for the provider tests: the tiny chat model (float32 on this CPU) and
all-MiniLM-L6-v2, each loaded once per session.

Torch computes on one thread in these tests, as every provider process the tests start
does (``--threads 1``): its default, a thread per core, spins on a shared two-core
machine, and the same tests then take several times as long (two minutes against twenty
seconds for test_scoring.py and test_auditing.py with other work on the machine).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tessera.provider.backends.sentence_embed import SentenceEmbeddingBackend
from tessera.provider.backends.transformers_text import TransformersTextBackend


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One torch CPU thread for this module's tests; the process's setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def text_backend(tiny_model_dir: Path) -> Iterator[TransformersTextBackend]:
    backend = TransformersTextBackend.load(tiny_model_dir, device="cpu", dtype="float32")
    yield backend
    asyncio.run(backend.close())


@pytest.fixture(scope="session")
def embed_backend() -> SentenceEmbeddingBackend:
    return SentenceEmbeddingBackend.load(device="cpu")
