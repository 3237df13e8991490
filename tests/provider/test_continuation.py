"""Failover continuations on the real tiny model.

A job with ``continue_from`` (the output another provider delivered before it died) must go
on exactly as the uninterrupted job would have: the same token ids and, cut where a chunk
ended, the same text; its usage and receipt count what the model read; an honest audit of
it passes the catalog's tolerances and a tampered one does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from tessera.market.quotes import prompt_token_bound
from tessera.protocol.receipts import OutputDigest, prompt_sha256
from tessera.protocol.signing import public_key_hex
from tessera.protocol.wire import (
    Audit,
    AuditChoice,
    AuditResult,
    ChatMessage,
    Chunk,
    Done,
    Frame,
    Job,
    JobError,
    ModelOffer,
    SamplingParams,
)
from tessera.provider.auditing import ScoreBatcher, run_audit
from tessera.provider.backends.base import (
    BackendError,
    CancelToken,
    ModelInfo,
    ScoreRequest,
    TextBackend,
)
from tessera.provider.backends.openai_upstream import OpenAIUpstreamTextBackend
from tessera.provider.backends.transformers_text import TransformersTextBackend
from tessera.provider.jobs import ReceiptSigner, run_text_job
from tessera.verify.catalog import Catalog, Tolerances
from tessera.verify.receipts import TAMPERED, check_receipt
from tessera.verify.scoring import TAMPERED_OUTPUT, Verdict, score_text

pytestmark = pytest.mark.integration

WORKER = SigningKey(bytes(range(3, 35)))
AUDITOR = SigningKey(bytes(range(4, 36)))
N = 48  # tokens of the uninterrupted answer
MIN_TOKENS = 32  # an answer shorter than this would make the cuts below meaningless
CUTS = (1, 13, 40)  # where the first provider dies (moved to the next chunk end)
Prompt = list[ChatMessage] | str
CHATS: list[Prompt] = [
    [ChatMessage(role="user", content="Tell me a story about a fox.")],
    [ChatMessage(role="user", content="What did the ant say?")],
    [ChatMessage(role="user", content="Tell me about the lion and the mouse.")],
    [ChatMessage(role="user", content="Who was the crow?")],
]
TEXTS: list[Prompt] = ["The Fox", "Once upon a time", "The Lion", "The Wolf", "In olden times"]
SAMPLINGS = {
    "greedy": SamplingParams(max_tokens=N, temperature=0.0),
    "seeded-0.8": SamplingParams(max_tokens=N, temperature=0.8, seed=3),
    "seeded-1.0-top_p": SamplingParams(max_tokens=N, temperature=1.0, top_p=0.9, seed=5),
}


# ---------------------------------------------------------------- running jobs


@dataclass
class Run:
    """One job as the gateway sees it: the chunks relayed, then a Done or a JobError."""

    job: Job
    chunks: list[Chunk]
    end: Frame

    @property
    def done(self) -> Done:
        assert isinstance(self.end, Done), self.end
        return self.end

    @property
    def ids(self) -> list[int]:
        return [t for c in self.chunks for t in c.token_ids]

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)

    @property
    def digest(self) -> OutputDigest:
        digest = OutputDigest()
        for chunk in self.chunks:
            digest.add(chunk)
        return digest

    def chunk_ends(self) -> list[int]:
        """Token counts at which a chunk ended: where a failover may pick the answer up."""
        ends, count = [], 0
        for chunk in self.chunks:
            if chunk.token_ids:
                count += len(chunk.token_ids)
                ends.append(count)
        return ends

    def text_before(self, k: int) -> str:
        """The text the client holds once the chunks of the first ``k`` tokens arrived."""
        text, count = "", 0
        for chunk in self.chunks:
            if count >= k:
                break
            text += chunk.text
            count += len(chunk.token_ids)
        assert count == k, f"{k} is not at a chunk end"
        return text


def offer_for(info: ModelInfo) -> ModelOffer:
    return ModelOffer(
        name=info.name,
        weights_sha256=info.weights_sha256,
        kind=info.kind,
        context_length=info.context_length,
        price_input_per_mtok=1_000_000_000,
        price_output_per_mtok=3_000_000_000,
    )


def make_job(backend: TransformersTextBackend, prompt: Prompt, params: SamplingParams) -> Job:
    common = {"job_id": "req-c.0", "model": backend.info.name, "params": params}
    if isinstance(prompt, str):
        return Job(kind="completion", prompts=[prompt], **common)  # type: ignore[arg-type]
    return Job(kind="chat", messages=prompt, **common)  # type: ignore[arg-type]


def continuation(job: Job, handed: Sequence[int], attempt: int = 1) -> Job:
    """What the gateway sends the next provider: the output delivered, and the rest to do."""
    assert job.params is not None
    return job.model_copy(
        update={
            "job_id": f"req-c.{attempt}",
            "request_id": "req-c",
            "continue_from": list(handed),
            "params": job.params.model_copy(
                update={"max_tokens": job.params.max_tokens - len(handed)}
            ),
        }
    )


async def run(backend: TextBackend, job: Job) -> Run:
    frames: list[Frame] = []

    async def send(frame: Frame) -> None:
        frames.append(frame)

    signer = ReceiptSigner(WORKER, offer_for(backend.info))
    await run_text_job(job, backend, send, CancelToken(), signer)
    chunks = [f for f in frames[:-1] if isinstance(f, Chunk)]
    assert len(chunks) == len(frames) - 1
    return Run(job, chunks, frames[-1])


Answers = dict[tuple[str, str], Run]


@pytest.fixture(scope="module")
def answers() -> Answers:
    """Uninterrupted answers by (kind, sampling), made once for the module's tests."""
    return {}


