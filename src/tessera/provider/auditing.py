"""Answer the gateway's audits: re-score another provider's output and sign what we saw.

An audit names a job some other provider ran and the output it returned. Text audits are
teacher-forced through our own copy of the model (``TextBackend.score``); embedding audits
are recomputed with ``embed``. The answer is an :class:`AuditResult` signed with our key
under ``AUDIT_RESULT_DOMAIN``; it names the audit it answers by the SHA-256 of the audit's
canonical JSON, so it cannot be replayed for another one. Judging the scores is not our
business: the gateway's verifier compares them with the audited output.

Audits that arrive together share a forward pass: :class:`ScoreBatcher` holds the first
request for ``window_s`` (or until ``max_requests`` are waiting) and scores them in one
``score`` call. One request that cannot be scored must not fail the others, so a failed
batch is retried one request at a time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from nacl.signing import SigningKey

from tessera.protocol import signing
from tessera.protocol.canonical import canonical_bytes, sha256_hex
from tessera.protocol.wire import (
    AUDIT_RESULT_DOMAIN,
    Audit,
    AuditChoice,
    AuditResult,
    ChoiceScore,
    Frame,
    JobError,
    TokenScore,
)
from tessera.provider.backends.base import (
    BackendError,
    EmbeddingBackend,
    Prompt,
    ScoreRequest,
    ScoreResult,
    TextBackend,
    TokenRank,
)
from tessera.provider.jobs import CLIENT_ERRORS, Send, encode_vector, finite_logprob

BATCH_WINDOW_S = 0.005
MAX_BATCH_REQUESTS = 8
MAX_RANK = 10_000_000  # the wire's bound on TokenScore.rank
_PLACEHOLDER_SIGNATURE = "0" * 128


@dataclass(slots=True)
class _Pending:
    request: ScoreRequest
    future: asyncio.Future[ScoreResult]


class ScoreBatcher:
    """Gathers score requests for one backend into batched ``score`` calls.

    The first request of a batch waits at most ``window_s``; a batch is sent as soon as
    ``max_requests`` are waiting. Batches run concurrently with each other (the agent's
    slot semaphore bounds how many audits run at once).
    """

    def __init__(
        self,
        backend: TextBackend,
        *,
        window_s: float = BATCH_WINDOW_S,
        max_requests: int = MAX_BATCH_REQUESTS,
    ) -> None:
        self.backend = backend
        self.window_s = window_s
        self.max_requests = max(1, max_requests)
        self._waiting: list[_Pending] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # score calls made
        self.recent_batch_sizes: deque[int] = deque(maxlen=64)  # newest last

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score ``requests`` (in order) inside whatever batches they land in."""
        loop = asyncio.get_running_loop()
        pending = [_Pending(r, loop.create_future()) for r in requests]
        for item in pending:
            self._waiting.append(item)
            if len(self._waiting) >= self.max_requests:
                self._flush()
        if self._waiting and self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        finally:
            for item in pending:
                if not item.future.done():
                    item.future.cancel()
                elif not item.future.cancelled():
                    item.future.exception()  # retrieved: a sibling's error already surfaced

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = [p for p in self._waiting[: self.max_requests] if not p.future.done()]
        del self._waiting[: self.max_requests]
        if self._waiting:
            self._timer = asyncio.get_running_loop().call_later(self.window_s, self._flush)
        if batch:
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        batch = [p for p in batch if not p.future.done()]  # callers that gave up
        if not batch:
            return
        self.calls += 1
        self.recent_batch_sizes.append(len(batch))
        try:
            results = await self.backend.score([p.request for p in batch])
        except BackendError as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            for item in batch:  # find which request failed; the rest still get scored
                await self._run([item])
            return
        except Exception as exc:  # a backend bug: every caller hears of it, none hangs
            for item in batch:
                _settle(item, exc)
            return
        outcomes: Sequence[ScoreResult | BaseException] = results
        if len(results) != len(batch):
            wrong = BackendError(f"the backend scored {len(results)} of {len(batch)} requests")
            outcomes = [wrong] * len(batch)
        for item, outcome in zip(batch, outcomes, strict=True):
            _settle(item, outcome)


def _settle(item: _Pending, outcome: ScoreResult | BaseException) -> None:
    if item.future.done():
        return
    if isinstance(outcome, BaseException):
        item.future.set_exception(outcome)
    else:
        item.future.set_result(outcome)


def audit_sha256(audit: Audit) -> str:
    """What an AuditResult names its audit by: the SHA-256 of its canonical JSON."""
    return sha256_hex(canonical_bytes(audit.model_dump(mode="json")))


