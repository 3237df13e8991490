"""The router: filter a model's providers by policy, stake and health, score, pick one.

Filtering. Every request's policy (see policy.py) and the gateway's own checks (stake,
the hold) are named predicates; a provider must pass all, have a free slot, not have
failed this request already, and have a closed (or trial-ready) circuit breaker. Before
any of them, its offer must have the model's majority shape (registry.py): an embeddings
request never goes to a provider that announced the name as a text model.

Scoring. Each candidate gets a score in [0, 1] from six parts, each relative to the best
candidate in view: price (the request's estimated cost), time to first token and tokens
per second (moving averages; a provider with no samples yet gets a neutral part), free
capacity, reputation, and bonded stake. ``sort`` makes one of price, latency or
throughput strict (the best tier first, score breaks ties); otherwise the pick is random
among the top few, weighted by score, so load spreads instead of herding on one node.

Scale. Up to ``sample`` providers are scored exactly; a model with more is scored on a
random sample of that size (``sort: price`` walks a price index instead). When the sample
holds no eligible provider (a rare policy), the pool is scanned from a random point until
a few turn up. The explanation of an empty pool is a full scan, run only on that error
path.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from tessera.market.policy import EffectivePolicy, Filter
from tessera.market.registry import LiveProvider, ModelPool, shape_of

WEIGHTS = {
    "price": 0.30,
    "latency": 0.15,
    "throughput": 0.10,
    "load": 0.15,
    "reputation": 0.20,
    "stake": 0.10,
}
PARTS = tuple(WEIGHTS)  # a score's parts, in the order ``Router._score`` gives them
_WEIGHTS = tuple(WEIGHTS.values())
_PRICE = PARTS.index("price")
NEUTRAL = 0.7  # the speed part of a provider not measured yet: tried, not shunned
TOP_K = 3  # the default pick is random among this many best, weighted by score
STICKY_MIN_SHARE = 0.5  # a sticky provider is kept while its score is this share of the best
SPEED_TIER = 1.1  # sort by latency / throughput: within 10 % of the best counts as a tie
FALLBACK_WANT = 16  # a rare policy's sample miss: stop scanning once this many turn up


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the router needs to know about one dispatch attempt."""

    model: str
    policy: EffectivePolicy = field(default_factory=EffectivePolicy)
    checks: Sequence[Filter] = ()  # the gateway's own (stake, hold)
    exclude: Collection[str] = ()  # providers that already failed this request
    prompt_tokens: int = 0  # estimates, for the price part
    output_tokens: int = 0
    sticky: str | None = None  # provider that served this conversation's last turn
    account: str | None = None  # who pays: its share of the model's slots is bounded


@dataclass(frozen=True, slots=True)
class Decision:
    provider: LiveProvider
    reason: str  # sticky | order[i] | sort=price | best of N ...
    score: float
    parts: dict[str, float]
    considered: int  # candidates scored
    pool: int  # providers routed for the model

    def header(self) -> str:
        """The ``x-tessera-route`` header: why this provider."""
        parts = "; ".join(f"{k}={v:.2f}" for k, v in self.parts.items())
        return (
            f"{self.reason}; provider={self.provider.provider_id[:16]}; score={self.score:.2f}; "
            f"{parts}; considered={self.considered}/{self.pool}"
        )


@dataclass(frozen=True, slots=True)
class NoRoute:
    """No provider can take the request now.

    ``busy``: some provider passes every constraint but none has a free slot (or all
    are behind open breakers): waiting may help. Otherwise ``constraint`` names the filter
    that emptied the pool and ``message`` says so in words.
    """

    busy: bool
    message: str
    constraint: str | None = None
    source: str | None = None


Stake = Callable[[str], int]
Scored = tuple[float, tuple[float, ...], LiveProvider]  # score, parts (PARTS order), provider


def named(parts: tuple[float, ...]) -> dict[str, float]:
    """A score's parts by name, as a Decision shows them."""
    return dict(zip(PARTS, parts, strict=True))


