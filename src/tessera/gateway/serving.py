"""The work behind each OpenAI endpoint: check, build the job, dispatch, answer.

Routes call these and only map the result to HTTP. Every path ends by recording the
request (metrics and the request log) exactly once, whether it succeeded or not.
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tessera.config import GatewaySettings
from tessera.errors import (
    InvalidRequest,
    ModelNotFound,
    NoCapacity,
    ProviderFailed,
    TesseraError,
    openai_error_body,
)
from tessera.gateway.dispatch import Attempts, Dispatcher, job_error_to_exception
from tessera.gateway.hub import Admit, JobEvent, JobStream, ProviderGone
from tessera.gateway.metrics import GatewayMetrics
from tessera.gateway.openai_format import (
    ChatChunks,
    ChoiceText,
    CompletionChunks,
    chat_completion,
    text_completion,
)
from tessera.gateway.payments import Charge, Payer, Payments
from tessera.gateway.verification import Verifier
from tessera.market.quotes import MaxPrice
from tessera.market.registry import ProviderRegistry
from tessera.protocol.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    refuse_unhonourable,
)
from tessera.protocol.wire import (
    ChatMessage,
    Chunk,
    Done,
    Job,
    JobError,
    ModelOffer,
    SamplingParams,
    Usage,
)


@dataclass(slots=True)
class RequestContext:
    """Who asked, for what, and when; carried through one request."""

    request_id: str
    api_key_id: str
    endpoint: str
    model: str
    started: float  # time.perf_counter()
    payer: Payer
    ttft_ms: float | None = None
    max_price: MaxPrice = field(default_factory=MaxPrice)
    charge: Charge | None = None
    admit: Admit | None = None
    offer: ModelOffer | None = None  # the offer (price) of the provider that ran the job


@dataclass(frozen=True, slots=True)
class Served:
    """A finished answer (body) or a stream of SSE bytes, and who served it.

    ``finish`` must run once the response is over, however it ended: it settles a
    stream whose generator never ran (the client left before the first byte).
    """

    provider_id: str
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    cost: int | None = None
    held: int = 0
    finish: Callable[[], Awaitable[None]] | None = None


RenderFn = Callable[[str, str, dict[int, ChoiceText], Usage, int | None], dict[str, Any]]
RecordFn = Callable[[RequestContext, str, "str | None", "str | None", Usage | None], None]


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class Serving:
    def __init__(
        self,
        registry: ProviderRegistry,
        dispatcher: Dispatcher,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        record: RecordFn,
        payments: Payments,
        verifier: Verifier,
    ) -> None:
        self.payments = payments
        self.verifier = verifier
        self.registry = registry
        self.dispatcher = dispatcher
        self.settings = settings
        self.metrics = metrics
        self.record = record

    # ------------------------------------------------------------ checks

    def offer_for(self, model: str, kind: str) -> ModelOffer:
        offer = self.registry.offer(model)
        if offer is None:
            if self.registry.is_known(model):
                raise NoCapacity(f"no live provider is serving model '{model}' right now")
            raise ModelNotFound(
                f"The model '{model}' does not exist or is not served on this network. "
                "GET /v1/models lists the models served now.",
                param="model",
            )
        if offer.kind != kind:
            use = "/v1/embeddings" if offer.kind == "embedding" else "/v1/chat/completions"
            article = "an" if offer.kind[0] in "aeiou" else "a"
            raise InvalidRequest(
                f"model '{model}' is {article} {offer.kind} model: use {use}",
                param="model",
                code="wrong_model_kind",
            )
        return offer

    def sampling(
        self,
        req: ChatCompletionRequest | CompletionRequest,
        offer: ModelOffer,
        max_tokens: int | None,
        top_logprobs: int | None,
    ) -> SamplingParams:
        refused = refuse_unhonourable(req, supports_tools=offer.supports_tools)
        if refused is not None:
            param, reason = refused
            raise InvalidRequest(reason, param=param, code="unsupported_parameter")
        limit = max_tokens or min(self.settings.default_max_tokens, offer.context_length)
        if limit > offer.context_length:
            raise InvalidRequest(
                f"max_tokens is {limit}, but model '{offer.name}' has a context of "
                f"{offer.context_length} tokens",
                param="max_tokens",
            )
        return SamplingParams(
            max_tokens=limit,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=req.seed,
            stop=req.stop_list(),
            logprobs=top_logprobs is not None,
            top_logprobs=top_logprobs or 0,
        )

    # ------------------------------------------------------------ endpoints

    async def chat(self, req: ChatCompletionRequest, ctx: RequestContext) -> Served:
        offer = self.offer_for(req.model, "text")
        if req.top_logprobs and not req.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs: true", param="top_logprobs")
        top_n = (req.top_logprobs or 0) if req.logprobs else None
        params = self.sampling(req, offer, req.max_completion_tokens or req.max_tokens, top_n)
        messages = [ChatMessage(role=m.role, content=m.text()) for m in req.messages]

        def make_job(job_id: str) -> Job:
            return Job(
                job_id=job_id, model=req.model, kind="chat", messages=messages, params=params
            )

        return await self._text(req, ctx, make_job, "messages", top_n, chat_completion, ChatChunks)

    async def completions(self, req: CompletionRequest, ctx: RequestContext) -> Served:
        offer = self.offer_for(req.model, "text")
        top_n = req.logprobs
        params = self.sampling(req, offer, req.max_tokens, top_n)
        prompts = req.prompts()

        def make_job(job_id: str) -> Job:
            return Job(
                job_id=job_id, model=req.model, kind="completion", prompts=prompts, params=params
            )

        return await self._text(
            req, ctx, make_job, "prompt", top_n, text_completion, CompletionChunks
        )

    async def _text(
        self,
        req: ChatCompletionRequest | CompletionRequest,
        ctx: RequestContext,
        make_job: Callable[[str], Job],
        param: str,
        top_n: int | None,
        render: RenderFn,
        chunk_type: type[ChatChunks | CompletionChunks],
    ) -> Served:
        """Pay ahead, then answer whole or as a stream: what chat and completions share."""
        await self._reserve(ctx, make_job)
        if not req.stream:
            provider_id, choices, usage = await self._complete(make_job, ctx, param)
            body = render(ctx.request_id, req.model, choices, usage, top_n)
            return self._answered(provider_id, body, ctx)
        stream, first = await self._start(make_job, ctx, param)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        chunks = chunk_type(ctx.request_id, req.model, include_usage, top_n)
        usage_chunk = chunks.usage if include_usage else None
        return self._streamed(stream, first, ctx, chunks.head(), chunks.content, usage_chunk)

    async def embeddings(self, req: EmbeddingRequest, ctx: RequestContext) -> Served:
        offer = self.offer_for(req.model, "embedding")
        if req.dimensions is not None and req.dimensions != offer.embedding_dimensions:
            raise InvalidRequest(
                f"model '{req.model}' returns {offer.embedding_dimensions} dimensions and "
                "cannot shorten them",
                param="dimensions",
                code="unsupported_parameter",
            )
        inputs = req.inputs()

        def make_job(job_id: str) -> Job:
            return Job(job_id=job_id, model=req.model, kind="embedding", inputs=inputs)

        await self._reserve(ctx, make_job)
        stream, first = await self._start(make_job, ctx, "input")
        try:
            if not isinstance(first, Done) or first.embeddings_b64 is None:
                raise ProviderFailed("the provider answered an embedding job without vectors")
            if len(first.embeddings_b64) != len(inputs):
                raise ProviderFailed("the provider returned the wrong number of vectors")
            check = self.verifier.check(stream, first)
            if not check.ok:
                raise ProviderFailed(
                    f"the provider's receipt was refused ({check.problem}); retry the request",
                    code="receipt_refused",
                )
            data = [
                {"object": "embedding", "index": i, "embedding": _vector(b64, req.encoding_format)}
                for i, b64 in enumerate(first.embeddings_b64)
            ]
        except TesseraError as exc:
            self._release(ctx, "provider_failed")
            self.record(ctx, "error", stream.provider_id, exc.code, None)
            raise
        except BaseException:
            self._release(ctx, "client_disconnected")
            raise
        finally:
            await stream.close()
        usage = first.usage
        self._capture(ctx, stream, usage.prompt_tokens, 0)
        self._accepted(ctx, stream, first)
        self.record(ctx, "ok", stream.provider_id, None, usage)
        body = {
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
        }
        return self._answered(stream.provider_id, body, ctx)

    # ------------------------------------------------------------ money

    async def _reserve(self, ctx: RequestContext, make_job: Callable[[str], Job]) -> None:
        """Hold the request's worst case before any work starts (or refuse it)."""
        job = make_job(ctx.request_id)
        try:
            ctx.charge = await self.payments.reserve(ctx.payer, ctx.request_id, job, ctx.max_price)
        except TesseraError as exc:
            self.record(ctx, "error", None, exc.code, None)
            raise
        ctx.admit = self.payments.admit(ctx.charge, job, ctx.max_price)

    def _capture(
        self, ctx: RequestContext, stream: JobStream, prompt_tokens: int, completion_tokens: int
    ) -> None:
        if ctx.charge is not None:
            self.payments.capture(
                ctx.charge, stream.offer, stream.provider_id, prompt_tokens, completion_tokens
            )

    def _accepted(self, ctx: RequestContext, stream: JobStream, done: Done) -> None:
        """A paid job with a good receipt: countersign and store it, maybe audit it."""
        cost = 0 if ctx.charge is None or ctx.charge.cost is None else ctx.charge.cost
        self.verifier.accepted(stream, done, ctx.payer.account_id, cost)

    def _release(self, ctx: RequestContext, reason: str) -> None:
        if ctx.charge is not None:
            self.payments.release(ctx.charge, reason)

    def _answered(self, provider_id: str, body: dict[str, Any], ctx: RequestContext) -> Served:
        """A whole answer with its cost in ``usage.cost`` (base units)."""
        charge = ctx.charge
        cost = 0 if charge is None or charge.cost is None else charge.cost
        body.setdefault("usage", {})["cost"] = cost
        return Served(provider_id, body=body, cost=cost, held=charge.held if charge else 0)

    # ------------------------------------------------------------ plumbing

    async def _start(
        self,
        make_job: Callable[[str], Job],
        ctx: RequestContext,
        param: str,
        attempts: Attempts | None = None,
    ) -> tuple[JobStream, JobEvent]:
        attempts = attempts or self.dispatcher.attempts(ctx.request_id)
        try:
            stream, first = await self.dispatcher.start(make_job, attempts, param, ctx.admit)
        except TesseraError as exc:
            self._release(ctx, "not_served")
            self.record(ctx, "error", None, exc.code, None)
            raise
        except BaseException:
            self._release(ctx, "client_disconnected")
            raise
        ctx.offer = stream.offer
        if ctx.ttft_ms is None:
            ctx.ttft_ms = (time.perf_counter() - ctx.started) * 1000
            self.metrics.ttft.labels(endpoint=ctx.endpoint).observe(ctx.ttft_ms / 1000)
        return stream, first

    async def _complete(
        self, make_job: Callable[[str], Job], ctx: RequestContext, param: str
    ) -> tuple[str, dict[int, ChoiceText], Usage]:
        """A whole answer. A provider that vanishes mid-answer is replaced: the client has
        seen nothing yet, so starting over elsewhere is invisible to it."""
        attempts = self.dispatcher.attempts(ctx.request_id)
        while True:
            stream, first = await self._start(make_job, ctx, param, attempts)
            try:
                choices, done = await self._collect(stream, first)
                check = self.verifier.check(stream, done)
                if not check.ok:
                    # Nothing reached the client: another provider can answer instead.
                    raise _ProviderVanished(f"its receipt was refused: {check.detail}")
            except _ProviderVanished as exc:
                attempts.failed(stream.provider_id, exc.reason)
                self.dispatcher.metrics.retries.inc()
                if attempts.exhausted:
                    error = attempts.give_up()
                    self._release(ctx, "provider_failed")
                    self.record(ctx, "error", stream.provider_id, error.code, None)
                    raise error from None
                continue
            except TesseraError as exc:
                self._release(ctx, "provider_failed")
                self.record(ctx, "error", stream.provider_id, exc.code, None)
                raise
            except BaseException:
                # The client left before the answer was complete: it received nothing.
                self._release(ctx, "client_disconnected")
                self.record(ctx, "cancelled", stream.provider_id, "client_disconnected", None)
                raise
            usage = done.usage
            self._capture(ctx, stream, usage.prompt_tokens, usage.completion_tokens)
            if ctx.charge is not None:
                await self.payments.stored(ctx.charge)
            self._accepted(ctx, stream, done)
            self.record(ctx, "ok", stream.provider_id, None, usage)
            return stream.provider_id, choices, usage

    async def _collect(
        self, stream: JobStream, first: JobEvent
    ) -> tuple[dict[int, ChoiceText], Done]:
        choices: dict[int, ChoiceText] = {}
        event = first
        try:
            while True:
                if isinstance(event, Chunk):
                    choices.setdefault(event.index, ChoiceText()).add(event)
                elif isinstance(event, Done):
                    choices.setdefault(0, ChoiceText())
                    return choices, event
                elif isinstance(event, ProviderGone):
                    raise _ProviderVanished(event.reason)
                else:
                    raise _failure(event)
                event = await stream.next_event(self.settings.first_token_timeout_s)
        finally:
            await stream.close()

    def _streamed(
        self,
        stream: JobStream,
        first: JobEvent,
        ctx: RequestContext,
        head: list[dict[str, Any]],
        content: Callable[[Chunk], dict[str, Any]],
        usage_chunk: Callable[[Usage], dict[str, Any]] | None,
    ) -> Served:
        delivered = _Delivered()
        relay = self._relay(stream, first, ctx, head, content, usage_chunk, delivered)

        async def finish() -> None:
            # Runs after the response, however it ended; settles a relay that never ran.
            self._settle_abandoned(ctx, stream, delivered)
            with contextlib.suppress(RuntimeError):  # still running elsewhere: it ends itself
                await relay.aclose()
            await stream.close()

        held = ctx.charge.held if ctx.charge else 0
        return Served(stream.provider_id, stream=relay, held=held, finish=finish)

    def _settle_abandoned(self, ctx: RequestContext, stream: JobStream, seen: _Delivered) -> None:
        """The client left mid-stream: it pays for the tokens it was sent, no more."""
        if seen.tokens or seen.prompt_tokens:
            self._capture(ctx, stream, seen.prompt_tokens, seen.tokens)
        else:
            self._release(ctx, "client_disconnected")

    async def _relay(
        self,
        stream: JobStream,
        first: JobEvent,
        ctx: RequestContext,
        head: list[dict[str, Any]],
        content: Callable[[Chunk], dict[str, Any]],
        usage_chunk: Callable[[Usage], dict[str, Any]] | None,
        delivered: _Delivered,
    ) -> AsyncGenerator[bytes, None]:
        """SSE bytes as the provider produces them; cancels the job if the client leaves.

        ``usage_chunk`` is set only when the client asked for stream_options.include_usage.
        """
        status = "cancelled"
        error_code: str | None = "client_disconnected"
        usage: Usage | None = None
        try:
            for item in head:
                yield sse(item)
            event = first
            while True:
                if isinstance(event, Chunk):
                    yield sse(content(event))
                    delivered.add(event)
                elif isinstance(event, Done):
                    usage = event.usage
                    check = self.verifier.check(stream, event)
                    if check.ok:
                        self._capture(ctx, stream, usage.prompt_tokens, usage.completion_tokens)
                        if ctx.charge is not None:
                            await self.payments.stored(ctx.charge)
                        self._accepted(ctx, stream, event)
                        status, error_code = "ok", None
                    else:
                        # Already delivered, but unproven: the consumer pays nothing for it
                        # and the provider earns nothing.
                        self._release(ctx, "receipt_refused")
                        status, error_code = "error", "receipt_refused"
                    if usage_chunk is not None:
                        chunk = usage_chunk(event.usage)
                        chunk["usage"]["cost"] = ctx.charge.cost or 0 if ctx.charge else 0
                        yield sse(chunk)
                    yield sse("[DONE]")
                    return
                else:
                    # The provider failed mid-answer: its work costs the consumer nothing.
                    exc = _failure(event)
                    self._release(ctx, "provider_failed")
                    status, error_code = "error", exc.code
                    yield sse(openai_error_body(exc))
                    yield sse("[DONE]")
                    return
                event = await stream.next_event(self.settings.first_token_timeout_s)
        finally:
            if status == "cancelled":
                self._settle_abandoned(ctx, stream, delivered)
            await stream.close()
            self.record(ctx, status, stream.provider_id, error_code, usage)


@dataclass(slots=True)
class _Delivered:
    """What a stream has handed the client so far: what an abandoned stream pays for."""

    tokens: int = 0
    prompt_tokens: int = 0

    def add(self, chunk: Chunk) -> None:
        self.tokens += chunk.tokens
        if chunk.prompt_tokens is not None and not self.prompt_tokens:
            self.prompt_tokens = chunk.prompt_tokens


class _ProviderVanished(Exception):
    """The provider's connection ended mid-answer (internal: triggers a retry)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _failure(event: JobEvent) -> TesseraError:
    if isinstance(event, JobError):
        return job_error_to_exception(event)
    if isinstance(event, ProviderGone):
        return ProviderFailed(f"the provider stopped mid-response: {event.reason}")
    return ProviderFailed("the provider sent an unexpected frame")


def _vector(b64: str, encoding_format: str | None) -> list[float] | str:
    raw = base64.b64decode(b64, validate=True)
    if len(raw) % 4:
        raise ProviderFailed("the provider sent a malformed embedding")
    if encoding_format == "base64":
        return b64
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))
