"""Hostile providers: bad signatures, replayed nonces, garbage frames. The gateway survives."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from nacl.signing import SigningKey
from websockets.exceptions import ConnectionClosed

from tessera.protocol.signing import public_key_hex

from support.scripted_peers import LiveGateway, Peer, wait_providers

pytestmark = pytest.mark.integration


async def closed_with(peer: Peer) -> int | None:
    with pytest.raises(ConnectionClosed):
        while True:
            await peer.recv()
    return peer.ws.close_code


async def test_valid_registration_is_welcomed(gateway: LiveGateway) -> None:
    peer = await Peer.open(gateway.ws_url)
    welcome = await peer.register()
    assert welcome["type"] == "welcome"
    assert welcome["provider_id"] == public_key_hex(peer.key)
    await wait_providers(gateway, 1)
    await peer.close()
    await wait_providers(gateway, 0)


async def test_bad_signature_is_refused(gateway: LiveGateway) -> None:
    peer = await Peer.open(gateway.ws_url)
    await peer.ws.send(peer.register_frame(signer=SigningKey.generate()))
    error = await peer.recv()
    assert (error["type"], error["code"]) == ("error", "bad_signature")
    assert await closed_with(peer) == 1008
    await wait_providers(gateway, 0)


async def test_nonce_from_another_connection_is_refused(gateway: LiveGateway) -> None:
    first = await Peer.open(gateway.ws_url)
    second = await Peer.open(gateway.ws_url, key=first.key)
    # A register signed for connection 1's nonce, replayed on connection 2.
    await second.ws.send(first.register_frame())
    error = await second.recv()
    assert error["code"] == "bad_nonce"
    assert await closed_with(second) == 1008
    # The nonce owner can still register once; a second use of the same nonce fails.
    replay = first.register_frame()
    assert (await first.register())["type"] == "welcome"
    third = await Peer.open(gateway.ws_url, key=first.key)
    await third.ws.send(replay)
    assert (await third.recv())["code"] == "bad_nonce"


async def test_first_frame_must_be_register(gateway: LiveGateway) -> None:
    peer = await Peer.open(gateway.ws_url)
    await peer.send({"type": "heartbeat", "active_jobs": 0})
    assert (await peer.recv())["code"] == "expected_register"


async def test_silent_connection_times_out(gateway: LiveGateway) -> None:
    peer = await Peer.open(gateway.ws_url)
    error = await peer.recv(timeout_s=5)
    assert error["code"] == "register_timeout"


@pytest.mark.parametrize(
    "garbage",
    [
        "not json at all",
        '{"type": "chunk"}',
        '{"type": "launch_missiles", "job_id": "x"}',
        '{"type": "heartbeat", "active_jobs": -4, "extra": true}',
        '{"type": "chunk", "job_id": "not-a-job-of-yours", "text": "x"}',
        b"\x00\x01binary",
    ],
)
async def test_garbage_frames_get_errors_then_disconnect(
    gateway: LiveGateway, garbage: str | bytes
) -> None:
    peer = await Peer.open(gateway.ws_url)
    assert (await peer.register())["type"] == "welcome"
    for _ in range(gateway.settings.max_bad_frames - 1):
        await peer.ws.send(garbage)
        assert (await peer.recv())["type"] == "error"
    await peer.ws.send(garbage)
    assert (await peer.recv())["type"] == "error"
    assert await closed_with(peer) == 1008
    await wait_providers(gateway, 0)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{gateway.base}/health")).status_code == 200


async def test_provider_that_stops_beating_is_dropped(gateway: LiveGateway) -> None:
    peer = await Peer.open(gateway.ws_url)
    assert (await peer.register())["type"] == "welcome"
    await wait_providers(gateway, 1)
    await asyncio.sleep(gateway.settings.heartbeat_timeout_s + 0.6)
    await wait_providers(gateway, 0)


async def test_same_key_reconnecting_replaces_old_session(gateway: LiveGateway) -> None:
    key = SigningKey.generate()
    old = await Peer.open(gateway.ws_url, key=key)
    assert (await old.register())["type"] == "welcome"
    new = await Peer.open(gateway.ws_url, key=key)
    assert (await new.register())["type"] == "welcome"
    await closed_with(old)
    await wait_providers(gateway, 1)
