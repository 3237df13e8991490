"""Audits on the provider side: the score batcher, signed audit results, and the agent's
answers to audit frames (driven through its frame handler; no socket needed).

Everything runs on the real tiny model and all-MiniLM-L6-v2.
"""

from __future__ import annotations

import asyncio

import pytest
from nacl.signing import SigningKey

from tessera.config import ProviderSettings
from tessera.protocol import signing
from tessera.protocol.canonical import canonical_bytes, sha256_hex
from tessera.protocol.wire import (
    AUDIT_RESULT_DOMAIN,
    Audit,
    AuditChoice,
    AuditResult,
    ChatMessage,
    Chunk,
    Done,
    Frame,
    Hardware,
    Job,
    JobError,
    ModelOffer,
    SamplingParams,
)
from tessera.provider.agent import ProviderAgent, ServedModel
from tessera.provider.auditing import ScoreBatcher, run_audit
from tessera.provider.backends.base import BackendError, CancelToken, ModelInfo, ScoreRequest
from tessera.provider.backends.openai_upstream import OpenAIUpstreamTextBackend
from tessera.provider.backends.sentence_embed import SentenceEmbeddingBackend
from tessera.provider.backends.transformers_text import TransformersTextBackend
from tessera.provider.jobs import ReceiptSigner, run_embedding_job, run_text_job

pytestmark = pytest.mark.integration

AUDITOR = SigningKey(bytes(range(1, 33)))
WORKER = SigningKey(bytes(range(2, 34)))
FOX = [ChatMessage(role="user", content="Tell me a story about a fox.")]
PROMPTS: list[str | list[int]] = ["The Fox", "Once upon a time", [5, 17, 99, 250, 31]]


def offer_for(info: ModelInfo) -> ModelOffer:
    return ModelOffer(
        name=info.name,
        weights_sha256=info.weights_sha256,
        kind=info.kind,
        context_length=info.context_length,
        embedding_dimensions=info.embedding_dimensions,
    )


