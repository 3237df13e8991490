"""The explorer rebuilds its snapshot a slice at a time, so a gateway with thousands of
providers keeps serving while it does: between two slices the loop runs other work,
providers that join or leave meanwhile are handled, and the result is the same snapshot a
rebuild at once makes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from tessera.explorer import service
from tessera.explorer.rollups import TapeRow
from tessera.explorer.service import Explorer
from tessera.market.registry import ProviderRegistry
from tessera.protocol.wire import Capabilities

NOW = 1_700_000_000.0


def card(i: int) -> Capabilities:
    return Capabilities.model_validate(
        {
            "public_key": f"{i:064x}",
            "agent_version": "0.1.0",
            "models": [
                {"name": "tiny", "weights_sha256": "ab" * 32, "kind": "text",
                 "context_length": 2048, "price_input_per_mtok": 10**8,
                 "price_output_per_mtok": 3 * 10**8}
            ],
            "hardware": {"cpu": "x", "cpu_cores": 8, "ram_bytes": 1 << 34,
                         "gpus": [{"name": "NVIDIA L4", "memory_bytes": 24 << 30}]},
            "region": ["DE-eu", "US-east"][i % 2],
            "max_concurrent_jobs": 2,
            "label": f"p{i}",
        }
    )  # fmt: skip


def network(count: int) -> tuple[Explorer, ProviderRegistry]:
    registry = ProviderRegistry()
    for i in range(count):
        registry.add(f"{i:064x}", card(i), now=NOW, status={"tiny": "routable"})
    gateway = SimpleNamespace(
        registry=registry,
        payments=SimpleNamespace(bonded=lambda pid: 5),
        bookkeeper=None,
        verifier=SimpleNamespace(catalog=None),
    )
    explorer = Explorer(lambda: gateway, clock=lambda: NOW)
    return explorer, registry


def comparable(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in snapshot.items() if k != "version"}


async def test_the_loop_runs_between_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "SLICE_S", 0.0)  # hand the loop back after every step
    explorer, registry = network(300)
    explorer.interval_s = 3600.0
    turns = 0
    left = False

    async def other_work() -> None:
        nonlocal turns, left
        while explorer.version == 0:
            turns += 1
            if turns == 50 and not left:  # a provider leaves mid-rebuild, one joins
                registry.remove(f"{0:064x}")
                registry.add(f"{999:064x}", card(999), now=NOW, status={"tiny": "routable"})
                explorer.rollups.request(
                    TapeRow("req-mid", NOW, "tiny", f"{1:064x}", "ok", 3, 4, 70, 9.0, 2.0)
                )
                left = True
            await asyncio.sleep(0)

    task = asyncio.create_task(explorer.run())
    try:
        await asyncio.wait_for(other_work(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert turns >= 300  # at least a turn per provider: the rebuild never held the loop
    sliced = explorer.snapshot
    assert sliced["network"]["providers_online"] in (299, 300)  # read once, whichever side
    # A second rebuild, at once, sees the change fully and agrees with the sliced one
    # wherever nothing changed in between.
    at_once = explorer.rebuild()
    assert at_once["network"]["providers_online"] == 300
    statuses = {r["provider_id"]: r["status"] for r in at_once["providers"]}
    assert statuses[f"{0:064x}"] == "offline" and statuses[f"{999:064x}"] == "routable"
    assert any(row["request_id"] == "req-mid" for row in at_once["tape"])


def test_sliced_and_whole_rebuilds_agree() -> None:
    explorer, _ = network(40)
    first = explorer.rebuild()
    steps = list(explorer._rebuild_steps())
    assert len(steps) >= 40 * 3  # views, presence, rows: each a step per provider
    assert comparable(explorer.snapshot) == comparable(first)
    assert explorer.version == 2
