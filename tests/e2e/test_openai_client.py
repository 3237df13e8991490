"""The official openai client against a real network, every endpoint, streaming included."""

from __future__ import annotations

import base64
import struct

import httpx
import pytest
from openai import OpenAI

from support.live_network import EMBED_MODEL, TEXT_MODEL, LiveNetwork

pytestmark = pytest.mark.e2e

STORY = [{"role": "user", "content": "Tell me a story about a fox."}]


def test_models_list_shows_both_models_with_network_fields(client: OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) >= {TEXT_MODEL, EMBED_MODEL}
    text = models[TEXT_MODEL].model_dump()
    assert text["providers"] == 2
    assert text["context_length"] >= 256
    assert text["pricing"]["input_per_mtok"] == {"min": 100, "max": 200}


def test_chat_completion_answers_with_usage_and_provider(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=TEXT_MODEL, messages=STORY, max_tokens=12, temperature=0
    )
    reply = raw.parse()
    assert raw.headers["x-request-id"].startswith("req_")
    assert len(raw.headers["x-tessera-provider"]) == 64
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert reply.usage.completion_tokens <= 12
    assert reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_max_tokens_and_max_completion_tokens_end_with_length(client: OpenAI) -> None:
    for kw in ({"max_tokens": 5}, {"max_completion_tokens": 5}):
        reply = client.chat.completions.create(
            model=TEXT_MODEL, messages=STORY, temperature=1.5, seed=3, **kw
        )
        if reply.choices[0].finish_reason == "length":
            assert reply.usage.completion_tokens == 5
        else:
            assert reply.usage.completion_tokens <= 5


def test_greedy_and_seeded_sampling_are_reproducible_across_providers(client: OpenAI) -> None:
    def text(**kw: object) -> str:
        return (
            client.chat.completions.create(model=TEXT_MODEL, messages=STORY, max_tokens=16, **kw)
            .choices[0]
            .message.content
            or ""
        )

    assert len({text(temperature=0) for _ in range(4)}) == 1
    assert len({text(temperature=0.9, seed=11) for _ in range(4)}) == 1
    seeded = {text(temperature=1.2, seed=s) for s in range(4)}
    assert len(seeded) > 1


def test_stop_sequence_is_never_returned(client: OpenAI) -> None:
    full = (
        client.chat.completions.create(
            model=TEXT_MODEL, messages=STORY, max_tokens=30, temperature=0
        )
        .choices[0]
        .message.content
    )
    assert full and " " in full.strip()
    stop = full.strip().split(" ")[1]
    reply = client.chat.completions.create(
        model=TEXT_MODEL, messages=STORY, max_tokens=30, temperature=0, stop=[stop]
    )
    assert stop not in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"


def test_logprobs_have_one_entry_per_token(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=TEXT_MODEL, messages=STORY, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-4)


def test_streamed_chat_matches_non_streamed_and_reports_usage(client: OpenAI) -> None:
    kwargs = {"model": TEXT_MODEL, "messages": STORY, "max_tokens": 20, "temperature": 0}
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_include_usage_has_no_usage_chunk(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model=TEXT_MODEL, messages=STORY, max_tokens=4, stream=True)
    )
    assert all(c.choices for c in chunks)


def test_text_completions_string_list_and_token_prompts(client: OpenAI) -> None:
    one = client.completions.create(model=TEXT_MODEL, prompt="The fox", max_tokens=6, temperature=0)
    assert one.choices[0].text and one.usage.completion_tokens <= 6
    many = client.completions.create(
        model=TEXT_MODEL, prompt=["The fox", "The ant"], max_tokens=4, temperature=0
    )
    assert [c.index for c in many.choices] == [0, 1]
    assert many.usage.prompt_tokens > one.usage.prompt_tokens
    tokens = client.completions.create(model=TEXT_MODEL, prompt=[5, 6, 7], max_tokens=3)
    assert tokens.usage.prompt_tokens == 3
    with_lp = client.completions.create(
        model=TEXT_MODEL, prompt="The fox", max_tokens=4, temperature=0, logprobs=2
    )
    lp = with_lp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == with_lp.usage.completion_tokens
    assert all(len(t) == 2 for t in lp.top_logprobs)


def test_streamed_text_completion(client: OpenAI) -> None:
    whole = client.completions.create(
        model=TEXT_MODEL, prompt="The ant", max_tokens=10, temperature=0
    )
    chunks = list(
        client.completions.create(
            model=TEXT_MODEL,
            prompt="The ant",
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_embeddings_float_base64_lists_and_tokens(
    client: OpenAI, live_network: LiveNetwork
) -> None:
    # The openai client asks for base64 by default and decodes it for us.
    default = client.embeddings.create(model=EMBED_MODEL, input=["a fox", "a wolf", "taxes"])
    vectors = [d.embedding for d in default.data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert default.usage.prompt_tokens > 3
    as_float = (
        client.embeddings.create(model=EMBED_MODEL, input="a fox", encoding_format="float")
        .data[0]
        .embedding
    )
    assert as_float == pytest.approx(vectors[0], abs=1e-6)

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert dot(vectors[0], vectors[1]) > dot(vectors[0], vectors[2])
    # Token ids of the model's own tokenizer ([CLS] a fox [SEP] for MiniLM).
    raw = client.embeddings.with_raw_response.create(
        model=EMBED_MODEL, input=[[101, 1037, 4419, 102]], encoding_format="base64"
    )
    b64 = raw.http_response.json()["data"][0]["embedding"]
    decoded = struct.unpack("<384f", base64.b64decode(b64))
    assert list(decoded) == pytest.approx(vectors[0], abs=1e-5)


def test_langchain_chat_openai_invoke_and_stream(live_network: LiveNetwork) -> None:
    from langchain_openai import ChatOpenAI

    with httpx.Client(timeout=60) as http_client:
        llm = ChatOpenAI(
            model=TEXT_MODEL,
            base_url=f"{live_network.base}/v1",
            api_key=live_network.api_key,
            max_tokens=8,
            temperature=0,
            max_retries=0,
            http_client=http_client,
        )
        answer = llm.invoke("Tell me a story about a fox.")
        assert answer.content
        streamed = "".join(str(part.content) for part in llm.stream("Tell me a story about a fox."))
    assert streamed == answer.content
