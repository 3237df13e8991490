"""Providers the gateway has seen: identity, self-description, first and last sighting.

The row is keyed by the provider's Ed25519 public key (hex). ``upsert_seen`` is called
on every successful registration; it keeps ``first_seen_at`` and replaces the rest
(last writer wins).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.store.dialect import conflict_insert
from tessera.store.errors import translated
from tessera.store.tables import providers


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    provider_id: str
    label: str
    region: str
    agent_version: str
    capabilities_json: str
    first_seen_at: datetime
    last_seen_at: datetime


class ProviderStore:
    """Reads and writes the ``providers`` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def upsert_seen(
        self,
        provider_id: str,
        label: str,
        region: str,
        agent_version: str,
        capabilities_json: str,
        now: datetime,
    ) -> None:
        """Insert the provider, or refresh its description and ``last_seen_at`` (aware ``now``)."""
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                stmt = conflict_insert(conn.dialect.name, providers).values(
                    provider_id=provider_id,
                    label=label,
                    region=region,
                    agent_version=agent_version,
                    capabilities=capabilities_json,
                    first_seen_at=now,
                    last_seen_at=now,
                )
                excluded = stmt.excluded
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[providers.c.provider_id],
                        set_={
                            "label": excluded.label,
                            "region": excluded.region,
                            "agent_version": excluded.agent_version,
                            "capabilities": excluded.capabilities,
                            "last_seen_at": excluded.last_seen_at,
                        },
                    )
                )

    async def recent_models(self, limit: int = 10_000) -> set[str]:
        """The models announced by the ``limit`` providers seen most recently: what a
        restarted gateway expects back (a request for one is then 503, not 404)."""
        stmt = (
            select(providers.c.capabilities).order_by(providers.c.last_seen_at.desc()).limit(limit)
        )
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).scalars().all()
        names: set[str] = set()
        for text in rows:
            try:
                models = json.loads(text).get("models", [])
                names.update(m["name"] for m in models if isinstance(m.get("name"), str))
            except (ValueError, TypeError, AttributeError, KeyError):
                continue  # an unreadable old row names no model
        return names

    async def get(self, provider_id: str) -> ProviderRecord | None:
        stmt = select(providers).where(providers.c.provider_id == provider_id)
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            return None
        return ProviderRecord(
            provider_id=row["provider_id"],
            label=row["label"],
            region=row["region"],
            agent_version=row["agent_version"],
            capabilities_json=row["capabilities"],
            first_seen_at=row["first_seen_at"],
            last_seen_at=row["last_seen_at"],
        )
