"""The foreground: a sample of requests followed one by one through the background's state.

Each step's sampled requests see what the fluid decided (sim/step.py): the round trip to
their provider, the queue, prefill and decode; a provider whose session ends before the
answer does fails the attempt, and the request moves to another (up to ``attempts``).
The gateway refuses sampled requests with the step's refused share (sim/overload.py); a
refused one comes back after Retry-After while its consumer has retries left.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np

from tessera.sim.conversations import Conversations
from tessera.sim.overload import queue_at
from tessera.sim.scenario import Scenario
from tessera.sim.step import Step
from tessera.sim.world import Floats, Ints, Laws, World

MAX_SAMPLES = 2_000_000  # foreground requests kept per run (memory bound)


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
    turn: list[np.ndarray] = field(default_factory=list)  # of its conversation (0: first)
    warm: list[np.ndarray] = field(default_factory=list)  # prefilled on a cached prefix

    def add(self, **columns: np.ndarray) -> None:
        for name, values in columns.items():
            getattr(self, name).append(values)

    def joined(self) -> dict[str, np.ndarray]:
        return {
            name: np.concatenate(parts) if parts else np.zeros(0)
            for name, parts in asdict(self).items()
        }


@dataclass
class Arrivals:
    """Sampled requests reaching the gateway in a step, new ones and retries."""

    region: Ints
    prompt: Floats
    output: Floats
    at: Floats  # first sent (virtual s)
    refusals: Ints  # how often the gateway refused it so far
    conversation: Ints  # its conversation's id (sim/conversations.py)
    turn: Ints  # 0: the conversation's first
    turns_left: Ints  # turns still to come after this one
    history: Floats  # tokens of the conversation before this turn's message

    @classmethod
    def joined(cls, parts: list[Arrivals]) -> Arrivals:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _ARRIVAL_FIELDS))

    def take(self, which: np.ndarray) -> Arrivals:
        return Arrivals(*(getattr(self, f)[which] for f in _ARRIVAL_FIELDS))

    def __len__(self) -> int:
        return len(self.at)


_ARRIVAL_FIELDS = (
    "region", "prompt", "output", "at", "refusals", "conversation", "turn", "turns_left",
    "history",
)  # fmt: skip


class Foreground:
    """The sampled requests: drawn each step, followed one by one; a refused one is
    carried to the step its retry lands in (one still waiting when the run ends is left
    out, as the background's queue is)."""

    def __init__(self, delay_steps: int, scenario: Scenario) -> None:
        self.samples = Samples()
        self.kept = 0
        self.carried: deque[list[Arrivals]] = deque([] for _ in range(delay_steps))
        self.conversations = Conversations(scenario.gateway.sticky_ttl_s)
        self.next_turns: dict[int, list[Arrivals]] = {}  # by the step they arrive in

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
        parts += self.next_turns.pop(round(state.now / scenario.step_s), [])
        if state.routed_per_s <= 0:  # nobody to send them to: retries wait a step
            self.carried[0].extend(parts)
            return 0
        if count and self.kept < MAX_SAMPLES:
            parts.append(_new_requests(scenario, count, state.now, demand_share, rng,
                                       self.conversations))  # fmt: skip
            self.kept += count
        if not parts:
            return 0
        arrivals = Arrivals.joined(parts)
        finished, again, answered = _foreground(world, law, scenario, state, arrivals, rng,
                                                self.conversations)  # fmt: skip
        self.samples.add(**finished)
        if len(again):
            self.carried[-1].append(again)
        self._next_turns(world, scenario, answered, rng)
        return len(arrivals)

    def _next_turns(
        self,
        world: World,
        scenario: Scenario,
        answered: tuple[Arrivals, Floats, Ints],
        rng: np.random.Generator,
    ) -> None:
        """Remember where each answered turn was served, and send its conversation's
        next turn a think time later, the whole conversation so far as its prompt."""
        turns, done, provider = answered
        going_on = turns.turns_left > 0
        if not going_on.any():
            return
        turns, done, provider = turns.take(going_on), done[going_on], provider[going_on]
        self.conversations.remember(world, turns.conversation, turns.turn, provider, done)
        demand = scenario.demand
        count = len(turns)
        history = turns.prompt + turns.output
        message = rng.lognormal(
            np.log(demand.prompt_tokens_median), demand.prompt_tokens_sigma, count
        )
        output = rng.lognormal(
            np.log(demand.output_tokens_median), demand.output_tokens_sigma, count
        )
        at = done + rng.exponential(demand.think_time_s, count)
        nxt = Arrivals(turns.region, history + message, output, at,
                       np.zeros(count, dtype=np.int64), turns.conversation, turns.turn + 1,
                       turns.turns_left - 1, history)  # fmt: skip
        lands = np.floor(at / scenario.step_s).astype(np.int64)
        for index in np.unique(lands):
            self.next_turns.setdefault(int(index), []).append(nxt.take(lands == index))


def _new_requests(
    scenario: Scenario,
    count: int,
    now: float,
    demand_share: Floats,
    rng: np.random.Generator,
    conversations: Conversations,
) -> Arrivals:
    """``count`` requests sent during the step from ``now``: region, lengths, time, and
    how many turns their conversations will have."""
    demand = scenario.demand
    region = rng.choice(len(demand_share), size=count, p=demand_share)
    prompt = rng.lognormal(np.log(demand.prompt_tokens_median), demand.prompt_tokens_sigma, count)
    output = rng.lognormal(np.log(demand.output_tokens_median), demand.output_tokens_sigma, count)
    start = now + rng.random(count) * scenario.step_s
    zeros = np.zeros(count, dtype=np.int64)
    turns_left = zeros
    if demand.conversation_turns_mean > 1:  # geometric: mean turns, at least one
        turns_left = rng.geometric(1.0 / demand.conversation_turns_mean, count) - 1
    return Arrivals(region, prompt, output, start, zeros, conversations.open(count), zeros,
                    turns_left, np.zeros(count))  # fmt: skip


def _foreground(
    world: World,
    law: Laws,
    scenario: Scenario,
    state: Step,
    arrivals: Arrivals,
    rng: np.random.Generator,
    conversations: Conversations,
) -> tuple[dict[str, np.ndarray], Arrivals, tuple[Arrivals, Floats, Ints]]:
    """The step's arrivals at the gateway: each refused with the step's refused share (the
    fluid's; a refusal does not depend on who sent it). A refused request comes back
    after Retry-After while the consumer has retries left, else ends refused; an admitted
    one is served (:func:`_attempts`), a conversation's next turn first offered to the
    provider of the last (sim/conversations.py). Returns the finished ones, those coming
    back, and the answered ones with when their answers ended and who gave them."""
    refused = np.zeros(len(arrivals), dtype=bool)
    if state.refused_share > 0:
        refused = rng.random(len(arrivals)) < state.refused_share
    again = refused & (arrivals.refusals < scenario.demand.retries_after_refusal)
    back = arrivals.take(again)
    back.refusals = back.refusals + 1
    retry_after_s = float(scenario.gateway.overload_retry_after_s)
    admitted = arrivals.take(~refused)
    sticky_to = np.full(len(admitted), -1, dtype=np.int64)
    if admitted.turn.any():
        sticky_to = conversations.targets(world, state, admitted.conversation, admitted.turn,
                                          admitted.at)  # fmt: skip
    served = _attempts(world, law, scenario, state, admitted, sticky_to, rng)
    gave_up = _refused(arrivals.take(refused & ~again), retry_after_s)
    finished = {name: np.concatenate((served[name], gave_up[name])) for name in served}
    ok = served["ok"]
    done = (
        served["at"] + (served["queue_ms"] + served["network_ms"] + served["service_ms"]) / 1000.0
    )
    return finished, back, (admitted.take(ok), done[ok], served["provider"][ok])


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
        "turn": requests.turn,
        "warm": np.zeros(count, dtype=bool),
    }


