"""Broken providers and the gateway's circuit breakers, by the gateway's own code.

A broken provider stays connected and keeps announcing its offer, but fails every job it
is sent (``scenario.Faults``). Each one carries the gateway's own breaker record
(``market.health.ProviderHealth``) under the gateway's ``BreakerPolicy``: after
``breaker_failures`` failures in a row the breaker opens and the router skips the
provider; when the backoff ends one trial job goes through (half-open), and its failure
reopens the breaker for twice as long, up to the cap.

Each step:

- :meth:`Breakers.shut` lists the broken providers the router may not use now (open, or
  half-open with its trial out), so the step's demand goes elsewhere;
- :meth:`Breakers.fail` sends each admitted broken provider the jobs the step routed to
  it, one by one through ``ProviderHealth.started`` / ``failed``, until its breaker
  opens; the jobs it failed fail over to other providers, and the rest of its share
  never reached it: the caller routes all of them again in the next step.

Only broken providers carry a breaker here: an honest provider fails a job only when its
session ends, and then it has left the registry (a reconnection after a success in
between starts its count again). Every job of a step is taken to arrive at the step's
start (the simulator has no finer time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tessera.market.health import BreakerPolicy, ProviderHealth
from tessera.sim.scenario import Gateway
from tessera.sim.world import Floats, Ints, World

REASON = "provider_failed: the backend failed the job"


@dataclass
class BreakerCounts:
    broken: int = 0  # broken providers in the fleet
    failed_jobs: int = 0  # jobs they failed (each failed over to another provider)
    openings: int = 0  # times their breakers opened
    shut_steps: int = 0  # provider-steps a broken provider's breaker kept it out


class Breakers:
    def __init__(self, world: World, settings: Gateway) -> None:
        self.policy = BreakerPolicy(
            settings.breaker_failures, settings.breaker_backoff_s, settings.breaker_backoff_max_s
        )
        self.ids: Ints = np.flatnonzero(world.broken)
        self.health = [ProviderHealth() for _ in range(self.ids.size)]
        self.counts = BreakerCounts(broken=int(self.ids.size))

    def shut(self, now: float) -> Ints:
        """The broken providers whose breakers refuse work now."""
        closed = [i for i, h in enumerate(self.health) if not h.admits(now)]
        self.counts.shut_steps += len(closed)
        return self.ids[closed]

    def fail(
        self, lam: Floats, step_s: float, now: float, rng: np.random.Generator
    ) -> tuple[float, float]:
        """Send each admitted broken provider its routed jobs (``lam`` requests/s over
        ``step_s``) until its breaker opens. Returns (requests the step routed to broken
        providers, jobs of those that failed): all of them go on to other providers."""
        if self.ids.size == 0:
            return 0.0, 0.0
        jobs = rng.poisson(lam[self.ids] * step_s)
        failed = 0
        for k in np.flatnonzero(jobs):
            health = self.health[int(k)]
            for _ in range(int(jobs[k])):
                if not health.admits(now):
                    break  # the rest of its share goes to other providers
                health.started(now)
                failed += 1
                if health.failed(self.policy, REASON, now):
                    self.counts.openings += 1
        self.counts.failed_jobs += failed
        return float(jobs.sum()), float(failed)
