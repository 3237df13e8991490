"""ApiKeyStore on a real database: create, find, revoke, list, and no plaintext at rest."""

from __future__ import annotations

import hashlib
from datetime import UTC

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.errors import InvalidRequest
from tessera.store.api_keys import ApiKeyStore, hash_api_key
from tessera.store.tables import api_keys

pytestmark = pytest.mark.integration


async def test_create_then_find_by_hash(store_engine: AsyncEngine) -> None:
    store = ApiKeyStore(store_engine)
    key, record = await store.create("ci runner")
    assert key.startswith("tsk_")
    assert record.name == "ci runner"
    assert record.id.startswith("key_") and len(record.id) == 20
    assert record.prefix == key[:8]
    assert record.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert record.created_at.tzinfo is not None
    assert record.revoked_at is None

    found = await store.find_by_hash(hash_api_key(key))
    assert found == record
    assert await store.find_by_hash(hash_api_key(key + "x")) is None


async def test_plaintext_is_never_stored(store_engine: AsyncEngine) -> None:
    key, _ = await ApiKeyStore(store_engine).create("secret holder")
    async with store_engine.connect() as conn:
        rows = (await conn.execute(select(api_keys))).all()
    stored = [str(value) for row in rows for value in row]
    assert rows and all(key not in value for value in stored)
    # Only the display prefix, too short to use, appears in the clear.
    assert all(key[:12] not in value for value in stored)


async def test_revoke_hides_key_and_is_reported_once(store_engine: AsyncEngine) -> None:
    store = ApiKeyStore(store_engine)
    key, record = await store.create("to revoke")
    kept_key, kept = await store.create("to keep")

    assert await store.revoke(record.id) is True
    assert await store.revoke(record.id) is False
    assert await store.revoke("key_0000000000000000") is False

    assert await store.find_by_hash(hash_api_key(key)) is None
    assert await store.find_by_hash(hash_api_key(kept_key)) == kept
    listed = {item.id: item for item in await store.list()}
    assert listed[record.id].revoked and listed[record.id].revoked_at is not None
    assert listed[record.id].revoked_at.tzinfo == UTC  # type: ignore[union-attr]
    assert not listed[kept.id].revoked


async def test_list_returns_every_key_oldest_first(store_engine: AsyncEngine) -> None:
    store = ApiKeyStore(store_engine)
    assert await store.list() == []
    created = [(await store.create(f"key {index}"))[1] for index in range(5)]
    assert [record.id for record in await store.list()] == [record.id for record in created]


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
async def test_bad_names_are_refused(store_engine: AsyncEngine, name: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        await ApiKeyStore(store_engine).create(name)
    assert info.value.param == "name"
    assert await ApiKeyStore(store_engine).list() == []
