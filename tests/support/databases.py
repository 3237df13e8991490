"""Database fixtures for every suite: every store test runs on SQLite and on a fresh PostgreSQL database.

PostgreSQL is the server on 127.0.0.1:5432 (trust auth, see ../shared/services.md). If it
is down the fixture starts it; it never skips. Each test gets its own database, dropped
afterwards, so runs never see each other's rows.
"""

from __future__ import annotations

import asyncio
import getpass
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from tessera.store.engine import database_url_for

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
PG_START_WAIT_S = 60.0


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _ensure_postgres_running() -> None:
    if _port_open(PG_HOST, PG_PORT):
        return
    # "already running" exits non-zero too; the port check below is the real test.
    subprocess.run(["bash", "-c", PG_START], check=False, capture_output=True, timeout=60)
    deadline = time.monotonic() + PG_START_WAIT_S
    while not _port_open(PG_HOST, PG_PORT):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"PostgreSQL did not come up on {PG_HOST}:{PG_PORT} via `{PG_START}`"
            )
        time.sleep(0.2)


async def _find_admin_user() -> str:
    errors = []
    for user in ("postgres", getpass.getuser()):
        try:
            conn = await asyncpg.connect(
                host=PG_HOST, port=PG_PORT, user=user, database="postgres", timeout=10
            )
        except (OSError, asyncpg.PostgresError) as exc:
            errors.append(f"{user}: {exc}")
            continue
        await conn.close()
        return user
    raise RuntimeError(f"no PostgreSQL user with trust auth on {PG_HOST}: {errors}")


@pytest.fixture(scope="session")
def postgres_admin_user() -> str:
    """A PostgreSQL role that may create databases; the server is started if it was down."""
    _ensure_postgres_running()
    # Startup can accept TCP a moment before it accepts logins; retry briefly.
    deadline = time.monotonic() + PG_START_WAIT_S
    while True:
        try:
            # Its own loop in a thread: this runs inside the async fixture's running loop.
            with ThreadPoolExecutor(max_workers=1) as pool:
                return pool.submit(asyncio.run, _find_admin_user()).result()
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


async def _admin_execute(user: str, sql: str) -> None:
    conn = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=user, database="postgres", timeout=10
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database's URL: a file under tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield database_url_for(tmp_path / "data")
        return
    user: str = request.getfixturevalue("postgres_admin_user")
    async with fresh_postgres_database(user) as url:
        yield url


@asynccontextmanager
async def fresh_postgres_database(user: str) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database's URL, dropped on exit."""
    name = f"tessera_test_{secrets.token_hex(6)}"
    await _admin_execute(user, f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        await _admin_execute(user, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
