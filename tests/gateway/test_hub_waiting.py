"""Requests waiting for a provider slot: timeouts and clients leaving never break the wait.

Issue 11 (small finding a): with every slot busy, many waiters whose wait timed out while
others were cancelled (their clients left) made ``ProviderHub.open_job`` raise
``RuntimeError: Lock is not acquired`` and left the wake-up lock held for good, so no
waiter was ever woken again.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from tessera.config import GatewaySettings
from tessera.errors import NoCapacity
from tessera.gateway.hub import ProviderHub
from tessera.gateway.metrics import GatewayMetrics
from tessera.market.registry import ProviderRegistry
from tessera.market.routing import RouteRequest
from tessera.protocol.wire import Job, SamplingParams

from support.scripted_peers import caps_for


def full_hub(tmp_path: Path, queue_timeout_s: float) -> ProviderHub:
    """A hub whose only provider of model ``m`` has its one slot taken."""
    settings = GatewaySettings(data_dir=tmp_path, queue_timeout_s=queue_timeout_s, dev_mode=True)
    registry = ProviderRegistry()
    caps = caps_for(SigningKey.generate(), slots=1, model="m")
    registry.add(caps.public_key, caps, now=0.0)
    registry.acquire(caps.public_key)
    return ProviderHub(settings, registry, GatewayMetrics(), rng=random.Random(1))


def job(n: int) -> Job:
    return Job(
        job_id=f"r{n}.0",
        model="m",
        kind="completion",
        prompts=["x"],
        params=SamplingParams(max_tokens=1),
    )


async def test_waiters_on_a_full_pool_time_out_or_leave_cleanly(tmp_path: Path) -> None:
    hub = full_hub(tmp_path, queue_timeout_s=0.05)
    rng = random.Random(5)
    outcomes: list[str] = []

    async def waiter(n: int) -> None:
        # Each request re-checks the pool after every wake-up until its queue time is over.
        try:
            await hub.open_job(job(n), RouteRequest("m"), set())
        except NoCapacity:
            outcomes.append("no_capacity")
        except asyncio.CancelledError:
            outcomes.append("cancelled")
            raise
        except Exception as exc:  # the bug: RuntimeError('Lock is not acquired.')
            outcomes.append(repr(exc))

    async def notifier() -> None:
        for _ in range(400):
            await hub.notify_slot()  # slots freed elsewhere, providers (re)joining
            await asyncio.sleep(0)

    for _ in range(3):
        waiters = [asyncio.create_task(waiter(n)) for n in range(120)]
        beat = asyncio.create_task(notifier())
        for task in rng.sample(waiters, 100):  # clients leaving while their wait times out
            await asyncio.sleep(rng.choice([0, 0.0005, 0.002, 0.01]))
            task.cancel()
        _, pending = await asyncio.wait([*waiters, beat], timeout=10)
        assert not pending, f"{len(pending)} waiters never finished: the wake-up is stuck"
    bad = [o for o in outcomes if o not in ("no_capacity", "cancelled")]
    assert bad == []
    # Whatever happened, waking waiters still works at once.
    await asyncio.wait_for(hub.notify_slot(), 1.0)


@pytest.mark.parametrize("waiters", [50])
async def test_a_notification_wakes_every_waiter_at_once(tmp_path: Path, waiters: int) -> None:
    hub = full_hub(tmp_path, queue_timeout_s=5.0)
    live = hub.registry.all()[0]
    tasks = [
        asyncio.create_task(hub.open_job(job(n), RouteRequest("m"), set())) for n in range(waiters)
    ]
    await asyncio.sleep(0.05)
    # The provider leaves: every waiter re-reads the pool and learns nobody serves the model.
    hub.registry.remove(live.provider_id)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await hub.notify_slot()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, NoCapacity) for r in results), results
    assert loop.time() - started < 1.0  # woken, not left to their 1 s re-check
