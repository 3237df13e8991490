"""Migrations: idempotent, concurrent-safe, data-preserving, and producing exactly the schema in tables.py."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from tessera.store.accounts import AccountStore
from tessera.store.api_keys import ApiKeyStore
from tessera.store.engine import create_engine
from tessera.store.ledger import LedgerStore
from tessera.store.migrate import (
    alembic_config,
    current_revision,
    head_revision,
    upgrade_to_head,
)
from tessera.store.requests_log import RequestLog
from tessera.store.tables import metadata

pytestmark = pytest.mark.integration


def _schema_diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_upgrade_is_idempotent(database_url: str) -> None:
    assert await current_revision(database_url) is None
    await upgrade_to_head(database_url)
    await upgrade_to_head(database_url)
    assert await current_revision(database_url) == head_revision()
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(_table_names)
    finally:
        await engine.dispose()
    assert tables == {
        "alembic_version",
        "accounts",
        "api_keys",
        "providers",
        "requests",
        "ledger_entries",
        "ledger_postings",
        "ledger_balances",
        "receipts",
        "audits",
        "audit_cases",
        "provider_bans",
        "violations",
        "provider_reputation",
        "provider_uptime",
        "provider_uptime_progress",
        "chain_links",
        "chain_payees",
        "chain_cursor",
        "chain_claims",
    }


async def test_migrated_schema_matches_metadata(migrated_url: str) -> None:
    engine = create_engine(migrated_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(_schema_diff)
    finally:
        await engine.dispose()
    assert diff == []


async def test_metadata_drift_is_detected(migrated_url: str) -> None:
    """The comparison above can fail: a column missing from the database shows up as a diff."""
    engine = create_engine(migrated_url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP INDEX ix_requests_provider_id_created_at")
            diff = await conn.run_sync(_schema_diff)
    finally:
        await engine.dispose()
    assert [entry[0] for entry in diff] == ["add_index"]  # type: ignore[index]


async def test_concurrent_upgrades_all_succeed(database_url: str) -> None:
    """Several gateway replicas starting at once must not race each other into errors."""
    await asyncio.gather(*(upgrade_to_head(database_url) for _ in range(4)))
    assert await current_revision(database_url) == head_revision()


def _upgrade_to(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def test_0002_gives_every_existing_key_an_account(database_url: str) -> None:
    """Keys made before accounts existed keep working, each with an account named after it."""
    engine = create_engine(database_url)
    created = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0001")
            for index in range(2):
                await conn.execute(
                    text(
                        "INSERT INTO api_keys (id, name, key_hash, prefix, created_at) "
                        "VALUES (:id, :name, :hash, 'tsk_abcd', :created)"
                    ),
                    {
                        "id": f"key_000000000000000{index}",
                        "name": f"old key {index}",
                        "hash": f"{index}" * 64,
                        "created": created,
                    },
                )
            await conn.execute(
                text(
                    "INSERT INTO requests (request_id, api_key_id, endpoint, model, status, "
                    "prompt_tokens, completion_tokens, latency_ms, created_at) VALUES "
                    "('req_old', 'key_0000000000000000', 'completions', 'm', 'ok', 1, 2, 3, "
                    ":created)"
                ),
                {"created": created},
            )
        assert await current_revision(database_url) == "0001"

        await upgrade_to_head(database_url)

        keys = await ApiKeyStore(engine).list()
        assert [key.name for key in keys] == ["old key 0", "old key 1"]
        for key in keys:
            expected = "acct_" + hashlib.sha256(key.id.encode()).hexdigest()[:16]
            assert key.account_id == expected
            assert (key.spend_cap_total, key.spend_cap_daily) == (None, None)
            account = await AccountStore(engine).get(key.account_id)
            assert account is not None
            assert (account.name, account.created_at) == (key.name, created)
        old = await RequestLog(engine).get("req_old")
        assert old is not None
        assert (old.cost, old.account_id, old.price_input_per_mtok) == (0, None, None)
        assert await LedgerStore(engine).check() == []
    finally:
        await engine.dispose()
