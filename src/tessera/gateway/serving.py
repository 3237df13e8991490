"""The work behind each OpenAI endpoint: check, build the job, dispatch, answer.

Routes call these and only map the result to HTTP. Every path ends by recording the
request (metrics and the request log) exactly once, whether it succeeded or not.
"""

from __future__ import annotations

import base64
import contextlib
import struct
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from tessera.config import GatewaySettings
from tessera.errors import (
    InvalidRequest,
    ModelNotFound,
    NoCapacity,
    ProviderFailed,
    Reconnecting,
    TesseraError,
    openai_error_body,
)
from tessera.gateway.dispatch import (
    CLIENT_ERROR_CODES,
    Attempts,
    Dispatcher,
)
from tessera.gateway.events import EventSink, RequestFinished
from tessera.gateway.metrics import GatewayMetrics
from tessera.gateway.money import Money
from tessera.gateway.openai_format import (
    ChatChunks,
    ChoiceText,
    CompletionChunks,
    chat_completion,
    sse,
    text_completion,
)
from tessera.gateway.request_context import RequestContext, Served
from tessera.gateway.routing import no_route_error
from tessera.gateway.stream_relay import ProviderVanished, Relay, event_failure, event_reason
from tessera.gateway.transport import JobEvent, JobStream, ProviderGone
from tessera.gateway.verification import Verifier
from tessera.ledger.request_life import Release, Settlement
from tessera.market.diagnosis import RecentRequests
from tessera.market.quotes import output_token_bound, prompt_token_bound, prompt_token_floor
from tessera.market.registry import ProviderRegistry
from tessera.market.routing import RouteRequest
from tessera.market.sticky import StickyTable, conversation_digest
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

RECONNECT_RETRY_AFTER_S = 2.0  # providers reconnect within a second or two of a start

RenderFn = Callable[[str, str, dict[int, ChoiceText], Usage, int | None], dict[str, Any]]


