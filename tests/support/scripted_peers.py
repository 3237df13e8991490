"""An in-process gateway on a free port, and scripted provider peers that speak the wire.

The peers are real WebSocket clients with real Ed25519 keys; they misbehave on purpose
(bad signatures, replays, garbage, drops) to test the hub, which real agents never do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
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
from tessera.gateway.wiring import Runtime
from tessera.protocol.receipts import OutputDigest, prompt_sha256, request_id_of, sign_receipt
from tessera.protocol.signing import public_key_hex, sign
from tessera.protocol.wire import (
    PROTOCOL_VERSION,
    REGISTER_DOMAIN,
    Capabilities,
    Chunk,
    Hardware,
    Job,
    ModelOffer,
    Receipt,
    Register,
    register_payload,
)
from tessera.store.api_keys import ApiKeyStore
from tessera.store.engine import create_engine, database_url_for
from tessera.store.ledger import LedgerStore

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
    app: Any = None  # the ASGI app, for tests that call it with their own receive/send

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=30
        )


@asynccontextmanager
async def live_gateway(
    data_dir: Path,
    database_url: str | None = None,
    funds: int = DEFAULT_FUNDS,
    runtime: Runtime | None = None,
    **overrides: Any,
) -> AsyncIterator[LiveGateway]:
    """A gateway app served by uvicorn in this event loop, with one funded API key.

    Dev mode; scripted peers are not staked, so the minimum stake is 0 unless overridden.
    """
    port = free_port()
    options: dict[str, Any] = {
        "register_timeout_s": 1.0,
        "heartbeat_interval_s": 0.2,
        "heartbeat_timeout_s": 3.0,  # peers beat every 0.2 s; a loaded machine stalls for 1 s
        "queue_timeout_s": 3.0,
        "first_token_timeout_s": 5.0,
        "max_bad_frames": 3,
        "dev_mode": True,
        "min_stake_units": 0,
        **overrides,
    }
    settings = GatewaySettings(port=port, data_dir=data_dir, database_url=database_url, **options)
    app = create_app(settings, runtime)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
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
            f"http://127.0.0.1:{port}",
            f"ws://127.0.0.1:{port}/v1/providers/connect",
            key,
            settings,
            app,
        )
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


WEIGHTS = "cd" * 32


def caps_for(
    key: SigningKey,
    slots: int = 2,
    model: str = MODEL,
    price: tuple[int, int] = (0, 0),
    weights: str = WEIGHTS,
) -> Capabilities:
    offer = ModelOffer(
        name=model,
        weights_sha256=weights,
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
        self.price: tuple[int, int] = (0, 0)
        self.weights = WEIGHTS

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
        weights: str = WEIGHTS,
    ) -> str:
        nonce = nonce or self.hello["nonce"]
        caps = caps_for(self.key, slots, price=price, weights=weights)
        signature = sign(signer or self.key, REGISTER_DOMAIN, register_payload(nonce, caps))
        frame = Register(
            version=PROTOCOL_VERSION, nonce=nonce, capabilities=caps, signature=signature
        )
        return frame.model_dump_json()

    @property
    def provider_id(self) -> str:
        return public_key_hex(self.key)

    async def register(
        self, slots: int = 2, price: tuple[int, int] = (0, 0), weights: str = WEIGHTS
    ) -> dict[str, Any]:
        self.price, self.weights = price, weights
        await self.ws.send(self.register_frame(slots=slots, price=price, weights=weights))
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


async def poll(
    client: httpx.AsyncClient, path: str, done: Callable[[Any], bool], timeout_s: float = 20
) -> Any:
    """GET ``path`` until ``done`` says the body is what the test waits for."""
    async with asyncio.timeout(timeout_s):
        while True:
            body = (await client.get(path)).json()
            if done(body):
                return body
            await asyncio.sleep(0.05)


PRICE = (1_000 * 1_000_000, 2_000 * 1_000_000)  # 1,000 / 2,000 base units per token


async def priced(gateway: LiveGateway, slots: int = 2) -> tuple[Peer, asyncio.Task[None]]:
    """A registered, beating peer that charges PRICE."""
    peer = await Peer.open(gateway.ws_url)
    assert (await peer.register(slots=slots, price=PRICE))["type"] == "welcome"
    return peer, asyncio.create_task(peer.beat_forever())


async def account(client: httpx.AsyncClient) -> dict[str, Any]:
    """GET /v1/account for the client's key."""
    response = await client.get("/v1/account")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


async def journal_problems(gateway: LiveGateway) -> list[str]:
    """What `tessera ledger check` would find in the gateway's stored journal."""
    engine = create_engine(database_url_for(gateway.settings.data_dir))
    try:
        return await LedgerStore(engine).check()
    finally:
        await engine.dispose()


