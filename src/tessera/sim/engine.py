"""One run of a scenario: virtual time in steps, every provider stepped as arrays (the
fluid background), and a sample of requests followed one by one (the foreground,
sim/foreground.py).

Each step:

1. churn flips providers on and off (world.churn_step); a region outage holds a region off;
2. demand (requests/s, times a flash crowd, plus refused requests sent again) is spread
   over the providers the consumers' region policy allows, in proportion to what each
   can serve;
3. each provider's concurrency follows Little's law under batching (the total decode rate
   at c streams is saturated * c / (c + h)); past its slots requests wait at the gateway
   (a fluid queue), held to what the gateway's overload rules let wait: the rest is
   refused (sim/overload.py);
4. every request a provider served is audited at the real rate (verify.sampling's batch
   form of ``audit_rate``); a cheated request is caught with the scenario's detection
   chance, an honest one misflagged with its false-flag chance; a caught provider is
   slashed (its stake's ``slash_bps``) and banned;
5. sampled requests see that state (:class:`~tessera.sim.step.Step`), followed one by one
   (sim/foreground.py).

Money moves through the gateway's own ledger (sim/money.py): holds, captures with the
fee split, slashes with refunds, in integer base units, checked by the book's invariant.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tessera.ledger.pricing import Price
from tessera.sim.audits import (
    Cheating,
    Counts,
    Rules,
    audit,
    audit_rules,
    cheating_of,
    penalise_receipts,
    receipts,
)
from tessera.sim.breakers import BreakerCounts, Breakers
from tessera.sim.foreground import Foreground
from tessera.sim.money import Money
from tessera.sim.overload import Door, Retries, queue_step
from tessera.sim.routing import GroupRouter
from tessera.sim.scenario import Scenario, audit_policy
from tessera.sim.step import Step
from tessera.sim.world import Floats, Laws, World, build, churn_step, laws
from tessera.verify.reputation import Reputation
from tessera.verify.sampling import AuditPolicy

# Requests are paid for and audited in batches of this much virtual time: a cheat is
# caught at the request it was caught on, but the ban lands at the batch's end.
SETTLE_S = 30.0
ROUTE_DRAWS = 200  # routed requests that split the demand between groups
ROUTE_S = 15.0  # how often the router is shown the groups again and splits the demand


@dataclass
class Totals:
    """Counts and money over the run (integers; money in base units)."""

    requests: int = 0
    output_tokens: int = 0
    paid: int = 0  # by consumers
    earned: int = 0  # by providers, after the fee
    fees: int = 0
    verification_pool: int = 0
    insurance_pool: int = 0
    slashed: int = 0
    refunded: int = 0  # by slashes
    clawed_back: int = 0  # refunds out of the cheats' earnings
    auditors_paid: int = 0  # from the verification pool
    cases: Counts = field(default_factory=Counts)  # audits, disputes and their outcomes
    breakers: BreakerCounts = field(default_factory=BreakerCounts)  # broken providers
    ledger_problems: list[str] = field(default_factory=list)  # the book's own check
    churn_flips: int = 0
    steps: int = 0
    capacity_tps: float = 0.0  # summed over steps, for utilisation
    served_tps: float = 0.0
    online_share: list[float] = field(default_factory=list)
    # The gateway, in the fluid's requests: sent by consumers (first tries), tries that
    # reached a replica (retries included), tries refused, requests refused on every try.
    offered: float = 0.0
    tries: float = 0.0
    served: float = 0.0  # requests providers served (the fluid's; settled as Poisson draws)
    refusals: float = 0.0
    refused: float = 0.0
    replicas: int = 0


@dataclass
class Run:
    scenario: Scenario
    seed: int
    providers: int
    hours: float
    world: World
    samples: dict[str, np.ndarray]
    totals: Totals
    wall_s: float
    events: int  # provider-steps plus foreground requests: the work done

    @property
    def config_hash(self) -> str:
        text = json.dumps(
            {"scenario": asdict(self.scenario), "providers": self.providers, "hours": self.hours},
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def run(
    scenario: Scenario,
    seed: int,
    providers: int | None = None,
    hours: float | None = None,
    progress: Any = None,
) -> Run:
    """Run one seed. ``progress(done, total)`` is called now and then (for a bar)."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    n = providers or scenario.providers
    duration = (hours or scenario.hours) * 3600.0
    world = build(scenario, n, rng)
    scale = n / scenario.providers  # a smaller fleet gets its share of the demand
    law = laws(scenario)
    policy = audit_policy(scenario)
    rules = audit_rules(scenario)
    cheating = cheating_of(scenario)
    demand = scenario.demand
    groups = GroupRouter(scenario, law, seed)
    group = groups.group_of(world)
    by_group = np.argsort(group, kind="stable")  # providers ordered by group
    bounds = np.searchsorted(group[by_group], np.arange(groups.size + 1))
    max_tokens = demand.max_tokens or scenario.gateway.default_max_tokens
    money = Money(groups, law, world, group, by_group, bounds, max_tokens)
    demand_share = np.array([r.demand_share for r in scenario.regions])
    mean_prompt = demand.prompt_tokens_median * np.exp(demand.prompt_tokens_sigma**2 / 2)
    mean_output = demand.output_tokens_median * np.exp(demand.output_tokens_sigma**2 / 2)
    totals = Totals()
    step = scenario.step_s
    steps = int(np.ceil(duration / step))
    settle_every = max(1, round(SETTLE_S / step))
    route_every = max(1, round(ROUTE_S / step))
    share = allowed = np.zeros(0)
    last_event = (1.0, -1)
    events = 0
    # Each provider's serving laws, gathered once (its GPU never changes).
    gpu = world.gpu
    sat, half = law.saturated_tps[gpu], law.half_streams[gpu]
    slots = law.max_streams[gpu]
    prefill_s = mean_prompt / law.prefill_tps[gpu]
    # Requests/s at full slots, and the most tokens/s it can serve.
    service = slots / (prefill_s + mean_output * (slots + half) / sat)
    capacity = sat * slots / (slots + half)
    expected = np.zeros(n)  # requests each provider served since the last settlement, on average
    streams = np.zeros(n)
    tokens = (round(mean_prompt), round(mean_output))
    totals.replicas = max(1, math.ceil(scenario.gateway.replicas * scale))
    door = Door(scenario.gateway, totals.replicas)
    delay = max(1, round(scenario.gateway.overload_retry_after_s / step))
    retries = Retries(demand.retries_after_refusal, delay)
    foreground = Foreground(delay, scenario)
    breakers = Breakers(world, scenario.gateway)
    failing_over = 0.0  # requests a broken provider failed or never got, routed again
    chats = demand.conversation_turns_mean > 1
    keeps = np.zeros(groups.size, dtype=bool)
    for i in range(steps):
        now = i * step
        totals.churn_flips += churn_step(world, scenario.churn, now, rng)
        multiplier, outage, lost_share = _events(scenario, now)
        up = world.online & ~world.banned
        if outage >= 0:
            up &= world.region != outage
        world.online_s[up] += step
        totals.online_share.append(float(up.mean()))
        up[breakers.shut(now)] = False  # connected, but their breakers are open
        # The real router splits the demand between groups; within a group, members
        # share it in proportion to what each can serve. Refused requests sent again
        # come on top of the consumers' new ones.
        tries = retries.arriving(demand.requests_per_s * scale * multiplier * step)
        rate = (float(tries.sum()) + failing_over) / step
        # Shown the groups anew every ROUTE_S, and at once when an event starts or ends.
        if i % route_every == 0 or (multiplier, outage) != last_event:
            share, allowed = _route(groups, world, group, up, streams, slots, prefill_s,
                                    service, sat, half, now, tokens, rate)  # fmt: skip
            if chats:  # where the router keeps a conversation, under the load just routed
                keeps = groups.keeps_sticky(tokens[0], tokens[1], now)
            last_event = (multiplier, outage)
        group_capacity = np.bincount(group, weights=np.where(up, capacity, 0.0),
                                     minlength=groups.size)  # fmt: skip
        room = np.where(up, service, 0.0)
        if world.queue.any():  # a provider's slots serve its waiting requests first
            room -= world.queue / step
            np.maximum(room, 0.0, out=room)
        group_service = np.bincount(group, weights=room, minlength=groups.size).astype(np.float64)
        group_rate = fill(share, group_service, allowed, rate)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_capacity = np.where(group_capacity > 0, group_rate / group_capacity, 0.0)
        lam = np.where(up, per_capacity[group] * capacity, 0.0)
        total_weight = float(lam.sum())
        # A broken provider fails what reaches it at once, until its breaker opens: none
        # of its share is served there, all of it is routed again (sim/breakers.py).
        failing_over, _ = breakers.fail(lam, step, now, rng)
        work = np.where(world.broken, 0.0, lam) if failing_over else lam
        # Concurrency by Little's law with batching: c = lam * (P/prefill + L (c + h)/sat).
        load = work * mean_output / sat
        with np.errstate(divide="ignore", invalid="ignore"):
            c_free = work * (prefill_s + mean_output * half / sat) / (1.0 - load)
        saturated = (load >= 1.0) | (c_free > slots) | (world.queue > 0)
        streams = np.where(saturated, slots, c_free)
        world.streams, world.rate = streams, work
        queue_before = world.queue
        served, refused_share = work, 0.0
        if saturated.any():
            served, refused_share = queue_step(world, door, up, saturated, work, service,
                                               prefill_s, step)  # fmt: skip
        _count_tries(totals, retries, tries, refused_share)
        expected += served * step
        served_per_s = float(served.sum())
        totals.served += served_per_s * step
        totals.capacity_tps += float(capacity[up].sum())
        totals.served_tps += served_per_s * mean_output
        if (i + 1) % settle_every == 0 or i == steps - 1:
            settled = rng.poisson(expected)  # a sum of Poisson counts is Poisson
            _money_and_audits(world, law, policy, rules, cheating, money, i, settled, tokens,
                              now, rng, totals)  # fmt: skip
            expected[:] = 0.0
        events += n
        # The foreground: a sample of requests, each seeing this step's state.
        count = int(rng.poisson(demand.sampled_requests_per_s * multiplier * step))
        state = Step(now, lam, total_weight, streams, service, queue_before, refused_share,
                     lost_share, group, keeps)  # fmt: skip
        events += foreground.step(world, law, scenario, state, count, demand_share, rng)
        totals.steps += 1
        if progress is not None and (i % 60 == 0 or i == steps - 1):
            progress(i + 1, steps)
    for name, value in money.totals().items():
        setattr(totals, name, value)
    totals.breakers = breakers.counts
    totals.ledger_problems = money.problems(world)
    return Run(
        scenario=scenario,
        seed=seed,
        providers=n,
        hours=duration / 3600.0,
        world=world,
        samples=foreground.samples.joined(),
        totals=totals,
        wall_s=time.perf_counter() - started,
        events=events,
    )


