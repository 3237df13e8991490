"""Driver errors leave the store as StoreError with a message that says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tessera.errors import TesseraError
from tessera.store.api_keys import ApiKeyStore
from tessera.store.engine import create_engine, normalise_database_url
from tessera.store.errors import StoreError
from tessera.store.migrate import upgrade_to_head
from tessera.store.providers import ProviderStore

pytestmark = pytest.mark.integration


async def test_unreachable_postgres_says_how_to_fix(unreachable_postgres_url: str) -> None:
    port = make_url(unreachable_postgres_url).port
    engine = create_engine(unreachable_postgres_url)
    try:
        with pytest.raises(StoreError) as info:
            await ApiKeyStore(engine).list()
    finally:
        await engine.dispose()
    error = info.value
    assert isinstance(error, TesseraError)
    assert f"cannot reach PostgreSQL at 127.0.0.1:{port}" in error.message
    assert "is it running" in error.message and "services.md" in error.message
    assert error.retryable is True
    assert isinstance(error.__cause__, OSError)


async def test_migrating_an_unreachable_postgres_raises_store_error(
    unreachable_postgres_url: str,
) -> None:
    with pytest.raises(StoreError, match="cannot reach PostgreSQL"):
        await upgrade_to_head(unreachable_postgres_url)


@pytest.mark.postgres
async def test_missing_postgres_database_is_named(postgres_admin_user: str) -> None:
    url = f"postgresql://{postgres_admin_user}@127.0.0.1:5432/tessera_no_such_db"
    with pytest.raises(StoreError, match="'tessera_no_such_db' does not exist") as info:
        await upgrade_to_head(url)
    assert info.value.retryable is False


@pytest.mark.postgres
async def test_unknown_postgres_role_is_named(postgres_admin_user: str) -> None:
    url = "postgresql://tessera_no_such_role@127.0.0.1:5432/postgres"
    with pytest.raises(StoreError, match="refused the login of user 'tessera_no_such_role'"):
        await upgrade_to_head(url)


async def test_unmigrated_database_says_to_migrate(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with pytest.raises(StoreError, match="no Tessera schema yet: run the migrations"):
            await ProviderStore(engine).get("ab" * 32)
    finally:
        await engine.dispose()


def test_sqlite_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create the directory") as info:
        create_engine(f"sqlite:///{blocker}/sub/tessera.db")
    assert isinstance(info.value.__cause__, OSError)


def test_sqlite_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "tessera.db"
    directory.mkdir()
    with pytest.raises(StoreError, match="is a directory: name a file"):
        create_engine(normalise_database_url(f"sqlite:///{directory}"))
