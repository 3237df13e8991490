"""An in-process gateway on a free port, and scripted provider peers that speak the wire.

The peers are real WebSocket clients with real Ed25519 keys; they misbehave on purpose
(bad signatures, replays, garbage, drops) to test the hub, which real agents never do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from nacl.signing import SigningKey
from websockets.asyncio.client import ClientConnection, connect

from tessera.config import GatewaySettings
from tessera.dev_money import DEFAULT_FUNDS, fund_account
from tessera.gateway.app import create_app
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
from tessera.store.api_keys import ApiKeyStore
from tessera.store.engine import create_engine, database_url_for

MODEL = "scripted-model"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveGateway:
    base: str
    ws_url: str
    api_key: str
    settings: GatewaySettings

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30
        )


@asynccontextmanager
async def live_gateway(
    data_dir: Path,
    database_url: str | None = None,
    funds: int = DEFAULT_FUNDS,
    **overrides: Any,
) -> AsyncIterator[LiveGateway]:
    """A gateway app served by uvicorn in this event loop, with one funded API key.

    Dev mode; scripted peers are not staked, so the minimum stake is 0 unless overridden.
    """
    port = free_port()
    options: dict[str, Any] = {
        "register_timeout_s": 1.0,
        "heartbeat_interval_s": 0.2,
        "heartbeat_timeout_s": 1.0,
        "queue_timeout_s": 3.0,
        "first_token_timeout_s": 5.0,
        "max_bad_frames": 3,
        "dev_mode": True,
        "min_stake_units": 0,
        **overrides,
    }
    settings = GatewaySettings(port=port, data_dir=data_dir, database_url=database_url, **options)
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # startup failed: raise its error here
        await asyncio.sleep(0.02)
    engine = create_engine(database_url or database_url_for(data_dir))
    key, _ = await ApiKeyStore(engine).create("test")
    await engine.dispose()
    base = f"http://127.0.0.1:{port}"
    if funds:
        await asyncio.to_thread(fund_account, base, key, funds)
    try:
        yield LiveGateway(
            f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/providers/connect", key, settings
        )
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def caps_for(
    key: SigningKey, slots: int = 2, model: str = MODEL, price: tuple[int, int] = (0, 0)
) -> Capabilities:
    offer = ModelOffer(
        name=model,
        weights_sha256="cd" * 32,
        kind="text",
        context_length=512,
        price_input_per_mtok=price[0],
        price_output_per_mtok=price[1],
    )
    return Capabilities(
        public_key=public_key_hex(key),
        agent_version="scripted",
        models=[offer],
        hardware=Hardware(cpu="scripted", cpu_cores=1, ram_bytes=1),
        region="DE-eu",
        max_concurrent_jobs=slots,
    )


class Peer:
    """A scripted provider connection."""

    def __init__(self, ws: ClientConnection, key: SigningKey) -> None:
        self.ws = ws
        self.key = key
        self.hello: dict[str, Any] = {}

    @classmethod
    async def open(cls, url: str, key: SigningKey | None = None) -> Peer:
        ws = await connect(url)
        peer = cls(ws, key or SigningKey.generate())
        peer.hello = json.loads(await ws.recv())
        return peer

    def register_frame(
        self,
        nonce: str | None = None,
        slots: int = 2,
        signer: SigningKey | None = None,
        price: tuple[int, int] = (0, 0),
    ) -> str:
        nonce = nonce or self.hello["nonce"]
        caps = caps_for(self.key, slots, price=price)
        signature = sign(signer or self.key, REGISTER_DOMAIN, register_payload(nonce, caps))
        frame = Register(
            version=PROTOCOL_VERSION, nonce=nonce, capabilities=caps, signature=signature
        )
        return frame.model_dump_json()

    @property
    def provider_id(self) -> str:
        return public_key_hex(self.key)

    async def register(self, slots: int = 2, price: tuple[int, int] = (0, 0)) -> dict[str, Any]:
        await self.ws.send(self.register_frame(slots=slots, price=price))
        return await self.recv()

    async def recv(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """Next frame that is not a heartbeat ack, within ``timeout_s`` overall."""
        async with asyncio.timeout(timeout_s):
            while True:
                frame = json.loads(await self.ws.recv())
                if frame.get("type") != "heartbeat_ack":
                    return frame

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def beat_forever(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                await self.send({"type": "heartbeat", "active_jobs": 0})
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        await self.ws.close()


async def wait_providers(gw: LiveGateway, count: int, timeout_s: float = 5.0) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(int(timeout_s / 0.05)):
            health = (await client.get(f"{gw.base}/health")).json()
            if health["providers"] == count:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} providers, health says {health}")


def chat_body(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "stream": stream,
        **extra,
    }


async def answer(
    peer: Peer, job: dict[str, Any], text: str = "hello", usage: tuple[int, int] = (3, 1)
) -> None:
    await peer.send({"type": "chunk", "job_id": job["job_id"], "text": text, "tokens": usage[1]})
    await peer.send({"type": "chunk", "job_id": job["job_id"], "finish_reason": "stop"})
    await peer.send(
        {
            "type": "done",
            "job_id": job["job_id"],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]},
        }
    )
