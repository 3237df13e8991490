"""Store fixtures: every store test runs on SQLite and on a fresh PostgreSQL database.

The database fixtures themselves live in support/databases.py so other suites share them.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.store.engine import create_engine
from tessera.store.migrate import upgrade_to_head

from support.databases import PG_HOST


@pytest.fixture
async def migrated_url(database_url: str) -> str:
    """``database_url`` brought to the newest schema."""
    await upgrade_to_head(database_url)
    return database_url


@pytest.fixture
async def store_engine(migrated_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a migrated database, disposed after the test."""
    engine = create_engine(migrated_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def unreachable_postgres_url() -> str:
    """A PostgreSQL URL on a local port where nothing listens."""
    with socket.socket() as sock:
        sock.bind((PG_HOST, 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres@{PG_HOST}:{port}/tessera"