def sign_audit_result(key: SigningKey, unsigned: AuditResult) -> AuditResult:
    """``unsigned`` (any signature) signed with ``key`` over its ``signed_payload``."""
    signature = signing.sign(key, AUDIT_RESULT_DOMAIN, unsigned.signed_payload())
    return unsigned.model_copy(update={"signature": signature})


def _wire_score(rank: TokenRank) -> TokenScore:
    return TokenScore(
        rank=min(max(1, rank.rank), MAX_RANK),
        logprob=finite_logprob(rank.logprob),
        top_logprob=finite_logprob(rank.top_logprob),
    )


def _choice_prompt(audit: Audit, index: int) -> Prompt:
    job = audit.job
    if job.kind == "chat":
        if not job.messages:
            raise BackendError("the audited chat job has no messages", "invalid_request")
        return job.messages
    prompts = job.prompts or []
    if not 0 <= index < len(prompts):
        raise BackendError(
            f"choice {index} has no prompt: the audited job has {len(prompts)}",
            "invalid_request",
        )
    return prompts[index]


def _score_request(audit: Audit, choice: AuditChoice) -> ScoreRequest:
    """A choice's tokens after its prompt and, for a continuation job, after the output it
    was handed (the stop strings then say what text that output still held back)."""
    job = audit.job
    prompt = _choice_prompt(audit, choice.index)
    if not job.continue_from:
        return ScoreRequest(prompt, choice.token_ids)
    if job.kind != "chat" and len(job.prompts or []) != 1:
        raise BackendError(
            "the audited job continues output but does not have exactly one prompt",
            "invalid_continuation",
        )
    stop = job.params.stop if job.params is not None else []
    return ScoreRequest(prompt, choice.token_ids, continue_from=job.continue_from, stop=stop)


async def score_text_audit(audit: Audit, batcher: ScoreBatcher) -> list[ChoiceScore]:
    """Each audited choice, teacher-forced through our model (a continuation job's after
    its ``continue_from``, which ``prompt_tokens`` then counts)."""
    requests = [_score_request(audit, c) for c in audit.choices]
    results = await batcher.score(requests)
    return [
        ChoiceScore(
            index=choice.index,
            prompt_tokens=result.prompt_tokens,
            tokens=[_wire_score(t) for t in result.tokens],
            end=_wire_score(result.end),
            text=result.text,
        )
        for choice, result in zip(audit.choices, results, strict=True)
    ]


async def run_audit(
    audit: Audit,
    backend: TextBackend | EmbeddingBackend,
    batcher: ScoreBatcher | None,
    key: SigningKey,
    send: Send,
) -> Frame:
    """Answer one audit with a signed AuditResult, or a JobError saying why not; returns
    the frame sent. The caller has checked that we serve the audited model with the
    audited weights."""
    reply: Frame
    try:
        reply = await _audit_result(audit, backend, batcher, key)
    except BackendError as exc:
        reply = JobError(
            job_id=audit.job_id,
            code=exc.code[:100],
            message=str(exc)[:2000],
            retryable=exc.code not in CLIENT_ERRORS | {"invalid_request"},
        )
    await send(reply)
    return reply


async def _audit_result(
    audit: Audit,
    backend: TextBackend | EmbeddingBackend,
    batcher: ScoreBatcher | None,
    key: SigningKey,
) -> AuditResult:
    choices: list[ChoiceScore] | None = None
    embeddings: list[str] | None = None
    if audit.job.kind == "embedding":
        if not isinstance(backend, EmbeddingBackend):
            raise BackendError(f"{audit.job.model} does not embed", "invalid_request")
        result = await backend.embed(audit.job.inputs or [])
        embeddings = [encode_vector(v) for v in result.vectors]
        prompt_tokens = result.prompt_tokens
    else:
        if batcher is None or not isinstance(backend, TextBackend):
            raise BackendError(f"{audit.job.model} does not generate text", "invalid_request")
        choices = await score_text_audit(audit, batcher)
        prompt_tokens = sum(c.prompt_tokens for c in choices)
    unsigned = AuditResult(
        job_id=audit.job_id,
        auditor_id=signing.public_key_hex(key),
        weights_sha256=audit.weights_sha256,
        audit_sha256=audit_sha256(audit),
        choices=choices,
        embeddings_b64=embeddings,
        prompt_tokens=prompt_tokens,
        signature=_PLACEHOLDER_SIGNATURE,
    )
    return sign_audit_result(key, unsigned)
