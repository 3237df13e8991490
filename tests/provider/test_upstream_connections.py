"""The upstream backends keep one pooled connection to their server across jobs.

A real local HTTP server (support/scripted_upstream.py) counts the TCP connections it
accepts while jobs run one after another through jobs.py and the upstream backends: a
connection that is read to the end of each body goes back to the backend's pool
(backends/http_client.py), so one is all it takes.
"""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from tessera.protocol.wire import (
    ChatMessage,
    Chunk,
    Done,
    Frame,
    Job,
    ModelOffer,
    SamplingParams,
)
from tessera.provider.backends import openai_upstream
from tessera.provider.backends.base import CancelToken, Delta, Finish, ModelInfo
from tessera.provider.backends.openai_upstream import (
    OpenAIUpstreamEmbeddingBackend,
    OpenAIUpstreamTextBackend,
)
from tessera.provider.jobs import ReceiptSigner, run_embedding_job, run_text_job

from support.scripted_upstream import DIMENSIONS, scripted_upstream

TEXT_INFO = ModelInfo("served", "a" * 64, "text", 2048)
EMBED_INFO = ModelInfo("emb", "b" * 64, "embedding", 256, embedding_dimensions=DIMENSIONS)
KEY = SigningKey(bytes(range(32)))
USER = [ChatMessage(role="user", content="Tell me about a fox.")]


def signer(info: ModelInfo) -> ReceiptSigner:
    offer = ModelOffer(
        name=info.name,
        weights_sha256=info.weights_sha256,
        kind=info.kind,
        context_length=info.context_length,
        embedding_dimensions=info.embedding_dimensions,
    )
    return ReceiptSigner(KEY, offer)


async def run(job: Job, backend: OpenAIUpstreamTextBackend) -> list[Frame]:
    frames: list[Frame] = []

    async def send(frame: Frame) -> None:
        frames.append(frame)

    await run_text_job(job, backend, send, CancelToken(), signer(backend.info))
    return frames


def text_job(number: int, **body: object) -> Job:
    params = SamplingParams(max_tokens=50, temperature=0.0)
    return Job.model_validate(
        {"job_id": f"req-{number}.0", "model": "served", "params": params} | body
    )


async def test_streamed_jobs_in_sequence_share_one_connection() -> None:
    async with scripted_upstream() as upstream:
        backend = OpenAIUpstreamTextBackend(TEXT_INFO, upstream.base_url, "up-model")
        client = backend._client  # one client, built with the backend, for all its jobs
        try:
            for number in range(6):
                if number % 2:
                    job = text_job(number, kind="completion", prompts=["Once upon a time"])
                else:
                    job = text_job(number, kind="chat", messages=USER)
                frames = await run(job, backend)
                assert isinstance(frames[-1], Done), frames[-1]
                text = "".join(f.text for f in frames if isinstance(f, Chunk))
                assert text == "The fox ran far away."
                assert backend._client is client
        finally:
            await backend.close()
        assert len(upstream.requests) == 6
        assert upstream.connections == 1


async def test_embedding_jobs_in_sequence_share_one_connection() -> None:
    async with scripted_upstream() as upstream:
        backend = OpenAIUpstreamEmbeddingBackend(EMBED_INFO, upstream.base_url, "up-emb")
        frames: list[Frame] = []

        async def send(frame: Frame) -> None:
            frames.append(frame)

        try:
            for number in range(4):
                job = Job.model_validate(
                    {
                        "job_id": f"req-{number}.0",
                        "model": "emb",
                        "kind": "embedding",
                        "inputs": ["a fox", [1, 2, 3]],  # two upstream calls per job
                    }
                )
                await run_embedding_job(job, backend, send, signer(EMBED_INFO))
        finally:
            await backend.close()
        assert [type(f) for f in frames] == [Done] * 4
        assert len(upstream.requests) == 8
        assert upstream.connections == 1


async def test_an_upstream_that_never_ends_its_body_after_done_still_finishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """[DONE] is the end of the answer: a body left open after it is given up on (that
    connection closes) instead of holding the job until the read timeout."""
    monkeypatch.setattr(openai_upstream, "DONE_DRAIN_TIMEOUT_S", 0.05)
    async with scripted_upstream(hang_after_done=True) as upstream:
        backend = OpenAIUpstreamTextBackend(TEXT_INFO, upstream.base_url, "up-model")
        try:
            for _ in range(2):
                params = SamplingParams(max_tokens=50, temperature=0.0)
                events = [e async for e in backend.stream(USER, params, CancelToken())]
                assert isinstance(events[-1], Finish)
                assert "".join(e.text for e in events if isinstance(e, Delta)) == (
                    "The fox ran far away."
                )
        finally:
            await backend.close()
        assert upstream.connections == 2
