"""Consumers cannot open providers' circuit breakers (issue 11, finding 5).

A token id at or above the vocabulary made providers answer ``invalid_prompt``; the
gateway retried it on three providers and counted three provider failures, so three
such requests opened every breaker. A request the client got wrong is a 400, never a
provider's failure, never retried elsewhere; the gateway refuses what it can check itself
before any provider sees it, and its public record (reputation) is not lowered either.
And a provider cannot dodge work by calling an honest request
the client's fault: what the gateway checked, the provider's refusal contradicts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from support.announced_peers import first_job, join, no_job, text_offer
from support.scripted_peers import MODEL, LiveGateway, Peer, answer, wait_providers

pytestmark = pytest.mark.integration


def completion(prompt: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, "max_tokens": 1}


async def health(client: httpx.AsyncClient, peer: Peer) -> dict[str, Any]:
    status = (await client.get(f"/v1/providers/{peer.provider_id}/status")).json()
    return status["health"]  # type: ignore[no-any-return]


async def refuse(peer: Peer, job: dict[str, Any], code: str, retryable: bool = True) -> None:
    """What the agent sends for a prompt its backend rejects (retryable as agents said)."""
    await peer.send(
        {
            "type": "job_error",
            "job_id": job["job_id"],
            "code": code,
            "message": f"{code}: the backend refused it",
            "retryable": retryable,
        }
    )


async def test_out_of_vocabulary_ids_are_refused_before_any_provider(gateway: LiveGateway) -> None:
    peers = [await join(gateway, text_offer(vocab_size=9440)) for _ in range(3)]
    await wait_providers(gateway, 3)
    async with gateway.client() as client:
        for _ in range(3):
            response = await client.post("/v1/completions", json=completion([9440]))
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert (error["code"], error["param"]) == ("invalid_token_ids", "prompt")
            assert "9440" in error["message"]
        await no_job([peer for peer, _ in peers])
        for peer, _ in peers:
            assert (await health(client, peer))["breaker"] == "closed"
        # A batch of prompts is checked prompt by prompt; embeddings too.
        response = await client.post("/v1/completions", json=completion([[1, 2], [3, 99999]]))
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_token_ids"
    for _, beat in peers:
        beat.cancel()


async def test_a_client_error_the_gateway_cannot_check_is_a_400_and_no_ones_failure(
    gateway: LiveGateway,
) -> None:
    # The providers do not announce a vocabulary: only they can tell the id is bad.
    peers = [await join(gateway, text_offer()) for _ in range(3)]
    await wait_providers(gateway, 3)
    everyone = [peer for peer, _ in peers]
    async with gateway.client() as client:
        for _ in range(4):
            request = asyncio.create_task(client.post("/v1/completions", json=completion([9440])))
            peer, job = await first_job(everyone)
            await refuse(peer, job, "invalid_prompt", retryable=True)
            response = await request
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "invalid_prompt"
            await no_job(everyone)  # not retried on another provider
        for peer in everyone:
            record = await health(client, peer)
            assert (record["breaker"], record["failures_in_row"]) == ("closed", 0)
        # An honest request right after is served at once.
        request = asyncio.create_task(client.post("/v1/completions", json=completion("hi")))
        peer, job = await first_job(everyone)
        await answer(peer, job)
        assert (await request).status_code == 200
    for _, beat in peers:
        beat.cancel()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (completion([5, 6, 7]), "invalid_prompt"),  # ids the gateway checked
        (completion([5, 6, 7]), "invalid_token_ids"),
        (completion("hello"), "context_length_exceeded"),  # 5 bytes in a 512-token context
    ],
)
async def test_a_provider_calling_a_checked_request_the_clients_fault_is_failed(
    gateway: LiveGateway, body: dict[str, Any], code: str
) -> None:
    liar, liar_beat = await join(gateway, text_offer(vocab_size=9440))
    await wait_providers(gateway, 1)
    async with gateway.client() as client:
        request = asyncio.create_task(client.post("/v1/completions", json=body))
        job = await liar.recv()
        honest, honest_beat = await join(gateway, text_offer(vocab_size=9440))
        await refuse(liar, job, code, retryable=False)
        retried = await honest.recv()
        assert retried["type"] == "job"
        await answer(honest, retried, "served")
        response = await request
        assert response.status_code == 200, response.text
        assert response.headers["x-tessera-provider"] == honest.provider_id
        record = await health(client, liar)
        assert record["failures_in_row"] == 1
        assert code in record["last_failure"]
    liar_beat.cancel()
    honest_beat.cancel()


async def test_a_client_error_mid_answer_is_not_the_providers_failure(gateway: LiveGateway) -> None:
    peer, beat = await join(gateway, text_offer())  # no vocabulary announced
    await wait_providers(gateway, 1)
    async with gateway.client() as client:
        for _ in range(3):
            # The first prompt is fine, the second is refused after the first was answered.
            request = asyncio.create_task(
                client.post("/v1/completions", json=completion([[1, 2], [9440]]))
            )
            job = await peer.recv()
            chunk = {
                "type": "chunk",
                "job_id": job["job_id"],
                "text": "a",
                "tokens": 1,
                "token_ids": [3],
                "token_logprobs": [-0.1],
            }
            await peer.send(chunk)
            await peer.send({"type": "chunk", "job_id": job["job_id"], "finish_reason": "length"})
            await refuse(peer, job, "invalid_prompt", retryable=False)
            response = await request
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "invalid_prompt"
        record = await health(client, peer)
        assert (record["breaker"], record["failures_in_row"]) == ("closed", 0)
        # Nor is its public record lowered (market.refusals.job_event).
        reputation = (await client.get(f"/v1/providers/{peer.provider_id}/reputation")).json()
        assert reputation["jobs_failed"] == 0, reputation
    beat.cancel()
