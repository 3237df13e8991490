"""The simulated providers as arrays (one row per provider), and the laws they follow:
churn, serving speed under batching, and the network between regions.

Everything per provider is a numpy operation, never a Python loop, so a million rows
step in milliseconds. Randomness comes only from the generator passed in."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.market.regions import distance_km
from tessera.sim.scenario import Churn, Scenario

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

BASE_UNITS = 10**9  # per token, as the ledger counts
# Round trip between two regions from their distance: a fit to the city pairs of
# research/simulation.md §3f (New York-Paris 77 ms, Dallas-Fremont 44 ms): fibre paths
# are longer than the great circle and routers add a fixed cost.
RTT_FIXED_MS = 10.0
RTT_MS_PER_KM = 0.013


@dataclass
class World:
    """The providers' state. ``gpu`` and ``region`` index the scenario's lists; money
    is integer base units."""

    gpu: npt.NDArray[np.int8]
    region: npt.NDArray[np.int8]
    online: Bools
    flip_at: Floats  # when the current session or downtime ends (virtual seconds)
    cheat: Bools
    cheat_kind: npt.NDArray[np.int8]  # index into the scenario's cheaters, -1: honest
    broken: Bools  # connected, but fails every job (scenario.Faults)
    banned: Bools
    stake: Ints
    requests: Ints  # served, as counted by the background
    clean_audits: Ints
    failed_audits: Ints
    caught_after: Ints  # requests served when caught (-1: not caught)
    caught_at: Floats  # virtual time when caught (nan: not caught)
    online_s: Floats  # time spent online during the run
    earned: Ints  # base units, after the protocol fee
    queue: Floats  # requests waiting for a slot (fluid)
    streams: Floats  # requests in service (fluid), as of the last step
    rate: Floats  # requests/s routed to it, as of the last step

    @property
    def size(self) -> int:
        return len(self.gpu)


@dataclass(frozen=True)
class Laws:
    """Per GPU class and per region numbers, as arrays indexed like the world's."""

    single_tps: Floats
    saturated_tps: Floats
    half_streams: Floats  # c where batching gives half the saturated total
    max_streams: Floats
    prefill_tps: Floats
    price_out: Ints  # base units per 1M output tokens
    price_in: Ints  # base units per 1M input tokens
    watts: Floats
    rtt_ms: Floats  # [consumer region, provider region]
    last_mile_ms: Floats


def laws(scenario: Scenario) -> Laws:
    g = scenario.gpus
    single = np.array([c.single_stream_tps for c in g])
    saturated = np.array([c.saturated_tps for c in g])
    to_units = BASE_UNITS / scenario.token_usd
    price_out = np.array([round(c.price_output_usd_per_mtok * to_units) for c in g], dtype=np.int64)
    regions = scenario.regions
    rtt = np.array(
        [[RTT_FIXED_MS + RTT_MS_PER_KM * distance_km(a.lat, a.lon, b.lat, b.lon) for b in regions]
         for a in regions]
    )  # fmt: skip
    return Laws(
        single_tps=single,
        saturated_tps=saturated,
        # T(c) = saturated * c / (c + h) serves one stream at single_tps: h = sat/single - 1
        half_streams=saturated / single - 1.0,
        max_streams=np.array([float(c.max_streams) for c in g]),
        prefill_tps=np.array([c.prefill_tps for c in g]),
        price_out=price_out,
        price_in=price_out // 3,
        watts=np.array([c.watts for c in g]),
        rtt_ms=rtt,
        last_mile_ms=np.array([r.last_mile_ms for r in regions]),
    )


