"""Run one job on a backend and turn what it produces into protocol frames.

Contract with the gateway: a job ends with exactly one Done or one JobError. A JobError
is ``retryable`` only when nothing was sent yet and another provider could succeed.

Every text chunk carries the sampled token ids and their raw logprobs (the client-facing
``logprobs`` only when the job asked for them); the finishing chunk says whether the model
ended with its end-of-sequence token. The Done carries a :class:`Receipt` signed with the
provider key that commits to exactly the chunks sent (``OutputDigest``), so its
``completion_tokens`` equal the digest's: ids listed plus one per end-of-sequence token.

No choice sends more than ``max_tokens`` tokens, whatever the backend produces (an
upstream server may ignore ``max_tokens``): a delta that would pass it is cut, the choice
finishes there with ``length`` and exactly ``max_tokens`` completion tokens, and its
stream is closed. So a job never sends more than the gateway's frame budget: one chunk per
token plus a finish per choice, and the Done. A choice cut this way counts the prompt
tokens its backend told before the cut (0 when it told none: an upstream tells them only
at the end). A backend's own Finish is signed as it counts.

A continuation job (``Job.continue_from``, failover after another provider died mid-stream)
has one prompt; the backend reads prompt + continue_from and produces only what follows.
Its usage and receipt count ``prompt_tokens`` = the prompt's tokens + len(continue_from)
(everything the model read) and ``completion_tokens`` = new tokens only; the receipt's
``prompt_sha256`` covers ``continue_from``, since it hashes the whole job but its ids.
"""

from __future__ import annotations

import base64
import contextlib
import math
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from nacl.signing import SigningKey

