"""Run one job on a backend and turn what it produces into protocol frames.

Contract with the gateway: a job ends with exactly one Done or one JobError. A JobError
is ``retryable`` only when nothing was sent yet and another provider could succeed.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Awaitable, Callable, Sequence

from tessera.protocol.wire import (
    Chunk,
    Done,
    Frame,
    Job,
    JobError,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from tessera.provider.backends.base import (
    BackendError,
    CancelToken,
    Delta,
    EmbeddingBackend,
    Finish,
    Prompt,
    TextBackend,
)
from tessera.provider.backends.base import TokenLogprob as BackendLogprob

Send = Callable[[Frame], Awaitable[None]]

# Errors every provider would give for this request: never worth retrying elsewhere.
CLIENT_ERRORS = {"context_length_exceeded", "invalid_token_ids", "chat_template_missing"}
LOGPROB_FLOOR = -9999.0


def _finite_logprob(value: float) -> float:
    """Clamp into what the wire allows: finite and <= 0 (rounding can give +1e-7)."""
    if math.isnan(value):
        return LOGPROB_FLOOR
    return min(0.0, max(LOGPROB_FLOOR, value))


def _wire_logprob(entry: BackendLogprob) -> TokenLogprob:
    return TokenLogprob(
        token=entry.token[:1000],
        token_id=max(0, entry.token_id),
        logprob=_finite_logprob(entry.logprob),
        top_logprobs=[
            TopLogprob(token=t.token[:1000], logprob=_finite_logprob(t.logprob))
            for t in entry.top[:20]
        ],
    )


def encode_vector(vector: Sequence[float]) -> str:
    """Base64 of little-endian float32: OpenAI's ``encoding_format: base64``."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


async def run_text_job(job: Job, backend: TextBackend, send: Send, cancel: CancelToken) -> None:
    if job.params is None:
        await send(JobError(job_id=job.job_id, code="invalid_request", message="no params"))
        return
    prompts: list[Prompt]
    if job.kind == "chat":
        prompts = [job.messages or []]
    else:
        prompts = list(job.prompts or [])
    sent_any = False
    prompt_tokens = completion_tokens = 0
    try:
        for index, prompt in enumerate(prompts):
            async for event in backend.stream(prompt, job.params, cancel):
                if isinstance(event, Delta):
                    if not event.text and not event.logprobs:
                        continue
                    await send(
                        Chunk(
                            job_id=job.job_id,
                            index=index,
                            text=event.text,
                            logprobs=[_wire_logprob(e) for e in event.logprobs],
                            tokens=min(event.token_count, 10_000),
                            prompt_tokens=event.prompt_tokens,
                        )
                    )
                    sent_any = True
                elif isinstance(event, Finish):
                    prompt_tokens += event.prompt_tokens
                    completion_tokens += event.completion_tokens
                    await send(Chunk(job_id=job.job_id, index=index, finish_reason=event.reason))
                    sent_any = True
            if cancel.cancelled:
                return
    except BackendError as exc:
        await send(
            JobError(
                job_id=job.job_id,
                code=exc.code[:100],
                message=str(exc)[:2000],
                retryable=not sent_any and exc.code not in CLIENT_ERRORS,
            )
        )
        return
    await send(
        Done(
            job_id=job.job_id,
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
        )
    )


async def run_embedding_job(job: Job, backend: EmbeddingBackend, send: Send) -> None:
    try:
        result = await backend.embed(job.inputs or [])
    except BackendError as exc:
        await send(
            JobError(
                job_id=job.job_id,
                code=exc.code[:100],
                message=str(exc)[:2000],
                retryable=exc.code not in CLIENT_ERRORS,
            )
        )
        return
    await send(
        Done(
            job_id=job.job_id,
            usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=0),
            embeddings_b64=[encode_vector(v) for v in result.vectors],
        )
    )
