"""A stream continued on another provider is logged with the usage its client was sent,
whether or not the client asked for a usage chunk (stream_options.include_usage)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.scripted_peers import Peer, chat_body, done_frame, live_gateway, wait_providers

pytestmark = pytest.mark.integration

PRICE = (10**9, 10**9)  # 1,000 base units per token


def chunk(job: dict[str, Any], ids: list[int], prompt_tokens: int) -> dict[str, Any]:
    return {
        "type": "chunk",
        "job_id": job["job_id"],
        "text": "".join(f"<{t}>" for t in ids),
        "tokens": len(ids),
        "prompt_tokens": prompt_tokens,
        "token_ids": ids,
        "token_logprobs": [-0.1] * len(ids),
    }


async def die_after_three_tokens(peer: Peer) -> None:
    """Take one job, send three tokens, and drop the connection (no receipt)."""
    job = await peer.recv()
    await peer.send(chunk(job, [4, 5, 6], 3))
    await asyncio.sleep(0.1)
    await peer.close()


async def continue_every_job(peer: Peer) -> None:
    """Go on after ``continue_from`` with two tokens, the prompt counted with it."""
    with contextlib.suppress(Exception):
        while True:
            job = json.loads(await peer.ws.recv())
            if job["type"] != "job":
                continue
            prompt = 3 + len(job.get("continue_from") or [])
            sent = chunk(job, [7, 8], prompt)
            end = {"type": "chunk", "job_id": job["job_id"], "finish_reason": "length"}
            await peer.send(sent)
            await peer.send(end)
            await peer.send(done_frame(peer, job, [sent, end], (prompt, 2)))


async def test_a_continued_stream_is_logged_as_delivered_with_or_without_a_usage_chunk(
    tmp_path: Path,
) -> None:
    async with live_gateway(tmp_path) as gw, gw.client() as client:
        rescuer = await Peer.open(gw.ws_url)
        await rescuer.register(slots=4, price=PRICE)
        tasks = [
            asyncio.create_task(rescuer.beat_forever()),
            asyncio.create_task(continue_every_job(rescuer)),
        ]
        logged = {}
        try:
            for include_usage in (False, True):
                dying = await Peer.open(gw.ws_url)
                await dying.register(slots=4, price=PRICE)
                await wait_providers(gw, 2)
                dies = asyncio.create_task(die_after_three_tokens(dying))
                body = chat_body(
                    stream=True,
                    max_tokens=6,
                    temperature=0,
                    stream_options={"include_usage": include_usage},
                    provider={"order": [dying.provider_id]},
                )
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    text = "".join(
                        choice.get("delta", {}).get("content") or ""
                        for line in [line async for line in response.aiter_lines()]
                        if line.startswith("data: {")
                        for choice in json.loads(line[6:]).get("choices", [])
                    )
                await dies
                assert text == "<4><5><6><7><8>"
                request_id = response.headers["x-request-id"]
                await wait_providers(gw, 1)
                logged[include_usage] = await logged_row(client, request_id)
        finally:
            for task in tasks:
                task.cancel()
            await rescuer.close()
    # Sent: the 3-token prompt and 5 tokens (3 from the dead provider); paid: the prompt
    # and the rescuer's 2 tokens.
    for row in logged.values():
        assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 5), row
        assert (row["status"], row["cost"]) == ("ok", (3 + 2) * 1000), row


async def logged_row(client: httpx.AsyncClient, request_id: str) -> dict[str, Any]:
    """The request's finished row in the account's usage listing (the request log writes
    in batches, and a request's ``in_flight`` row may be read before its final one)."""
    for _ in range(100):
        rows = (await client.get("/v1/account/usage")).json()["data"]
        row = next((r for r in rows if r["request_id"] == request_id), None)
        if row is not None and row["status"] != "in_flight":
            return dict(row)
        await asyncio.sleep(0.05)
    raise AssertionError(f"request {request_id} was never logged")