from tessera.protocol import signing
from tessera.protocol.receipts import (
    OutputDigest,
    embeddings_sha256,
    prompt_sha256,
    request_id_of,
    sign_receipt,
)
from tessera.protocol.wire import (
    Chunk,
    Done,
    Frame,
    Job,
    JobError,
    ModelOffer,
    Receipt,
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
CLIENT_ERRORS = {
    "context_length_exceeded",
    "invalid_token_ids",
    "invalid_prompt",
    "chat_template_missing",
    "invalid_continuation",
}
LOGPROB_FLOOR = -9999.0
MAX_CHUNK_TOKENS = 10_000  # the wire's bound on a chunk's token lists


@dataclass(frozen=True, slots=True)
class ReceiptSigner:
    """What a job needs to sign its receipt: the provider key and the offer it ran under."""

    key: SigningKey
    offer: ModelOffer

    @property
    def provider_id(self) -> str:
        return signing.public_key_hex(self.key)

    def sign(
        self, job: Job, output_sha256: str, usage: Usage, started_at_ms: int
    ) -> tuple[Receipt, str]:
        """The receipt for a finished job (finished now) and its signature."""
        receipt = Receipt(
            request_id=request_id_of(job),
            job_id=job.job_id,
            provider_id=self.provider_id,
            model=job.model,
            weights_sha256=self.offer.weights_sha256,
            kind=job.kind,
            prompt_sha256=prompt_sha256(job),
            output_sha256=output_sha256,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            price_input_per_mtok=self.offer.price_input_per_mtok,
            price_output_per_mtok=self.offer.price_output_per_mtok,
            started_at_ms=started_at_ms,
            finished_at_ms=max(started_at_ms, now_ms()),
        )
        return receipt, sign_receipt(self.key, receipt)


def now_ms() -> int:
    """The provider's clock in Unix milliseconds (what receipts record)."""
    return time.time_ns() // 1_000_000


def finite_logprob(value: float) -> float:
    """Clamp into what the wire allows: finite and <= 0 (rounding can give +1e-7)."""
    if math.isnan(value):
        return LOGPROB_FLOOR
    return min(0.0, max(LOGPROB_FLOOR, value))


def _wire_logprob(entry: BackendLogprob) -> TokenLogprob:
    return TokenLogprob(
        token=entry.token[:1000],
        token_id=max(0, entry.token_id),
        logprob=finite_logprob(entry.logprob),
        top_logprobs=[
            TopLogprob(token=t.token[:1000], logprob=finite_logprob(t.logprob))
            for t in entry.top[:20]
        ],
    )


def encode_vector(vector: Sequence[float]) -> str:
    """Base64 of little-endian float32: OpenAI's ``encoding_format: base64``."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _delta_chunks(job: Job, index: int, event: Delta, client_logprobs: bool) -> list[Chunk]:
    """The chunk for a delta (split only if it carries more tokens than a chunk may)."""
    entries = event.logprobs
    pieces = [entries[i : i + MAX_CHUNK_TOKENS] for i in range(0, len(entries), MAX_CHUNK_TOKENS)]
    pieces = pieces or [()]
    chunks = []
    for number, piece in enumerate(pieces):
        first, last = number == 0, number == len(pieces) - 1
        chunks.append(
            Chunk(
                job_id=job.job_id,
                index=index,
                text=event.text if last else "",
                logprobs=[_wire_logprob(e) for e in piece] if client_logprobs else [],
                tokens=min(len(piece) if len(pieces) > 1 else event.token_count, MAX_CHUNK_TOKENS),
                prompt_tokens=event.prompt_tokens if first else None,
                token_ids=[max(0, e.token_id) for e in piece],
                token_logprobs=[finite_logprob(e.logprob) for e in piece],
            )
        )
    return chunks


def _within(delta: Delta, room: int) -> Delta | None:
    """The part of ``delta`` that fits in ``room`` more tokens: all of it (the same object),
    its first tokens, or None.

    A cut keeps the first ``room`` logprob entries, and the text only when it is exactly
    those entries' tokens (the text of several tokens cannot be split otherwise; what is
    dropped is then held back, as text is before a character or a stop string completes).
    """
    if delta.token_count <= room:
        return delta
    if room <= 0:
        return None
    if not delta.logprobs:
        return replace(delta, tokens=room)  # text counted as more tokens than it lists
    kept = delta.logprobs[:room]
    whole = "".join(entry.token for entry in delta.logprobs) == delta.text
    text = "".join(entry.token for entry in kept) if whole else ""
    return replace(delta, text=text, logprobs=kept, tokens=0)


@contextlib.asynccontextmanager
async def _closing(events: AsyncIterator[Delta | Finish]) -> AsyncIterator[None]:
    """Close ``events`` on leaving (an async generator's aclose), so a stream left early
    stops its backend now rather than when the generator is collected."""
    try:
        yield
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def run_text_job(
    job: Job, backend: TextBackend, send: Send, cancel: CancelToken, signer: ReceiptSigner
) -> None:
    if job.params is None:
        await send(JobError(job_id=job.job_id, code="invalid_request", message="no params"))
        return
    started_at_ms = now_ms()
    prompts: list[Prompt]
    if job.kind == "chat":
        prompts = [job.messages or []]
    else:
        prompts = list(job.prompts or [])
    continue_from = job.continue_from or []
    if continue_from and len(prompts) != 1:
        await send(
            JobError(
                job_id=job.job_id,
                code="invalid_continuation",
                message=f"continue_from needs a job with one prompt; this one has {len(prompts)}",
            )
        )
        return
    client_logprobs = job.params.logprobs
    digest = OutputDigest()
    sent_any = False
    prompt_tokens = completion_tokens = 0

    async def emit(chunk: Chunk) -> None:
        nonlocal sent_any
        digest.add(chunk)
        await send(chunk)
        sent_any = True

    max_tokens = job.params.max_tokens
    try:
        for index, prompt in enumerate(prompts):
            # Passed only when set: backends written before continuations still run the rest.
            events = (
                backend.stream(prompt, job.params, cancel, continue_from)
                if continue_from
                else backend.stream(prompt, job.params, cancel)
            )
            room, told_prompt_tokens, cut = max_tokens, 0, False
            async with _closing(events):
                async for event in events:
                    if isinstance(event, Delta):
                        if not event.text and not event.logprobs:
                            continue
                        told_prompt_tokens = told_prompt_tokens or event.prompt_tokens or 0
                        fitting = _within(event, room)
                        if fitting is not None:
                            room -= fitting.token_count
                            for chunk in _delta_chunks(job, index, fitting, client_logprobs):
                                await emit(chunk)
                        if fitting is event:
                            continue
                        # Past max_tokens (an upstream that ignores it): the choice finishes
                        # here, and leaving the loop closes the backend's stream.
                        event, cut = Finish("length", told_prompt_tokens, max_tokens - room), True
                    prompt_tokens += event.prompt_tokens
                    completion_tokens += event.completion_tokens
                    await emit(
                        Chunk(
                            job_id=job.job_id,
                            index=index,
                            finish_reason=event.reason,
                            eos=event.eos,
                        )
                    )
                    if cut:
                        break
            # A choice cut at max_tokens is complete, even if closing its stream set cancel.
            if cancel.cancelled and not cut:
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
    usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    receipt, signature = signer.sign(job, digest.sha256(), usage, started_at_ms)
    await send(Done(job_id=job.job_id, usage=usage, receipt=receipt, receipt_signature=signature))


async def run_embedding_job(
    job: Job, backend: EmbeddingBackend, send: Send, signer: ReceiptSigner
) -> None:
    if job.continue_from:
        await send(
            JobError(
                job_id=job.job_id,
                code="invalid_continuation",
                message="an embedding job has no output to continue",
            )
        )
        return
    started_at_ms = now_ms()
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
    embeddings = [encode_vector(v) for v in result.vectors]
    usage = Usage(prompt_tokens=result.prompt_tokens, completion_tokens=0)
    receipt, signature = signer.sign(job, embeddings_sha256(embeddings), usage, started_at_ms)
    await send(
        Done(
            job_id=job.job_id,
            usage=usage,
            embeddings_b64=embeddings,
            receipt=receipt,
            receipt_signature=signature,
        )
    )
