"""Protocol 3: a provider may send several frames in one message, one per line."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed

from support.scripted_peers import LiveGateway, Peer, chat_body, done_frame, wait_providers

pytestmark = pytest.mark.integration


def _answer_frames(peer: Peer, job: dict[str, object], text: str) -> list[dict[str, object]]:
    chunk = {"type": "chunk", "job_id": job["job_id"], "text": text, "tokens": 1}
    finish = {"type": "chunk", "job_id": job["job_id"], "finish_reason": "stop", "eos": True}
    return [chunk, finish, done_frame(peer, job, [chunk, finish], (3, 1))]


async def test_two_jobs_answered_in_one_message(gateway: LiveGateway) -> None:
    peer = await Peer.open(gateway.ws_url)
    assert (await peer.register(slots=2))["type"] == "welcome"
    beat = asyncio.create_task(peer.beat_forever())
    async with gateway.client() as client:
        requests = [
            asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
            for _ in range(2)
        ]
        jobs = [await peer.recv(), await peer.recv()]
        frames = [*_answer_frames(peer, jobs[0], "first"), *_answer_frames(peer, jobs[1], "second")]
        await peer.ws.send("\n".join(json.dumps(f, separators=(",", ":")) for f in frames))
        responses = [await r for r in requests]
    answers = sorted(r.json()["choices"][0]["message"]["content"] for r in responses)
    assert answers == ["first", "second"]
    beat.cancel()
    await peer.close()


async def test_a_bad_line_in_a_batch_is_refused_after_the_good_ones(gateway: LiveGateway) -> None:
    peer = await Peer.open(gateway.ws_url)
    assert (await peer.register(slots=1))["type"] == "welcome"
    async with gateway.client() as client:
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        job = await peer.recv()
        good = "\n".join(json.dumps(f) for f in _answer_frames(peer, job, "kept"))
        await peer.ws.send(good + '\n{"type": "chunk", "job_id": ')
        response = await request
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "kept"
    error = await peer.recv()
    assert (error["type"], error["code"]) == ("error", "malformed_frame")
    with pytest.raises(ConnectionClosed):
        while True:
            await peer.recv()
    await wait_providers(gateway, 0)
