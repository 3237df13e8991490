"""An honest key keeps being served while strangers attack the gateway: one key loops
over every input that once gave an unhandled 500 or tripped every circuit breaker, and
another floods. The figures (honest p99 against its unloaded value) are the bench's job
(bench/hostile_load.py); this test checks only that nothing breaks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tessera.dev_money import fund_account

from support.hostile_load import run_load
from support.live_network import LiveNetwork, create_key
from support.verified_network import ledger_check

pytestmark = pytest.mark.e2e


async def test_honest_key_is_served_through_hostile_input_and_a_flood(
    live_network: LiveNetwork,
) -> None:
    keys = [create_key(live_network.data_dir) for _ in range(2)]
    for key in keys:
        fund_account(live_network.base, key)
    hostile, flood = keys
    tally = await run_load(
        live_network.base, live_network.api_key, hostile, flood, 10.0, flood_concurrency=32
    )
    assert tally.honest_errors == []
    assert len(tally.honest_ms) >= 3
    hostile_statuses = tally.statuses["hostile"]
    assert sum(hostile_statuses.values()) > 0
    assert not {500, 502} & set(hostile_statuses), hostile_statuses
    assert 500 not in tally.statuses["flood"], tally.statuses["flood"]
    # No provider was pushed out by the attack: every one still takes work at once.
    headers = {"Authorization": f"Bearer {live_network.api_key}"}
    async with httpx.AsyncClient(base_url=live_network.base, headers=headers) as client:
        health = (await client.get("/health")).json()
        assert health["providers"] == 2
        answers = await asyncio.gather(
            *(
                client.post(
                    "/v1/completions",
                    json={"model": "tessera-tiny", "prompt": "Once", "max_tokens": 2},
                    timeout=60,
                )
                for _ in range(4)
            )
        )
        assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    checked = ledger_check(live_network.data_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_each_provider_agent_yields_its_session_to_the_gateways(live_network: LiveNetwork) -> None:
    """The agents serve local models at the default compute priority (idle): where the
    kernel groups processes by session (autogroup), each one's group (it runs in its own,
    as `tessera demo` starts it) is lowered to nice 19 and the gateway's is not; where it
    does not, every group is left as it was (provider/compute_priority.py)."""
    switch = Path("/proc/sys/kernel/sched_autogroup_enabled")
    grouped = switch.exists() and switch.read_text().strip() == "1"
    groups = {
        name: Path(f"/proc/{proc.pid}/autogroup").read_text().strip()
        for name, proc in live_network.network.processes
        if Path(f"/proc/{proc.pid}/autogroup").exists()
    }
    providers = [n for n, _ in live_network.network.processes if n.startswith("provider")]
    assert len(providers) == 2
    assert all(g.endswith("nice 0") for n, g in groups.items() if n == "gateway"), groups
    want = "nice 19" if grouped else "nice 0"
    assert all(groups[n].endswith(want) for n in providers if n in groups), groups
    assert not grouped or set(providers) <= set(groups), groups
