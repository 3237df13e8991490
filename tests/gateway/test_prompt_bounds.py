"""A prompt that cannot fit the model's context is refused by the gateway itself, before
any provider spends time tokenizing it (a 3.9 MB prompt cost a provider 3.8 s)."""

from __future__ import annotations

import asyncio

import pytest

from tessera.market.quotes import prompt_token_floor
from tessera.protocol.wire import ChatMessage, Job, SamplingParams

from support.scripted_peers import MODEL, LiveGateway, Peer, answer, chat_body

pytestmark = pytest.mark.integration

CONTEXT = 512  # the scripted providers' context length


def test_floor_counts_bytes_per_token_and_token_ids_exactly() -> None:
    params = SamplingParams(max_tokens=1)
    chat = Job(
        job_id="j",
        model=MODEL,
        kind="chat",
        params=params,
        messages=[ChatMessage(role="user", content="é" * 300)],  # 600 bytes
    )
    assert prompt_token_floor(chat, 256) == 3
    ids = Job(job_id="j", model=MODEL, kind="completion", params=params, prompts=[[1] * 700, "x"])
    assert prompt_token_floor(ids, 256) == 700


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", chat_body(messages=[{"role": "user", "content": "a" * 600_000}])),
        ("/v1/completions", {"model": MODEL, "prompt": "b" * 600_000, "max_tokens": 1}),
        ("/v1/completions", {"model": MODEL, "prompt": [7] * (CONTEXT + 1), "max_tokens": 1}),
    ],
)
async def test_a_prompt_beyond_the_context_never_reaches_a_provider(
    gateway: LiveGateway, path: str, body: dict[str, object]
) -> None:
    peer = await Peer.open(gateway.ws_url)
    assert (await peer.register(slots=2))["type"] == "welcome"
    beat = asyncio.create_task(peer.beat_forever())
    async with gateway.client() as client:
        response = await client.post(path, json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert error["param"] in ("messages", "prompt")
        assert f"maximum context length is {CONTEXT} tokens" in error["message"]
        with pytest.raises(TimeoutError):
            await peer.recv(timeout_s=0.3)  # no job was sent
        # A prompt that fits still goes through.
        ok = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        await answer(peer, await peer.recv())
        assert (await ok).status_code == 200
    beat.cancel()
