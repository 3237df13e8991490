"""Right after a start (a restart, a standby's takeover), a model served before it is
"reconnecting" (503 with Retry-After, which the openai SDK retries), not unknown (404,
which it does not); once the grace is over, or its providers came back and left, it is an
ordinary 503."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from tessera.store.engine import create_engine, database_url_for
from tessera.store.providers import ProviderStore

from support.scripted_peers import chat_body, live_gateway

SERVED_BEFORE = "tessera-tiny"


async def _seen_before(data_dir: Path) -> None:
    """The providers table as the gateway before this start left it."""
    engine = create_engine(database_url_for(data_dir))
    try:
        await ProviderStore(engine).upsert_seen(
            provider_id="ab" * 32,
            label="served-before",
            region="US-east",
            agent_version="0.1.0",
            capabilities_json=json.dumps({"models": [{"name": SERVED_BEFORE}]}),
            now=datetime.now(UTC),
        )
    finally:
        await engine.dispose()


async def test_a_model_served_before_the_start_is_reconnecting_then_unavailable(
    gateway_dir: Path,
) -> None:
    await _seen_before(gateway_dir)
    async with live_gateway(gateway_dir) as gateway, gateway.client() as client:
        awaited = await client.post("/v1/chat/completions", json=chat_body(model=SERVED_BEFORE))
        unknown = await client.post("/v1/chat/completions", json=chat_body(model="never-served"))
    assert awaited.status_code == 503
    assert awaited.json()["error"]["code"] == "providers_reconnecting"
    assert awaited.headers["retry-after"] == "2"
    assert unknown.status_code == 404

    async with (
        live_gateway(gateway_dir, uptime_restart_grace_s=0) as gateway,
        gateway.client() as client,
    ):
        late = await client.post("/v1/chat/completions", json=chat_body(model=SERVED_BEFORE))
    assert late.status_code == 503
    assert late.json()["error"]["code"] == "no_provider_available"
    assert "retry-after" not in late.headers