async def long_answer(
    backend: TransformersTextBackend, answers: Answers, kind: str, sampling: str
) -> Run:
    """The answer to the first prompt of ``kind`` that runs at least MIN_TOKENS tokens (the
    tiny model is trained on each machine, so which one does is not known in advance)."""
    if (kind, sampling) in answers:
        return answers[kind, sampling]
    params = SAMPLINGS[sampling]
    for prompt in CHATS if kind == "chat" else TEXTS:
        full = await run(backend, make_job(backend, prompt, params))
        if len(full.ids) >= MIN_TOKENS:
            answers[kind, sampling] = full
            return full
    pytest.fail(f"no {kind} prompt makes {MIN_TOKENS} tokens with {params}; add candidates")


def cut_points(full: Run) -> list[int]:
    """CUTS moved to the next chunk end, before the last token."""
    ends = [e for e in full.chunk_ends() if e < len(full.ids)]
    return sorted({min((e for e in ends if e >= cut), default=ends[-1]) for cut in CUTS})


def tolerances(catalog: Path, name: str) -> Tolerances:
    entry = Catalog.load(catalog).get(name)
    assert entry is not None, f"{name} is not in the tiny catalog"
    return entry.tolerances


async def audited(backend: TransformersTextBackend, subject: Run) -> AuditResult:
    """The auditor's signed answer for ``subject``, made by the agent's own audit path."""
    [choice] = subject.digest.ordered()
    audit = Audit(
        job_id=f"audit-{subject.job.job_id}",
        weights_sha256=backend.info.weights_sha256,
        job=subject.job,
        choices=[AuditChoice(index=0, token_ids=choice.token_ids, eos=choice.eos)],
    )
    sent: list[Frame] = []

    async def send(frame: Frame) -> None:
        sent.append(frame)

    await run_audit(audit, backend, ScoreBatcher(backend), AUDITOR, send)
    [result] = sent
    assert isinstance(result, AuditResult), result
    return result


