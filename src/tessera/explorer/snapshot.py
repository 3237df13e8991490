"""One immutable picture of the network that every explorer page and JSON answer is cut
from: built every few seconds by the gateway, never per visitor.

Pure: the caller hands in the rollups, the live providers, the ledger's totals and the
time. Declared values (what providers announce: hardware, region) are kept apart from
measured ones (what the gateway saw: requests, latencies, audits).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from tessera.explorer.rollups import WINDOWS, Rollups, TapeRow


@dataclass(frozen=True, slots=True)
class ProviderView:
    """What the snapshot needs of one connected provider."""

    provider_id: str
    label: str
    region: str
    gpus: tuple[str, ...]
    models: tuple[str, ...]
    routable: bool
    active_jobs: int
    max_concurrent_jobs: int
    online: bool = True
    statuses: tuple[tuple[str, str], ...] = ()  # (model, routable | challenge | banned ...)
    prices: tuple[tuple[str, int, int], ...] = ()  # (model, input, output per 1M tokens)
    weights: tuple[tuple[str, str, str], ...] = ()  # (model, kind, weights sha256)
    bonded: int = 0
    reputation: float | None = None
    agent_version: str = ""
    connected_at: float | None = None


@dataclass(frozen=True, slots=True)
class LedgerView:
    minted: int
    fees: int
    verification_pool: int
    insurance_pool: int
    escrow_open: int
    problems: tuple[str, ...]  # the live invariant check: empty when it holds


def build_snapshot(
    rollups: Rollups,
    providers: Iterable[ProviderView],
    ledger: LedgerView | None,
    now: float,
    version: int,
    rows: dict[str, tuple[ProviderView, int, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """``rows``: the caller's cache of provider rows, reused while a provider's view and
    request count are unchanged (most of them, at 10,000 providers, every 2 s)."""
    everyone = list(providers)
    regions = {p.provider_id: p.region for p in everyone}
    live = [p for p in everyone if p.online]
    gpus: Counter[str] = Counter()
    for p in live:
        gpus.update(p.gpus)
    return {
        "object": "explorer.snapshot",
        "version": version,
        "as_of": now,
        "network": {
            "providers_online": len(live),
            "providers_routable": sum(1 for p in live if p.routable),
            "busy_slots": sum(p.active_jobs for p in live),
            "slots": sum(p.max_concurrent_jobs for p in live),
            "declared": {
                "gpus": dict(sorted(gpus.items())),
                "gpu_count": sum(gpus.values()),
                "regions": dict(sorted(Counter(p.region for p in live).items())),
                "models": dict(sorted(Counter(m for p in live for m in p.models).items())),
            },
        },
        "windows": {name: rollups.summary(now, name) for name in WINDOWS},
        "requests_per_minute": rollups.series(now, "1h", "requests")["points"],
        "tape": [_tape_row(row, rollups, regions) for row in rollups.tape],
        "providers": [_cached_row(p, rollups, rows) for p in everyone],
        "ledger": None
        if ledger is None
        else {**asdict(ledger), "problems": list(ledger.problems), "holds": not ledger.problems},
    }


def _tape_row(row: TapeRow, rollups: Rollups, regions: dict[str, str]) -> dict[str, Any]:
    """A tape line: the request as the tape keeps it, its provider's declared region, and
    its audit's outcome once one closed (None: not audited, or not yet)."""
    audit = rollups.request_audits.get(row.request_id)
    return {
        **asdict(row),
        "region": None if row.provider_id is None else regions.get(row.provider_id),
        "audit": None if audit is None else audit.status,
    }


def _cached_row(
    view: ProviderView,
    rollups: Rollups,
    rows: dict[str, tuple[ProviderView, int, dict[str, Any]]] | None,
) -> dict[str, Any]:
    if rows is None:
        return _provider_row(view, rollups)
    totals = rollups.providers.get(view.provider_id)
    requests = -1 if totals is None else totals.requests
    cached = rows.get(view.provider_id)
    if cached is not None and cached[1] == requests and (cached[0] is view or cached[0] == view):
        return cached[2]
    row = _provider_row(view, rollups)
    rows[view.provider_id] = (view, requests, row)
    return row


def _provider_row(view: ProviderView, rollups: Rollups) -> dict[str, Any]:
    """One row of the providers list: declared (what it announced) apart from measured."""
    totals = rollups.providers.get(view.provider_id)
    measured = totals.as_dict() if totals is not None else None
    return {
        "provider_id": view.provider_id,
        "label": view.label,
        "status": ("routable" if view.routable else "joining") if view.online else "offline",
        "region": view.region,
        "declared": {
            "gpus": list(view.gpus),
            "models": [
                {"model": model, "price_input_per_mtok": pin, "price_output_per_mtok": pout}
                for model, pin, pout in view.prices
            ],
            "agent_version": view.agent_version,
            "max_concurrent_jobs": view.max_concurrent_jobs,
        },
        "model_status": dict(view.statuses),
        "active_jobs": view.active_jobs,
        "bonded": view.bonded,
        "reputation": view.reputation,
        "connected_at": view.connected_at,
        "measured": measured,
    }
