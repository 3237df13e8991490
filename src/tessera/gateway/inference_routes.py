"""The OpenAI-compatible surface: the inference POSTs, models, health, metrics, and the
providers' socket.

Each inference route authenticates, admits, parses, hands the body to ``Serving`` and
maps what comes back; the shared steps live in one ``serve`` so the three stay alike.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from pydantic import BaseModel

from tessera import __version__
from tessera.gateway.admission import token_bound
from tessera.gateway.fast_routes import InferenceRoutes
from tessera.gateway.gateway_state import gateway_of
from tessera.gateway.metrics import CONTENT_TYPE_LATEST, GatewayMetrics
from tessera.gateway.money_routes import payer_of
from tessera.gateway.openapi_docs import body_schema
from tessera.gateway.request_body import parse_json, validated
from tessera.gateway.request_context import RequestContext, Served
from tessera.gateway.responses import respond, until_disconnect
from tessera.gateway.routing import policy_for
from tessera.gateway.serving import Serving
from tessera.market.quotes import TEMPLATE_TOKENS_PER_MESSAGE, TEMPLATE_TOKENS_PER_PROMPT
from tessera.market.registry import ProviderRegistry
from tessera.protocol.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIRequest,
)
from tessera.store.requests_log import in_flight_record

T = TypeVar("T", bound=BaseModel)


def install_inference_routes(
    app: FastAPI, metrics: GatewayMetrics, registry: ProviderRegistry, fast: InferenceRoutes
) -> None:
    async def context(request: Request, endpoint: str) -> tuple[RequestContext, Any]:
        """The request's context, and its key (limits, default routing policy)."""
        gateway = gateway_of(request)
        key = await gateway.auth.authenticate(request.headers.get("authorization"))
        ctx = RequestContext(
            request_id=request.scope["state"]["request_id"],
            api_key_id=key.id,
            endpoint=endpoint,
            model="",
            started=time.perf_counter(),
            payer=payer_of(key),
        )
        return ctx, key

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "providers": len(registry),
            "models": [s.name for s in registry.summaries()],
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        catalog = gateway_of(request).verifier.catalog
        return {
            "object": "list",
            "data": [
                {
                    **model_assurance(catalog.get(s.name) is not None),
                    "id": s.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "tessera",
                    "kind": s.kind,
                    "providers": s.providers,
                    "context_length": s.context_length,
                    "pricing": {
                        "input_per_mtok": {"min": s.price_input_min, "max": s.price_input_max},
                        "output_per_mtok": {"min": s.price_output_min, "max": s.price_output_max},
                        "unit": "base units (1 token = 10^9)",
                    },
                    "supports_tools": s.supports_tools,
                    "embedding_dimensions": s.embedding_dimensions,
                }
                for s in registry.summaries()
            ],
        }

    async def serve(
        request: Request,
        endpoint: str,
        body_type: type[OpenAIRequest],
        work: Callable[[Serving], Callable[[Any, RequestContext], Awaitable[Served]]],
    ) -> Response:
        """Authenticate, parse, admit, run the work (cancelled if the client leaves), map.

        The admission ticket is released exactly once when the response is over: at once
        for an error or a whole answer, after the last byte (or the client's departure)
        for a stream, whose ``finish`` runs after this handler has returned.
        """
        gateway = gateway_of(request)
        ctx, key = await context(request, endpoint)
        # Admitted before the body is read: malformed requests spend the key's rate too.
        ticket = gateway.admission.admit(ctx.request_id, key, 0)
        release = functools.partial(gateway.admission.release, ctx.request_id, ticket)
        try:
            body = await parse_body(request, body_type)
            ctx.model = body.model
            ctx.policy = policy_for(getattr(key, "policy_json", None), body.provider)
            tokens = token_bound(body, gateway.settings.default_max_tokens)
            gateway.admission.take_tokens(ctx.request_id, ticket, tokens)
        except BaseException:
            release()
            raise
        # An in_flight row now (queued, never awaited); a crash leaves it to be marked.
        unrecorded = gateway.request_log.started(
            in_flight_record(ctx.request_id, ctx.api_key_id, endpoint, ctx.model, key.account_id)
        )
        try:
            served = await until_disconnect(request, work(gateway.serving)(body, ctx))
        except BaseException:
            release()
            unrecorded()
            raise
        if served is None or served.stream is None:
            release()
            if served is None:
                unrecorded()
            return respond(request, served, metrics)
        finish = served.finish

        async def finish_and_release() -> None:
            try:
                if finish is not None:
                    await finish()
            finally:
                release()

        return respond(request, replace(served, finish=finish_and_release), metrics)

    @app.post(
        "/v1/chat/completions",
        openapi_extra=body_schema(ChatCompletionRequest),
        response_model=None,
    )
    async def chat_completions(request: Request) -> Response:
        return await serve(request, "chat.completions", ChatCompletionRequest, lambda s: s.chat)

    @app.post("/v1/completions", openapi_extra=body_schema(CompletionRequest), response_model=None)
    async def completions(request: Request) -> Response:
        return await serve(request, "completions", CompletionRequest, lambda s: s.completions)

    @app.post("/v1/embeddings", openapi_extra=body_schema(EmbeddingRequest), response_model=None)
    async def embeddings(request: Request) -> Response:
        return await serve(request, "embeddings", EmbeddingRequest, lambda s: s.embeddings)

    for path, endpoint in (
        ("/v1/chat/completions", chat_completions),
        ("/v1/completions", completions),
        ("/v1/embeddings", embeddings),
    ):
        route = next(r for r in app.router.routes if getattr(r, "path", None) == path)
        fast.add(path, endpoint, route)

    @app.websocket("/v1/providers/connect")
    async def provider_socket(websocket: WebSocket) -> None:
        await gateway_of(websocket).hub.serve(websocket)


def model_assurance(audited: bool) -> dict[str, Any]:
    """What a consumer can rely on for one model: audited, and what its bill can be."""
    if audited:
        billing = (
            "Audited: the catalog pins its weights, providers pass a join challenge, and a "
            "sample of answers is re-scored by other providers; a wrong token count is "
            "slashed. Completion tokens are the ones the gateway relayed."
        )
    else:
        billing = (
            "Not audited: the weights are not pinned and nobody re-counts the provider's "
            "work. Completion tokens are the ones the gateway relayed; prompt tokens are the "
            "provider's count, capped by the gateway's own bound: UTF-8 bytes of each "
            f"prompt or input + {TEMPLATE_TOKENS_PER_PROMPT}, + {TEMPLATE_TOKENS_PER_MESSAGE} "
            "per chat message. On English text that cap is about 4 to 5 times an honest "
            "count (more on very short inputs)."
        )
    return {"audited": audited, "billing": billing}


async def parse_body(request: Request, model: type[T]) -> T:
    """Parse JSON into ``model`` with OpenAI-style 400s that name the bad parameter."""
    return validated(parse_json(await request.body()), model)
