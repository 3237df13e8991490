"""Teacher-forced scoring (what an audit runs) on the real tiny model, float32 on this CPU.

Scoring what the model itself produced greedily must give rank 1 everywhere and the
logprobs the stream reported; a batch must score each request as if it were alone; tokens
the model would not pick must rank badly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from tessera.protocol.wire import ChatMessage, SamplingParams
from tessera.provider.backends.base import (
    BackendError,
    CancelToken,
    Delta,
    Finish,
    ModelInfo,
    Prompt,
    PromptTooLong,
    ScoreRequest,
    ScoreResult,
)
from tessera.provider.backends.openai_upstream import OpenAIUpstreamTextBackend
from tessera.provider.backends.transformers_text import TransformersTextBackend

pytestmark = pytest.mark.integration

FOX = [ChatMessage(role="user", content="Tell me a story about a fox.")]
ANT = [ChatMessage(role="user", content="What did the ant say?")]
TOL = 1e-4


@dataclass
class Generated:
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish: Finish


async def generate(backend: TransformersTextBackend, prompt: Prompt, max_tokens: int) -> Generated:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    ids: list[int] = []
    logprobs: list[float] = []
    text = ""
    finish: Finish | None = None
    async for event in backend.stream(prompt, params, CancelToken()):
        if isinstance(event, Delta):
            ids += [e.token_id for e in event.logprobs]
            logprobs += [e.logprob for e in event.logprobs]
            text += event.text
        else:
            finish = event
    assert finish is not None
    return Generated(ids, logprobs, text, finish)


def assert_same(a: ScoreResult, b: ScoreResult) -> None:
    assert a.prompt_tokens == b.prompt_tokens
    assert a.text == b.text
    assert len(a.tokens) == len(b.tokens)
    for x, y in zip((*a.tokens, a.end), (*b.tokens, b.end), strict=True):
        assert x.rank == y.rank
        assert x.logprob == pytest.approx(y.logprob, abs=TOL)
        assert x.top_logprob == pytest.approx(y.top_logprob, abs=TOL)


@pytest.mark.parametrize(
    ("prompt", "max_tokens"),
    [(FOX, 300), (ANT, 300), ("Once upon a time", 64), ([5, 17, 99, 250, 31], 64)],
    ids=["chat-fox", "chat-ant", "text", "token_ids"],
)
async def test_greedy_output_scores_rank_one(
    text_backend: TransformersTextBackend, prompt: Prompt, max_tokens: int
) -> None:
    made = await generate(text_backend, prompt, max_tokens)
    assert made.token_ids
    [scored] = await text_backend.score([ScoreRequest(prompt, made.token_ids)])
    assert scored.prompt_tokens == made.finish.prompt_tokens
    assert [t.rank for t in scored.tokens] == [1] * len(made.token_ids)
    for token, logprob in zip(scored.tokens, made.logprobs, strict=True):
        assert token.logprob == pytest.approx(logprob, abs=TOL)
        assert token.top_logprob == pytest.approx(token.logprob, abs=1e-6)
    assert scored.text == made.text
    if made.finish.eos:
        assert scored.end.rank == 1
        assert scored.end.logprob == pytest.approx(scored.end.top_logprob, abs=1e-6)
    else:
        assert scored.end.rank > 1  # greedy went on: something else was more likely


async def test_some_greedy_output_ends_with_eos(text_backend: TransformersTextBackend) -> None:
    """The chat prompts above must cover the end-of-sequence case, not only the length one."""
    made = await generate(text_backend, FOX, 300)
    assert made.finish.eos
    assert made.finish.completion_tokens == len(made.token_ids) + 1


async def test_a_batch_scores_each_request_as_if_alone(
    text_backend: TransformersTextBackend,
) -> None:
    fox = await generate(text_backend, FOX, 80)
    tale = await generate(text_backend, "Once upon a time", 12)
    requests = [
        ScoreRequest(FOX, fox.token_ids),
        ScoreRequest("Once upon a time", tale.token_ids),
        ScoreRequest([5, 17, 99, 250, 31, 8, 8, 40], [3, 1000, 77]),
        ScoreRequest(ANT, []),  # only the end is scored
    ]
    batched = await text_backend.score(requests)
    assert len(batched) == 4
    for request, result in zip(requests, batched, strict=True):
        [alone] = await text_backend.score([request])
        assert_same(result, alone)
        assert len(result.tokens) == len(request.token_ids)


async def test_random_tokens_rank_badly(text_backend: TransformersTextBackend) -> None:
    rng = random.Random(1234)
    vocab = 2000  # the tiny model's vocabulary is larger; these are all ordinary tokens
    tokens = [rng.randrange(100, vocab) for _ in range(64)]
    [scored] = await text_backend.score([ScoreRequest("Once upon a time", tokens)])
    ranks = sorted(t.rank for t in scored.tokens)
    assert sum(1 for r in ranks if r == 1) <= 2
    assert ranks[len(ranks) // 2] > 50  # the median random token is far from the top
    assert all(t.logprob <= t.top_logprob for t in scored.tokens)


async def test_scoring_refuses_what_does_not_fit(text_backend: TransformersTextBackend) -> None:
    context = text_backend.info.context_length
    # prompt + tokens may fill the context exactly (generation can get that far) ...
    [full] = await text_backend.score([ScoreRequest([5] * (context - 4), [6, 7, 8, 9])])
    assert len(full.tokens) == 4
    # ... but not one token more
    with pytest.raises(PromptTooLong):
        await text_backend.score([ScoreRequest([5] * (context - 4), [6, 7, 8, 9, 10])])
    with pytest.raises(BackendError) as err:
        await text_backend.score([ScoreRequest("The Fox", [3, 10**6])])
    assert err.value.code == "invalid_token_ids"
    with pytest.raises(BackendError) as err:
        await text_backend.score([ScoreRequest("The Fox", [3]), ScoreRequest([], [3])])
    assert err.value.code == "invalid_prompt"
    assert await text_backend.score([]) == []


async def test_an_upstream_backend_cannot_be_audited() -> None:
    info = ModelInfo(name="upstream", weights_sha256="ab" * 32, kind="text", context_length=64)
    # nothing listens there: scoring must refuse without asking the upstream anything
    backend = OpenAIUpstreamTextBackend(info, "http://127.0.0.1:9/v1", "upstream")
    try:
        with pytest.raises(BackendError) as err:
            await backend.score([ScoreRequest("The Fox", [1, 2])])
        assert err.value.code == "audit_unsupported"
    finally:
        await backend.close()
