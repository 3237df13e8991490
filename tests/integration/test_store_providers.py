"""ProviderStore upserts on both dialects keep first_seen_at and refresh the rest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.store.providers import ProviderRecord, ProviderStore

pytestmark = pytest.mark.integration

PROVIDER = "ab" * 32


async def test_upsert_keeps_first_seen_and_refreshes_the_rest(store_engine: AsyncEngine) -> None:
    store = ProviderStore(store_engine)
    first = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    later = first + timedelta(hours=5, seconds=7)
    caps_v1 = json.dumps({"models": ["tiny"]})
    caps_v2 = json.dumps({"models": ["tiny", "minilm"]})

    await store.upsert_seen(PROVIDER, "rig-1", "DE-west", "0.1.0", caps_v1, first)
    assert await store.get(PROVIDER) == ProviderRecord(
        PROVIDER, "rig-1", "DE-west", "0.1.0", caps_v1, first, first
    )

    await store.upsert_seen(PROVIDER, "rig-1b", "DE-east", "0.2.0", caps_v2, later)
    assert await store.get(PROVIDER) == ProviderRecord(
        PROVIDER, "rig-1b", "DE-east", "0.2.0", caps_v2, first, later
    )


async def test_times_come_back_as_utc_whatever_zone_went_in(store_engine: AsyncEngine) -> None:
    store = ProviderStore(store_engine)
    seen = datetime(2025, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    await store.upsert_seen(PROVIDER, "rig", "DE", "0.1.0", "{}", seen)
    record = await store.get(PROVIDER)
    assert record is not None
    assert record.first_seen_at.tzinfo == UTC
    assert record.first_seen_at == seen
    assert record.first_seen_at.hour == 12


async def test_unknown_provider_is_none(store_engine: AsyncEngine) -> None:
    assert await ProviderStore(store_engine).get("cd" * 32) is None


async def test_providers_are_independent(store_engine: AsyncEngine) -> None:
    store = ProviderStore(store_engine)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    await store.upsert_seen("01" * 32, "a", "US", "1", "{}", now)
    await store.upsert_seen("02" * 32, "b", "FR", "1", "{}", now + timedelta(minutes=1))
    a, b = await store.get("01" * 32), await store.get("02" * 32)
    assert a is not None and b is not None
    assert (a.label, a.last_seen_at) == ("a", now)
    assert (b.label, b.first_seen_at) == ("b", now + timedelta(minutes=1))
