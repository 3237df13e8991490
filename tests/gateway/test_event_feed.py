"""With --nats-url the gateway's domain events reach NATS (a private nats-server), in
order and numbered, as JSON without prompt or output text."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.gateway.bus import BusMessage
from tessera.gateway.nats_bus import NatsBus

from support.nats_server import NatsServer
from support.scripted_peers import MODEL, answer, chat_body, live_gateway, priced

pytestmark = pytest.mark.integration


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


async def test_events_are_published_on_nats(gateway_dir: Path, nats_server: NatsServer) -> None:
    watcher = await NatsBus.connect(nats_server.url, "watcher")
    got: list[BusMessage] = []
    finished = asyncio.Event()

    async def watch(message: BusMessage) -> None:
        got.append(message)
        if message.subject.endswith(".request_finished"):
            finished.set()

    await watcher.subscribe("tsr.v1.evt.>", watch)
    try:
        async with live_gateway(
            gateway_dir, nats_url=nats_server.url, gateway_id="gw-feed"
        ) as gateway:
            peer, beat = await priced(gateway)
            async with gateway.client() as client:
                request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
                await answer(peer, await peer.recv())
                response = await request
            assert response.status_code == 200, response.text
            await asyncio.wait_for(finished.wait(), 10)
            beat.cancel()
    finally:
        await watcher.close()
    kinds = [m.subject.rsplit(".", 1)[1] for m in got]
    assert kinds[:2] == ["provider_joined", "request_finished"]
    assert [m.headers["Tsr-Seq"] for m in got[:2]] == ["1", "2"]
    (replica,) = {m.headers["Tsr-Replica"] for m in got}
    assert replica.startswith("gw-feed-")  # this process: the gateway id and a suffix
    joined, done = (json.loads(m.data) for m in got[:2])
    assert joined["provider_id"] == peer.provider_id and joined["models"] == [MODEL]
    assert done["request_id"] == response.headers["x-request-id"]
    assert (done["status"], done["completion_tokens"]) == ("ok", 1) and done["cost"] > 0
    assert "hi" not in json.dumps(done)  # the prompt never leaves the gateway
