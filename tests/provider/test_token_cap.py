"""No choice goes past ``max_tokens``, whatever the backend produces.

An upstream server that ignores ``max_tokens`` (support/scripted_upstream.py streams its
whole script every time) is cut at ``max_tokens``: the choice finishes with ``length``,
its usage and receipt count exactly ``max_tokens``, and no frame beyond the gateway's
budget (one chunk per token plus a finish per choice, and the Done) is sent. Through a
real in-process gateway and agent, streamed and non-streamed requests then succeed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from tessera.config import ProviderSettings
from tessera.protocol.receipts import OutputDigest, verify_receipt_signature
from tessera.protocol.wire import (
    ChatMessage,
    Chunk,
    Done,
    Frame,
    Hardware,
    Job,
    ModelOffer,
    SamplingParams,
)
from tessera.provider.agent import ProviderAgent, ServedModel
from tessera.provider.backends.base import (
    BackendError,
    CancelToken,
    Delta,
    Finish,
    ModelInfo,
    Prompt,
    ScoreRequest,
    ScoreResult,
    TextBackend,
    TokenLogprob,
)
from tessera.provider.backends.openai_upstream import OpenAIUpstreamTextBackend
from tessera.provider.jobs import ReceiptSigner, run_text_job

from support.scripted_peers import live_gateway, wait_providers
from support.scripted_upstream import scripted_upstream

INFO = ModelInfo("served", "a" * 64, "text", 2048)
OFFER = ModelOffer(
    name=INFO.name,
    weights_sha256=INFO.weights_sha256,
    kind=INFO.kind,
    context_length=INFO.context_length,
)
KEY = SigningKey(bytes(range(32)))
USER = [ChatMessage(role="user", content="Tell me about a fox.")]


def job(max_tokens: int, **body: Any) -> Job:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return Job.model_validate({"job_id": "req-1.0", "model": INFO.name, "params": params} | body)


async def run(job: Job, backend: TextBackend) -> tuple[list[Chunk], Done]:
    frames: list[Frame] = []

    async def send(frame: Frame) -> None:
        frames.append(frame)

    await run_text_job(job, backend, send, CancelToken(), ReceiptSigner(KEY, OFFER))
    done = frames[-1]
    assert isinstance(done, Done), done
    chunks = [f for f in frames[:-1] if isinstance(f, Chunk)]
    assert len(chunks) == len(frames) - 1
    assert job.params is not None
    choices = len(job.prompts) if job.prompts is not None else 1
    assert len(frames) <= choices * (job.params.max_tokens + 1) + 1  # the gateway's budget
    assert done.receipt is not None and done.receipt_signature is not None
    verify_receipt_signature(done.receipt, done.receipt_signature)
    digest = OutputDigest()
    for chunk in chunks:
        digest.add(chunk)
    assert done.receipt.output_sha256 == digest.sha256()
    assert done.receipt.completion_tokens == done.usage.completion_tokens
    assert done.usage.completion_tokens == digest.completion_tokens
    return chunks, done


@pytest.mark.parametrize("kind", ["chat", "completion"])
async def test_an_upstream_ignoring_max_tokens_is_cut_at_max_tokens(kind: str) -> None:
    async with scripted_upstream() as upstream:
        backend = OpenAIUpstreamTextBackend(INFO, upstream.base_url, "up-model")
        try:
            body = {"messages": USER} if kind == "chat" else {"prompts": ["Once upon a time"]}
            chunks, done = await run(job(3, kind=kind, **body), backend)
        finally:
            await backend.close()
        assert upstream.requests[0][1]["max_tokens"] == 3  # asked, and ignored
    assert "".join(c.text for c in chunks) == "The fox ran"
    assert [c.token_ids for c in chunks[:-1]] == [[100], [101], [102]]
    assert (chunks[-1].finish_reason, chunks[-1].eos) == ("length", False)
    assert done.usage.completion_tokens == 3


async def test_each_choice_is_cut_on_its_own() -> None:
    async with scripted_upstream() as upstream:
        backend = OpenAIUpstreamTextBackend(INFO, upstream.base_url, "up-model")
        try:
            prompts = ["Once upon a time", "A fox"]
            chunks, done = await run(job(2, kind="completion", prompts=prompts), backend)
        finally:
            await backend.close()
    for index in (0, 1):
        mine = [c for c in chunks if c.index == index]
        assert "".join(c.text for c in mine) == "The fox"
        assert mine[-1].finish_reason == "length"
    assert done.usage.completion_tokens == 4


async def test_an_upstream_answering_within_max_tokens_is_untouched() -> None:
    async with scripted_upstream(finish_reason="length") as upstream:
        backend = OpenAIUpstreamTextBackend(INFO, upstream.base_url, "up-model")
        try:
            chunks, done = await run(job(6, kind="chat", messages=USER), backend)
        finally:
            await backend.close()
    assert "".join(c.text for c in chunks) == "The fox ran far away."
    assert chunks[-1].finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (7, 6)


def entry(token: str, token_id: int) -> TokenLogprob:
    return TokenLogprob(token=token, token_id=token_id, logprob=-0.5)


class ScriptedBackend:
    """A text backend that yields its script whatever the params say."""

    info = INFO

    def __init__(self, events: Sequence[Delta | Finish]) -> None:
        self.events = events
        self.closed = False

    async def stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: CancelToken,
        continue_from: Sequence[int] = (),
    ) -> AsyncIterator[Delta | Finish]:
        try:
            for event in self.events:
                yield event
        finally:
            self.closed = True

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        raise BackendError("no", "audit_unsupported")

    async def close(self) -> None:
        pass


async def test_a_delta_of_several_tokens_is_split_at_max_tokens() -> None:
    three = (entry("The", 1), entry(" fox", 2), entry(" ran", 3))
    backend = ScriptedBackend(
        [Delta("Once", (entry("Once", 9),)), Delta("The fox ran", three), Finish("length", 4, 4)]
    )
    chunks, done = await run(job(3, kind="chat", messages=USER), backend)
    assert [c.token_ids for c in chunks] == [[9], [1, 2], []]
    assert "".join(c.text for c in chunks) == "OnceThe fox"
    assert chunks[-1].finish_reason == "length"
    assert done.usage.completion_tokens == 3
    assert backend.closed  # the backend's stream was closed at once, not left to run


async def test_a_delta_whose_text_cannot_be_split_keeps_only_its_tokens() -> None:
    pair = (entry("token_id:5", 5), entry("token_id:6", 6))
    backend = ScriptedBackend([Delta("é", pair), Finish("stop", 4, 2)])
    chunks, done = await run(job(1, kind="chat", messages=USER), backend)
    assert [(c.text, c.token_ids) for c in chunks] == [("", [5]), ("", [])]
    assert done.usage.completion_tokens == 1


@pytest.mark.parametrize(
    ("max_tokens", "finish"), [(6, ("length", False, 6)), (7, ("stop", True, 7))]
)
async def test_an_end_of_sequence_past_max_tokens_is_a_length_finish(
    max_tokens: int, finish: tuple[str, bool, int]
) -> None:
    """The upstream lists six tokens, then counts a seventh: its end of sequence. Within
    max_tokens 7 that is a stop; with max_tokens 6 the upstream went past it."""
    async with scripted_upstream(eos=True) as upstream:
        backend = OpenAIUpstreamTextBackend(INFO, upstream.base_url, "up-model")
        try:
            chunks, done = await run(job(max_tokens, kind="chat", messages=USER), backend)
        finally:
            await backend.close()
    assert "".join(c.text for c in chunks) == "The fox ran far away."
    last = chunks[-1]
    assert (last.finish_reason, last.eos, done.usage.completion_tokens) == finish


@pytest.mark.parametrize("stream", [False, True], ids=["non_streamed", "streamed"])
async def test_requests_through_an_overrunning_upstream_succeed(
    tmp_path: Path, stream: bool
) -> None:
    """The gateway cancels a job that sends more frames than max_tokens allows: the agent
    must never give it a reason to."""
    async with scripted_upstream() as upstream, live_gateway(tmp_path) as gw:
        backend = OpenAIUpstreamTextBackend(INFO, upstream.base_url, "up-model")
        settings = ProviderSettings(gateway_urls=[gw.base])
        hardware = Hardware(cpu="test", cpu_cores=1, ram_bytes=1)
        agent = ProviderAgent(settings, KEY, [ServedModel(OFFER, backend)], hardware)
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        try:
            await wait_providers(gw, 1, timeout_s=30)
            body = {"model": INFO.name, "messages": [m.model_dump() for m in USER]}
            async with gw.client() as client:
                if stream:
                    text, reasons = await _streamed(client, {**body, "max_tokens": 3})
                else:
                    response = await client.post(
                        "/v1/chat/completions", json={**body, "max_tokens": 3}
                    )
                    assert response.status_code == 200, response.text
                    answer = response.json()
                    text = answer["choices"][0]["message"]["content"]
                    reasons = [answer["choices"][0]["finish_reason"]]
                    assert answer["usage"]["completion_tokens"] == 3
            assert text == "The fox ran"
            assert reasons[-1] == "length"
        finally:
            stop.set()
            try:
                await asyncio.wait_for(running, 30)
            finally:
                running.cancel()
                await backend.close()


async def _streamed(client: Any, body: dict[str, Any]) -> tuple[str, list[str]]:
    import json

    text, reasons = "", []
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            for choice in event["choices"]:
                text += choice["delta"].get("content") or ""
                if choice.get("finish_reason"):
                    reasons.append(choice["finish_reason"])
    return text, reasons
