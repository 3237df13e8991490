"""One run of a scenario: virtual time in steps, every provider stepped as arrays (the
fluid background), and a sample of requests followed one by one (the foreground).

Each step:

1. churn flips providers on and off (world.churn_step); a region outage holds a region off;
2. demand (requests/s, times a flash crowd, plus refused requests sent again) is spread
   over the providers the consumers' region policy allows, in proportion to what each
   can serve;
3. each provider's concurrency follows Little's law under batching (the total decode rate
   at c streams is saturated * c / (c + h)); past its slots requests wait at the gateway
   (a fluid queue), held to what the gateway's overload rules let wait: the rest is
   refused (below);
4. every request a provider served is audited at the real rate (verify.sampling's batch
   form of ``audit_rate``); a cheated request is caught with the scenario's detection
   chance, an honest one misflagged with its false-flag chance; a caught provider is
   slashed (its stake's ``slash_bps``) and banned;
5. sampled requests see that state: the round trip to their provider, the queue, prefill
   and decode; a provider whose session ends before the answer does fails the attempt,
   and the request moves to another (up to ``attempts``).

The gateway refuses overload as its replicas do (:class:`Door`): the fluid's requests
waiting for a slot are the replicas' waiting room, held to what the gateway's own rules
allow (market.load_shedding, market.admission, with the scenario's ``[gateway]``
settings); the excess is refused with Retry-After and consumers send it again
(:class:`Retries`); sampled requests are refused with the step's refused share. A refused
request reaches no provider and moves no money.

Money moves through the gateway's own ledger (sim/money.py): holds, captures with the
fee split, slashes with refunds, in integer base units, checked by the book's invariant.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tessera.ledger.pricing import Price
from tessera.market.admission import WaitingRoom, room_left
from tessera.market.load_shedding import LoadGauge, starts
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
from tessera.sim.money import Money
from tessera.sim.routing import GroupRouter
from tessera.sim.scenario import Gateway, Scenario, audit_policy
from tessera.sim.world import Floats, Ints, Laws, World, build, churn_step, laws
from tessera.verify.reputation import Reputation
from tessera.verify.sampling import AuditPolicy

MAX_SAMPLES = 2_000_000  # foreground requests kept per run (memory bound)
# Requests are paid for and audited in batches of this much virtual time: a cheat is
# caught at the request it was caught on, but the ban lands at the batch's end.
SETTLE_S = 30.0
ROUTE_DRAWS = 200  # routed requests that split the demand between groups
ROUTE_S = 15.0  # how often the router is shown the groups again and splits the demand


@dataclass
class Samples:
    """The foreground's requests, one array per field, appended per step."""

    region: list[np.ndarray] = field(default_factory=list)
    network_ms: list[np.ndarray] = field(default_factory=list)
    queue_ms: list[np.ndarray] = field(default_factory=list)
    prefill_ms: list[np.ndarray] = field(default_factory=list)
    tpot_ms: list[np.ndarray] = field(default_factory=list)
    attempts: list[np.ndarray] = field(default_factory=list)
    ok: list[np.ndarray] = field(default_factory=list)
    provider: list[np.ndarray] = field(default_factory=list)  # who answered (index)
    service_ms: list[np.ndarray] = field(default_factory=list)  # prefill + decode, answered
    at: list[np.ndarray] = field(default_factory=list)  # when it was first sent (virtual s)
    refused: list[np.ndarray] = field(default_factory=list)  # the gateway refused every try
    tries: list[np.ndarray] = field(default_factory=list)  # times sent to the gateway

    def add(self, **columns: np.ndarray) -> None:
        for name, values in columns.items():
            getattr(self, name).append(values)

    def joined(self) -> dict[str, np.ndarray]:
        return {
            name: np.concatenate(parts) if parts else np.zeros(0)
            for name, parts in asdict(self).items()
        }


