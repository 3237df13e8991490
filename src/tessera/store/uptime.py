"""Uptime per epoch in the database: one row per provider per ended epoch.

The gateway writes a row when it closes an epoch (see gateway/liveness.py), with what it
slashed for it; the explorer and ``GET /v1/providers/{id}/uptime`` read them back. Writes
are idempotent on (provider_id, epoch_start): the first row stored for an epoch stands, so
a retried or repeated close never rewrites history or double-reports a slash.

The epochs still open are saved too (``save_progress``, one row per tracked provider,
replaced whole each time) so a restarted gateway resumes them (``load_progress``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.market.uptime import ProviderProgress
from tessera.store.dialect import conflict_insert
from tessera.store.errors import translated
from tessera.store.tables import provider_uptime, provider_uptime_progress

log = logging.getLogger(__name__)

MAX_PROVIDER_ID_CHARS = 64
MAX_RECENT = 1_000


@dataclass(frozen=True, slots=True)
class UptimeRow:
    """One provider's ended epoch: milliseconds up and down, the SLA it was held to (basis
    points) and the base units slashed for it (0 when within the SLA or nothing was staked)."""

    provider_id: str
    epoch_start: datetime
    epoch_s: int
    up_ms: int
    down_ms: int
    sla_uptime_bps: int
    slashed: int
    created_at: datetime

    def __post_init__(self) -> None:
        owner = f"uptime of {self.provider_id!r}"
        if not isinstance(self.provider_id, str) or not (
            0 < len(self.provider_id) <= MAX_PROVIDER_ID_CHARS
        ):
            raise ValueError(
                f"{owner}: provider_id must be 1 to {MAX_PROVIDER_ID_CHARS} characters"
            )
        for name in ("epoch_start", "created_at"):
            value = getattr(self, name)
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise ValueError(f"{owner}: {name} must be a timezone-aware datetime")
        for name in ("epoch_s", "up_ms", "down_ms", "sla_uptime_bps", "slashed"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 0:
                raise ValueError(f"{owner}: {name} must be a non-negative integer")
        if self.epoch_s <= 0 or self.sla_uptime_bps > 10_000:
            raise ValueError(f"{owner}: epoch_s must be positive and sla_uptime_bps <= 10000")
        if self.up_ms + self.down_ms > self.epoch_s * 1000:
            raise ValueError(f"{owner}: up_ms + down_ms exceeds the epoch")


class UptimeStore:
    """Reads and writes the ``provider_uptime`` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def save(self, rows: Sequence[UptimeRow]) -> None:
        """Store the rows in one transaction; a row whose epoch is already stored is skipped."""
        if not rows:
            return
        # One lock order on PostgreSQL when two writers overlap.
        values = [asdict(r) for r in sorted(rows, key=lambda r: (r.provider_id, r.epoch_start))]
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                stmt = conflict_insert(conn.dialect.name, provider_uptime).on_conflict_do_nothing(
                    index_elements=[provider_uptime.c.provider_id, provider_uptime.c.epoch_start]
                )
                await conn.execute(stmt, values)

    async def recent(self, provider_id: str, limit: int = 24) -> list[UptimeRow]:
        """The provider's newest ``limit`` epochs, newest first."""
        if not 1 <= limit <= MAX_RECENT:
            raise ValueError(f"limit must lie in 1..{MAX_RECENT}")
        stmt = (
            select(provider_uptime)
            .where(provider_uptime.c.provider_id == provider_id)
            .order_by(provider_uptime.c.epoch_start.desc())
            .limit(limit)
        )
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(stmt)).mappings().all()
        return [UptimeRow(**row) for row in rows]

    async def save_progress(
        self, epoch_s: int, progress: Sequence[ProviderProgress], saved_at: datetime
    ) -> None:
        """Replace the saved open epochs with ``progress``, in one transaction."""
        rows = [
            {
                "provider_id": p.provider_id,
                "epoch_s": epoch_s,
                "committed": p.committed,
                "sla_uptime_bps": p.sla_uptime_bps,
                "tallies": json.dumps([list(t) for t in p.tallies], separators=(",", ":")),
                "saved_at": saved_at,
            }
            for p in progress
        ]
        with translated(self._engine.url):
            async with self._engine.begin() as conn:
                await conn.execute(delete(provider_uptime_progress))
                if rows:
                    await conn.execute(insert(provider_uptime_progress), rows)

    async def load_progress(self, epoch_s: int) -> list[ProviderProgress]:
        """The saved open epochs of ``epoch_s``-second epochs (rows of another epoch length,
        from before a settings change, or unreadable ones are skipped and logged)."""
        with translated(self._engine.url):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(select(provider_uptime_progress))).mappings().all()
        progress = []
        for row in rows:
            if row["epoch_s"] != epoch_s:
                continue
            try:
                tallies = tuple(
                    (int(start), int(up), int(down), int(sla))
                    for start, up, down, sla in json.loads(row["tallies"])
                )
            except (ValueError, TypeError) as exc:
                log.warning(
                    "skipping unreadable uptime progress of %s: %s", row["provider_id"], exc
                )
                continue
            progress.append(
                ProviderProgress(
                    row["provider_id"], bool(row["committed"]), row["sla_uptime_bps"], tallies
                )
            )
        return progress
