"""ApiKeyStore's limits and change signal on a real database: every write to a key
moves its ``changed_at``, and ``changes_since`` finds exactly the changed keys."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.errors import InvalidRequest
from tessera.store.api_keys import ApiKeyStore, KeyLimits

pytestmark = pytest.mark.integration


async def test_limits_are_stored_replaced_and_checked(store_engine: AsyncEngine) -> None:
    store = ApiKeyStore(store_engine)
    _, record = await store.create("bot", limits=KeyLimits(4, 60, None))
    assert record.limits == KeyLimits(4, 60, None)
    assert (await store.get(record.id)) == record
    assert await store.set_limits(record.id, KeyLimits(None, 10, 5000))
    changed = await store.get(record.id)
    assert changed is not None and changed.limits == KeyLimits(None, 10, 5000)
    assert not await store.set_limits("key_0000000000000000", KeyLimits(1, 1, 1))
    with pytest.raises(InvalidRequest) as info:
        await store.set_limits(record.id, KeyLimits(-1, None, None))
    assert info.value.param == "max_concurrent_requests"
    with pytest.raises(InvalidRequest):
        await store.create("too many", limits=KeyLimits(None, 2**31, None))


async def test_every_write_is_a_change_and_creation_is_not(store_engine: AsyncEngine) -> None:
    store = ApiKeyStore(store_engine)
    _, quiet = await store.create("quiet")
    _, revoked = await store.create("revoked")
    _, capped = await store.create("capped")
    _, steered = await store.create("steered")
    _, limited = await store.create("limited")
    assert quiet.changed_at == quiet.created_at
    start = await store.last_change()
    assert start is not None and start.tzinfo is not None and start >= limited.created_at
    since = quiet.created_at - timedelta(seconds=1)
    assert await store.changes_since(since, 100) == []  # creations are not changes

    assert await store.revoke(revoked.id)
    assert await store.set_caps(capped.id, spend_cap_total=5, spend_cap_daily=None)
    assert await store.set_policy(steered.id, '{"regions_allow":["eu"]}')
    assert await store.set_limits(limited.id, KeyLimits(1, None, None))

    changes = await store.changes_since(since, 100)
    assert [c.key_hash for c in changes] == [
        revoked.key_hash,
        capped.key_hash,
        steered.key_hash,
        limited.key_hash,
    ]
    assert all(c.changed_at.tzinfo is not None for c in changes)
    assert [c.changed_at for c in changes] == sorted(c.changed_at for c in changes)
    assert await store.last_change() == changes[-1].changed_at
    # From the newest change on, only it; the limit bounds the read.
    assert [c.key_hash for c in await store.changes_since(changes[-1].changed_at, 100)] == [
        limited.key_hash
    ]
    assert len(await store.changes_since(since, 2)) == 2


async def test_an_empty_table_has_no_last_change(store_engine: AsyncEngine) -> None:
    assert await ApiKeyStore(store_engine).last_change() is None
