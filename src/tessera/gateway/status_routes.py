"""GET /v1/providers/{id}/status: a provider asks why it gets work, or why not.

Public like the reputation route: everything in it is either the provider's own
announcement or routing state the gateway would show in its explorer; recent requests
appear only as counts per constraint, never their content.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request

from tessera.errors import NotFound
from tessera.gateway.verification_routes import provider_id_param
from tessera.market.attributes import attributes
from tessera.market.diagnosis import diagnose


async def status_view(
    gateway: Any, provider_id: str, uptime_epochs: int = 24
) -> dict[str, Any] | None:
    """Why ``provider_id`` gets work or not, per model; None if this gateway never saw it.

    Everything but the stored uptime epochs is read from memory (the live registry, the
    recent-requests window, the stake book)."""
    now = time.monotonic()
    live = gateway.registry.get(provider_id)
    bonded = gateway.payments.bonded(provider_id)
    uptime = None
    liveness = getattr(gateway, "liveness", None)
    if liveness is not None:
        uptime = await liveness.uptime(provider_id, uptime_epochs)
    if live is None:
        if not (gateway.registry.has_seen(provider_id) or bonded > 0):
            return None
        return {
            "provider_id": provider_id,
            "connected": False,
            "reasons": ["not connected to this gateway: start `tessera provider`"],
            "stake": {"bonded": bonded},
            "uptime": uptime,
        }
    caps = live.capabilities
    models = []
    for name in live.offers:
        required = gateway.payments.stake.required(live, name)
        diagnosis = diagnose(
            live,
            name,
            gateway.serving.recent.of(name),
            bonded,
            required,
            now,
            gateway.registry.offer(name),
        )
        entry = diagnosis.public()
        entry["stake_required"] = required
        entry["price"] = {
            "input_per_mtok": live.offers[name].price_input_per_mtok,
            "output_per_mtok": live.offers[name].price_output_per_mtok,
        }
        models.append(entry)
    return {
        "provider_id": provider_id,
        "connected": True,
        "label": caps.label,
        "region": caps.region,
        "no_retention": caps.no_retention,
        "attributes": attributes(live, gateway.registry.label_shared_with(provider_id)),
        "sla_uptime_bps": caps.sla_uptime_bps,
        "reputation": round(live.reputation, 4),
        "load": {
            "active_jobs": live.active_jobs,
            "max_concurrent_jobs": live.max_concurrent_jobs,
        },
        "health": live.health.public(now),
        "stake": {"bonded": bonded},
        "models": models,
        "uptime": uptime,
    }


def install_status_routes(app: FastAPI, gateway_of: Callable[[Request], Any]) -> None:
    @app.get("/v1/providers/{provider_id}/status", tags=["providers"])
    async def provider_status(request: Request, provider_id: str) -> dict[str, Any]:
        """Is this provider routed, and if not, why: stake, status, breaker, policies."""
        provider_id_param(provider_id, "provider_id")
        view = await status_view(gateway_of(request), provider_id)
        if view is None:
            raise NotFound(
                f"no provider {provider_id} has been seen by this gateway",
                param="provider_id",
            )
        return view
