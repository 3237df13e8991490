"""Accounts: who pays. Every API key spends from one account; an account may hold many keys.

An account id (``acct_`` + 16 hex) is also the owner of the account's ledger accounts
(``balance:acct_...``, ``hold:acct_...``), so the id never changes once made.
"""

from __future__ import annotations

import builtins
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tessera.errors import InvalidRequest
from tessera.store.errors import translated
from tessera.store.tables import accounts, utc_now

ACCOUNT_PREFIX = "acct_"
MAX_NAME_CHARS = 200


@dataclass(frozen=True, slots=True)
class AccountRecord:
    id: str
    name: str
    created_at: datetime


def new_account_id() -> str:
    return ACCOUNT_PREFIX + secrets.token_hex(8)


async def insert_account(conn: AsyncConnection, name: str) -> AccountRecord:
    """Create an account inside the caller's transaction (an API key and its account
    are made together, or not at all)."""
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise InvalidRequest(
            f"an account name must be 1 to {MAX_NAME_CHARS} characters", param="name"
        )
    record = AccountRecord(id=new_account_id(), name=name, created_at=utc_now())
    await conn.execute(insert(accounts).values(**asdict(record)))
    return record


async def account_exists(conn: AsyncConnection, account_id: str) -> bool:
    stmt = select(accounts.c.id).where(accounts.c.id == account_id)
    return (await conn.execute(stmt)).first() is not None


class AccountStore:
    """Create, find and list rows of the ``accounts`` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, name: str) -> AccountRecord:
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                return await insert_account(conn, name)

    async def get(self, account_id: str) -> AccountRecord | None:
        stmt = select(accounts).where(accounts.c.id == account_id)
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else AccountRecord(**row)

    async def list(self) -> builtins.list[AccountRecord]:
        """Every account, oldest first."""
        stmt = select(accounts).order_by(accounts.c.created_at, accounts.c.id)
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).mappings().all()
        return [AccountRecord(**row) for row in rows]