def verdict(
    backend: TransformersTextBackend,
    subject: Run,
    result: AuditResult,
    tol: Tolerances,
    prompt_tokens: int | None = None,
) -> Verdict:
    claimed = subject.done.usage.prompt_tokens if prompt_tokens is None else prompt_tokens
    context = backend.info.context_length
    return score_text(subject.job, subject.digest.ordered(), claimed, context, result, tol)


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("sampling", list(SAMPLINGS))
@pytest.mark.parametrize("kind", ["chat", "completion"])
async def test_a_continuation_goes_on_exactly_as_the_uninterrupted_answer(
    text_backend: TransformersTextBackend, answers: Answers, kind: str, sampling: str
) -> None:
    full = await long_answer(text_backend, answers, kind, sampling)
    prompt_tokens = full.done.usage.prompt_tokens
    for k in cut_points(full):
        rest = await run(text_backend, continuation(full.job, full.ids[:k]))
        assert rest.ids == full.ids[k:], f"cut at {k}"
        assert full.text_before(k) + rest.text == full.text, f"cut at {k}"
        assert (rest.chunks[-1].finish_reason, rest.chunks[-1].eos) == (
            full.chunks[-1].finish_reason,
            full.chunks[-1].eos,
        )
        # the model read the prompt and the k handed tokens; it made the rest
        assert rest.done.usage.prompt_tokens == prompt_tokens + k
        assert rest.chunks[0].prompt_tokens == prompt_tokens + k
        assert rest.done.usage.completion_tokens == full.done.usage.completion_tokens - k


async def test_a_seeded_continuation_depends_on_the_seed(
    text_backend: TransformersTextBackend, answers: Answers
) -> None:
    full = await long_answer(text_backend, answers, "completion", "seeded-0.8")
    k = cut_points(full)[0]
    other = continuation(full.job, full.ids[:k])
    assert other.params is not None
    other = other.model_copy(update={"params": other.params.model_copy(update={"seed": 4})})
    assert (await run(text_backend, other)).ids != full.ids[k:]


async def test_unseeded_sampling_stays_random(text_backend: TransformersTextBackend) -> None:
    # 64 tokens at temperature 1.5: two equal answers would need every draw to agree.
    job = make_job(text_backend, CHATS[0], SamplingParams(max_tokens=64, temperature=1.5))
    first, second = await run(text_backend, job), await run(text_backend, job)
    assert first.ids != second.ids


def stop_straddling(full: Run) -> tuple[str, int]:
    """A stop string made of the last character of one single-token chunk and the start of
    the next, found nowhere earlier; and how many tokens come before its first chunk."""
    text, count = "", 0
    for this, after in zip(full.chunks, full.chunks[1:], strict=False):
        text += this.text
        count += len(this.token_ids)
        if count < 4 or len(this.text) < 2 or len(after.text) < 2:
            continue
        if len(this.token_ids) != 1 or len(after.token_ids) != 1:
            continue
        stop = this.text[-1] + after.text[:2]
        if (text + after.text).find(stop) == len(text) - 1:
            return stop, count
    pytest.fail("no chunk pair to build a straddling stop string from")


async def test_a_stop_string_straddling_the_handover_still_stops_the_answer(
    text_backend: TransformersTextBackend, answers: Answers, tiny_catalog: Path
) -> None:
    full = await long_answer(text_backend, answers, "completion", "greedy")
    stop, before = stop_straddling(full)
    assert full.job.params is not None
    params = full.job.params.model_copy(update={"stop": [stop]})
    stopped = await run(text_backend, full.job.model_copy(update={"params": params}))
    assert stopped.chunks[-1].finish_reason == "stop" and not stopped.chunks[-1].eos
    assert stop not in stopped.text and stopped.text == full.text[: full.text.find(stop)]
    # The first provider dies right after the chunk whose text held back the stop's first
    # character (or a little earlier): the next one must hold it too, and stop there.
    ends = [e for e in stopped.chunk_ends() if e <= before]
    assert ends[-1] == before
    for k in ends[-3:]:
        rest = await run(text_backend, continuation(stopped.job, stopped.ids[:k]))
        assert rest.ids == stopped.ids[k:]
        assert stopped.text_before(k) + rest.text == stopped.text
        assert rest.chunks[-1].finish_reason == "stop"
    assert rest.text == "" and len(rest.ids) == 1  # the last one: handed over at `before`
    # an honest audit of that one-token continuation sees the stop string in its text
    result = await audited(text_backend, rest)
    assert result.choices is not None and result.choices[0].text.startswith(stop)
    assert verdict(text_backend, rest, result, tolerances(tiny_catalog, rest.job.model)).passed


