"""What a gateway killed with SIGKILL must not forget (issue 11, finding 13).

A real gateway process and two scripted providers. Provider B goes away and accrues
downtime; provider A takes a chat request and sits on it. The gateway is killed and
restarted on the same data directory. Afterwards B's downtime of the epoch is still there
(it used to restart at 0), A is charged nothing for the gateway's own outage, and the
request that was in flight has a row in the request log, marked interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.demo import Network, create_api_key, free_port, wait_for_network

from support.scripted_peers import Peer, chat_body

pytestmark = pytest.mark.e2e

SETTINGS = {
    "SLA_EPOCH_S": "3600",
    "UPTIME_SAVE_INTERVAL_S": "0.5",
    "UPTIME_RESTART_GRACE_S": "120",  # longer than the test: A never comes back
    "MIN_STAKE_UNITS": "0",
    "HEARTBEAT_TIMEOUT_S": "3",
    "FIRST_TOKEN_TIMEOUT_S": "120",
    "QUEUE_TIMEOUT_S": "120",
}


def start_gateway(network: Network, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A dev gateway process on ``data_dir``; its base URL once it answers."""
    for name, value in SETTINGS.items():
        monkeypatch.setenv(f"TESSERA_GATEWAY_{name}", value)
    port = free_port()
    network.spawn("gateway", ["gateway", "--port", str(port), "--data-dir", str(data_dir), "--dev"])
    base = f"http://127.0.0.1:{port}"
    wait_for_network(base, 0, network, timeout_s=60)
    return base


async def uptime(client: httpx.AsyncClient, provider_id: str) -> tuple[int, int]:
    """The provider's (up_ms, down_ms) in the open epoch and any closed since (an epoch
    boundary may pass during the test)."""
    body: dict[str, Any] = (await client.get(f"/v1/providers/{provider_id}/uptime")).json()
    rows = [*([body["current"]] if body["current"] else []), *body["epochs"]]
    return sum(r["up_ms"] for r in rows), sum(r["down_ms"] for r in rows)


async def request_rows(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    usage = (await client.get("/v1/account/usage")).json()
    return {row["request_id"]: row for row in usage["data"]}


async def test_a_killed_gateway_keeps_the_epochs_downtime_and_its_requests_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "gateway"
    api_key = await create_api_key(data_dir)
    headers = {"Authorization": f"Bearer {api_key}"}
    first, second = Network(tmp_path / "first"), Network(tmp_path / "second")
    base = await asyncio.to_thread(start_gateway, first, data_dir, monkeypatch)
    ws_url = base.replace("http", "ws") + "/v1/providers/connect"
    holder, leaver = await Peer.open(ws_url), await Peer.open(ws_url)
    for peer in (holder, leaver):
        assert (await peer.register())["type"] == "welcome"
    beats = [asyncio.create_task(p.beat_forever()) for p in (holder, leaver)]
    try:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
            await asyncio.sleep(1.0)
            beats[1].cancel()
            await leaver.close()  # no goodbye: its absence is downtime
            gone_at = time.monotonic()

            chat = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
            job = await holder.recv(timeout_s=10)
            assert job["type"] == "job"  # the holder never answers it
            async with asyncio.timeout(10):
                while not any(
                    r["status"] == "in_flight" for r in (await request_rows(client)).values()
                ):
                    await asyncio.sleep(0.1)
            [request_id] = await request_rows(client)

            await asyncio.sleep(max(0.0, 2.5 - (time.monotonic() - gone_at)))
            _, down_before = await uptime(client, leaver.provider_id)
            assert down_before >= 2_000
            await asyncio.sleep(0.6)  # one more save interval
            seen_down_ms = (time.monotonic() - gone_at) * 1000

            [(_, process)] = first.processes
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            with contextlib.suppress(httpx.HTTPError):
                await chat
            killed_at = time.monotonic()
            await asyncio.sleep(1.0)  # the gateway's own outage

        base = await asyncio.to_thread(start_gateway, second, data_dir, monkeypatch)
        outage_ms = (time.monotonic() - killed_at) * 1000
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
            row = (await request_rows(client))[request_id]
            assert (row["status"], row["endpoint"]) == ("interrupted", "chat.completions")
            assert row["model"] == chat_body()["model"]
            detail = (await client.get(f"/v1/requests/{request_id}")).json()
            assert detail["status"] == "interrupted"

            up_ms, down_ms = await uptime(client, leaver.provider_id)
            # The downtime seen before the crash is kept (up to one save interval of it
            # may be lost); the outage and the restart are not added.
            assert down_before <= down_ms <= seen_down_ms + 500, (down_ms, outage_ms)
            assert 500 <= up_ms <= 3_000
            holder_up, holder_down = await uptime(client, holder.provider_id)
            assert holder_down == 0 and holder_up >= 2_000  # the outage is not its downtime
    finally:
        for beat in beats:
            beat.cancel()
        with contextlib.suppress(Exception):
            await holder.close()
        second.stop()
        first.stop()
