"""One clock and one random source for the whole gateway, passed in at its creation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tessera.gateway.wiring import Runtime
from tessera.store.engine import create_engine, database_url_for
from tessera.store.ledger import LedgerStore

from support.scripted_peers import answer, chat_body, live_gateway, priced

pytestmark = pytest.mark.integration

FROZEN_S = 1_900_000_000.0  # 2030-03-17: no real clock reads this


async def test_the_ledger_and_the_router_run_on_the_runtime_they_are_given(
    gateway_dir: Path,
) -> None:
    runtime = Runtime(wall=lambda: FROZEN_S, rng=Runtime.seeded(7).rng)
    async with live_gateway(gateway_dir, runtime=runtime) as gw:
        gateway = gw.app.state.gateway
        assert gateway.hub.rng is runtime.rng
        assert gateway.hub.router.rng is runtime.rng
        peer, beat = await priced(gw)
        async with gw.client() as client:
            request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
            await answer(peer, await peer.recv())
            response = await request
            assert response.status_code == 200, response.text
            request_id = response.headers["x-request-id"]
        beat.cancel()
        await gateway.bookkeeper.flush()
        engine = create_engine(database_url_for(gw.settings.data_dir))
        try:
            entries = await LedgerStore(engine).entries_for(request_id)
        finally:
            await engine.dispose()
    assert [e.kind for e in entries] == ["hold", "capture"]
    assert {float(e.at) for e in entries} == {FROZEN_S}
