"""Database URL handling: the default location and the spellings people paste."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.errors import ConfigError
from tessera.store.engine import database_url_for, normalise_database_url


def test_default_url_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    assert database_url_for(tmp_path) == f"sqlite+aiosqlite:///{tmp_path}/tessera.db"


def test_default_url_is_absolute_for_a_relative_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/tmp")
    assert database_url_for(Path("data")) == "sqlite+aiosqlite:////tmp/data/tessera.db"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/tessera", "postgresql+asyncpg://u:p@db:5432/tessera"),
        ("postgres://u@db/tessera", "postgresql+asyncpg://u@db/tessera"),
        ("POSTGRES://u@db/tessera", "postgresql+asyncpg://u@db/tessera"),
        ("postgresql+asyncpg://u@db/tessera", "postgresql+asyncpg://u@db/tessera"),
        ("  postgresql://u@db/tessera\n", "postgresql+asyncpg://u@db/tessera"),
        (
            "sqlite:////var/lib/tessera/tessera.db",
            "sqlite+aiosqlite:////var/lib/tessera/tessera.db",
        ),
        ("sqlite:///rel.db", "sqlite+aiosqlite:///rel.db"),
        ("sqlite+aiosqlite:////x/t.db", "sqlite+aiosqlite:////x/t.db"),
    ],
)
def test_normalise(given: str, expected: str) -> None:
    assert normalise_database_url(given) == expected


def test_password_with_special_characters_survives() -> None:
    url = normalise_database_url("postgresql://u:p%40ss%2Fw@db/tessera")
    assert url == "postgresql+asyncpg://u:p%40ss%2Fw@db/tessera"


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("mysql://root@localhost/test", "unsupported database URL scheme 'mysql'"),
        ("postgresql+psycopg2://u@db/x", "use postgresql://"),
        ("sqlite://", "in-memory SQLite is not supported"),
        ("sqlite:///:memory:", "in-memory SQLite is not supported"),
        ("not a url", "cannot parse the database URL: use postgresql://"),
        ("postgresql://u:secret@db:notaport/x", "cannot parse the database URL: use"),
    ],
)
def test_unsupported_urls_say_what_to_use(given: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=hint) as info:
        normalise_database_url(given)
    assert "secret" not in info.value.message
