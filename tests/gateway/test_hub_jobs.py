"""Jobs over scripted providers: retry before first token, errors, cancel, backpressure."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from support.scripted_peers import LiveGateway, Peer, answer, chat_body, wait_providers

pytestmark = pytest.mark.integration


async def registered(gateway: LiveGateway, slots: int = 2) -> tuple[Peer, asyncio.Task[None]]:
    peer = await Peer.open(gateway.ws_url)
    assert (await peer.register(slots=slots))["type"] == "welcome"
    return peer, asyncio.create_task(peer.beat_forever())


async def test_provider_dropping_before_first_token_is_invisible(gateway: LiveGateway) -> None:
    flaky, flaky_beat = await registered(gateway)
    async with gateway.client() as client:
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        job = await flaky.recv()
        assert job["type"] == "job"
        good, good_beat = await registered(gateway)
        flaky_beat.cancel()
        await flaky.close()
        retried = await good.recv()
        assert retried["type"] == "job" and retried["job_id"] != job["job_id"]
        await answer(good, retried, "from the good one")
        response = await request
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "from the good one"
    assert (
        response.headers["x-tessera-provider"]
        == json.loads(good.register_frame())["capabilities"]["public_key"]
    )
    good_beat.cancel()


async def test_client_error_from_provider_is_a_400(gateway: LiveGateway) -> None:
    peer, beat = await registered(gateway)
    # Long enough that the gateway's bound reaches the 512-token context: only the
    # provider's tokenizer can tell (a refusal of a shorter prompt would be a lie).
    long_chat = chat_body(messages=[{"role": "user", "content": "word " * 120}])
    async with gateway.client() as client:
        request = asyncio.create_task(client.post("/v1/chat/completions", json=long_chat))
        job = await peer.recv()
        await peer.send(
            {
                "type": "job_error",
                "job_id": job["job_id"],
                "code": "context_length_exceeded",
                "message": "prompt is 900 tokens; context is 512",
            }
        )
        response = await request
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    beat.cancel()


async def test_no_provider_is_503_and_unknown_model_404(gateway: LiveGateway) -> None:
    peer, beat = await registered(gateway)
    beat.cancel()
    await peer.close()
    await wait_providers(gateway, 0)
    async with gateway.client() as client:
        gone = await client.post("/v1/chat/completions", json=chat_body())
        unknown = await client.post("/v1/chat/completions", json=chat_body(model="nope"))
    assert gone.status_code == 503
    assert gone.json()["error"]["type"] == "service_unavailable"
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


async def stream_lines(client: httpx.AsyncClient, out: list[str], stop_on: str = "") -> None:
    async with client.stream("POST", "/v1/chat/completions", json=chat_body(True)) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                out.append(line[6:])
                if line == "data: [DONE]" or (stop_on and stop_on in line):
                    return


async def test_mid_stream_drop_ends_stream_with_error_event(gateway: LiveGateway) -> None:
    peer, beat = await registered(gateway)
    events: list[str] = []
    async with gateway.client() as client:
        reader = asyncio.create_task(stream_lines(client, events))
        job = await peer.recv()
        await peer.send({"type": "chunk", "job_id": job["job_id"], "text": "partial"})
        while not any("partial" in e for e in events):
            await asyncio.sleep(0.02)
        beat.cancel()
        await peer.close()
        await reader
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "provider_failed"


async def test_client_disconnect_cancels_the_job(gateway: LiveGateway) -> None:
    peer, beat = await registered(gateway)
    events: list[str] = []
    async with gateway.client() as client:
        reader = asyncio.create_task(stream_lines(client, events, stop_on="tok"))
        job = await peer.recv()
        await peer.send({"type": "chunk", "job_id": job["job_id"], "text": "tok"})
        await reader
    cancel = await peer.recv()
    assert cancel == {"type": "cancel", "job_id": job["job_id"]}
    beat.cancel()


async def test_non_streaming_client_disconnect_cancels_the_job(gateway: LiveGateway) -> None:
    peer, beat = await registered(gateway)
    async with gateway.client() as client:
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        job = await peer.recv()
        request.cancel()
    cancel = await peer.recv()
    assert cancel == {"type": "cancel", "job_id": job["job_id"]}
    beat.cancel()


async def test_never_more_jobs_than_declared_concurrency(gateway: LiveGateway) -> None:
    peer, beat = await registered(gateway, slots=1)
    async with gateway.client() as client:
        first = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        second = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        job1 = await peer.recv()
        # The second request waits at the gateway while the only slot is busy.
        with pytest.raises(TimeoutError):
            await peer.recv(timeout_s=0.5)
        await answer(peer, job1)
        job2 = await peer.recv()
        await answer(peer, job2)
        results = await asyncio.gather(first, second)
    assert [r.status_code for r in results] == [200, 200]
    beat.cancel()


async def test_waiting_for_a_slot_times_out_with_503(gateway: LiveGateway) -> None:
    peer, beat = await registered(gateway, slots=1)
    async with gateway.client() as client:
        first = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        await peer.recv()
        second = await client.post("/v1/chat/completions", json=chat_body())
        assert second.status_code == 503
        first.cancel()
    beat.cancel()


async def test_usage_and_headers_on_success(gateway: LiveGateway) -> None:
    peer, beat = await registered(gateway)
    async with gateway.client() as client:
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        await answer(peer, await peer.recv())
        response = await request
    body = response.json()
    assert body["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 1,
        "total_tokens": 4,
        "cost": 0,
    }
    assert response.headers["x-request-id"].startswith("req_")
    beat.cancel()


async def test_bad_api_key_never_reaches_a_provider(gateway: LiveGateway) -> None:
    peer, beat = await registered(gateway)
    async with httpx.AsyncClient(base_url=gateway.base) as client:
        response = await client.post(
            "/v1/chat/completions", json=chat_body(), headers={"Authorization": "Bearer tsk_x"}
        )
    assert response.status_code == 401
    with pytest.raises(TimeoutError):
        await peer.recv(timeout_s=0.3)
    beat.cancel()


async def test_a_job_overrunning_max_tokens_fails_alone_and_its_provider_stays(
    gateway: LiveGateway,
) -> None:
    """An upstream that ignores max_tokens made the agent send too many frames: that job
    fails and is cancelled, but the provider keeps its connection and its other work."""
    peer, beat = await registered(gateway)
    async with gateway.client() as client:
        request = asyncio.create_task(
            client.post("/v1/chat/completions", json=chat_body(max_tokens=2))
        )
        job = await peer.recv()
        # A 2-token job has room for two token chunks, a finish and a done: four frames.
        for _ in range(8):
            await peer.send({"type": "chunk", "job_id": job["job_id"], "text": "x"})
        cancel = await peer.recv()
        assert (cancel["type"], cancel["job_id"]) == ("cancel", job["job_id"])
        response = await request
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "too_many_frames"
        assert "more output than the 2 tokens" in error["message"]
        # Still connected, still routed: the next request is served by the same provider.
        second = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        await answer(peer, await peer.recv())
        assert (await second).status_code == 200
    beat.cancel()


async def test_non_streaming_answer_survives_a_provider_dying_mid_answer(
    gateway: LiveGateway,
) -> None:
    flaky, flaky_beat = await registered(gateway)
    async with gateway.client() as client:
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        job = await flaky.recv()
        await flaky.send({"type": "chunk", "job_id": job["job_id"], "text": "half an ans"})
        good, good_beat = await registered(gateway)
        flaky_beat.cancel()
        await flaky.close()
        retried = await good.recv()
        await answer(good, retried, "a whole answer")
        response = await request
    assert response.status_code == 200
    # Nothing of the dead provider's partial output leaks into the answer.
    assert response.json()["choices"][0]["message"]["content"] == "a whole answer"
    good_beat.cancel()
