"""The provider handshake facing frames that are not a register: clear errors, no tracebacks."""

from __future__ import annotations

import logging

import pytest
from websockets.exceptions import ConnectionClosed

from support.scripted_peers import LiveGateway, Peer, wait_providers

pytestmark = pytest.mark.integration


async def test_binary_first_frame_gets_an_error_frame_not_a_traceback(
    gateway: LiveGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tessera")
    peer = await Peer.open(gateway.ws_url)
    await peer.ws.send(b"\x00\x01 not a register")
    error = await peer.recv()
    assert (error["type"], error["code"]) == ("error", "binary_frame")
    assert "JSON text" in error["message"]
    with pytest.raises(ConnectionClosed):
        while True:
            await peer.recv()
    assert peer.ws.close_code == 1008
    await wait_providers(gateway, 0)
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]
    # The gateway still takes a proper provider afterwards.
    good = await Peer.open(gateway.ws_url)
    assert (await good.register())["type"] == "welcome"
    await good.close()