def fill(share: Floats, full: Floats, allowed: np.ndarray, rate: float) -> Floats:
    """Requests/s per group: ``rate`` split as the router's ``share`` says, but a group
    takes no more than it serves with every slot busy (the router skips a provider with
    no free slot), the overflow going to the groups still open in the same proportions.
    When every ``allowed`` group is full the rest waits in their queues, spread by size."""
    out = np.zeros_like(share)
    open_ = (share > 0) & (full > 0)
    left = rate
    while left > 1e-9 * rate and open_.any():
        weights = np.where(open_, share, 0.0)
        give = left * weights / weights.sum()
        room = full - out
        over = open_ & (give >= room)
        out += np.where(over, room, give)
        left = rate - out.sum()
        if not over.any():
            break
        open_ &= ~over
    if left > 1e-9 * rate:
        size = np.where(allowed, full, 0.0)
        if size.sum() > 0:
            out += left * size / size.sum()
    return out


def _route(
    groups: GroupRouter,
    world: World,
    group: np.ndarray,
    up: np.ndarray,
    streams: Floats,
    slots: Floats,
    prefill_s: Floats,
    service: Floats,
    sat: Floats,
    half: Floats,
    now: float,
    tokens: tuple[int, int],
    rate: float,
) -> tuple[Floats, np.ndarray]:
    """Show the router each group as its members are now (count online, speed,
    reputation by the real formula, stake), route ROUTE_DRAWS requests through it from
    idle, and return the share each group won and which groups the policy allows."""
    size = groups.size

    def mean(values: np.ndarray) -> Floats:
        total = np.bincount(group, weights=np.where(up, values, 0.0), minlength=size)
        return total / np.maximum(online, 1.0)

    online = np.bincount(group, weights=up.astype(np.float64), minlength=size)
    wait = np.where(world.queue > 0, world.queue / service, 0.0)
    ttft = mean((prefill_s + wait) * 1000.0)
    speed = mean(sat / (streams + half))
    completed, passed, failed = (
        mean(world.requests),
        mean(world.clean_audits),
        mean(world.failed_audits),
    )
    seen = mean(world.online_s)
    reputation = np.array([
        Reputation(jobs_completed=int(completed[i]), audits_passed=int(passed[i]),
                   audits_failed=round(float(failed[i])), online_s=float(seen[i]),
                   seen_s=float(seen[i])).score()
        for i in range(size)
    ])  # fmt: skip
    groups.sync(now, online, ttft, speed, reputation, mean(world.stake))
    # One draw stands for rate / ROUTE_DRAWS requests/s; each lasts about a request's
    # time at its group's speed, so it adds that many streams over the group's members.
    duration = mean(prefill_s + tokens[1] * (streams + half) / sat)
    jobs = rate / ROUTE_DRAWS * duration / np.maximum(online, 1.0)
    return groups.shares(ROUTE_DRAWS, tokens[0], tokens[1], now, jobs), groups.allowed()