class Serving:
    def __init__(
        self,
        registry: ProviderRegistry,
        dispatcher: Dispatcher,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        events: EventSink,
        payments: Money,
        verifier: Verifier,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.payments = payments
        self.clock = clock
        # Until then a model served before the start that nobody has announced since is
        # only waiting for its providers to reconnect (a restart, a standby's takeover).
        self.reconnecting_until = clock() + settings.uptime_restart_grace_s
        self.verifier = verifier
        self.registry = registry
        self.dispatcher = dispatcher
        self.settings = settings
        self.metrics = metrics
        self.events = events
        self.hub = dispatcher.hub
        self.hub.router.stake = payments.bonded
        self.sticky = StickyTable(settings.sticky_ttl_s)
        # Told of each conversation remembered here (replicas share them: sticky_share.py).
        self.on_remember: Callable[[str, str], None] | None = None
        self.recent = RecentRequests()  # routing requests per model, for provider status

    # ------------------------------------------------------------ checks

    def offer_for(self, model: str, kind: str) -> ModelOffer:
        offer = self.registry.offer(model)
        if offer is None:
            if self.registry.is_known(model):
                left = self.reconnecting_until - self.clock()
                if left > 0 and self.registry.is_awaited(model):
                    raise Reconnecting(
                        f"no provider is serving model '{model}' yet: this gateway has just "
                        "started and its providers are reconnecting; retry in a few seconds",
                        retry_after_s=min(left, RECONNECT_RETRY_AFTER_S),
                    )
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
        offer = await self._pick_model(req, ctx, "text")
        if req.top_logprobs and not req.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs: true", param="top_logprobs")
        top_n = (req.top_logprobs or 0) if req.logprobs else None
        params = self.sampling(req, offer, req.max_completion_tokens or req.max_tokens, top_n)
        messages = [ChatMessage(role=m.role, content=m.text()) for m in req.messages]
        turns = [(m.role, m.content) for m in messages]
        if len(turns) > 1:
            ctx.sticky = self.sticky.lookup(
                conversation_digest(ctx.api_key_id, ctx.model, turns[:-1]), time.monotonic()
            )
        ctx.turns = turns

        def make_job(job_id: str) -> Job:
            return Job(
                job_id=job_id, model=ctx.model, kind="chat", messages=messages, params=params
            )

        return await self._text(req, ctx, make_job, "messages", top_n, chat_completion, ChatChunks)

    async def completions(self, req: CompletionRequest, ctx: RequestContext) -> Served:
        offer = await self._pick_model(req, ctx, "text")
        top_n = req.logprobs
        params = self.sampling(req, offer, req.max_tokens, top_n)
        prompts = req.prompts()

        def make_job(job_id: str) -> Job:
            return Job(
                job_id=job_id, model=ctx.model, kind="completion", prompts=prompts, params=params
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
            stream, choices, done = await self._complete(make_job, ctx, param)
            body = render(ctx.request_id, ctx.model, choices, done.usage, top_n)
            answer = choices[0].text if 0 in choices else None

            def remember() -> None:
                if answer is not None:
                    self._remember(ctx, stream.provider_id, answer)

            return self._answered(ctx, stream, done, body, remember)
        attempts = self.dispatcher.attempts(ctx.request_id)
        stream, first = await self._start(make_job, ctx, param, attempts)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        chunks = chunk_type(ctx.request_id, ctx.model, include_usage, top_n)
        usage_chunk = chunks.usage if include_usage else None
        relay = Relay(stream, make_job, attempts, param)
        return self._streamed(relay, first, ctx, chunks.head(), chunks.event, usage_chunk)

    async def embeddings(self, req: EmbeddingRequest, ctx: RequestContext) -> Served:
        offer = await self._pick_model(req, ctx, "embedding")
        if req.dimensions is not None and req.dimensions != offer.embedding_dimensions:
            raise InvalidRequest(
                f"model '{req.model}' returns {offer.embedding_dimensions} dimensions and "
                "cannot shorten them",
                param="dimensions",
                code="unsupported_parameter",
            )
        inputs = req.inputs()

        def make_job(job_id: str) -> Job:
            return Job(job_id=job_id, model=ctx.model, kind="embedding", inputs=inputs)

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
        self.hub.job_succeeded(stream, 0)
        body = {
            "object": "list",
            "data": data,
            "model": ctx.model,
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
        }
        return self._answered(ctx, stream, first, body)

    def record(
        self,
        ctx: RequestContext,
        status: str,
        provider_id: str | None,
        error_code: str | None,
        usage: Usage | None,
    ) -> None:
        """Publish how the request ended (the metrics, the request log and the
        reputation book subscribe)."""
        charge, offer = ctx.charge, ctx.offer
        self.events.publish(
            RequestFinished(
                request_id=ctx.request_id,
                account_id=ctx.payer.account_id,
                api_key_id=ctx.api_key_id,
                endpoint=ctx.endpoint,
                model=ctx.model,
                provider_id=provider_id,
                status=status,
                error_code=error_code,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                cost=0 if charge is None or charge.cost is None else charge.cost,
                price_input_per_mtok=offer.price_input_per_mtok if offer else None,
                price_output_per_mtok=offer.price_output_per_mtok if offer else None,
                latency_s=time.perf_counter() - ctx.started,
                ttft_ms=ctx.ttft_ms,
                at=datetime.now(UTC),
                route=ctx.route,
            )
        )

    # ------------------------------------------------------------ money

    async def _pick_model(
        self,
        req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
        ctx: RequestContext,
        kind: str,
    ) -> ModelOffer:
        """The first of ``model`` then ``models`` that some allowed provider serves now.

        Sets ``ctx.model``. A model nobody may serve (none live, none within the policy)
        passes to the next; the last one's error is the answer if none is left.
        """
        names = [req.model, *dict.fromkeys(m for m in req.models or () if m != req.model)]
        for position, name in enumerate(names):
            try:
                offer = self.offer_for(name, kind)
                pool = self.registry.pool(name)
                route = self._route(ctx, name)
                route = replace(route, checks=[self.payments.stake_filter(name)])
                nobody = self.hub.router.any_eligible(pool, route)
                if nobody is not None:
                    raise no_route_error(nobody)
            except TesseraError as exc:
                if position + 1 < len(names) and _worth_a_fallback(exc):
                    continue
                ctx.model = name
                self.record(ctx, "error", None, exc.code, None)
                raise
            ctx.model = name
            if position:
                ctx.route = f"fallback model {name} (model {req.model} unavailable)"
            return offer
        raise AssertionError("unreachable: names is never empty")

    def _route(self, ctx: RequestContext, model: str, job: Job | None = None) -> RouteRequest:
        prompt = output = 0
        if job is not None:
            prompt = prompt_token_bound(job, 1 << 30)
            output = output_token_bound(job)
        return RouteRequest(
            model=model,
            policy=ctx.policy,
            checks=ctx.checks,
            prompt_tokens=prompt,
            output_tokens=output,
            sticky=ctx.sticky,
            account=ctx.payer.account_id,
        )

    async def _reserve(self, ctx: RequestContext, make_job: Callable[[str], Job]) -> None:
        """Hold the request's worst case before any work starts (or refuse it)."""
        job = make_job(ctx.request_id)
        try:
            self._refuse_too_long(job)
            ctx.charge = await self.payments.reserve(
                ctx.payer, ctx.request_id, job, self._route(ctx, job.model, job)
            )
        except TesseraError as exc:
            self.record(ctx, "error", None, exc.code, None)
            raise
        ctx.checks = self.payments.admit(ctx.charge, job)
        ctx.routing = self._route(ctx, job.model, job)
        self.recent.add(ctx.routing)

    def _refuse_too_long(self, job: Job) -> None:
        """A prompt that cannot fit the model's context is a 400 before any provider
        spends time tokenizing it (the bound is loose, so an honest prompt never fails)."""
        offer = self.registry.offer(job.model)
        if offer is None:
            return
        floor = prompt_token_floor(job, self.settings.max_prompt_bytes_per_token)
        if floor > offer.context_length:
            param = {"chat": "messages", "completion": "prompt"}.get(job.kind, "input")
            raise InvalidRequest(
                f"This model's maximum context length is {offer.context_length} tokens, "
                f"but your {param} is at least {floor} tokens long. Shorten it.",
                param=param,
                code="context_length_exceeded",
            )

    def _settle(
        self, ctx: RequestContext, stream: JobStream | None, settlement: Settlement | None
    ) -> None:
        """Carry out what the request's life decided (None: it was settled already; no
        charge: nothing was held, nothing to move)."""
        if ctx.charge is None or settlement is None:
            return
        if isinstance(settlement, Release):
            self.payments.release(ctx.charge, settlement.reason)
            return
        assert stream is not None, "a capture pays the provider of a stream"
        prompt = self._billable_prompt(stream, settlement.prompt_tokens)
        self.payments.capture(
            ctx.charge, stream.offer, settlement.provider_id, prompt, settlement.completion_tokens
        )

    @staticmethod
    def _billable_prompt(stream: JobStream, claimed: int) -> int:
        """The prompt tokens a consumer pays for: the provider's count, never more than
        the gateway's own bound on the prompt it sent (which a receipt claiming more is
        refused for). This is all that limits a bill on a model no auditor re-counts."""
        return min(claimed, prompt_token_bound(stream.job, stream.offer.context_length))

    def _accepted(self, ctx: RequestContext, stream: JobStream, done: Done) -> None:
        """A paid job with a good receipt: countersign and store it, maybe audit it."""
        cost = 0 if ctx.charge is None or ctx.charge.cost is None else ctx.charge.cost
        self.verifier.accepted(stream, done, ctx.payer.account_id, cost)

    def _release(self, ctx: RequestContext, reason: str) -> None:
        """Nothing (more) reaches the client, or what did is unproven: it costs nothing."""
        self._settle(ctx, None, ctx.life.failed(reason))

    def _answered(
        self,
        ctx: RequestContext,
        stream: JobStream,
        done: Done,
        body: dict[str, Any],
        on_delivered: Callable[[], None] | None = None,
    ) -> Served:
        """A whole answer with its cost in ``usage.cost`` (base units), not yet paid.

        The cost is what the capture will charge, but the capture itself (with the
        receipt, a possible audit and the request log) waits for ``settle(True)``: the
        response was handed to the client's connection. ``settle(False)`` (it could not
        be sent) releases the hold, so an answer that never left the gateway costs
        nothing.
        """
        charge = ctx.charge
        usage = done.usage
        cost = 0
        if charge is not None:
            prompt = self._billable_prompt(stream, usage.prompt_tokens)
            cost = self.payments.cost_of(charge, stream.offer, prompt, usage.completion_tokens)
        body.setdefault("usage", {})["cost"] = cost
        held = charge.held if charge else 0

        def settle(delivered: bool) -> None:
            if not delivered:
                self._release(ctx, "not_delivered")
                self.record(ctx, "error", stream.provider_id, "not_delivered", None)
                return
            paid = ctx.life.answered(usage.prompt_tokens, usage.completion_tokens)
            self._settle(ctx, stream, paid)
            self._accepted(ctx, stream, done)
            if on_delivered is not None:
                on_delivered()
            self.record(ctx, "ok", stream.provider_id, None, usage)

        return Served(
            stream.provider_id, body=body, cost=cost, held=held, route=ctx.route, settle=settle
        )

    def _remember(self, ctx: RequestContext, provider_id: str, answer: str) -> None:
        """Keep the conversation's next turn on this provider (its cache is warm)."""
        if ctx.turns is None:
            return
        digest = conversation_digest(ctx.api_key_id, ctx.model, [*ctx.turns, ("assistant", answer)])
        self.sticky.remember(digest, provider_id, time.monotonic())
        if self.on_remember is not None:
            self.on_remember(digest, provider_id)

    # ------------------------------------------------------------ plumbing

    async def _start(
        self,
        make_job: Callable[[str], Job],
        ctx: RequestContext,
        param: str,
        attempts: Attempts | None = None,
    ) -> tuple[JobStream, JobEvent]:
        attempts = attempts or self.dispatcher.attempts(ctx.request_id)
        route = ctx.routing or self._route(ctx, ctx.model)
        hedge = ctx.policy.hedge_after_ms or self.settings.hedge_after_ms
        try:
            stream, first = await self.dispatcher.start(make_job, attempts, route, param, hedge)
        except TesseraError as exc:
            self._release(ctx, "not_served")
            self.record(ctx, "error", None, exc.code, None)
            raise
        except BaseException:
            self._release(ctx, "client_disconnected")
            raise
        if ctx.charge is not None and ctx.charge.hold_stored is not None:
            try:
                await self.payments.confirm(ctx.charge)
            except BaseException as exc:
                await stream.close()
                self._release(ctx, "hold_not_stored")
                if isinstance(exc, TesseraError):
                    self.record(ctx, "error", stream.provider_id, exc.code, None)
                raise
        ctx.life.begin(stream.provider_id)
        ctx.offer = stream.offer
        if stream.decision is not None:
            why = stream.decision.header()
            ctx.route = why if ctx.route is None else f"{ctx.route}; {why}"
        if ctx.ttft_ms is None:
            ctx.ttft_ms = (time.perf_counter() - ctx.started) * 1000
            self.metrics.ttft.labels(endpoint=ctx.endpoint).observe(ctx.ttft_ms / 1000)
        return stream, first

    async def _complete(
        self, make_job: Callable[[str], Job], ctx: RequestContext, param: str
    ) -> tuple[JobStream, dict[int, ChoiceText], Done]:
        """A whole answer, not yet paid (see ``_answered``). A provider that vanishes
        mid-answer is replaced: the client has seen nothing yet, so starting over
        elsewhere is invisible to it."""
        attempts = self.dispatcher.attempts(ctx.request_id)
        while True:
            stream, first = await self._start(make_job, ctx, param, attempts)
            try:
                choices, done = await self._collect(stream, first)
                check = self.verifier.check(stream, done)
                if not check.ok:
                    # Nothing reached the client: another provider can answer instead.
                    raise ProviderVanished(f"its receipt was refused: {check.detail}")
            except ProviderVanished as exc:
                self.dispatcher.failed(attempts, stream.provider_id, exc.reason)
                self.dispatcher.metrics.retries.inc()
                if attempts.exhausted:
                    error = attempts.give_up()
                    self._release(ctx, "provider_failed")
                    self.record(ctx, "error", stream.provider_id, error.code, None)
                    raise error from None
                continue
            except TesseraError as exc:
                if exc.code not in CLIENT_ERROR_CODES:  # the request's fault is no one's failure
                    self.hub.job_failed(stream.provider_id, exc.code)
                self._release(ctx, "provider_failed")
                self.record(ctx, "error", stream.provider_id, exc.code, None)
                raise
            except BaseException:
                # The client left before the answer was complete: it received nothing.
                self.hub.registry.health(stream.provider_id).abandoned()
                self._release(ctx, "client_disconnected")
                self.record(ctx, "cancelled", stream.provider_id, "client_disconnected", None)
                raise
            self.hub.job_succeeded(stream, done.usage.completion_tokens)
            return stream, choices, done

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
                    raise ProviderVanished(event.reason)
                else:
                    raise event_failure(event)
                event = await stream.next_event(self.settings.first_token_timeout_s)
        finally:
            await stream.close()

    def _streamed(
        self,
        relay: Relay,
        first: JobEvent,
        ctx: RequestContext,
        head: list[dict[str, Any]],
        event: Callable[[Chunk], bytes],
        usage_chunk: Callable[[Usage], dict[str, Any]] | None,
    ) -> Served:
        body = self._relay(relay, first, ctx, head, event, usage_chunk)

        async def finish() -> None:
            # Runs after the response, however it ended; settles a relay that never ran.
            self._settle_abandoned(ctx, relay)
            with contextlib.suppress(RuntimeError):  # still running elsewhere: it ends itself
                await body.aclose()
            await relay.stream.close()

        held = ctx.charge.held if ctx.charge else 0
        provider_id = relay.stream.provider_id
        return Served(provider_id, stream=body, held=held, finish=finish, route=ctx.route)

    def _settle_abandoned(self, ctx: RequestContext, relay: Relay) -> None:
        """The client left mid-stream: it pays for the tokens it was sent, no more.

        After a continuation, only what the current provider sent is paid (to it); the
        failed provider's part was never proven by a receipt and is free.
        """
        self._settle(ctx, relay.stream, ctx.life.abandoned())

    async def _relay(
        self,
        relay: Relay,
        first: JobEvent,
        ctx: RequestContext,
        head: list[dict[str, Any]],
        encode: Callable[[Chunk], bytes],
        usage_chunk: Callable[[Usage], dict[str, Any]] | None,
    ) -> AsyncGenerator[bytes, None]:
        """SSE bytes as the provider produces them; cancels the job if the client leaves.

        A provider that drops mid-answer is replaced by another that continues from the
        tokens already sent, when the answer is reproducible (greedy or seeded, one
        choice); otherwise the stream ends with an error event. ``usage_chunk`` is set
        only when the client asked for stream_options.include_usage.
        """
        status = "cancelled"
        error_code: str | None = "client_disconnected"
        usage: Usage | None = None
        try:
            for item in head:
                yield sse(item)
            event = first
            while True:
                stream = relay.stream
                if isinstance(event, Chunk):
                    yield encode(event)
                    relay.add(event)
                    ctx.life.relayed(event.tokens, event.prompt_tokens)
                elif isinstance(event, Done):
                    # What the client was sent: the prompt (without the earlier providers'
                    # tokens, which this provider read as prompt) and every token.
                    usage = Usage(
                        prompt_tokens=event.usage.prompt_tokens - relay.prefix,
                        completion_tokens=event.usage.completion_tokens + relay.prefix,
                    )
                    check = self.verifier.check(stream, event)
                    if check.ok:
                        made = event.usage.completion_tokens  # by this provider: it is paid
                        paid = ctx.life.answered(event.usage.prompt_tokens, made)
                        self._settle(ctx, stream, paid)
                        if ctx.charge is not None:
                            await self.payments.stored(ctx.charge)
                        self._accepted(ctx, stream, event)
                        self.hub.job_succeeded(stream, made)
                        if relay.prefix:
                            self.metrics.continuations.labels(outcome="completed").inc()
                        self._remember(ctx, stream.provider_id, relay.text)
                        status, error_code = "ok", None
                    else:
                        # Already delivered, but unproven: the consumer pays nothing for it
                        # and the provider earns nothing.
                        self._release(ctx, "receipt_refused")
                        status, error_code = "error", "receipt_refused"
                    if usage_chunk is not None:
                        chunk = usage_chunk(usage)
                        chunk["usage"]["cost"] = ctx.charge.cost or 0 if ctx.charge else 0
                        yield sse(chunk)
                    yield sse("[DONE]")
                    return
                else:
                    reason = event_reason(event)
                    why_not = ""
                    if isinstance(event, ProviderGone) or (
                        isinstance(event, JobError) and event.retryable
                    ):
                        self.dispatcher.failed(relay.attempts, stream.provider_id, reason)
                        resumed = await self._continue(relay, ctx)
                        if not isinstance(resumed, str):
                            event = resumed
                            continue
                        why_not = resumed
                    elif isinstance(event, JobError) and event.code not in CLIENT_ERROR_CODES:
                        self.hub.job_failed(stream.provider_id, reason)
                    # The provider failed mid-answer: its work costs the consumer nothing.
                    exc = event_failure(event)
                    if why_not:
                        exc = ProviderFailed(
                            f"{exc}; the answer could not be continued elsewhere: {why_not}. "
                            "Nothing was charged; retry the request",
                            code=exc.code,
                        )
                    self._release(ctx, "provider_failed")
                    status, error_code = "error", exc.code
                    yield sse(openai_error_body(exc))
                    yield sse("[DONE]")
                    return
                event = await stream.next_event(self.settings.first_token_timeout_s)
        finally:
            if status == "cancelled":
                self._settle_abandoned(ctx, relay)
            await relay.stream.close()
            self.record(ctx, status, relay.stream.provider_id, error_code, usage)

    async def _continue(self, relay: Relay, ctx: RequestContext) -> JobEvent | str:
        """Move a broken stream to another provider: its first event, or why it can't.

        The new job carries the token ids already sent (``continue_from``) and asks for
        the rest of ``max_tokens``; the provider reads them as if it had written them.
        """
        job = relay.stream.job
        params = job.params
        reproducible = params is not None and (params.temperature == 0 or params.seed is not None)
        single = job.kind == "chat" or (job.prompts is not None and len(job.prompts) == 1)
        sent = relay.token_ids
        if relay.finished:
            return "it had already finished, but its provider left before proving it"
        if not reproducible:
            return "it was sampled without a seed (set temperature 0 or a seed to allow it)"
        if not single:
            return "it has several choices"
        if relay.continuations >= self.settings.max_continuations:
            return f"it was already continued {relay.continuations} time(s)"
        assert params is not None
        if params.max_tokens - len(sent) <= 0 or not sent:
            return "no tokens were left to generate"
        await relay.stream.close()
        base = relay.make_job
        all_sent = [*(job.continue_from or ()), *sent]

        def make_job(job_id: str) -> Job:
            original = base(job_id)
            assert original.params is not None
            rest = original.params.model_copy(
                update={"max_tokens": original.params.max_tokens - len(all_sent)}
            )
            return original.model_copy(update={"continue_from": all_sent, "params": rest})

        try:
            stream, first = await self.dispatcher.start(
                make_job, relay.attempts, ctx.routing or self._route(ctx, ctx.model), relay.param
            )
        except TesseraError as exc:
            self.metrics.continuations.labels(outcome="no_provider").inc()
            return f"no other provider could take it ({exc})"
        self.metrics.continuations.labels(outcome="started").inc()
        relay.resume(stream, len(all_sent))
        ctx.life.begin(stream.provider_id, prefix=len(all_sent))
        ctx.offer = stream.offer  # (the hold was confirmed when the stream first started)
        if stream.decision is not None:
            ctx.route = f"{ctx.route}; continued: {stream.decision.header()}"
        return first


def _worth_a_fallback(exc: TesseraError) -> bool:
    """Errors that another model may not have: nobody serves it, or nobody allowed."""
    return isinstance(exc, NoCapacity | ModelNotFound) or (exc.code or "").startswith("no_provider")


def _vector(b64: str, encoding_format: str | None) -> list[float] | str:
    raw = base64.b64decode(b64, validate=True)
    if len(raw) % 4:
        raise ProviderFailed("the provider sent a malformed embedding")
    if encoding_format == "base64":
        return b64
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))
