"""Scripted peers that announce exactly what a test gives them (offers, region, label).

``scripted_peers.Peer.register`` announces one fixed text offer; the hostile-provider and
hostile-client tests need peers that say more (a vocabulary size, another kind, a region,
a label), and a way to see which of several peers got a job.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tessera.protocol.signing import public_key_hex, sign
from tessera.protocol.wire import (
    PROTOCOL_VERSION,
    REGISTER_DOMAIN,
    Capabilities,
    Hardware,
    ModelOffer,
    Register,
    register_payload,
)

from support.scripted_peers import MODEL, WEIGHTS, LiveGateway, Peer


def text_offer(vocab_size: int | None = None, context_length: int = 512) -> ModelOffer:
    return ModelOffer(
        name=MODEL,
        weights_sha256=WEIGHTS,
        kind="text",
        context_length=context_length,
        vocab_size=vocab_size,
    )


async def join(
    gateway: LiveGateway, offer: ModelOffer, **overrides: Any
) -> tuple[Peer, asyncio.Task[None]]:
    """A peer registered with exactly ``offer`` (capability fields overridden), beating."""
    peer = await Peer.open(gateway.ws_url)
    fields: dict[str, Any] = {
        "public_key": public_key_hex(peer.key),
        "agent_version": "scripted",
        "models": [offer],
        "hardware": Hardware(cpu="scripted", cpu_cores=1, ram_bytes=1),
        "region": "DE",
        "max_concurrent_jobs": 2,
        **overrides,
    }
    announced = Capabilities(**fields)
    nonce = peer.hello["nonce"]
    frame = Register(
        version=PROTOCOL_VERSION,
        nonce=nonce,
        capabilities=announced,
        signature=sign(peer.key, REGISTER_DOMAIN, register_payload(nonce, announced)),
    )
    await peer.ws.send(frame.model_dump_json())
    welcome = await peer.recv()
    assert welcome["type"] == "welcome", welcome
    return peer, asyncio.create_task(peer.beat_forever())


async def first_job(peers: list[Peer], timeout_s: float = 10) -> tuple[Peer, dict[str, Any]]:
    """The first frame any of ``peers`` gets (the others keep waiting, nothing is lost)."""
    waits = {asyncio.ensure_future(peer.recv(timeout_s)): peer for peer in peers}
    done, pending = await asyncio.wait(waits, timeout=timeout_s, return_when="FIRST_COMPLETED")
    for task in pending:
        task.cancel()
    assert done, "no provider got a job"
    task = done.pop()
    frame = task.result()
    assert frame["type"] == "job", frame
    return waits[task], frame


async def no_job(peers: list[Peer], within_s: float = 0.3) -> None:
    """None of ``peers`` gets a frame within ``within_s``."""
    waits = [asyncio.ensure_future(peer.recv(within_s)) for peer in peers]
    results = await asyncio.gather(*waits, return_exceptions=True)
    got = [r for r in results if not isinstance(r, BaseException)]
    assert got == [], f"a provider got {got}"
