"""The chain's rows: proven address-to-account links, and how far events are booked.

Both are small and read whole at start (links) or once (cursor); the watcher keeps them
in memory after that, so nothing here is on the request path.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.errors import InvalidRequest
from tessera.store.dialect import conflict_insert
from tessera.store.errors import translated
from tessera.store.tables import chain_claims, chain_cursor, chain_links, chain_payees, utc_now


@dataclass(frozen=True, slots=True)
class Payee:
    """A provider's payout address from its newest checked Registry binding."""

    provider_id: str
    address: str
    nonce: int
    valid_until: int
    bound_at_block: int


@dataclass(frozen=True, slots=True)
class SlashClaim:
    """A slash decided here against a provider's stake on chain, to be proposed."""

    reference: str  # the slash's journal-style reference: unique per offence
    provider_id: str
    offender: str  # the account the provider's key is bound to
    kind: int  # the StakeManager's offence kind
    evidence: bytes  # keccak of the reference and the evidence text
    refunds: tuple[tuple[str, str, int], ...]  # (consumer address, gateway, amount)


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

    async def save_claim(self, claim: SlashClaim) -> bool:
        """Record ``claim`` as queued; False if one with its reference was recorded."""
        values = {
            "reference": claim.reference,
            "provider_id": claim.provider_id,
            "offender": claim.offender,
            "kind": claim.kind,
            "evidence": "0x" + claim.evidence.hex(),
            "refunds": json.dumps([list(r) for r in claim.refunds]),
            "status": "queued",
            "proposal_id": None,
            "detail": "",
            "created_at": utc_now(),
        }
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                stmt = (
                    conflict_insert(conn.dialect.name, chain_claims)
                    .values(**values)
                    .on_conflict_do_nothing(index_elements=[chain_claims.c.reference])
                )
                return bool((await conn.execute(stmt)).rowcount == 1)

    async def queued_claims(self) -> list[SlashClaim]:
        """Claims not yet proposed, oldest first."""
        stmt = (
            select(chain_claims)
            .where(chain_claims.c.status == "queued")
            .order_by(chain_claims.c.created_at, chain_claims.c.reference)
        )
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).mappings().all()
        return [
            SlashClaim(
                row["reference"],
                row["provider_id"],
                row["offender"],
                int(row["kind"]),
                bytes.fromhex(row["evidence"].removeprefix("0x")),
                tuple((c, g, int(a)) for c, g, a in json.loads(row["refunds"])),
            )
            for row in rows
        ]

    async def claim_done(
        self, reference: str, status: str, proposal_id: int | None = None, detail: str = ""
    ) -> None:
        """Mark a claim ``proposed`` (with its id) or ``refused`` (with why)."""
        stmt = (
            update(chain_claims)
            .where(chain_claims.c.reference == reference)
            .values(status=status, proposal_id=proposal_id, detail=detail[:2000])
        )
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                await conn.execute(stmt)

    async def proposed_claims(self) -> dict[str, int]:
        """Every proposed claim's reference and proposal id."""
        stmt = select(chain_claims.c.reference, chain_claims.c.proposal_id).where(
            chain_claims.c.status == "proposed"
        )
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return {reference: int(pid or 0) for reference, pid in rows}