# ---------------------------------------------------------------- receipts and audits


@pytest.mark.parametrize("sampling", ["greedy", "seeded-0.8"])
async def test_an_honest_continuation_has_a_good_receipt_and_passes_its_audit(
    text_backend: TransformersTextBackend, answers: Answers, tiny_catalog: Path, sampling: str
) -> None:
    full = await long_answer(text_backend, answers, "chat", sampling)
    k = cut_points(full)[1]
    rest = await run(text_backend, continuation(full.job, full.ids[:k]))
    offer = offer_for(text_backend.info)
    provider = public_key_hex(WORKER)

    check = check_receipt(
        rest.done, provider_id=provider, job=rest.job, offer=offer, digest=rest.digest
    )
    assert check.ok, check.detail
    receipt = rest.done.receipt
    assert receipt is not None
    assert receipt.prompt_tokens == full.done.usage.prompt_tokens + k
    assert receipt.completion_tokens == len(full.ids) - k + (1 if full.chunks[-1].eos else 0)
    assert receipt.prompt_sha256 == prompt_sha256(rest.job) != prompt_sha256(full.job)
    # the gateway's hold covers what the provider counted
    context = text_backend.info.context_length
    assert prompt_token_bound(rest.job, context) >= receipt.prompt_tokens
    # the receipt commits to the handed tokens: naming other ones is tampering
    other = rest.job.model_copy(update={"continue_from": full.ids[: k - 1]})
    forged = check_receipt(
        rest.done, provider_id=provider, job=other, offer=offer, digest=rest.digest
    )
    assert forged.problem == TAMPERED and "prompt_sha256" in forged.detail

    result = await audited(text_backend, rest)
    assert result.prompt_tokens == receipt.prompt_tokens
    tol = tolerances(tiny_catalog, rest.job.model)
    honest = verdict(text_backend, rest, result, tol)
    assert honest.passed, honest.public()

    # one continuation token swapped for another: caught
    chunks = rest.chunks.copy()
    with_ids = [i for i, c in enumerate(chunks) if c.token_ids]
    at = with_ids[len(with_ids) // 2]
    old = chunks[at].token_ids[0]
    swapped = [100 if old != 100 else 101, *chunks[at].token_ids[1:]]
    chunks[at] = chunks[at].model_copy(update={"token_ids": swapped})
    tampered = Run(rest.job, chunks, rest.done)
    tampered_verdict = verdict(text_backend, tampered, await audited(text_backend, tampered), tol)
    assert not tampered_verdict.passed
    assert tampered_verdict.reason is not None  # the provider's fault, not the auditor's

    # honest tokens, but a count that leaves out the handed tokens the model read: caught
    undercount = verdict(text_backend, rest, result, tol, prompt_tokens=receipt.prompt_tokens - k)
    assert not undercount.passed and undercount.reason == TAMPERED_OUTPUT
    assert [f.check for f in undercount.findings] == ["usage"]


async def test_a_provider_that_ignores_continue_from_fails_the_audit(
    text_backend: TransformersTextBackend, answers: Answers, tiny_catalog: Path
) -> None:
    full = await long_answer(text_backend, answers, "chat", "greedy")
    k = cut_points(full)[1]
    job = continuation(full.job, full.ids[:k])
    # It answers the prompt from the start and claims that answer as the continuation.
    restarted = await run(text_backend, job.model_copy(update={"continue_from": None}))
    cheat = Run(job, restarted.chunks, restarted.end)
    result = await audited(text_backend, cheat)
    failed = verdict(text_backend, cheat, result, tolerances(tiny_catalog, job.model))
    assert not failed.passed and failed.reason == TAMPERED_OUTPUT
    assert "usage" in {f.check for f in failed.findings}


# ---------------------------------------------------------------- refusals


async def test_continuations_that_cannot_be_run_are_refused_before_any_output(
    text_backend: TransformersTextBackend,
) -> None:
    greedy = SamplingParams(max_tokens=16, temperature=0.0)
    full = await run(text_backend, make_job(text_backend, "The Fox", greedy))
    eos = next(iter(text_backend._eos_ids))
    context = text_backend.info.context_length
    two_prompts = make_job(text_backend, "The Fox", greedy).model_copy(
        update={"prompts": ["The Fox", "The Lion"]}
    )
    # a stop string the handed tokens already show: that answer had ended
    k = min(e for e in full.chunk_ends() if len(full.text_before(e)) >= 2)
    stop = full.text_before(k)[-2:]
    stop_job = full.job.model_copy(update={"params": greedy.model_copy(update={"stop": [stop]})})
    too_long = continuation(full.job, [5], 2).model_copy(update={"continue_from": [5] * context})
    cases: list[tuple[Job, str, str]] = [
        (continuation(two_prompts, [5, 6], 2), "invalid_continuation", "one prompt"),
        (continuation(full.job, [5, 10**6], 2), "invalid_token_ids", "outside the vocabulary"),
        (continuation(full.job, [5, eos, 6], 2), "invalid_continuation", "end-of-sequence"),
        (continuation(stop_job, full.ids[:k], 2), "invalid_continuation", "stop string"),
        (too_long, "context_length_exceeded", "context"),
    ]
    for job, code, words in cases:
        refused = await run(text_backend, job)
        assert refused.chunks == []
        assert isinstance(refused.end, JobError), (code, refused.end)
        assert (refused.end.code, refused.end.retryable) == (code, False)
        assert words in refused.end.message

    with pytest.raises(BackendError) as raised:
        await text_backend.score([ScoreRequest("The Fox", [5], continue_from=[10**6])])
    assert raised.value.code == "invalid_token_ids"

    audit = Audit(
        job_id="audit-two",
        weights_sha256=text_backend.info.weights_sha256,
        job=continuation(two_prompts, [5, 6], 2),
        choices=[AuditChoice(index=0, token_ids=[7])],
    )
    sent: list[Frame] = []

    async def send(frame: Frame) -> None:
        sent.append(frame)

    await run_audit(audit, text_backend, ScoreBatcher(text_backend), AUDITOR, send)
    [reply] = sent
    assert isinstance(reply, JobError)
    assert (reply.code, reply.retryable) == ("invalid_continuation", False)


async def test_an_upstream_backend_hands_a_continuation_to_another_provider(
    text_backend: TransformersTextBackend,
) -> None:
    info = ModelInfo(
        name="upstream-model", weights_sha256="cd" * 32, kind="text", context_length=64
    )
    # Nothing listens there: the refusal comes before any request is made.
    upstream = OpenAIUpstreamTextBackend(info, "http://127.0.0.1:9/v1", "upstream")
    try:
        job = Job(
            job_id="req-u.1",
            model=info.name,
            kind="completion",
            prompts=["The Fox"],
            params=SamplingParams(max_tokens=4, temperature=0.0),
            continue_from=[5, 6],
        )
        refused = await run(upstream, job)
        assert refused.chunks == []
        assert isinstance(refused.end, JobError)
        assert (refused.end.code, refused.end.retryable) == ("continuation_unsupported", True)
    finally:
        await upstream.close()
