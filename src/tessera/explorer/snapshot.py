"""One immutable picture of the network that every explorer page and JSON answer is cut
from: built every few seconds by the gateway, never per visitor.

Pure: the caller hands in the rollups, the live providers, the ledger's totals and the
time. Declared values (what providers announce: hardware, region) are kept apart from
measured ones (what the gateway saw: requests, latencies, audits).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator, Sequence
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


def snapshot_steps(
    rollups: Rollups,
    providers: Sequence[ProviderView],
    ledger: LedgerView | None,
    now: float,
    version: int,
    rows: dict[str, tuple[ProviderView, int, dict[str, Any]]] | None = None,
) -> Generator[None, None, dict[str, Any]]:
    """Build the snapshot, yielding after each provider so that a caller on an event loop
    can let requests through now and then (10,000 providers take tens of milliseconds);
    the snapshot is the generator's return value.

    ``rows``: the caller's cache of provider rows, reused while a provider's view and
    request count are unchanged (most of them, at 10,000 providers, every 2 s)."""
    regions: dict[str, str] = {}
    gpus: Counter[str] = Counter()
    live_regions: Counter[str] = Counter()
    models: Counter[str] = Counter()
    online = routable = busy = slots = 0
    provider_rows = []
    for p in providers:
        regions[p.provider_id] = p.region
        provider_rows.append(_cached_row(p, rollups, rows))
        if p.online:
            online += 1
            routable += p.routable
            busy += p.active_jobs
            slots += p.max_concurrent_jobs
            gpus.update(p.gpus)
            live_regions[p.region] += 1
            models.update(p.models)
        yield
    windows = {}
    for name in WINDOWS:  # a few milliseconds each over a busy day of minutes
        windows[name] = rollups.summary(now, name)
        yield
    return {
        "object": "explorer.snapshot",
        "version": version,
        "as_of": now,
        "network": {
            "providers_online": online,
            "providers_routable": routable,
            "busy_slots": busy,
            "slots": slots,
            "declared": {
                "gpus": dict(sorted(gpus.items())),
                "gpu_count": sum(gpus.values()),
                "regions": dict(sorted(live_regions.items())),
                "models": dict(sorted(models.items())),
            },
        },
        "windows": windows,
        "requests_per_minute": rollups.series(now, "1h", "requests")["points"],
        "tape": [_tape_row(row, rollups, regions) for row in rollups.tape],
        "providers": provider_rows,
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