class Door:
    """The gateway replicas' overload rules over the fluid: how many requests they let
    wait for a provider slot, by the gateway's own code and settings.

    Replicas share the load evenly, so each holds a ``1 / replicas`` share of every
    count. A request waiting for a slot is in flight with no answer yet (the load gauge
    counts it in both) and in the dispatcher's waiting room; one in prefill is in flight
    with no answer yet; one streaming is only in flight. So the requests a replica still
    admits, one after another, on top of those on providers, are what may wait
    (``starts`` and ``room_left``: the batch forms of the rules). A request that finds a
    free slot is never refused here: the scenario has replicas enough for the fleet's
    slots, so the rules bind on the queue, where the gateway's would."""

    def __init__(self, settings: Gateway, replicas: int) -> None:
        self.replicas = replicas
        self.gauge = LoadGauge(
            None,  # the lag rule: the simulator does not model the gateway's CPU
            settings.max_in_flight_requests,
            retry_after_s=settings.overload_retry_after_s,
            queue_s=settings.overload_queue_s,
            min_queue=settings.overload_min_queue,
        )
        self.room = WaitingRoom(settings.max_waiting_requests)

    def may_wait(self, in_service: float, in_prefill: float, answers_per_s: float) -> float:
        """The most requests the replicas together let wait for a slot, while
        ``in_service`` run on providers (``in_prefill`` of them before their first
        token) and answers begin at ``answers_per_s``."""
        r = self.replicas
        admits = starts(self.gauge, in_service / r, in_prefill / r, answers_per_s / r)
        return float(min(admits.item(), room_left(self.room, 0.0).item())) * r


class Retries:
    """Refused requests coming back after Retry-After, in the fluid (requests).

    ``arriving`` gives a step's tries by how often each was refused before (0: a first
    try); ``refuse`` sends the refused share of each back ``delay`` steps later, except
    for the last try a consumer allows itself: that refusal is the answer it keeps. A
    fluid has no time finer than its step: a retry lands ``round(Retry-After / step)``
    steps after its refusal, at least one."""

    def __init__(self, retries: int, delay_steps: int) -> None:
        self.retries = retries
        self.due: deque[Floats] = deque(np.zeros(retries) for _ in range(delay_steps))

    def arriving(self, fresh: float) -> Floats:
        back = self.due.popleft()
        self.due.append(np.zeros(self.retries))
        return np.concatenate(([fresh], back))

    def refuse(self, tries: Floats, share: float) -> float:
        """Send the refused back; returns the requests refused on their last try."""
        refused = tries * share
        self.due[-1] += refused[:-1]
        return float(refused[-1])


@dataclass
class Arrivals:
    """Sampled requests reaching the gateway in a step, new ones and retries."""

    region: Ints
    prompt: Floats
    output: Floats
    at: Floats  # first sent (virtual s)
    refusals: Ints  # how often the gateway refused it so far

    @classmethod
    def joined(cls, parts: list[Arrivals]) -> Arrivals:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _ARRIVAL_FIELDS))

    def take(self, which: np.ndarray) -> Arrivals:
        return Arrivals(*(getattr(self, f)[which] for f in _ARRIVAL_FIELDS))

    def __len__(self) -> int:
        return len(self.at)


_ARRIVAL_FIELDS = ("region", "prompt", "output", "at", "refusals")


@dataclass(frozen=True)
class Step:
    """What the background decided in one step, as the sampled requests see it."""

    now: float
    lam: Floats  # requests/s routed to each provider (refused ones included)
    routed_per_s: float  # their sum
    streams: Floats
    service: Floats
    queue_before: Floats  # waiting for each provider's slot when the step began
    refused_share: float  # of the step's tries, refused at the gateway
    lost_share: float  # of attempts landing on a dead gateway replica


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
    money = Money(groups, law, world, group, by_group, bounds)
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
    foreground = Foreground(delay)
    breakers = Breakers(world, scenario.gateway)
    failing_over = 0.0  # requests a broken provider failed or never got, routed again
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
            served, refused_share = _queue_step(world, door, up, saturated, work, service,
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
                     lost_share)  # fmt: skip
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


class Foreground:
    """The sampled requests: drawn each step, followed one by one; a refused one is
    carried to the step its retry lands in (one still waiting when the run ends is left
    out, as the background's queue is)."""

    def __init__(self, delay_steps: int) -> None:
        self.samples = Samples()
        self.kept = 0
        self.carried: deque[list[Arrivals]] = deque([] for _ in range(delay_steps))

    def step(
        self,
        world: World,
        law: Laws,
        scenario: Scenario,
        state: Step,
        count: int,
        demand_share: Floats,
        rng: np.random.Generator,
    ) -> int:
        """Follow ``count`` new requests and the retries due now; returns how many."""
        parts = self.carried.popleft()
        self.carried.append([])
        if state.routed_per_s <= 0:  # nobody to send them to: retries wait a step
            self.carried[0].extend(parts)
            return 0
        if count and self.kept < MAX_SAMPLES:
            parts.append(_new_requests(scenario, count, state.now, demand_share, rng))
            self.kept += count
        if not parts:
            return 0
        arrivals = Arrivals.joined(parts)
        finished, again = _foreground(world, law, scenario, state, arrivals, rng)
        self.samples.add(**finished)
        if len(again):
            self.carried[-1].append(again)
        return len(arrivals)


