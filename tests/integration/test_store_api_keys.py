"""ApiKeyStore on a real database: create, find, revoke, list, accounts and spend caps,
and no plaintext at rest."""

from __future__ import annotations

import hashlib
from datetime import UTC

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tessera.errors import InvalidRequest
from tessera.ledger.accounts import TOKEN
from tessera.store.accounts import AccountStore
from tessera.store.api_keys import ApiKeyStore, hash_api_key
from tessera.store.errors import StoreError, translated
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
    assert (record.spend_cap_total, record.spend_cap_daily) == (None, None)

    found = await store.find_by_hash(hash_api_key(key))
    assert found == record
    assert await store.get(record.id) == record
    assert await store.find_by_hash(hash_api_key(key + "x")) is None
    assert await store.get("key_0000000000000000") is None


async def test_a_key_without_an_account_gets_its_own(store_engine: AsyncEngine) -> None:
    store = ApiKeyStore(store_engine)
    _, first = await store.create("laptop")
    _, second = await store.create("laptop")
    assert first.account_id != second.account_id
    account = await AccountStore(store_engine).get(first.account_id)
    assert account is not None and account.name == "laptop"
    assert [a.id for a in await AccountStore(store_engine).list()] == [
        first.account_id,
        second.account_id,
    ]


async def test_keys_share_an_existing_account(store_engine: AsyncEngine) -> None:
    account = await AccountStore(store_engine).create("team")
    other = await AccountStore(store_engine).create("other team")
    store = ApiKeyStore(store_engine)
    _, ci = await store.create("ci", account_id=account.id)
    _, dev = await store.create("dev", account_id=account.id, spend_cap_daily=3 * TOKEN)
    _, elsewhere = await store.create("elsewhere", account_id=other.id)

    assert ci.account_id == dev.account_id == account.id
    assert await store.list(account_id=account.id) == [ci, dev]
    assert await store.list(account_id=other.id) == [elsewhere]
    assert await store.list(account_id="acct_0000000000000000") == []
    assert len(await AccountStore(store_engine).list()) == 2  # no account made per key


async def test_unknown_account_is_refused_and_nothing_is_stored(store_engine: AsyncEngine) -> None:
    store = ApiKeyStore(store_engine)
    with pytest.raises(InvalidRequest) as info:
        await store.create("orphan", account_id="acct_0000000000000000")
    assert info.value.param == "account"
    assert await store.list() == []
    assert await AccountStore(store_engine).list() == []


async def test_spend_caps_are_stored_and_replaced(store_engine: AsyncEngine) -> None:
    store = ApiKeyStore(store_engine)
    _, record = await store.create("capped", spend_cap_total=10**18, spend_cap_daily=5 * TOKEN)
    assert (record.spend_cap_total, record.spend_cap_daily) == (10**18, 5 * TOKEN)
    assert await store.get(record.id) == record

    assert await store.set_caps(record.id, spend_cap_total=None, spend_cap_daily=0) is True
    updated = await store.get(record.id)
    assert updated is not None
    assert (updated.spend_cap_total, updated.spend_cap_daily) == (None, 0)
    assert (
        await store.set_caps("key_0000000000000000", spend_cap_total=1, spend_cap_daily=1) is False
    )


async def test_a_key_policy_is_stored_replaced_and_cleared(store_engine: AsyncEngine) -> None:
    store = ApiKeyStore(store_engine)
    eu = '{"regions_allow": ["eu"]}'
    _, record = await store.create("eu only", policy_json=eu)
    assert record.policy_json == eu
    assert await store.get(record.id) == record
    assert await store.set_policy(record.id, '{"data_collection": "deny"}') is True
    found = await store.find_by_hash(record.key_hash)
    assert found is not None and found.policy_json == '{"data_collection": "deny"}'
    assert await store.set_policy(record.id, None) is True
    cleared = await store.get(record.id)
    assert cleared is not None and cleared.policy_json is None
    assert await store.set_policy("key_0000000000000000", eu) is False


@pytest.mark.parametrize(
    ("caps", "param"),
    [
        ({"spend_cap_total": -1}, "spend_cap_total"),
        ({"spend_cap_daily": -5}, "spend_cap_daily"),
        ({"spend_cap_daily": 1.5}, "spend_cap_daily"),
        ({"spend_cap_total": True}, "spend_cap_total"),
        ({"spend_cap_total": 2**63}, "spend_cap_total"),
    ],
)
async def test_bad_caps_are_refused(
    store_engine: AsyncEngine, caps: dict[str, object], param: str
) -> None:
    store = ApiKeyStore(store_engine)
    with pytest.raises(InvalidRequest) as info:
        await store.create("bad caps", **caps)  # type: ignore[arg-type]
    assert info.value.param == param
    _, record = await store.create("ok")
    with pytest.raises(InvalidRequest):
        await store.set_caps(
            record.id,
            spend_cap_total=caps.get("spend_cap_total"),  # type: ignore[arg-type]
            spend_cap_daily=caps.get("spend_cap_daily"),  # type: ignore[arg-type]
        )
    assert [key.name for key in await store.list()] == ["ok"]


async def test_database_refuses_negative_caps_and_keys_without_accounts(
    store_engine: AsyncEngine,
) -> None:
    """The constraints hold even for writers that skip the store's checks."""
    _, record = await ApiKeyStore(store_engine).create("raw")
    for statement in (
        "UPDATE api_keys SET spend_cap_daily = -1",
        "UPDATE api_keys SET account_id = NULL",
        "UPDATE api_keys SET account_id = 'acct_0000000000000000'",
    ):
        with pytest.raises(StoreError, match="constraint"):
            async with store_engine.begin() as conn:
                await translated_execute(conn, statement)
    assert await ApiKeyStore(store_engine).get(record.id) == record


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


async def translated_execute(conn: AsyncConnection, statement: str) -> None:
    with translated(conn.engine.url):
        await conn.execute(text(statement))


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
async def test_bad_names_are_refused(store_engine: AsyncEngine, name: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        await ApiKeyStore(store_engine).create(name)
    assert info.value.param == "name"
    assert await ApiKeyStore(store_engine).list() == []
    assert await AccountStore(store_engine).list() == []
