"""The same gateway on PostgreSQL (`--database-url`): keys, request log and providers persist."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from tessera.store.engine import create_engine

from support.databases import fresh_postgres_database
from support.scripted_peers import Peer, answer, chat_body, live_gateway

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


async def test_gateway_serves_and_records_on_postgres(
    tmp_path: Path, postgres_admin_user: str
) -> None:
    async with fresh_postgres_database(postgres_admin_user) as url:
        async with live_gateway(tmp_path, database_url=url) as gateway:
            peer = await Peer.open(gateway.ws_url)
            assert (await peer.register())["type"] == "welcome"
            async with gateway.client() as client:
                request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
                await answer(peer, await peer.recv())
                response = await request
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
            await peer.close()
        # The gateway has shut down: its request log was flushed to PostgreSQL.
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                row = (
                    await conn.execute(
                        text(
                            "select status, provider_id, completion_tokens from requests where request_id = :r"
                        ),
                        {"r": request_id},
                    )
                ).one()
                providers = (await conn.execute(text("select count(*) from providers"))).scalar()
        finally:
            await engine.dispose()
        assert row.status == "ok" and row.completion_tokens == 1
        assert providers == 1
