"""Whose fault a refused job is (market/refusals.py): checks the gateway can make itself."""

from __future__ import annotations

import pytest

from tessera.market.refusals import (
    blames_client,
    longest_prompt_bound,
    out_of_vocabulary,
    refusal_disproved,
)
from tessera.protocol.wire import ChatMessage, Job, SamplingParams

from factories import offer

PARAMS = SamplingParams(max_tokens=4)


def completion(*prompts: str | list[int]) -> Job:
    return Job(job_id="j", model="m", kind="completion", prompts=list(prompts), params=PARAMS)


def test_client_codes() -> None:
    assert blames_client("invalid_prompt") and blames_client("context_length_exceeded")
    assert not blames_client("busy") and not blames_client("backend_error")


def test_out_of_vocabulary_finds_the_first_bad_sequence() -> None:
    assert out_of_vocabulary(completion([1, 2], "text", [3, 100]), 100) == (2, 100)
    assert out_of_vocabulary(completion([1, 99]), 100) is None
    assert out_of_vocabulary(completion([10**6]), None) is None  # nobody announced one
    embed = Job(job_id="j", model="m", kind="embedding", inputs=[[5, 7]])
    assert out_of_vocabulary(embed, 6) == (0, 7)


@pytest.mark.parametrize("code", ["invalid_prompt", "invalid_token_ids"])
def test_a_vocabulary_refusal_of_ids_below_the_vocabulary_is_disproved(code: str) -> None:
    own = offer(vocab_size=100)
    assert refusal_disproved(completion([1, 99], "text"), code, own, None) is not None
    assert refusal_disproved(completion([1, 100]), code, own, None) is None
    # Without its own announcement, the model's majority vocabulary stands for it.
    assert refusal_disproved(completion([5]), code, offer(), offer(vocab_size=9)) is not None
    assert refusal_disproved(completion([5]), code, offer(), None) is None
    chat = Job(
        job_id="j",
        model="m",
        kind="chat",
        params=PARAMS,
        messages=[ChatMessage(role="user", content="hi")],
    )
    assert refusal_disproved(chat, code, own, None) is None  # the template may refuse it


def test_a_context_refusal_is_disproved_only_below_the_bound() -> None:
    own = offer().model_copy(update={"context_length": 64})
    short = completion("a" * 40)  # at most 40 + 16 = 56 tokens
    assert longest_prompt_bound(short) == 56
    assert refusal_disproved(short, "context_length_exceeded", own, None) is not None
    longer = completion("a" * 48)  # 64: may really fill the context
    assert refusal_disproved(longer, "context_length_exceeded", own, None) is None
    ids = completion(list(range(47)))
    assert refusal_disproved(ids, "context_length_exceeded", own, None) is not None


def test_invalid_request_on_a_complete_job_is_disproved_and_other_codes_are_not_judged() -> None:
    assert refusal_disproved(completion("x"), "invalid_request", offer(), None) is not None
    assert refusal_disproved(completion("x"), "chat_template_missing", offer(), None) is None