async def settled(client: httpx.AsyncClient, request_id: str) -> dict[str, Any]:
    """The request's view (GET /v1/requests/{id}) once its hold is captured or released."""
    for _ in range(100):
        view: dict[str, Any] = (await client.get(f"/v1/requests/{request_id}")).json()
        if view.get("settlement") in ("captured", "released"):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"request {request_id} never settled: {view}")


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
    """Answer ``job`` in one chunk and finish it with a signed receipt, as an agent does."""
    job_id = job["job_id"]
    listed = max(0, usage[1] - 1)  # the last token counted is the end-of-sequence token
    chunk = {
        "type": "chunk",
        "job_id": job_id,
        "text": text,
        "tokens": usage[1],
        "token_ids": list(range(1, listed + 1)),
        "token_logprobs": [-0.5] * listed,
    }
    finish = {"type": "chunk", "job_id": job_id, "finish_reason": "stop", "eos": usage[1] > 0}
    await peer.send(chunk)
    await peer.send(finish)
    await peer.send(done_frame(peer, job, [chunk, finish], usage))


def done_frame(
    peer: Peer, job: dict[str, Any], chunks: list[dict[str, Any]], usage: tuple[int, int]
) -> dict[str, Any]:
    """The done frame for ``job`` after ``chunks``, with the receipt an honest agent signs."""
    parsed = Job.model_validate(job)
    digest = OutputDigest()
    for chunk in chunks:
        digest.add(Chunk.model_validate(chunk))
    receipt = Receipt(
        request_id=request_id_of(parsed),
        job_id=parsed.job_id,
        provider_id=peer.provider_id,
        model=parsed.model,
        weights_sha256=peer.weights,
        kind=parsed.kind,
        prompt_sha256=prompt_sha256(parsed),
        output_sha256=digest.sha256(),
        prompt_tokens=usage[0],
        completion_tokens=usage[1],
        price_input_per_mtok=peer.price[0],
        price_output_per_mtok=peer.price[1],
        started_at_ms=1,
        finished_at_ms=2,
    )
    return {
        "type": "done",
        "job_id": parsed.job_id,
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]},
        "receipt": receipt.model_dump(mode="json"),
        "receipt_signature": sign_receipt(peer.key, receipt),
    }


async def answer_tokens(
    peer: Peer,
    job: dict[str, Any],
    token_ids: list[int],
    logprobs: list[float],
    prompt_tokens: int,
    finish: str = "length",
    text: str = "abc",
) -> None:
    """Answer ``job`` with exactly these tokens (a join challenge, for instance)."""
    chunk = {
        "type": "chunk",
        "job_id": job["job_id"],
        "text": text,
        "tokens": len(token_ids),
        "token_ids": token_ids,
        "token_logprobs": logprobs,
    }
    end = {"type": "chunk", "job_id": job["job_id"], "finish_reason": finish}
    await peer.send(chunk)
    await peer.send(end)
    await peer.send(done_frame(peer, job, [chunk, end], (prompt_tokens, len(token_ids))))


def audit_result(
    peer: Peer,
    audit: dict[str, Any],
    logprob: float,
    prompt_tokens: int,
    text: str,
    rank: int = 1,
) -> dict[str, Any]:
    """A signed audit result giving every audited token ``rank`` and ``logprob``."""
    from tessera.protocol.canonical import canonical_bytes, sha256_hex
    from tessera.protocol.wire import AUDIT_RESULT_DOMAIN, Audit, AuditResult

    parsed = Audit.model_validate(audit)
    score = {"rank": rank, "logprob": logprob, "top_logprob": min(0.0, logprob + 0.01)}
    unsigned = {
        "type": "audit_result",
        "job_id": parsed.job_id,
        "auditor_id": peer.provider_id,
        "weights_sha256": parsed.weights_sha256,
        "audit_sha256": sha256_hex(canonical_bytes(parsed.model_dump(mode="json"))),
        "choices": [
            {
                "index": choice.index,
                "prompt_tokens": prompt_tokens,
                "tokens": [score for _ in choice.token_ids],
                "end": {"rank": 1, "logprob": -0.01, "top_logprob": -0.01},
                "text": text,
            }
            for choice in parsed.choices
        ],
        "prompt_tokens": 0,
        "signature": "0" * 128,
    }
    payload = AuditResult.model_validate(unsigned).signed_payload()
    unsigned["signature"] = sign(peer.key, AUDIT_RESULT_DOMAIN, payload)
    return unsigned