def build(scenario: Scenario, providers: int, rng: np.random.Generator) -> World:
    """A fleet drawn from the scenario's shares, each provider in the middle of a session
    or a downtime as the churn laws' long-run shares have it."""
    n = providers
    gpu = exact(n, [g.share for g in scenario.gpus], rng)
    region = exact(n, [r.provider_share for r in scenario.regions], rng)
    churn = scenario.churn
    up = churn.session_mean_s / (churn.session_mean_s + churn.downtime_mean_s)
    online = rng.random(n) < up
    flip_at = np.where(online, residual_sessions(churn, rng, n), residual_downtimes(churn, rng, n))
    # Each provider's kind of cheating by the cheaters' shares (-1: honest).
    bounds = np.cumsum([c.share for c in scenario.cheaters])
    drawn = np.searchsorted(bounds, rng.random(n), side="right")
    cheat_kind = np.where(drawn < len(bounds), drawn, -1).astype(np.int8)
    broken_share = scenario.faults.broken_share
    broken = rng.random(n) < broken_share if broken_share > 0 else np.zeros(n, dtype=bool)
    stake = np.full(n, scenario.audits.stake_tokens * BASE_UNITS, dtype=np.int64)
    zeros = np.zeros(n, dtype=np.int64)
    return World(
        gpu=gpu.astype(np.int8),
        region=region.astype(np.int8),
        online=online,
        flip_at=flip_at,
        cheat=cheat_kind >= 0,
        cheat_kind=cheat_kind,
        broken=broken,
        banned=np.zeros(n, dtype=bool),
        stake=stake,
        requests=zeros.copy(),
        clean_audits=np.full(n, scenario.audits.initial_clean_audits, dtype=np.int64),
        failed_audits=zeros.copy(),
        caught_after=np.full(n, -1, dtype=np.int64),
        caught_at=np.full(n, np.nan),
        online_s=np.zeros(n),
        earned=zeros.copy(),
        queue=np.zeros(n),
        streams=np.zeros(n),
        rate=np.zeros(n),
    )


def exact(n: int, shares: list[float], rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """``n`` labels in exactly the given shares (largest remainder), in random order: a
    fleet of 3 with shares 1/3 each has one of each, not whatever three draws give."""
    ideal = np.array(shares) * n
    counts = np.floor(ideal).astype(np.int64)
    short = n - int(counts.sum())
    if short > 0:
        counts[np.argsort(-(ideal - counts), kind="stable")[:short]] += 1
    labels = np.repeat(np.arange(len(shares)), counts)
    rng.shuffle(labels)
    return labels


def sessions(churn: Churn, rng: np.random.Generator, n: int) -> Floats:
    """Session lengths: Weibull with the given shape, scaled to the given mean."""
    k = churn.session_shape
    scale = churn.session_mean_s / math.gamma(1.0 + 1.0 / k)
    return scale * rng.weibull(k, n)


def downtimes(churn: Churn, rng: np.random.Generator, n: int) -> Floats:
    """Downtimes: Pareto (Lomax) with the given shape, scaled to the given mean."""
    a = churn.downtime_shape
    return churn.downtime_mean_s * (a - 1.0) * rng.pareto(a, n)


def residual_sessions(churn: Churn, rng: np.random.Generator, n: int) -> Floats:
    """What is left of the sessions in progress at a random moment of a long run: a
    uniform share of a length-biased session (a moment falls in a long session more
    often). For a Weibull law, (S*/scale)^k is Gamma(1 + 1/k); for k = 1 (exponential)
    the residual is again exponential with the same mean, as memorylessness says."""
    k = churn.session_shape
    scale = churn.session_mean_s / math.gamma(1.0 + 1.0 / k)
    biased = scale * rng.gamma(1.0 + 1.0 / k, 1.0, n) ** (1.0 / k)
    return biased * rng.random(n)


def residual_downtimes(churn: Churn, rng: np.random.Generator, n: int) -> Floats:
    """What is left of the downtimes in progress at a random moment: for a Lomax law of
    shape a, another Lomax of shape a - 1 with the same scale."""
    a = churn.downtime_shape
    return churn.downtime_mean_s * (a - 1.0) * rng.pareto(a - 1.0, n)


def churn_step(world: World, churn: Churn, now: float, rng: np.random.Generator) -> int:
    """Flip every provider whose session or downtime ended by ``now``; returns how many."""
    due = np.flatnonzero(world.flip_at <= now)
    if due.size == 0:
        return 0
    going_down = world.online[due]
    lengths = np.where(going_down, downtimes(churn, rng, due.size), sessions(churn, rng, due.size))
    world.online[due] = ~going_down
    world.flip_at[due] = world.flip_at[due] + lengths
    late = world.flip_at[due] <= now  # a very short spell already over: flip it next step
    world.flip_at[due[late]] = now
    return int(due.size)