def _events(scenario: Scenario, now: float) -> tuple[float, int, float]:
    """(demand multiplier, region index held offline or -1, share of requests lost to a
    dead gateway replica) at ``now``."""
    multiplier, outage, lost = 1.0, -1, 0.0
    for e in scenario.events:
        if e.start_s <= now < e.start_s + e.duration_s:
            if e.kind == "flash-crowd":
                multiplier *= e.multiplier
            elif e.kind == "region-outage":
                outage = scenario.region_index(e.region)
            elif e.kind == "replica-loss":
                lost = max(lost, e.share)
    return multiplier, outage, lost


def _money_and_audits(
    world: World,
    law: Laws,
    policy: AuditPolicy,
    rules: Rules,
    cheating: Cheating,
    money: Money,
    settlement: int,
    served: np.ndarray,
    tokens: tuple[int, int],
    now: float,
    rng: np.random.Generator,
    totals: Totals,
) -> None:
    """Check receipts, charge the served requests through the ledger (a refused forged
    receipt is not charged), then audit them at the real rate; disputes and penalties
    follow the gateway's rules (sim/audits.py)."""
    busy = np.flatnonzero(served)
    if busy.size == 0:
        return
    n_req = served[busy].astype(np.int64)
    refused = receipts(world, cheating, busy, n_req, rng)
    charged = served.copy()
    charged[busy] -= refused > 0
    gpu = world.gpu[busy]
    prompt, output = tokens
    money.settle(settlement, charged, world, prompt, output, now)
    totals.requests += int(n_req.sum())
    totals.output_tokens += int(n_req.sum()) * output
    world.requests[busy] += n_req
    penalise_receipts(world, rules, cheating, money, busy, n_req, refused, now, settlement,
                      totals.cases)  # fmt: skip
    # What one request costs its consumer and earns its provider (base units).
    cost = np.array([Price(int(law.price_in[g]), int(law.price_out[g])).cost(prompt, output)
                     for g in range(len(law.price_out))], dtype=np.int64)[gpu]  # fmt: skip
    earned_each = cost - cost * money.book.policy.fees.fee_bps // 10_000
    audit(world, law, policy, rules, cheating, money, busy, n_req, cost, earned_each,
          prompt + output, now, settlement, rng, totals.cases)  # fmt: skip


def _count_tries(totals: Totals, retries: Retries, tries: Floats, refused_share: float) -> None:
    """The gateway's counts for the step; the refused go back to their consumers."""
    totals.offered += float(tries[0])
    totals.tries += float(tries.sum())
    totals.refusals += float(tries.sum()) * refused_share
    totals.refused += retries.refuse(tries, refused_share)


def money_holds(totals: Totals) -> bool:
    """Conservation: the ledger's own invariant check found nothing; what consumers paid,
    less what was clawed back for them, is exactly the providers' earnings (auditors'
    pay included), the fees and the verification pool; what was slashed went to the
    harmed consumers and the insurance pool, to the base unit."""
    return (
        not totals.ledger_problems
        and totals.paid - totals.clawed_back
        == totals.earned + totals.fees + totals.verification_pool
        and totals.slashed == totals.refunded + totals.insurance_pool
    )
