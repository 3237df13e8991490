"""Migrations: idempotent, concurrent-safe, and producing exactly the schema in tables.py."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect

from tessera.store.engine import create_engine
from tessera.store.migrate import current_revision, head_revision, upgrade_to_head
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
    assert tables == {"alembic_version", "api_keys", "providers", "requests"}


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
