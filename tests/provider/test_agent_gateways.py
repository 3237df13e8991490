"""One agent, several gateways: no gateway can cut the provider off the others.

A real agent with the real tiny model dials a real in-process gateway and a hostile
WebSocket server that answers with malformed frames. The agent must keep serving the
real gateway and keep redialling the hostile one, never exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from nacl.signing import SigningKey
from websockets.asyncio.server import ServerConnection, serve

from tessera.config import ProviderSettings
from tessera.protocol.wire import Hardware, ModelOffer
from tessera.provider.agent import ProviderAgent, ServedModel
from tessera.provider.backends.transformers_text import TransformersTextBackend

from support.scripted_peers import free_port, live_gateway, wait_providers


def offer(backend: TransformersTextBackend) -> ModelOffer:
    info = backend.info
    return ModelOffer(
        name=info.name,
        weights_sha256=info.weights_sha256,
        kind=info.kind,
        context_length=info.context_length,
    )


async def test_a_gateway_sending_garbage_does_not_cut_the_agent_off_another(
    tmp_path: Path, text_backend: TransformersTextBackend
) -> None:
    dials = 0

    async def hostile(ws: ServerConnection) -> None:
        nonlocal dials
        dials += 1
        replies = ['{"type": "hello"}', "not json", '{"type": "welcome"}']
        with contextlib.suppress(Exception):
            await ws.send(replies[dials % len(replies)])
            await asyncio.wait_for(ws.recv(), 2)

    port = free_port()
    async with (
        serve(hostile, "127.0.0.1", port) as server,
        live_gateway(tmp_path) as gw,
    ):
        statuses: list[tuple[str, str]] = []
        settings = ProviderSettings(
            gateway_urls=[f"http://127.0.0.1:{port}", gw.base],
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
        )
        agent = ProviderAgent(
            settings,
            SigningKey.generate(),
            [ServedModel(offer(text_backend), text_backend)],
            Hardware(cpu="test", cpu_cores=1, ram_bytes=1),
            on_status=lambda url, status: statuses.append((url, status)),
        )
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        try:
            await wait_providers(gw, 1, timeout_s=60)
            for _ in range(600):
                if dials >= 6:
                    break
                await asyncio.sleep(0.05)
            assert dials >= 6, "the agent stopped redialling the hostile gateway"
            assert not running.done(), running
            async with gw.client() as client:
                response = await client.post(
                    "/v1/completions",
                    json={"model": text_backend.info.name, "prompt": "The fox", "max_tokens": 4},
                )
            assert response.status_code == 200, response.text
            assert response.headers["x-tessera-provider"] == agent.provider_id
            # Statuses name each gateway by the URL the operator gave, connected or not.
            urls = {url for url, _ in statuses}
            assert urls == {f"http://127.0.0.1:{port}", gw.base}
            assert any("malformed" in status for _, status in statuses)
        finally:
            stop.set()
            try:
                await asyncio.wait_for(running, 60)
            finally:
                running.cancel()
        server.close()