class Outbox:
    """Collects the frames a job or an audit sends."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    async def send(self, frame: Frame) -> None:
        self.frames.append(frame)


def requests_for(prompts: list[str | list[int]]) -> list[ScoreRequest]:
    return [ScoreRequest(p, [3, 40 + i, 200, 7][: 1 + i % 4]) for i, p in enumerate(prompts)]


def verify_result(result: AuditResult, audit: Audit) -> None:
    signing.verify(
        result.auditor_id, AUDIT_RESULT_DOMAIN, result.signed_payload(), result.signature
    )
    assert result.auditor_id == signing.public_key_hex(AUDITOR)
    assert result.job_id == audit.job_id
    assert result.weights_sha256 == audit.weights_sha256
    assert result.audit_sha256 == sha256_hex(canonical_bytes(audit.model_dump(mode="json")))


async def produced_job(backend: TransformersTextBackend, job: Job) -> Audit:
    """Run ``job`` as the audited provider would, and build the audit of its output."""
    out = Outbox()
    await run_text_job(
        job, backend, out.send, CancelToken(), ReceiptSigner(WORKER, offer_for(backend.info))
    )
    assert isinstance(out.frames[-1], Done)
    choices: dict[int, AuditChoice] = {}
    for chunk in out.frames[:-1]:
        assert isinstance(chunk, Chunk)
        prior = choices.get(chunk.index, AuditChoice(index=chunk.index, token_ids=[]))
        choices[chunk.index] = AuditChoice(
            index=chunk.index,
            token_ids=[*prior.token_ids, *chunk.token_ids],
            eos=prior.eos or chunk.eos,
        )
    return Audit(
        job_id=f"audit-{job.job_id}",
        weights_sha256=backend.info.weights_sha256,
        job=job,
        choices=[choices[i] for i in sorted(choices)],
    )


# ---------------------------------------------------------------- the batcher


async def test_concurrent_requests_share_one_score_call(
    text_backend: TransformersTextBackend,
) -> None:
    batcher = ScoreBatcher(text_backend)
    requests = requests_for([*PROMPTS, "The Lion"])
    results = await asyncio.gather(*(batcher.score([r]) for r in requests))
    assert batcher.calls == 1
    assert list(batcher.recent_batch_sizes) == [4]
    alone = [(await text_backend.score([r]))[0] for r in requests]
    for [got], want in zip(results, alone, strict=True):
        assert got.prompt_tokens == want.prompt_tokens
        assert [t.rank for t in got.tokens] == [t.rank for t in want.tokens]
        for x, y in zip((*got.tokens, got.end), (*want.tokens, want.end), strict=True):
            assert x.logprob == pytest.approx(y.logprob, abs=1e-4)


async def test_a_large_audit_is_split_at_max_requests(
    text_backend: TransformersTextBackend,
) -> None:
    batcher = ScoreBatcher(text_backend, max_requests=8)
    requests = requests_for([f"The Fox number {i}" for i in range(10)])
    results = await batcher.score(requests)
    assert len(results) == 10
    assert sorted(batcher.recent_batch_sizes) == [2, 8]
    assert [len(r.tokens) for r in results] == [len(r.token_ids) for r in requests]


async def test_one_bad_request_does_not_fail_the_others(
    text_backend: TransformersTextBackend,
) -> None:
    batcher = ScoreBatcher(text_backend)
    good = ScoreRequest("The Fox", [3, 40])
    bad = ScoreRequest("The Lion", [3, 10**6])
    outcomes = await asyncio.gather(
        batcher.score([good]), batcher.score([bad]), batcher.score([good]), return_exceptions=True
    )
    assert isinstance(outcomes[1], BackendError) and outcomes[1].code == "invalid_token_ids"
    [want] = await text_backend.score([good])
    for outcome in (outcomes[0], outcomes[2]):
        assert isinstance(outcome, list)
        assert [t.rank for t in outcome[0].tokens] == [t.rank for t in want.tokens]


# ---------------------------------------------------------------- audit results


async def test_text_audit_of_an_honest_greedy_run(text_backend: TransformersTextBackend) -> None:
    job = Job(
        job_id="req-9.0",
        model=text_backend.info.name,
        kind="completion",
        prompts=PROMPTS,
        params=SamplingParams(max_tokens=30, temperature=0.0),
    )
    audit = await produced_job(text_backend, job)
    out = Outbox()
    await run_audit(audit, text_backend, ScoreBatcher(text_backend), AUDITOR, out.send)
    [result] = out.frames
    assert isinstance(result, AuditResult) and result.choices is not None
    verify_result(result, audit)
    assert [c.index for c in result.choices] == [0, 1, 2]
    for choice, audited in zip(result.choices, audit.choices, strict=True):
        assert len(choice.tokens) == len(audited.token_ids)
        assert all(t.rank == 1 for t in choice.tokens)
        if audited.eos:
            assert choice.end.rank == 1
    assert result.prompt_tokens == sum(c.prompt_tokens for c in result.choices)

    tampered = result.model_copy(update={"prompt_tokens": result.prompt_tokens + 1})
    with pytest.raises(signing.SignatureInvalid):
        signing.verify(
            tampered.auditor_id, AUDIT_RESULT_DOMAIN, tampered.signed_payload(), tampered.signature
        )


async def test_chat_audit_scores_the_chat_template_prompt(
    text_backend: TransformersTextBackend,
) -> None:
    job = Job(
        job_id="req-10.0",
        model=text_backend.info.name,
        kind="chat",
        messages=FOX,
        params=SamplingParams(max_tokens=300, temperature=0.0),
    )
    audit = await produced_job(text_backend, job)
    out = Outbox()
    await run_audit(audit, text_backend, ScoreBatcher(text_backend), AUDITOR, out.send)
    [result] = out.frames
    assert isinstance(result, AuditResult) and result.choices is not None
    [choice] = result.choices
    [alone] = await text_backend.score([ScoreRequest(FOX, audit.choices[0].token_ids)])
    assert choice.prompt_tokens == alone.prompt_tokens
    assert choice.text == alone.text
    assert [t.rank for t in choice.tokens] == [1] * len(audit.choices[0].token_ids)


async def test_embedding_audit_recomputes_the_vectors(
    embed_backend: SentenceEmbeddingBackend,
) -> None:
    job = Job(
        job_id="req-11.0",
        model=embed_backend.info.name,
        kind="embedding",
        inputs=["The cat sat on the mat.", "hello world"],
    )
    served = Outbox()
    await run_embedding_job(
        job, embed_backend, served.send, ReceiptSigner(WORKER, offer_for(embed_backend.info))
    )
    [done] = served.frames
    assert isinstance(done, Done)
    audit = Audit(job_id="audit-11", weights_sha256=embed_backend.info.weights_sha256, job=job)
    out = Outbox()
    await run_audit(audit, embed_backend, None, AUDITOR, out.send)
    [result] = out.frames
    assert isinstance(result, AuditResult)
    verify_result(result, audit)
    assert result.choices is None
    assert result.embeddings_b64 == done.embeddings_b64
    assert result.prompt_tokens == done.usage.prompt_tokens


# ---------------------------------------------------------------- the agent's answers


def agent_with(models: list[ServedModel], slots: int = 2) -> ProviderAgent:
    settings = ProviderSettings(max_concurrent_jobs=slots)
    hardware = Hardware(cpu="test", cpu_cores=1, ram_bytes=1)
    return ProviderAgent(settings, AUDITOR, models, hardware)


async def answer(agent: ProviderAgent, audit: Audit) -> Frame:
    """Hand ``audit`` to the agent as the gateway would and wait for its one reply."""
    out = Outbox()
    running: dict[str, tuple[asyncio.Task[None], CancelToken]] = {}
    await agent._on_frame(audit.model_dump_json(), out.send, running)
    tasks = [task for task, _ in running.values()]
    await asyncio.gather(*tasks)
    [reply] = out.frames
    return reply


def small_audit(info: ModelInfo, model: str | None = None, **kw: object) -> Audit:
    job = Job(
        job_id="req-12.0",
        model=model or info.name,
        kind="completion",
        prompts=["The Fox"],
        params=SamplingParams(max_tokens=4),
    )
    body: dict[str, object] = {
        "job_id": "audit-12",
        "weights_sha256": info.weights_sha256,
        "job": job,
        "choices": [AuditChoice(index=0, token_ids=[3, 40])],
    }
    return Audit.model_validate(body | kw)


async def test_agent_answers_an_audit_with_a_signed_result(
    text_backend: TransformersTextBackend,
) -> None:
    agent = agent_with([ServedModel(offer_for(text_backend.info), text_backend)])
    audit = small_audit(text_backend.info)
    reply = await answer(agent, audit)
    assert isinstance(reply, AuditResult)
    verify_result(reply, audit)
    assert agent.audits_done == 1


async def test_agent_refuses_audits_it_cannot_do(text_backend: TransformersTextBackend) -> None:
    upstream_info = ModelInfo(
        name="upstream-model", weights_sha256="cd" * 32, kind="text", context_length=64
    )
    upstream = OpenAIUpstreamTextBackend(upstream_info, "http://127.0.0.1:9/v1", "upstream")
    agent = agent_with(
        [
            ServedModel(offer_for(text_backend.info), text_backend),
            ServedModel(offer_for(upstream_info), upstream),
        ],
        slots=1,
    )
    try:
        info = text_backend.info
        cases: list[tuple[Audit, str, bool]] = [
            (small_audit(info, weights_sha256="ef" * 32), "weights_mismatch", False),
            (small_audit(info, model="other"), "model_not_served", False),
            (small_audit(upstream_info), "audit_unsupported", True),
            (
                small_audit(info, choices=[AuditChoice(index=3, token_ids=[3])]),
                "invalid_request",
                False,
            ),
            (
                small_audit(info, choices=[AuditChoice(index=0, token_ids=[5] * 1030)]),
                "context_length_exceeded",
                False,
            ),
        ]
        for audit, code, retryable in cases:
            reply = await answer(agent, audit)
            assert isinstance(reply, JobError), (code, reply)
            assert (reply.code, reply.retryable, reply.job_id) == (code, retryable, audit.job_id)

        async with agent._slots:  # every slot taken by a running job
            reply = await answer(agent, small_audit(info))
        assert isinstance(reply, JobError)
        assert (reply.code, reply.retryable) == ("busy", True)
        assert agent.audits_done == 0
    finally:
        await upstream.close()
