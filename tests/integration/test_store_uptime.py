"""UptimeStore on SQLite and PostgreSQL: epochs stored once, read back newest first."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tessera.store.uptime import UptimeRow, UptimeStore

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 4, 5, 0, 0, tzinfo=UTC)
PROVIDER = "ab" * 32
OTHER = "cd" * 32


def row(epoch: int, provider_id: str = PROVIDER, **changes: object) -> UptimeRow:
    base = UptimeRow(
        provider_id=provider_id,
        epoch_start=T0 + timedelta(hours=epoch),
        epoch_s=3600,
        up_ms=3_500_000,
        down_ms=100_000,
        sla_uptime_bps=9_900,
        slashed=10**8,
        created_at=T0 + timedelta(hours=epoch + 1, seconds=1),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


async def test_rows_come_back_newest_first_and_exact(store_engine: AsyncEngine) -> None:
    store = UptimeStore(store_engine)
    rows = [row(0), row(1, down_ms=0, slashed=0), row(2, sla_uptime_bps=0, up_ms=0)]
    await store.save(rows)
    await store.save([row(0, OTHER)])
    assert await store.recent(PROVIDER) == rows[::-1]
    assert await store.recent(PROVIDER, limit=2) == rows[:0:-1]
    assert await store.recent(OTHER) == [row(0, OTHER)]
    assert await store.recent("ef" * 32) == []
    for stored in await store.recent(PROVIDER):
        assert stored.epoch_start.tzinfo is not None


async def test_saving_an_epoch_again_keeps_the_first_row(store_engine: AsyncEngine) -> None:
    store = UptimeStore(store_engine)
    await store.save([row(0)])
    # A repeated close (another replica, a retry) must not rewrite the record or its slash.
    await store.save([row(0, slashed=0, down_ms=0), row(1)])
    assert await store.recent(PROVIDER) == [row(1), row(0)]
    await store.save([])
    assert len(await store.recent(PROVIDER)) == 2


@pytest.mark.parametrize(
    "changes",
    [
        {"provider_id": ""},
        {"provider_id": "x" * 65},
        {"epoch_start": datetime(2025, 1, 1)},  # naive
        {"up_ms": -1},
        {"slashed": 1.5},
        {"epoch_s": 0},
        {"sla_uptime_bps": 10_001},
        {"up_ms": 3_600_000, "down_ms": 1},
    ],
)
def test_bad_rows_are_refused_before_the_database(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        row(0, **changes)  # type: ignore[arg-type]


async def test_recent_limit_is_bounded(store_engine: AsyncEngine) -> None:
    with pytest.raises(ValueError):
        await UptimeStore(store_engine).recent(PROVIDER, limit=0)
