"""The gateway publishes what happened as domain events; the metrics subscribe to them."""

from __future__ import annotations

import asyncio

import pytest

from tessera.gateway.events import Event, ProviderJoined, ProviderLeft, RequestFinished

from support.scripted_peers import MODEL, LiveGateway, answer, chat_body, priced

pytestmark = pytest.mark.integration

REAL = 3 * 1_000 + 1 * 2_000  # what answer() reports: 3 prompt + 1 completion tokens


async def test_requests_and_providers_are_published_as_events(gateway: LiveGateway) -> None:
    events = gateway.app.state.gateway.events
    seen: list[Event] = []
    for kind in (RequestFinished, ProviderJoined, ProviderLeft):
        events.subscribe(kind, seen.append)
    peer, beat = await priced(gateway)
    async with gateway.client() as client:
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        await answer(peer, await peer.recv())
        response = await request
        assert response.status_code == 200, response.text
        unknown = await client.post("/v1/chat/completions", json=chat_body(model="nope"))
        assert unknown.status_code == 404
        beat.cancel()
        await peer.ws.close()
        for _ in range(100):
            if any(isinstance(e, ProviderLeft) for e in seen):
                break
            await asyncio.sleep(0.02)
        metrics = (await client.get("/metrics")).text
    joined = [e for e in seen if isinstance(e, ProviderJoined)]
    assert [(e.provider_id, e.models) for e in joined] == [(peer.provider_id, (MODEL,))]
    finished = [e for e in seen if isinstance(e, RequestFinished)]
    ok = next(e for e in finished if e.request_id == response.headers["x-request-id"])
    assert (ok.status, ok.provider_id, ok.model, ok.cost) == ("ok", peer.provider_id, MODEL, REAL)
    assert (ok.prompt_tokens, ok.completion_tokens) == (3, 1)
    assert ok.latency_s > 0 and ok.ttft_ms is not None
    refused = [e for e in finished if e.model == "nope"]
    assert [(e.status, e.error_code, e.cost) for e in refused] == [("error", "model_not_found", 0)]
    assert [e.provider_id for e in seen if isinstance(e, ProviderLeft)] == [peer.provider_id]
    assert "tessera_provider_joins_total 1.0" in metrics
    assert 'tessera_tokens_total{direction="completion"} 1.0' in metrics
    # By model and provider; a model nobody served is not a label (consumers choose names).
    by = f'model="{MODEL}",provider="{peer.provider_id}"'
    assert f'tessera_model_requests_total{{{by},status="ok"}} 1.0' in metrics
    assert f"tessera_provider_time_to_first_token_seconds_count{{{by}}} 1.0" in metrics
    assert f'tessera_model_request_duration_seconds_count{{model="{MODEL}"}} 1.0' in metrics
    assert f'tessera_paid_units_total{{model="{MODEL}"}} {float(REAL)}' in metrics
    assert 'tessera_model_requests_total{model="none",provider="none",status="error"} 1.0' in (
        metrics
    )
    assert "nope" not in metrics