def _new_requests(
    scenario: Scenario, count: int, now: float, demand_share: Floats, rng: np.random.Generator
) -> Arrivals:
    """``count`` requests sent during the step from ``now``: region, lengths, time."""
    demand = scenario.demand
    region = rng.choice(len(demand_share), size=count, p=demand_share)
    prompt = rng.lognormal(np.log(demand.prompt_tokens_median), demand.prompt_tokens_sigma, count)
    output = rng.lognormal(np.log(demand.output_tokens_median), demand.output_tokens_sigma, count)
    start = now + rng.random(count) * scenario.step_s
    return Arrivals(region, prompt, output, start, np.zeros(count, dtype=np.int64))


def _foreground(
    world: World,
    law: Laws,
    scenario: Scenario,
    state: Step,
    arrivals: Arrivals,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], Arrivals]:
    """The step's arrivals at the gateway: each refused with the step's refused share (the
    fluid's; a refusal does not depend on who sent it). A refused request comes back
    after Retry-After while the consumer has retries left, else ends refused; an admitted
    one is served (:func:`_attempts`). Returns the finished ones and those coming back."""
    refused = np.zeros(len(arrivals), dtype=bool)
    if state.refused_share > 0:
        refused = rng.random(len(arrivals)) < state.refused_share
    again = refused & (arrivals.refusals < scenario.demand.retries_after_refusal)
    back = arrivals.take(again)
    back.refusals = back.refusals + 1
    retry_after_s = float(scenario.gateway.overload_retry_after_s)
    served = _attempts(world, law, scenario, state, arrivals.take(~refused), rng)
    gave_up = _refused(arrivals.take(refused & ~again), retry_after_s)
    finished = {name: np.concatenate((served[name], gave_up[name])) for name in served}
    return finished, back


def _refused(requests: Arrivals, retry_after_s: float) -> dict[str, np.ndarray]:
    """Requests the gateway refused on every try: no provider, no tokens, no answer; the
    consumer waited Retry-After between its tries."""
    count = len(requests)
    zeros = np.zeros(count)
    return {
        "region": requests.region,
        "network_ms": zeros,
        "queue_ms": requests.refusals * retry_after_s * 1000.0,
        "prefill_ms": zeros,
        "tpot_ms": zeros,
        "attempts": np.zeros(count, dtype=np.int64),
        "ok": np.zeros(count, dtype=bool),
        "provider": np.zeros(count, dtype=np.int64),
        "service_ms": zeros,
        "at": requests.at,
        "refused": np.ones(count, dtype=bool),
        "tries": requests.refusals + 1,
    }


