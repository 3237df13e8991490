"""The gateway's overload rules over the fluid: who may wait for a slot, who is refused.

Each provider's concurrency follows Little's law under batching (sim/engine.py); past its
slots requests wait at the gateway (a fluid queue), held to what the gateway's overload
rules let wait: the rest is refused.

The gateway refuses overload as its replicas do (:class:`Door`): the fluid's requests
waiting for a slot are the replicas' waiting room, held to what the gateway's own rules
allow (market.load_shedding, market.admission, with the scenario's ``[gateway]``
settings); the excess is refused with Retry-After and consumers send it again
(:class:`Retries`). A refused request reaches no provider and moves no money.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from tessera.market.admission import WaitingRoom, room_left
from tessera.market.load_shedding import LoadGauge, starts
from tessera.sim.scenario import Gateway
from tessera.sim.step import Step
from tessera.sim.world import Floats, Ints, World


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


def queue_step(
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


def queue_at(world: World, state: Step, chosen: Ints, into_s: Floats) -> Floats:
    """The fluid queue of each chosen provider ``into_s`` seconds into the step: it moves
    at arrivals less service from where the step began, and stops where the step ended
    (empty, or held to the gateway's bound)."""
    before, after = state.queue_before[chosen], world.queue[chosen]
    moving = before + (state.lam[chosen] - state.service[chosen]) * into_s
    return np.clip(moving, np.minimum(before, after), np.maximum(before, after))
