"""A provider's uptime over HTTP: the epoch in progress and the last ended ones (public)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request

from tessera.errors import InvalidRequest
from tessera.gateway.verification_routes import PROVIDER_ID
from tessera.market.uptime import CurrentEpoch, breached
from tessera.store.uptime import UptimeRow


def _uptime_bps(up_ms: int, down_ms: int) -> int | None:
    total = up_ms + down_ms
    return None if total == 0 else up_ms * 10_000 // total


def current_view(now: CurrentEpoch | None) -> dict[str, Any] | None:
    if now is None:
        return None
    return {
        "epoch_start": now.epoch_start_ms // 1000,
        "state": now.state.value,
        "connected": now.connected,
        "up_ms": now.up_ms,
        "down_ms": now.down_ms,
        "uptime_bps": _uptime_bps(now.up_ms, now.down_ms),
        "sla_uptime_bps": now.sla_uptime_bps,
    }


def epoch_view(row: UptimeRow) -> dict[str, Any]:
    return {
        "epoch_start": int(row.epoch_start.timestamp()),
        "epoch_s": row.epoch_s,
        "up_ms": row.up_ms,
        "down_ms": row.down_ms,
        "uptime_bps": _uptime_bps(row.up_ms, row.down_ms),
        "sla_uptime_bps": row.sla_uptime_bps,
        "breach": breached(row.up_ms, row.down_ms, row.sla_uptime_bps),
        "slashed": row.slashed,
    }


def install_liveness_routes(app: FastAPI, gateway_of: Callable[[Request], Any]) -> None:
    @app.get("/v1/providers/{provider_id}/uptime", tags=["providers"])
    async def get_uptime(
        request: Request,
        provider_id: str,
        limit: Annotated[int, Query(ge=1, le=200)] = 24,
    ) -> dict[str, Any]:
        """Uptime against the declared SLA: the epoch so far and the newest ended epochs.

        Times are milliseconds, ``epoch_start`` Unix seconds, ``*_bps`` basis points;
        ``slashed`` is the stake (base units) taken for downtime beyond the SLA.
        """
        if not PROVIDER_ID.fullmatch(provider_id):
            raise InvalidRequest(
                "a provider id is its public key: 64 lowercase hex characters",
                param="provider_id",
            )
        summary = await gateway_of(request).liveness.uptime(provider_id, limit)
        return {
            "object": "provider_uptime",
            "provider_id": provider_id,
            "epoch_s": summary.epoch_s,
            "current": current_view(summary.current),
            "epochs": [epoch_view(r) for r in summary.epochs],
        }
