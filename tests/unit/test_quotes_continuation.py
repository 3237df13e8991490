"""The prompt bound of a continuation job counts the handed output it makes the provider read."""

from __future__ import annotations

from tessera.market.quotes import chat_prompt_bound, output_token_bound, prompt_token_bound
from tessera.protocol.wire import ChatMessage, Job, SamplingParams

HANDED = list(range(100, 140))  # 40 output ids another provider already delivered


def job(**kw: object) -> Job:
    body: dict[str, object] = {
        "job_id": "r.1",
        "model": "m",
        "params": SamplingParams(max_tokens=7, temperature=0.0),
    }
    return Job.model_validate(body | kw)


def test_chat_continuation_adds_the_handed_ids() -> None:
    fresh = job(kind="chat", messages=[ChatMessage(role="user", content="héllo")])
    resumed = fresh.model_copy(update={"continue_from": HANDED})
    assert prompt_token_bound(fresh, 10_000) == 16 + 32 + 6
    assert prompt_token_bound(resumed, 10_000) == 16 + 32 + 6 + 40
    # max_tokens counts new tokens only: the output bound does not change.
    assert output_token_bound(resumed) == output_token_bound(fresh) == 7


def test_completion_continuation_adds_the_handed_ids() -> None:
    text = job(kind="completion", prompts=["abc"], continue_from=HANDED)
    ids = job(kind="completion", prompts=[[1, 2, 3, 4]], continue_from=HANDED)
    assert prompt_token_bound(text, 10_000) == 16 + 3 + 40
    assert prompt_token_bound(ids, 10_000) == 16 + 4 + 40


def test_continuation_bound_is_still_capped_by_the_context() -> None:
    chat = job(kind="chat", messages=[ChatMessage(role="user", content="hi")], continue_from=HANDED)
    completion = job(kind="completion", prompts=["abc"], continue_from=HANDED)
    assert prompt_token_bound(chat, 60) == 60
    assert prompt_token_bound(completion, 50) == 50
    assert prompt_token_bound(completion, 59) == 59
    assert prompt_token_bound(completion, 60) == 59


def test_empty_continue_from_changes_nothing() -> None:
    plain = job(kind="completion", prompts=["abc"])
    assert prompt_token_bound(plain.model_copy(update={"continue_from": []}), 10_000) == (
        prompt_token_bound(plain, 10_000)
    )


def test_a_chats_bound_from_its_bytes_is_the_jobs_bound() -> None:
    """The simulator bounds a modelled chat by its message's bytes: the same number the
    gateway's bound gives the job."""
    for text in ("hi", "héllo wörld", "x" * 700):
        job = Job(
            job_id="r.1",
            model="m",
            kind="chat",
            messages=[ChatMessage(role="user", content=text)],
            params=SamplingParams(max_tokens=4),
        )
        assert chat_prompt_bound(len(text.encode("utf-8"))) == prompt_token_bound(job, 10**6)
