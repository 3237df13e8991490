"""Routing in the simulator by the gateway's own router and policy code.

A million providers cannot each be a ``LiveProvider`` on a laptop, and need not be: the
router sees what distinguishes them (price, region, speed, load, reputation, stake), and
providers of one GPU class in one region share all of that. So the simulator keeps a real
``ProviderRegistry`` with one member per (GPU class, region) group, announced with that
group's card, price and region, its load set to the group's mean load, its speed to the
group's modelled speed, its stake to a member's stake. ``market.routing.Router`` picks a
group for each request under the consumer's real ``Policy`` (region filters, sorts, price
caps: the same parsing and filters as an API request's ``provider`` object), and the
engine picks the member within the group in proportion to what each can serve.

The demand's split between groups for the fluid background is the share of routed
requests each group won in the step (a batch of the router's own decisions).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera.market.policy import EffectivePolicy, Policy, effective
from tessera.market.registry import ProviderRegistry
from tessera.market.routing import Decision, Router, RouteRequest
from tessera.protocol.wire import Capabilities
from tessera.sim.scenario import Scenario
from tessera.sim.world import Floats, Laws, World

MODEL = "llama-3.1-8b-instruct"  # the scenarios' one model
WEIGHTS = "ab" * 32  # the pinned weights every honest provider serves


@dataclass(frozen=True)
class Group:
    gpu: int
    region: int
    provider_id: str


class GroupRouter:
    """The real router over one live provider per (GPU class, region)."""

    def __init__(self, scenario: Scenario, law: Laws, seed: int) -> None:
        self.scenario = scenario
        self.registry = ProviderRegistry()
        self.groups: list[Group] = []
        self.by_id: dict[str, int] = {}
        self._stake: dict[str, int] = {}
        self.router = Router(rng=random.Random(seed), stake=lambda pid: self._stake.get(pid, 0))
        self.policy: EffectivePolicy = effective(
            [Policy.parse(dict(scenario.demand.policy), source="scenario")]
        )
        self._cards: list[Capabilities] = []
        for g, gpu in enumerate(scenario.gpus):
            for r, region in enumerate(scenario.regions):
                pid = hashlib.sha256(f"{gpu.name}/{region.name}".encode()).hexdigest()
                self.by_id[pid] = len(self.groups)
                self.groups.append(Group(g, r, pid))
                self._cards.append(
                    Capabilities.model_validate(
                        {
                            "public_key": pid,
                            "agent_version": "sim",
                            "models": [{
                                "name": MODEL, "weights_sha256": WEIGHTS, "kind": "text",
                                "context_length": 8192,
                                "price_input_per_mtok": int(law.price_in[g]),
                                "price_output_per_mtok": int(law.price_out[g]),
                            }],
                            "hardware": {"cpu": "sim", "cpu_cores": 16, "ram_bytes": 64 << 30,
                                         "gpus": [{"name": gpu.name, "memory_bytes": 24 << 30}]},
                            "region": region.name,
                            "max_concurrent_jobs": int(law.max_streams[g]),
                            "label": f"{gpu.name} in {region.name}",
                        }
                    )
                )  # fmt: skip
        self.size = len(self.groups)

    def group_of(self, world: World) -> np.ndarray:
        """Each provider's group index."""
        return world.gpu.astype(np.int64) * len(self.scenario.regions) + world.region

    def sync(
        self,
        now: float,
        online: np.ndarray,
        ttft_ms: np.ndarray,
        tokens_per_s: np.ndarray,
        reputation: np.ndarray,
        stake: np.ndarray,
    ) -> None:
        """Make the registry what the world is now: a group with members online is
        connected (the rest leave), with their mean speed, reputation and stake (its load
        is what ``shares`` routes to it)."""
        for i, group in enumerate(self.groups):
            pid = group.provider_id
            live = self.registry.get(pid)
            if online[i] == 0:
                if live is not None:
                    self.registry.remove(pid)
                continue
            if live is None:
                self.registry.add(pid, self._cards[i], now=now, status={MODEL: "routable"})
                live = self.registry.get(pid)
                assert live is not None
            live.health.ttft_ms = float(ttft_ms[i])
            live.health.tokens_per_s = float(tokens_per_s[i])
            live.reputation = float(reputation[i])
            self._stake[pid] = int(stake[i])

    def choose(self, prompt_tokens: int, output_tokens: int, now: float) -> int | None:
        """The group the real router picks for one request (None: no route)."""
        pool = self.registry.pool(MODEL)
        decision = self.router.choose(pool, self._request(prompt_tokens, output_tokens), now)
        if not isinstance(decision, Decision):
            return None
        return self.by_id[decision.provider.provider_id]

    def shares(
        self, draws: int, prompt_tokens: int, output_tokens: int, now: float, jobs_per_draw: Floats
    ) -> Floats:
        """The share of ``draws`` routed requests each group won, routed one after the
        other from idle: each adds ``jobs_per_draw`` of its group's load per member, so
        the router sees a group fill up and moves on, as it does request by request live.
        The load the draws leave is the step's: the sampled requests are routed in it."""
        won: Counter[int] = Counter()
        lives = self._live()
        load = dict.fromkeys(lives, 0.0)
        for live in lives.values():
            live.active_jobs = 0
        for _ in range(draws):
            group = self.choose(prompt_tokens, output_tokens, now)
            if group is None:  # every allowed group is full: the rest waits in queues
                break
            won[group] += 1
            live = self.registry.get(self.groups[group].provider_id)
            assert live is not None
            load[group] += float(jobs_per_draw[group])
            live.active_jobs = min(live.max_concurrent_jobs, int(load[group]))
        out = np.zeros(self.size)
        for group, count in won.items():
            out[group] = count / draws
        return out

    def keeps_sticky(self, prompt_tokens: int, output_tokens: int, now: float) -> np.ndarray:
        """Per group: whether the real router keeps a conversation whose last turn was
        served there (``RouteRequest.sticky``: kept while its score is at least
        ``STICKY_MIN_SHARE`` of the best), under the load ``shares`` left."""
        out = np.zeros(self.size, dtype=bool)
        pool = self.registry.pool(MODEL)
        for group in self._live():
            pid = self.groups[group].provider_id
            request = self._request(prompt_tokens, output_tokens, sticky=pid)
            decision = self.router.choose(pool, request, now)
            out[group] = (
                isinstance(decision, Decision)
                and decision.reason == "sticky"
                and decision.provider.provider_id == pid
            )
        return out

    def allowed(self) -> np.ndarray:
        """Which groups the consumers' policy lets serve them (busy or not)."""
        out = np.zeros(self.size, dtype=bool)
        passing = self.router.eligible(
            self.registry.pool(MODEL), RouteRequest(model=MODEL, policy=self.policy)
        )
        if isinstance(passing, list):
            for live in passing:
                out[self.by_id[live.provider_id]] = True
        return out

    def _request(
        self, prompt_tokens: int, output_tokens: int, sticky: str | None = None
    ) -> RouteRequest:
        """One request of the consumers' policy, as the gateway builds it."""
        return RouteRequest(
            model=MODEL,
            policy=self.policy,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            sticky=sticky,
        )

    def _live(self) -> dict[int, Any]:
        return {
            i: live
            for i, g in enumerate(self.groups)
            if (live := self.registry.get(g.provider_id)) is not None
        }
