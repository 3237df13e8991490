"""AccountStore on a real database: create, get, list; names validated; ids stable."""

from __future__ import annotations

from datetime import UTC

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.errors import InvalidRequest
from tessera.store.accounts import AccountStore

pytestmark = pytest.mark.integration


async def test_create_then_get(store_engine: AsyncEngine) -> None:
    store = AccountStore(store_engine)
    record = await store.create("  research lab  ")
    assert record.id.startswith("acct_") and len(record.id) == 21
    assert all(ch in "0123456789abcdef" for ch in record.id[5:])
    assert record.name == "research lab"
    assert record.created_at.tzinfo == UTC
    assert await store.get(record.id) == record
    assert await store.get("acct_0000000000000000") is None


async def test_list_returns_every_account_oldest_first(store_engine: AsyncEngine) -> None:
    store = AccountStore(store_engine)
    assert await store.list() == []
    created = [await store.create(f"account {index}") for index in range(4)]
    assert await store.list() == created
    assert len({record.id for record in created}) == 4


@pytest.mark.parametrize("name", ["", "  ", "x" * 201])
async def test_bad_names_are_refused(store_engine: AsyncEngine, name: str) -> None:
    store = AccountStore(store_engine)
    with pytest.raises(InvalidRequest) as info:
        await store.create(name)
    assert info.value.param == "name"
    assert await store.list() == []