def _attempts(
    world: World,
    law: Laws,
    scenario: Scenario,
    state: Step,
    requests: Arrivals,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Admitted requests, followed one by one: each goes where the step's demand went
    (the router's decisions for the step, spread over each group's members), with
    failover (each attempt drawn afresh). Time lost to refusals and failed attempts
    counts as waiting."""
    demand = scenario.demand
    lam, streams, service = state.lam, state.streams, state.service
    count = len(requests)
    region, prompt, output, start = requests.region, requests.prompt, requests.output, requests.at
    cumulative = np.cumsum(lam)
    total = cumulative[-1]
    network = np.zeros(count)
    queue = np.zeros(count)
    prefill = np.zeros(count)
    tpot = np.zeros(count)
    attempts = np.zeros(count, dtype=np.int64)
    ok = np.zeros(count, dtype=bool)
    provider = np.zeros(count, dtype=np.int64)
    pending = np.arange(count)
    # Time lost before a provider answered: Retry-After per refusal, then failed attempts.
    spent = requests.refusals * float(scenario.gateway.overload_retry_after_s)
    for attempt in range(1, demand.attempts + 1):
        if pending.size == 0 or total <= 0:
            break
        at = start[pending] + spent[pending]
        drawn = rng.random(pending.size) * total
        chosen = np.minimum(np.searchsorted(cumulative, drawn, side="right"), len(lam) - 1)
        g = world.gpu[chosen]
        rtt = law.rtt_ms[region[pending], world.region[chosen]] + law.last_mile_ms[region[pending]]
        waiting = _queue_at(world, state, chosen, np.clip(at - state.now, 0.0, scenario.step_s))
        wait = np.where(waiting > 0, waiting / service[chosen], 0.0)
        pre = prompt[pending] / law.prefill_tps[g]
        per_token = (streams[chosen] + law.half_streams[g]) / law.saturated_tps[g]
        duration = rtt / 1000.0 + wait + pre + output[pending] * per_token
        # The attempt fails when the provider's session ends before the answer does, or
        # the request reached a gateway replica that died (a dead replica keeps its share
        # of the traffic until the load balancer's health check drops it: every attempt
        # in that time may land on it).
        dies = world.online[chosen] & (world.flip_at[chosen] < at + duration)
        lost = rng.random(pending.size) < state.lost_share
        broken = world.broken[chosen]  # fails the job at once; the gateway fails over
        failed = dies | lost | broken
        attempts[pending] = attempt
        done = pending[~failed]
        network[done] = rtt[~failed]
        queue[done] = wait[~failed] * 1000.0
        prefill[done] = pre[~failed] * 1000.0
        tpot[done] = per_token[~failed] * 1000.0
        ok[done] = True
        provider[done] = chosen[~failed]
        lost_s = np.where(broken, rtt / 1000.0 + scenario.faults.fail_after_ms / 1000.0,
                          rtt / 1000.0)  # fmt: skip
        spent[pending[failed]] += np.where(dies, np.maximum(world.flip_at[chosen] - at, 0.0),
                                           lost_s)[failed]  # fmt: skip
        pending = pending[failed]
    return {
        "region": region,
        "network_ms": network,
        "queue_ms": queue + spent * 1000.0,  # time lost to refusals and failovers counts
        "prefill_ms": prefill,
        "tpot_ms": tpot,
        "attempts": attempts,
        "ok": ok,
        "provider": provider,
        "service_ms": prefill + tpot * output,
        "at": start,
        "refused": np.zeros(count, dtype=bool),
        "tries": requests.refusals + 1,
    }


def _queue_at(world: World, state: Step, chosen: Ints, into_s: Floats) -> Floats:
    """The fluid queue of each chosen provider ``into_s`` seconds into the step: it moves
    at arrivals less service from where the step began, and stops where the step ended
    (empty, or held to the gateway's bound)."""
    before, after = state.queue_before[chosen], world.queue[chosen]
    moving = before + (state.lam[chosen] - state.service[chosen]) * into_s
    return np.clip(moving, np.minimum(before, after), np.maximum(before, after))


def _queue_step(
    world: World,
    door: Door,
    up: np.ndarray,
    saturated: np.ndarray,
    lam: Floats,
    service: Floats,
    prefill_s: Floats,
    step: float,
) -> tuple[Floats, float]:
    """Move the fluid queues through one step, held to what the gateway lets wait.

    Past their slots providers' requests wait at the gateway (the hub waits for a free
    slot); whatever the replicas' rules do not let wait is refused, taken from every
    queue in proportion. Returns the requests/s each provider served (arrivals plus what
    its queue gave up) and the share of the step's tries refused. Only the saturated
    providers have a queue, so only they are computed (most of them, most steps)."""
    full = np.flatnonzero(saturated)
    live = up[full]
    before = world.queue[full]
    # An offline provider's waiting requests went elsewhere.
    queue = np.where(live, np.maximum(0.0, before + (lam[full] - service[full]) * step), 0.0)
    served = lam.copy()
    served[full] = np.where(live, lam[full] + (before - queue) / step, 0.0)
    # On providers: every online provider's streams (an offline one has none unless it
    # was saturated when it left).
    in_service = float(world.streams.sum() - world.streams[full[~live]].sum())
    # Not ``served @ prefill_s``: BLAS threads would fight the seeds run in parallel.
    in_prefill = float((served * prefill_s).sum())
    hold = door.may_wait(in_service, in_prefill, float(served.sum()))
    waiting = float(queue.sum())
    refused = 0.0
    if waiting > hold:
        refused = waiting - hold
        queue *= hold / waiting
    world.queue = np.zeros_like(lam)
    world.queue[full] = queue
    offered = float(lam.sum()) * step
    return served, (refused / offered if offered > 0 else 0.0)


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
