"""Receipts from real runs: jobs.py on the tiny chat model and on all-MiniLM-L6-v2.

Every Done carries a receipt signed by the provider key that commits to exactly the chunks
that were sent; whoever saw the chunks can rebuild its output hash and its token counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from tessera.protocol.receipts import (
    OutputDigest,
    embeddings_sha256,
    prompt_sha256,
    verify_receipt_signature,
)
from tessera.protocol.signing import SignatureInvalid, public_key_hex
from tessera.protocol.wire import (
    ChatMessage,
    Chunk,
    Done,
    Frame,
    Job,
    JobError,
    ModelOffer,
    SamplingParams,
)
from tessera.provider.backends.base import CancelToken, ModelInfo, TextBackend
from tessera.provider.backends.openai_upstream import OpenAIUpstreamTextBackend
from tessera.provider.backends.sentence_embed import SentenceEmbeddingBackend
from tessera.provider.backends.transformers_text import TransformersTextBackend
from tessera.provider.jobs import ReceiptSigner, run_embedding_job, run_text_job

from support.upstream_process import Upstream, running_upstream

pytestmark = pytest.mark.integration

FOX = [ChatMessage(role="user", content="Tell me a story about a fox.")]
KEY = SigningKey(bytes(range(32)))


def offer_for(info: ModelInfo) -> ModelOffer:
    return ModelOffer(
        name=info.name,
        weights_sha256=info.weights_sha256,
        kind=info.kind,
        context_length=info.context_length,
        embedding_dimensions=info.embedding_dimensions,
        price_input_per_mtok=1_500_000_000,
        price_output_per_mtok=4_000_000_000,
    )


@pytest.fixture(scope="module")
def upstream(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """tests/support/openai_server.py (our stand-in for vLLM) serving the tiny model."""
    with running_upstream(
        tiny_model_dir, tmp_path_factory.mktemp("upstream"), "tessera-tiny", embeddings=False
    ) as up:
        yield up


def text_job(backend: TextBackend, **kw: object) -> Job:
    params = kw.pop("params", None) or SamplingParams(max_tokens=120, temperature=0.0)
    body: dict[str, object] = {"job_id": "req-1.0", "model": backend.info.name, "params": params}
    return Job.model_validate(body | kw)


async def run_text(backend: TextBackend, job: Job) -> tuple[list[Chunk], Done, ReceiptSigner]:
    frames: list[Frame] = []

    async def send(frame: Frame) -> None:
        frames.append(frame)

    signer = ReceiptSigner(KEY, offer_for(backend.info))
    await run_text_job(job, backend, send, CancelToken(), signer)
    assert not [f for f in frames if isinstance(f, JobError)], frames
    done = frames[-1]
    assert isinstance(done, Done)
    chunks = [f for f in frames[:-1] if isinstance(f, Chunk)]
    assert len(chunks) == len(frames) - 1
    return chunks, done, signer


def check_receipt(
    job: Job, chunks: list[Chunk], done: Done, signer: ReceiptSigner, early_prompt: bool = True
) -> OutputDigest:
    """Everything a receipt must say about a text job, rebuilt from the chunks alone.

    ``early_prompt``: the backend counts the prompt on its first chunk (an upstream cannot).
    """
    receipt = done.receipt
    assert receipt is not None and done.receipt_signature is not None
    verify_receipt_signature(receipt, done.receipt_signature)
    digest = OutputDigest()
    for chunk in chunks:
        digest.add(chunk)
    assert not digest.tokens_mismatched
    assert receipt.output_sha256 == digest.sha256()
    assert receipt.completion_tokens == done.usage.completion_tokens == digest.completion_tokens
    assert receipt.prompt_tokens == done.usage.prompt_tokens
    if early_prompt:
        assert receipt.prompt_tokens == sum(c.prompt_tokens or 0 for c in chunks)
    assert receipt.prompt_sha256 == prompt_sha256(job)
    assert receipt.request_id == "req-1"
    assert receipt.job_id == job.job_id
    assert receipt.provider_id == public_key_hex(KEY)
    assert receipt.model == job.model
    assert receipt.kind == job.kind
    assert receipt.weights_sha256 == signer.offer.weights_sha256
    assert receipt.price_input_per_mtok == signer.offer.price_input_per_mtok
    assert receipt.price_output_per_mtok == signer.offer.price_output_per_mtok
    assert 0 < receipt.started_at_ms <= receipt.finished_at_ms
    for choice in digest.ordered():
        assert choice.finish_reason is not None
        assert all(-9999.0 <= lp <= 0.0 for lp in choice.token_logprobs)
    return digest


async def test_chat_receipt_commits_to_the_chunks(text_backend: TransformersTextBackend) -> None:
    params = SamplingParams(max_tokens=300, temperature=0.0)
    job = text_job(text_backend, kind="chat", messages=FOX, params=params)
    chunks, done, signer = await run_text(text_backend, job)
    digest = check_receipt(job, chunks, done, signer)
    [choice] = digest.ordered()
    assert choice.token_ids and choice.text
    # logprobs were not asked for: the ids and raw logprobs ride along, the client list not
    assert all(not c.logprobs for c in chunks)
    # the tiny model ends this chat by itself; its end-of-sequence token is counted once
    assert choice.eos and choice.finish_reason == "stop"
    assert done.usage.completion_tokens == len(choice.token_ids) + 1

    assert done.receipt is not None and done.receipt_signature is not None
    forged = done.receipt.model_copy(update={"completion_tokens": 1})
    with pytest.raises(SignatureInvalid):
        verify_receipt_signature(forged, done.receipt_signature)


async def test_completion_receipt_covers_every_prompt(
    text_backend: TransformersTextBackend,
) -> None:
    params = SamplingParams(max_tokens=25, temperature=0.0, logprobs=True, top_logprobs=2)
    prompts: list[str | list[int]] = ["The Fox", "Once upon a time", [5, 17, 99, 250, 31]]
    job = text_job(text_backend, kind="completion", prompts=prompts, params=params)
    chunks, done, signer = await run_text(text_backend, job)
    digest = check_receipt(job, chunks, done, signer)
    assert [c.index for c in digest.ordered()] == [0, 1, 2]
    for chunk in chunks:
        assert [e.token_id for e in chunk.logprobs] == chunk.token_ids
        assert [e.logprob for e in chunk.logprobs] == chunk.token_logprobs
        assert all(len(e.top_logprobs) == 2 for e in chunk.logprobs)
    for choice in digest.ordered():
        assert choice.completion_tokens <= 25
        if choice.finish_reason == "length":
            assert not choice.eos and len(choice.token_ids) == 25


async def test_stop_string_receipt_counts_the_cut_tokens(
    text_backend: TransformersTextBackend,
) -> None:
    full_chunks, _, _ = await run_text(
        text_backend, text_job(text_backend, kind="chat", messages=FOX)
    )
    full_text = "".join(c.text for c in full_chunks)
    words = full_text.split()
    stop = words[len(words) // 2]
    params = SamplingParams(max_tokens=120, temperature=0.0, stop=[stop])
    job = text_job(text_backend, kind="chat", messages=FOX, params=params)
    chunks, done, signer = await run_text(text_backend, job)
    digest = check_receipt(job, chunks, done, signer)
    [choice] = digest.ordered()
    assert choice.finish_reason == "stop" and not choice.eos
    assert stop not in choice.text
    assert full_text.startswith(choice.text)
    # the tokens that spelled the stop string were sampled, so they are listed and paid for
    assert 0 < done.usage.completion_tokens == len(choice.token_ids)


async def test_embedding_receipt(embed_backend: SentenceEmbeddingBackend) -> None:
    frames: list[Frame] = []

    async def send(frame: Frame) -> None:
        frames.append(frame)

    job = Job(
        job_id="req-1.0",
        model=embed_backend.info.name,
        kind="embedding",
        inputs=["The cat sat on the mat.", [101, 7592, 2088, 102]],
    )
    signer = ReceiptSigner(KEY, offer_for(embed_backend.info))
    await run_embedding_job(job, embed_backend, send, signer)
    [done] = frames
    assert isinstance(done, Done) and done.embeddings_b64 is not None
    receipt = done.receipt
    assert receipt is not None and done.receipt_signature is not None
    verify_receipt_signature(receipt, done.receipt_signature)
    assert receipt.output_sha256 == embeddings_sha256(done.embeddings_b64)
    assert receipt.prompt_tokens == done.usage.prompt_tokens == 9 + 4
    assert receipt.completion_tokens == done.usage.completion_tokens == 0
    assert receipt.kind == "embedding"
    assert receipt.prompt_sha256 == prompt_sha256(job)
    assert receipt.weights_sha256 == embed_backend.info.weights_sha256


async def test_upstream_receipts_agree_with_their_chunks(
    upstream: Upstream, text_backend: TransformersTextBackend
) -> None:
    """Through an OpenAI-compatible upstream the same receipts hold, end of sequence included."""
    relay = OpenAIUpstreamTextBackend(text_backend.info, upstream.base_url, "tessera-tiny")
    try:
        params = SamplingParams(max_tokens=300, temperature=0.0)
        job = text_job(relay, kind="chat", messages=FOX, params=params)
        chunks, done, signer = await run_text(relay, job)
        [choice] = check_receipt(job, chunks, done, signer, False).ordered()
        direct, _, _ = await run_text(text_backend, job)
        assert chunks[-1].eos and choice.eos
        assert choice.token_ids == [t for c in direct for t in c.token_ids]
        assert done.usage.completion_tokens == len(choice.token_ids) + 1

        stopped = SamplingParams(max_tokens=300, temperature=0.0, stop=[" the"])
        job = text_job(relay, kind="completion", prompts=["Once upon a time"], params=stopped)
        chunks, done, signer = await run_text(relay, job)
        [choice] = check_receipt(job, chunks, done, signer, False).ordered()
        assert not choice.eos and " the" not in choice.text
    finally:
        await relay.close()
