"""Fixtures for the hub tests: an in-process gateway (helpers in support/scripted_peers.py).

Every gateway starts on a copy of one database migrated once per session: a gateway
migrates its database when it starts, which on an empty SQLite file takes longer than the
rest of its start, and on a copy at the newest schema is a quick no-op check. The
migrations themselves are tested in tests/integration/test_store_migrations.py.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tessera.store.engine import create_engine, database_url_for
from tessera.store.ledger import LedgerStore
from tessera.store.migrate import upgrade_to_head

from support.scripted_peers import LiveGateway, live_gateway


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a SQLite database at the newest schema (copy it, never use it)."""
    directory = tmp_path_factory.mktemp("migrated")
    asyncio.run(upgrade_to_head(database_url_for(directory)))
    return directory


@pytest.fixture
def gateway_dir(tmp_path: Path, migrated_database: Path) -> Path:
    """``tmp_path`` holding a fresh copy of the migrated database: a gateway's data dir."""
    for path in migrated_database.iterdir():
        shutil.copy2(path, tmp_path / path.name)
    return tmp_path


@pytest.fixture
async def gateway(gateway_dir: Path) -> AsyncIterator[LiveGateway]:
    """An in-process gateway; once it has stopped, its journal must still check out."""
    async with live_gateway(gateway_dir) as gw:
        yield gw
    engine = create_engine(database_url_for(gateway_dir))
    try:
        problems = await LedgerStore(engine).check()
    finally:
        await engine.dispose()
    assert problems == [], problems