class Router:
    def __init__(self, rng: random.Random, sample: int = 16, stake: Stake | None = None) -> None:
        """``rng``: the caller's random source (the gateway's seeded one, or the
        simulator's): the router draws its sample and its pick among the best from it."""
        self.rng = rng
        self.sample = sample
        self.stake = stake or (lambda provider_id: 0)

    # ------------------------------------------------------------ choose

    def choose(self, pool: ModelPool, request: RouteRequest, now: float) -> Decision | NoRoute:
        filters = [*request.checks, *request.policy.filters]
        model = request.model
        exclude = request.exclude
        shape = pool.shape

        def ok(p: LiveProvider) -> bool:
            # Runs for every sampled provider: attributes read directly, not through the
            # properties and helpers that say the same (free_slots, admits, fits).
            if p.active_jobs >= p.capabilities.max_concurrent_jobs or p.provider_id in exclude:
                return False
            health = p.health
            if health.backoff_s != 0.0 and not health.admits(now):
                return False
            offer = p.offers[model]
            if shape_of(offer) != shape:
                return False
            for f in filters:
                if not f.test(p, offer):
                    return False
            return True

        policy = request.policy
        if policy.order:
            for rank, name in enumerate(policy.order):
                for p in self._matching(pool, name):
                    if ok(p):
                        return self._decide(p, [p], request, f"order[{rank}]", len(pool))
            if not policy.allow_fallbacks:
                return self.explain(pool, request, now)

        if policy.sort == "price" and len(pool) > self.sample:
            candidates = self._cheapest(pool, ok)
        else:
            candidates = [p for p in self._view(pool) if ok(p)]
            if not candidates and len(pool) > self.sample:
                # A policy rarer than the sample: scan on from a random point until a
                # few turn up (not the whole pool, unless there are none).
                candidates = self._scan(pool, ok, want=FALLBACK_WANT)
        if not candidates:
            return self.explain(pool, request, now)

        scored = self._score(candidates, request)
        if request.sticky is not None and policy.sort is None:
            best = max(score for score, _, _ in scored)
            for score, parts, p in scored:
                if p.provider_id == request.sticky and score >= STICKY_MIN_SHARE * best:
                    return Decision(p, "sticky", score, named(parts), len(scored), len(pool))
            sticky = pool.get(request.sticky)
            if sticky is not None and sticky not in candidates and ok(sticky):
                (score, parts, p), *_ = self._score([sticky, *candidates], request)
                if score >= STICKY_MIN_SHARE * best:
                    return Decision(p, "sticky", score, named(parts), len(scored), len(pool))
        tier, reason = self._tier(scored, policy.sort)
        if len(tier) == 1:
            score, parts, chosen = tier[0]
        else:
            top = sorted(tier, key=lambda item: item[0], reverse=True)[:TOP_K]
            weights = [max(score, 1e-6) ** 2 for score, _, _ in top]
            score, parts, chosen = self.rng.choices(top, weights=weights)[0]
        return Decision(chosen, reason, score, named(parts), len(scored), len(pool))

    def _scan(
        self, pool: ModelPool, test: Callable[[LiveProvider], bool], want: int
    ) -> list[LiveProvider]:
        """Up to ``want`` members passing ``test``, scanning from a random start."""
        members = pool.members
        n = len(members)
        if n == 0:
            return []
        start = self.rng.randrange(n)
        found: list[LiveProvider] = []
        for i in range(n):
            p = members[(start + i) % n]
            if test(p):
                found.append(p)
                if len(found) >= want:
                    break
        return found

    def passes(
        self, request: RouteRequest, pool: ModelPool | None = None
    ) -> Callable[[LiveProvider], bool]:
        """The request's constraints (checks and policy), busy or not, as one predicate;
        with ``pool``, also agreement with the model's majority shape."""
        filters = [*request.checks, *request.policy.filters]
        model = request.model

        def test(p: LiveProvider) -> bool:
            offer = p.offers[model]
            if pool is not None and not pool.fits(offer):
                return False
            for f in filters:  # a loop, not all(generator): no generator per provider
                if not f.test(p, offer):
                    return False
            return True

        return test

    def any_eligible(self, pool: ModelPool, request: RouteRequest) -> NoRoute | None:
        """None if some provider passes the request's constraints, else why none does.

        Stops at the first match (the common case costs a few checks); the explanation,
        a full scan, runs only when there is none.
        """
        if self._scan(pool, self.passes(request, pool), want=1):
            return None
        return self.explain(pool, request, now=0.0)

    def by_price(
        self, pool: ModelPool, request: RouteRequest, descending: bool = False
    ) -> Iterator[LiveProvider]:
        """Providers passing the request's constraints, cheapest (or dearest) first."""
        test = self.passes(request, pool)
        keys = reversed(pool.by_price) if descending else iter(pool.by_price)
        for _, _, pid in keys:
            p = pool.get(pid)
            if p is not None and test(p):
                yield p

    def _view(self, pool: ModelPool) -> list[LiveProvider]:
        """Up to ``sample`` members at random (drawn with replacement, repeats dropped: a
        tenth of the cost of ``random.sample``, and one short now and then)."""
        members = pool.members
        n = len(members)
        if n <= self.sample:
            return members
        draw = self.rng.random
        return [members[i] for i in {int(draw() * n) for _ in range(self.sample)}]

    def _matching(self, pool: ModelPool, name: str) -> Iterable[LiveProvider]:
        exact = pool.get(name)
        if exact is not None:
            return (exact,)
        return (p for p in pool.members if p.provider_id.startswith(name))

    def _cheapest(self, pool: ModelPool, ok: Callable[[LiveProvider], bool]) -> list[LiveProvider]:
        """Walk the price index: every eligible provider of the cheapest eligible price."""
        found: list[LiveProvider] = []
        tier: tuple[int, int] | None = None
        for out_price, in_price, pid in pool.by_price:
            if tier is not None and (out_price, in_price) != tier:
                break
            p = pool.get(pid)
            if p is not None and ok(p):
                found.append(p)
                tier = (out_price, in_price)
                if len(found) >= self.sample:
                    break
        return found

    def _decide(
        self,
        chosen: LiveProvider,
        candidates: list[LiveProvider],
        request: RouteRequest,
        reason: str,
        pool_size: int,
    ) -> Decision:
        score, parts, _ = self._score(candidates, request)[0]
        return Decision(chosen, reason, score, named(parts), len(candidates), pool_size)

    # ------------------------------------------------------------ scoring

    def _score(self, candidates: Sequence[LiveProvider], request: RouteRequest) -> list[Scored]:
        """Each candidate's score and its parts (in ``PARTS`` order): tuples, not dicts, as
        only the chosen one's parts are ever shown (``named``)."""
        model = request.model
        tokens_in, tokens_out = request.prompt_tokens, request.output_tokens
        offers = [p.offers[model] for p in candidates]
        costs = [
            o.price_input_per_mtok * tokens_in + o.price_output_per_mtok * tokens_out
            for o in offers
        ]
        cheapest = min(costs)
        ttfts = [p.health.ttft_ms for p in candidates if p.health.ttft_ms is not None]
        speeds = [p.health.tokens_per_s for p in candidates if p.health.tokens_per_s is not None]
        fastest_start = max(min(ttfts), 1.0) if ttfts else None
        fastest = max(speeds, default=None)
        stakes = [self.stake(p.provider_id) for p in candidates]
        most_stake = max(stakes)
        w_price, w_latency, w_throughput, w_load, w_reputation, w_stake = _WEIGHTS
        out: list[Scored] = []
        for p, cost, stake in zip(candidates, costs, stakes, strict=True):
            health = p.health
            ttft, speed = health.ttft_ms, health.tokens_per_s
            price = 1.0 if cost == 0 else cheapest / cost
            latency = (
                NEUTRAL if ttft is None or fastest_start is None else fastest_start / max(ttft, 1.0)
            )
            throughput = NEUTRAL if speed is None or not fastest else speed / fastest
            load = 1.0 - p.active_jobs / p.capabilities.max_concurrent_jobs
            backing = 1.0 if most_stake == 0 else stake / most_stake
            score = (
                w_price * price
                + w_latency * latency
                + w_throughput * throughput
                + w_load * load
                + w_reputation * p.reputation
                + w_stake * backing
            )
            out.append((score, (price, latency, throughput, load, p.reputation, backing), p))
        return out

    @staticmethod
    def _tier(scored: list[Scored], sort: str | None) -> tuple[list[Scored], str]:
        """The candidates a strict sort leaves tied for first (all of them without one)."""
        if sort == "price":
            best = max(parts[_PRICE] for _, parts, _ in scored)
            return [s for s in scored if s[1][_PRICE] >= best], "sort=price"
        if sort in ("latency", "throughput"):
            at = PARTS.index(sort)
            measured = [s for s in scored if _measured(s[2], sort)]
            if measured:
                best = max(s[1][at] for s in measured)
                return [s for s in measured if s[1][at] * SPEED_TIER >= best], f"sort={sort}"
            return scored, f"sort={sort} (none measured yet)"
        return scored, f"best of {len(scored)}"

    def eligible(self, pool: ModelPool, request: RouteRequest) -> list[LiveProvider] | NoRoute:
        """Every provider the request's constraints allow, busy or not (a full scan)."""
        test = self.passes(request, pool)
        out = [p for p in pool.members if test(p)]
        if not out:
            return self.explain(pool, request, now=0.0)
        return out

    # ------------------------------------------------------------ explain

    def explain(self, pool: ModelPool, request: RouteRequest, now: float) -> NoRoute:
        """Why nobody can take the request: the first constraint that leaves no provider."""
        model = request.model
        if not pool:
            return NoRoute(False, f"no live provider is serving model '{model}' right now")
        # The majority shape always has a member, so this never empties the pool.
        left = [p for p in pool.members if pool.fits(p.offers[model])]
        stages: list[tuple[str, str | None, str, Callable[[LiveProvider], bool]]] = [
            (f.name, f.source, f.describe, _bind(f, model))
            for f in [*request.checks, *request.policy.filters]
        ]
        stages.append(
            (
                "exclude",
                None,
                "not failed this request already",
                lambda p: p.provider_id not in request.exclude,
            )
        )
        narrowed: list[str] = []  # earlier constraints that removed someone
        for name, source, describe, test in stages:
            kept = [p for p in left if test(p)]
            whose = "" if source in (None, "request") else f" (set by the {source})"
            if not kept:
                earlier = f" ({'; '.join(narrowed)})" if narrowed else ""
                return NoRoute(
                    False,
                    f"no provider of '{model}' satisfies {describe}{whose}: {len(left)} of "
                    f"{len(pool)} passed the earlier checks{earlier} and none passes this one",
                    constraint=name,
                    source=source,
                )
            if len(kept) < len(left):
                narrowed.append(f"{describe}{whose} left {len(kept)}")
            left = kept
        if not any(p.health.admits(now) for p in left):
            return NoRoute(
                True,
                f"every provider of '{model}' that this request may use is failing "
                "(circuit breaker open); retry in a few seconds",
                constraint="circuit_open",
            )
        return NoRoute(
            True,
            f"every provider of '{model}' that this request may use is at capacity; "
            "retry in a few seconds",
            constraint="capacity",
        )


def _bind(f: Filter, model: str) -> Callable[[LiveProvider], bool]:
    return lambda p: f.test(p, p.offers[model])


def _measured(p: LiveProvider, sort: str) -> bool:
    if sort == "latency":
        return p.health.ttft_ms is not None
    return p.health.tokens_per_s is not None