def _attempts(
    world: World,
    law: Laws,
    scenario: Scenario,
    state: Step,
    requests: Arrivals,
    sticky_to: Ints,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Admitted requests, followed one by one: each goes where the step's demand went
    (the router's decisions for the step, spread over each group's members), with
    failover (each attempt drawn afresh). A conversation's turn with a provider in
    ``sticky_to`` (not -1) tries it first, and prefills only its new message there. Time
    lost to refusals and failed attempts counts as waiting."""
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
    warm = np.zeros(count, dtype=bool)
    pending = np.arange(count)
    # Time lost before a provider answered: Retry-After per refusal, then failed attempts.
    spent = requests.refusals * float(scenario.gateway.overload_retry_after_s)
    for attempt in range(1, demand.attempts + 1):
        if pending.size == 0 or total <= 0:
            break
        at = start[pending] + spent[pending]
        drawn = rng.random(pending.size) * total
        chosen = np.minimum(np.searchsorted(cumulative, drawn, side="right"), len(lam) - 1)
        cached = np.zeros(pending.size)
        if attempt == 1 and (sticky_to >= 0).any():
            back = sticky_to[pending] >= 0
            chosen[back] = sticky_to[pending][back]
            cached[back] = requests.history[pending][back]
        g = world.gpu[chosen]
        rtt = law.rtt_ms[region[pending], world.region[chosen]] + law.last_mile_ms[region[pending]]
        waiting = queue_at(world, state, chosen, np.clip(at - state.now, 0.0, scenario.step_s))
        wait = np.where(waiting > 0, waiting / service[chosen], 0.0)
        pre = (prompt[pending] - cached) / law.prefill_tps[g]
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
        warm[done] = cached[~failed] > 0
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
        "turn": requests.turn,
        "warm": warm,
    }
