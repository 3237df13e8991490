"""A change to an API key written by another process reaches a running gateway at once.

The changes are written the way the CLI writes them: through ApiKeyStore on an engine of
its own, with no word to the gateway. The gateway here caches a key for a minute, and each
change must show within ``SHOWS_WITHIN_S``: far sooner than the cache would let it, so only
the key-change watcher (a poll every 0.25 s) can have brought it. How fast it shows is
printed, not asserted: a loaded test machine stalls for a second now and then.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from tessera.store.api_keys import ApiKeyStore, KeyLimits, hash_api_key
from tessera.store.engine import create_engine, database_url_for

from support.scripted_peers import (
    LiveGateway,
    Peer,
    answer,
    chat_body,
    live_gateway,
    wait_providers,
)

CACHE_TTL_S = 60.0
SHOWS_WITHIN_S = 10.0  # well inside CACHE_TTL_S


@asynccontextmanager
async def other_process_store(gw: LiveGateway) -> AsyncIterator[ApiKeyStore]:
    engine = create_engine(database_url_for(gw.settings.data_dir))
    try:
        yield ApiKeyStore(engine)
    finally:
        await engine.dispose()


async def key_id_of(store: ApiKeyStore, key: str) -> str:
    record = await store.find_by_hash(hash_api_key(key))
    assert record is not None
    return record.id


async def first_change(
    send: Callable[[], Awaitable[httpx.Response]], changed: Callable[[httpx.Response], bool]
) -> float:
    """Seconds until ``send`` gets an answer that shows the change (fails after
    ``SHOWS_WITHIN_S``, long before the key cache would have let it show)."""
    started = time.monotonic()
    async with asyncio.timeout(SHOWS_WITHIN_S):
        while not changed(await send()):
            await asyncio.sleep(0.02)
    took = time.monotonic() - started
    print(f"change shown after {took:.2f} s")
    return took


@asynccontextmanager
async def answering_provider(gw: LiveGateway) -> AsyncIterator[Peer]:
    peer = await Peer.open(gw.ws_url)
    assert (await peer.register(slots=4))["type"] == "welcome"

    async def serve() -> None:
        while True:
            frame = json.loads(await peer.ws.recv())
            if frame["type"] == "job":
                await answer(peer, frame)

    tasks = [asyncio.create_task(serve()), asyncio.create_task(peer.beat_forever())]
    await wait_providers(gw, 1)
    try:
        yield peer
    finally:
        for task in tasks:
            task.cancel()
        await peer.close()


async def test_a_key_revoked_elsewhere_is_refused_long_before_the_cache_expires(
    gateway_dir: Path,
) -> None:
    async with (
        live_gateway(gateway_dir, api_key_cache_ttl_s=CACHE_TTL_S) as gw,
        gw.client() as client,
    ):
        assert (await client.get("/v1/account")).status_code == 200  # cached now
        async with other_process_store(gw) as store:
            assert await store.revoke(await key_id_of(store, gw.api_key))
        await first_change(lambda: client.get("/v1/account"), lambda r: r.status_code == 401)
        # And it stays refused.
        response = await client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


async def test_policy_caps_and_limits_changed_elsewhere_apply_long_before_the_cache_expires(
    gateway_dir: Path,
) -> None:
    async with (
        live_gateway(gateway_dir, api_key_cache_ttl_s=CACHE_TTL_S) as gw,
        answering_provider(gw),
        gw.client() as client,
    ):
        chat = lambda: client.post("/v1/chat/completions", json=chat_body())  # noqa: E731
        assert (await chat()).status_code == 200
        async with other_process_store(gw) as store:
            key_id = await key_id_of(store, gw.api_key)

            # A policy that no provider meets (the scripted one is in Germany).
            assert await store.set_policy(key_id, '{"regions_allow":["JP"]}')
            await first_change(chat, lambda r: r.status_code != 200)
            assert "JP" in (await chat()).text
            assert await store.set_policy(key_id, None)
            await first_change(chat, lambda r: r.status_code == 200)

            # Spend caps.
            assert await store.set_caps(key_id, spend_cap_total=7, spend_cap_daily=None)

            def capped(response: httpx.Response) -> bool:
                return response.json()["key"]["spend_cap_total"] == 7

            await first_change(lambda: client.get("/v1/account"), capped)

            # Limits: a key suspended by a zero concurrency limit.
            assert await store.set_limits(key_id, KeyLimits(max_concurrent_requests=0))
            await first_change(chat, lambda r: r.status_code == 429)
            assert (await chat()).json()["error"]["code"] == "too_many_concurrent_requests"
            assert await store.set_limits(key_id, KeyLimits())
            await first_change(chat, lambda r: r.status_code == 200)
