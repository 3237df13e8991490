"""Database URLs and the async engine: SQLite in the data directory by default, PostgreSQL at scale.

The same statements run on both. SQLite gets WAL (readers never block the writer),
foreign keys, a busy timeout, and real transactions (SQLAlchemy emits BEGIN itself, so
DDL in a migration is atomic too). PostgreSQL gets a pre-pinged, recycled pool.

A SQLite database is its owner's only: its file is created 0600 before SQLite opens it
(SQLite gives its -wal and -shm files the database file's mode), a directory made for it
is 0700, and an existing database others could read is tightened, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tessera.errors import ConfigError
from tessera.store.errors import StoreError, translated

log = logging.getLogger(__name__)

DATABASE_FILE = "tessera.db"
SQLITE_BUSY_TIMEOUT_MS = 5_000
PG_POOL_SIZE = 10
PG_MAX_OVERFLOW = 10
PG_POOL_RECYCLE_S = 1_800
PG_CONNECT_TIMEOUT_S = 10

# Execution option read by the SQLite BEGIN hook: "IMMEDIATE" takes the write lock up
# front, for transactions that read and then write (migrations).
SQLITE_BEGIN_OPTION = "tessera_sqlite_begin"

_SQLITE_BEGIN_MODES = ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")
_EXPECTED = "use postgresql://user@host:5432/dbname or sqlite:///path/to/tessera.db"
_PG_SCHEMES = {"postgresql", "postgres", "postgresql+asyncpg"}
_SQLITE_SCHEMES = {"sqlite", "sqlite+aiosqlite"}


def database_url_for(data_dir: Path) -> str:
    """The default database: ``<data_dir>/tessera.db`` through aiosqlite, as an absolute path."""
    path = (data_dir.expanduser().absolute() / DATABASE_FILE).as_posix()
    return f"sqlite+aiosqlite:///{path}"


def normalise_database_url(url: str) -> str:
    """Accept the spellings people paste and return the async-driver URL.

    ``postgres://`` and ``postgresql://`` become ``postgresql+asyncpg://``; ``sqlite:///``
    becomes ``sqlite+aiosqlite:///``. Other drivers and in-memory SQLite (each pooled
    connection would see its own empty database) raise :class:`ConfigError`.
    """
    text = url.strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme == "postgres":  # Heroku-style; SQLAlchemy only knows "postgresql".
        text = "postgresql" + text[len("postgres") :]
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError) as exc:
        # The URL is not echoed: it may hold a password.
        raise ConfigError(f"cannot parse the database URL: {_EXPECTED}") from exc
    if scheme in _PG_SCHEMES:
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif scheme in _SQLITE_SCHEMES:
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError(
                "in-memory SQLite is not supported (each connection would get its own empty "
                "database): use a file, e.g. sqlite:///path/to/tessera.db"
            )
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    else:
        raise ConfigError(f"unsupported database URL scheme {scheme!r}: {_EXPECTED}")
    return parsed.render_as_string(hide_password=False)


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An engine for ``url`` (normalised first). Connects lazily; errors surface on first use.

    For SQLite the database file's directory is created if missing.
    """
    parsed = make_url(normalise_database_url(url))
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, echo)
    return create_async_engine(
        parsed,
        echo=echo,
        pool_size=PG_POOL_SIZE,
        max_overflow=PG_MAX_OVERFLOW,
        pool_pre_ping=True,
        pool_recycle=PG_POOL_RECYCLE_S,
        connect_args={
            "timeout": PG_CONNECT_TIMEOUT_S,
            "server_settings": {"application_name": "tessera"},
        },
    )


def _sqlite_engine(url: URL, echo: bool) -> AsyncEngine:
    path = Path(url.database or "")
    # Checked here because a failed aiosqlite connect leaves a worker thread that may
    # outlive the event loop and print a traceback after our own clear error.
    if path.is_dir():
        raise StoreError(f"the SQLite database path {path} is a directory: name a file")
    with translated(url):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private_database_file(path)
    engine = create_async_engine(url, echo=echo)
    sqlite_hooks(engine.sync_engine)
    return engine


def sqlite_hooks(engine: Engine) -> None:
    """WAL, NORMAL sync, foreign keys and a busy timeout on every connection, and BEGIN
    issued by SQLAlchemy in the mode the ``SQLITE_BEGIN_OPTION`` execution option names."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand BEGIN to SQLAlchemy (below) so sqlite3's legacy mode does not autocommit DDL.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "foreign_keys=ON",
            f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        if mode not in _SQLITE_BEGIN_MODES:
            raise ValueError(f"{SQLITE_BEGIN_OPTION} must be one of {_SQLITE_BEGIN_MODES}")
        connection.exec_driver_sql(f"BEGIN {mode}")


def _private_database_file(path: Path) -> None:
    """Create the database file 0600 if missing; take others' access off it and its
    WAL, shared-memory and journal files if they have any."""
    with contextlib.suppress(FileExistsError):  # another process made it first
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & 0o077:
                file.chmod(mode & ~0o077)
                log.warning(
                    "tightened %s from %03o to %03o: others could read it",
                    file,
                    mode,
                    mode & ~0o077,
                )
        except FileNotFoundError:
            continue
        except OSError as exc:  # not ours to change: say so, and open it as before
            log.warning("could not make %s private: %s", file, exc)
