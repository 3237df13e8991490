"""Run the store's Alembic migrations from code; no alembic.ini is needed at run time.

``upgrade_to_head(url)`` is idempotent and safe to call at every gateway start, also
from several replicas at once: PostgreSQL serialises them on an advisory lock, SQLite
on ``BEGIN IMMEDIATE``. The whole upgrade is one transaction on both databases.

For developers: ``python -m tessera.store --url URL revision -m "add x"`` autogenerates
the next numbered revision from ``tables.py``; ``python -m tessera.store --url URL upgrade``
applies them.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from tessera.store.engine import SQLITE_BEGIN_OPTION, create_engine
from tessera.store.errors import StoreError, translated

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
# Any fixed 64-bit number; it only has to be the same in every replica.
_PG_LOCK_KEY = 0x7E55E7A_0001


def alembic_config() -> Config:
    """An Alembic config built in code, pointing at the migrations shipped in this package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


async def upgrade_to_head(url: str, wait_s: float = 60.0) -> None:
    """Bring the database at ``url`` to the newest schema. Raises StoreError if unreachable.

    Gateways started at once on one SQLite file take turns: one migrates under the write
    lock while the others wait past the busy timeout, trying again for up to ``wait_s``
    (PostgreSQL queues them on an advisory lock instead)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    delay = 0.1
    while True:
        try:
            await _run(url, _upgrade)
            return
        except StoreError as exc:
            sqlite = url.startswith("sqlite")
            if not (sqlite and exc.retryable) or loop.time() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def current_revision(url: str) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    result: list[str | None] = []
    await _run(
        url, lambda conn: result.append(MigrationContext.configure(conn).get_current_revision())
    )
    return result[0]


async def _run(url: str, work: Any) -> None:
    engine = create_engine(url)
    try:
        with translated(engine.url):
            async with engine.connect() as conn:
                if conn.dialect.name == "sqlite":
                    await conn.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
                async with conn.begin():
                    if conn.dialect.name == "postgresql":
                        await conn.execute(
                            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY}
                        )
                    await conn.run_sync(work)
    finally:
        await engine.dispose()


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _revision(connection: Connection, message: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    next_id = f"{int(head_revision()) + 1:04d}"
    command.revision(config, message=message, autogenerate=True, rev_id=next_id)


def main(argv: list[str] | None = None) -> None:
    """Command line for developers; the gateway calls ``upgrade_to_head`` itself."""
    parser = argparse.ArgumentParser(prog="python -m tessera.store")
    parser.add_argument("--url", required=True, help="database URL (sqlite:/// or postgresql://)")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("upgrade", help="apply every migration up to head")
    rev = sub.add_parser("revision", help="autogenerate the next revision from tables.py")
    rev.add_argument("-m", "--message", required=True)
    args = parser.parse_args(argv)
    if args.action == "upgrade":
        asyncio.run(upgrade_to_head(args.url))
    else:
        message: str = args.message
        asyncio.run(_run(args.url, lambda conn: _revision(conn, message)))
