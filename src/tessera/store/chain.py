"""The chain's rows: proven address-to-account links, and how far events are booked.

Both are small and read whole at start (links) or once (cursor); the watcher keeps them
in memory after that, so nothing here is on the request path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.errors import InvalidRequest
from tessera.store.dialect import conflict_insert
from tessera.store.errors import translated
from tessera.store.tables import chain_cursor, chain_links, chain_payees, utc_now


@dataclass(frozen=True, slots=True)
class Payee:
    """A provider's payout address from its newest checked Registry binding."""

    provider_id: str
    address: str
    nonce: int
    valid_until: int
    bound_at_block: int


@dataclass(frozen=True, slots=True)
class Cursor:
    block_number: int
    block_hash: str


class ChainStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def link(self, address: str, account_id: str) -> bool:
        """Record that ``address`` pays for ``account_id``; False if it already did.
        InvalidRequest when the address already pays for another account."""
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                stmt = (
                    conflict_insert(conn.dialect.name, chain_links)
                    .values(address=address, account_id=account_id, linked_at=utc_now())
                    .on_conflict_do_nothing(index_elements=[chain_links.c.address])
                )
                inserted = (await conn.execute(stmt)).rowcount == 1
                if inserted:
                    return True
                owner = (
                    await conn.execute(
                        select(chain_links.c.account_id).where(chain_links.c.address == address)
                    )
                ).scalar_one()
        if owner != account_id:
            raise InvalidRequest(
                f"{address} already pays for another account; use another address",
                param="address",
                code="address_taken",
            )
        return False

    async def links(self) -> dict[str, str]:
        """Every linked address and the account it pays for."""
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (
                    await conn.execute(select(chain_links.c.address, chain_links.c.account_id))
                ).all()
        return {address: account for address, account in rows}

    async def cursor(self, gateway: str) -> Cursor | None:
        stmt = select(chain_cursor.c.block_number, chain_cursor.c.block_hash).where(
            chain_cursor.c.gateway == gateway
        )
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
        return None if row is None else Cursor(int(row[0]), row[1])

    async def save_cursor(self, gateway: str, cursor: Cursor) -> None:
        values = {
            "gateway": gateway,
            "block_number": cursor.block_number,
            "block_hash": cursor.block_hash,
            "updated_at": utc_now(),
        }
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                stmt = conflict_insert(conn.dialect.name, chain_cursor).values(**values)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[chain_cursor.c.gateway],
                    set_={k: v for k, v in values.items() if k != "gateway"},
                )
                await conn.execute(stmt)

    async def payees(self) -> dict[str, Payee]:
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(select(chain_payees))).mappings().all()
        return {row["provider_id"]: Payee(**row) for row in rows}

    async def save_payee(self, payee: Payee) -> None:
        """Keep ``payee`` unless a binding from a later block is already stored (each
        account numbers its own bindings, so only the block orders two accounts')."""
        values = asdict(payee)
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                stmt = conflict_insert(conn.dialect.name, chain_payees).values(**values)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[chain_payees.c.provider_id],
                    set_={k: v for k, v in values.items() if k != "provider_id"},
                    where=chain_payees.c.bound_at_block <= payee.bound_at_block,
                )
                await conn.execute(stmt)
                # The account is bound to this key now, no longer to the one before.
                await conn.execute(
                    delete(chain_payees).where(
                        chain_payees.c.address == payee.address,
                        chain_payees.c.provider_id != payee.provider_id,
                        chain_payees.c.bound_at_block <= payee.bound_at_block,
                    )
                )
