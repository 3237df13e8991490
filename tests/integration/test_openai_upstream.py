"""The upstream backends against a real OpenAI-compatible server process.

tests/support/openai_server.py runs as a subprocess on a free port, serving the tiny chat
model and all-MiniLM-L6-v2; it stands in for vLLM. The same models are loaded directly
in this process, so the upstream path must reproduce them exactly (greedy decoding).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tessera.protocol.wire import ChatMessage, SamplingParams
from tessera.provider.backends.base import (
    BackendError,
    CancelToken,
    Delta,
    Finish,
    Prompt,
    PromptTooLong,
    TextBackend,
)
from tessera.provider.backends.openai_upstream import (
    OpenAIUpstreamEmbeddingBackend,
    OpenAIUpstreamTextBackend,
)
from tessera.provider.backends.sentence_embed import SentenceEmbeddingBackend
from tessera.provider.backends.transformers_text import TransformersTextBackend

from support.upstream_process import Upstream, running_upstream

pytestmark = pytest.mark.integration

TEXT_NAME = "tiny"
EMBED_NAME = "all-MiniLM-L6-v2"
CHAT = [
    ChatMessage(role="system", content="You are a helpful assistant."),
    ChatMessage(role="user", content="Tell me a short fable about a fox."),
]


@pytest.fixture(scope="module")
def upstream(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """The server subprocess; always terminated in teardown."""
    with running_upstream(
        tiny_model_dir, tmp_path_factory.mktemp("openai_server"), TEXT_NAME
    ) as up:
        yield up


@pytest.fixture(scope="module")
def direct_text(tiny_model_dir: Path) -> TransformersTextBackend:
    return TransformersTextBackend.load(tiny_model_dir, name=TEXT_NAME, device="cpu")


@pytest.fixture(scope="module")
def direct_embed() -> SentenceEmbeddingBackend:
    return SentenceEmbeddingBackend.load(device="cpu")


@pytest.fixture
async def text(upstream: Upstream, direct_text: TransformersTextBackend) -> AsyncIterator[Any]:
    backend = OpenAIUpstreamTextBackend(direct_text.info, upstream.base_url, TEXT_NAME)
    yield backend
    await backend.close()


@pytest.fixture
async def embed(upstream: Upstream, direct_embed: SentenceEmbeddingBackend) -> AsyncIterator[Any]:
    backend = OpenAIUpstreamEmbeddingBackend(direct_embed.info, upstream.base_url, EMBED_NAME)
    yield backend
    await backend.close()


def greedy(max_tokens: int = 40, **kw: Any) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)


async def run(backend: TextBackend, prompt: Prompt, params: SamplingParams) -> list[Any]:
    return [e async for e in backend.stream(prompt, params, CancelToken())]


def joined(events: list[Any]) -> str:
    return "".join(e.text for e in events if isinstance(e, Delta))


def entries(events: list[Any]) -> list[Any]:
    return [lp for e in events if isinstance(e, Delta) for lp in e.logprobs]


def finish(events: list[Any]) -> Finish:
    assert isinstance(events[-1], Finish)
    assert sum(isinstance(e, Finish) for e in events) == 1
    return events[-1]


# ---------------------------------------------------------------- text


@pytest.mark.parametrize(
    "prompt",
    [CHAT, "Once upon a time, a fox", [5, 17, 99, 250, 31]],
    ids=["chat", "text", "token_ids"],
)
async def test_greedy_stream_matches_the_direct_backend(
    text: OpenAIUpstreamTextBackend, direct_text: TransformersTextBackend, prompt: Prompt
) -> None:
    want = await run(direct_text, prompt, greedy())
    got = await run(text, prompt, greedy())
    assert joined(got) == joined(want)
    assert joined(got)  # the tiny model says something
    assert finish(got) == finish(want)  # reason and both usage counts


async def test_length_finish_and_usage(text: OpenAIUpstreamTextBackend) -> None:
    events = await run(text, "Once upon a time", greedy(max_tokens=5))
    end = finish(events)
    assert end.reason == "length"
    assert end.completion_tokens == 5
    assert end.prompt_tokens > 0


async def test_stop_sequences_cut_like_the_direct_backend(
    text: OpenAIUpstreamTextBackend, direct_text: TransformersTextBackend
) -> None:
    full = joined(await run(direct_text, CHAT, greedy()))
    words = full.split()
    assert len(words) >= 4, full
    stop = words[3]
    want = await run(direct_text, CHAT, greedy(stop=[stop]))
    got = await run(text, CHAT, greedy(stop=[stop]))
    assert joined(got) == joined(want) == full[: full.index(stop)]
    assert finish(got).reason == "stop"


async def test_chat_logprobs_match_with_token_ids(
    text: OpenAIUpstreamTextBackend, direct_text: TransformersTextBackend
) -> None:
    params = greedy(max_tokens=12, logprobs=True, top_logprobs=3)
    want = entries(await run(direct_text, CHAT, params))
    got = entries(await run(text, CHAT, params))
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert (g.token, g.token_id) == (w.token, w.token_id)
        assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
        assert [t.token for t in g.top] == [t.token for t in w.top]
        assert len(g.top) == 3


async def test_completion_logprobs_match_without_token_ids(
    text: OpenAIUpstreamTextBackend, direct_text: TransformersTextBackend
) -> None:
    params = greedy(max_tokens=12, logprobs=True, top_logprobs=2)
    prompt = "The fox and the grapes"
    want = entries(await run(direct_text, prompt, params))
    got = entries(await run(text, prompt, params))
    assert [g.token for g in got] == [w.token for w in want]
    assert [g.logprob for g in got] == pytest.approx([w.logprob for w in want], abs=1e-4)
    assert all(g.token_id == 0 for g in got)  # the completions shape carries no ids


async def _stream_counts(upstream: Upstream) -> dict[str, int]:
    async with httpx.AsyncClient() as client:
        response = await client.get(upstream.base_url.removesuffix("/v1") + "/debug/streams")
        return dict(response.json())


async def _wait_for_abandoned(upstream: Upstream, before: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        abandoned = (await _stream_counts(upstream))["abandoned"]
        if abandoned > before:
            return abandoned
        await asyncio.sleep(0.1)
    return before


async def test_cancel_closes_the_upstream_stream(
    text: OpenAIUpstreamTextBackend, upstream: Upstream
) -> None:
    # The tiny model is retrained on each machine, so no one seed is sure to keep it talking
    # past two tokens: take the first seed whose stream is still running after two events.
    for seed in range(20):
        before = (await _stream_counts(upstream))["abandoned"]
        cancel = CancelToken()
        seen: list[Delta | Finish] = []
        params = SamplingParams(max_tokens=900, temperature=2.0, seed=seed)
        async for event in text.stream("The fox said", params, cancel):
            seen.append(event)
            if len(seen) == 2 and not isinstance(event, Finish):
                cancel.cancel()
        if not any(isinstance(e, Finish) for e in seen):
            break
    assert len(seen) == 2
    assert not any(isinstance(e, Finish) for e in seen)
    assert await _wait_for_abandoned(upstream, before) == before + 1


async def test_closing_the_generator_closes_the_upstream_stream(
    text: OpenAIUpstreamTextBackend, upstream: Upstream
) -> None:
    before = (await _stream_counts(upstream))["abandoned"]
    params = SamplingParams(max_tokens=900, temperature=2.0, seed=11)
    events = text.stream("The lion slept", params, CancelToken())
    first = await anext(events)  # type: ignore[call-overload]
    assert isinstance(first, Delta)
    await events.aclose()  # type: ignore[attr-defined]
    assert await _wait_for_abandoned(upstream, before) == before + 1


async def test_two_streams_at_once(
    text: OpenAIUpstreamTextBackend, direct_text: TransformersTextBackend
) -> None:
    a, b = await asyncio.gather(run(text, CHAT, greedy(20)), run(text, "A crow", greedy(20)))
    assert joined(a) == joined(await run(direct_text, CHAT, greedy(20)))
    assert joined(b) == joined(await run(direct_text, "A crow", greedy(20)))


async def test_over_long_prompt_is_prompt_too_long(
    text: OpenAIUpstreamTextBackend, direct_text: TransformersTextBackend
) -> None:
    too_long = [7] * (direct_text.info.context_length + 10)
    with pytest.raises(PromptTooLong):
        await run(text, too_long, greedy())
    with pytest.raises(PromptTooLong):
        await run(text, [ChatMessage(role="user", content="fox " * 3000)], greedy())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_upstream_is_upstream_unavailable(
    direct_text: TransformersTextBackend, direct_embed: SentenceEmbeddingBackend
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    text = OpenAIUpstreamTextBackend(direct_text.info, url, TEXT_NAME)
    embed = OpenAIUpstreamEmbeddingBackend(direct_embed.info, url, EMBED_NAME)
    try:
        with pytest.raises(BackendError) as caught:
            await run(text, CHAT, greedy())
        assert caught.value.code == "upstream_unavailable"
        with pytest.raises(BackendError) as caught:
            await embed.embed(["hello"])
        assert caught.value.code == "upstream_unavailable"
    finally:
        await text.close()
        await embed.close()


async def test_unknown_upstream_model_is_upstream_rejected(
    upstream: Upstream, direct_text: TransformersTextBackend
) -> None:
    backend = OpenAIUpstreamTextBackend(direct_text.info, upstream.base_url, "no-such-model")
    try:
        with pytest.raises(BackendError, match="no-such-model") as caught:
            await run(backend, CHAT, greedy())
        assert caught.value.code == "upstream_rejected"
    finally:
        await backend.close()


# ---------------------------------------------------------------- embeddings


async def test_embeddings_equal_the_direct_backend(
    embed: OpenAIUpstreamEmbeddingBackend, direct_embed: SentenceEmbeddingBackend
) -> None:
    ids = direct_embed._tokenizer("a fox in the henhouse")["input_ids"]
    inputs: list[str | list[int]] = ["hello world", ids, "", "The crow and the pitcher."]
    want = await direct_embed.embed(inputs)
    got = await embed.embed(inputs)
    assert got.prompt_tokens == want.prompt_tokens
    for g, w in zip(got.vectors, want.vectors, strict=True):
        assert g == pytest.approx(w, abs=1e-6)


async def test_over_long_embedding_input_is_prompt_too_long(
    embed: OpenAIUpstreamEmbeddingBackend,
) -> None:
    with pytest.raises(PromptTooLong, match="256"):
        await embed.embed(["word " * 400])


# ---------------------------------------------------------------- the official client


async def test_official_openai_client_against_the_server(
    upstream: Upstream, direct_text: TransformersTextBackend, direct_embed: SentenceEmbeddingBackend
) -> None:
    client = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="unused", max_retries=0)
    try:
        assert {m.id async for m in client.models.list()} == {TEXT_NAME, EMBED_NAME}
        messages: Any = [m.model_dump() for m in CHAT]
        want = await run(direct_text, CHAT, greedy(30))

        whole = await client.chat.completions.create(
            model=TEXT_NAME, messages=messages, max_tokens=30, temperature=0
        )
        assert whole.choices[0].message.content == joined(want)
        assert whole.usage is not None
        assert whole.usage.completion_tokens == finish(want).completion_tokens
        assert whole.usage.prompt_tokens == finish(want).prompt_tokens

        stream = await client.chat.completions.create(
            model=TEXT_NAME,
            messages=messages,
            max_tokens=30,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
            top_logprobs=2,
        )
        parts, usage, n_logprobs = [], None, 0
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
                if choice.logprobs and choice.logprobs.content:
                    n_logprobs += len(choice.logprobs.content)
        assert "".join(parts) == joined(want)
        assert usage is not None and usage.total_tokens == sum(
            (finish(want).prompt_tokens, finish(want).completion_tokens)
        )
        with_logprobs = await run(direct_text, CHAT, greedy(30, logprobs=True, top_logprobs=2))
        assert n_logprobs == len(entries(with_logprobs)) > 0

        completion = await client.completions.create(
            model=TEXT_NAME, prompt="Once upon a time", max_tokens=10, temperature=0, logprobs=2
        )
        direct = await run(
            direct_text, "Once upon a time", greedy(10, logprobs=True, top_logprobs=2)
        )
        assert completion.choices[0].text == joined(direct)
        assert completion.choices[0].logprobs is not None
        assert completion.choices[0].logprobs.tokens == [lp.token for lp in entries(direct)]

        # The client asks for base64 vectors by default and decodes them itself.
        vectors = await client.embeddings.create(model=EMBED_NAME, input=["hello world", "fox"])
        direct_vectors = (await direct_embed.embed(["hello world", "fox"])).vectors
        for item, w in zip(vectors.data, direct_vectors, strict=True):
            assert item.embedding == pytest.approx(w, abs=1e-6)

        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model=TEXT_NAME, messages=[{"role": "user", "content": "fox " * 3000}]
            )
        assert caught.value.code == "context_length_exceeded"
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=messages)
    finally:
        await client.close()
