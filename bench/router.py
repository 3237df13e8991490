"""Router decision time and memory per provider, at 1k, 10k and 100k providers of one model.

Each size gets one registry of providers with a realistic spread: prices on a grid of
hundredths of a token (so cheap tiers tie), regions weighted across the US, EU countries,
the UK, Canada, Japan, Korea, Singapore, India, Brazil, Australia and South Africa, about
20 % declaring no retention, reputations from a Beta(5, 2) draw, moving-average speeds for
about 85 % (the rest not measured yet), 1 % behind an open circuit breaker, and random
load (about a tenth full). Capabilities are parsed from JSON as the gateway parses them.

Per size the run measures, with ``time.perf_counter_ns`` around each call:

- **v0 p2c** (the baseline): the old router, power of two choices over
  ``registry.serving(model)``: copy the pool, keep providers with a free slot, sample two,
  take the less loaded;
- ``Router.choose`` for the default policy, ``sort: price``, ``sort: latency``, EU only,
  a restrictive policy that about 1 % of providers pass (Japan, no retention, reputation
  0.6+: the random sample often holds none, so the router scans on from a random point
  until a few turn up), and ``data_collection: deny`` with ``min_reputation: 0.7``;
- what the gateway does once per request besides choosing: whether anyone is allowed
  (``Router.any_eligible``, stops at the first match) and the dearest allowed provider for
  the money hold (a walk down the price index); and, for comparison, ``Router.eligible``,
  the full scan that now runs only on the error path (to explain an empty pool);
- ``ProviderRegistry.remove`` and ``add`` of one provider, against the v0 registry's
  indexing (two dict stores) in a second table.

Each call is also timed in this thread's CPU time (``cpu median``): on a busy machine the
wall clock counts time spent descheduled, the CPU clock does not. Ratios use wall medians.
Cases run round-robin in slices so machine noise hits them alike. The garbage collector
is frozen after each build, so a collection over the whole fleet does not land in one
case's p99. Memory is tracemalloc's net allocation, per provider, around parsing every
announcement ("parsed") and around parsing, adding to the registry and dropping the
parsed messages ("kept": the card with its shared offers and hardware, LiveProvider,
offers, status, health, pool and price index). The v0 baseline is O(n) per
decision, so it runs a third as many times at 10k and above. Run::

    .venv/bin/python bench/router.py [--sizes 1000 10000 100000] [--decisions N]
        [--profile]

``--profile`` instead runs cProfile over 2,000 default-policy decisions at the largest
size and prints the top functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src")]

from tessera.ledger.accounts import TOKEN  # noqa: E402
from tessera.market.policy import EffectivePolicy, Policy, effective  # noqa: E402
from tessera.market.regions import EU, country_of  # noqa: E402
from tessera.market.registry import LiveProvider, ProviderRegistry  # noqa: E402
from tessera.market.routing import Decision, NoRoute, Router, RouteRequest  # noqa: E402
from tessera.protocol.wire import Capabilities  # noqa: E402

MODEL = "llama-3.1-8b-instruct"
WEIGHTS_SHA256 = "5e" * 32
NOW = 1_000.0  # the monotonic clock the router is asked at
PROMPT_TOKENS = 600
OUTPUT_TOKENS = 256
SLICES = 10  # round-robin slices per case
REGIONS = [  # (announced region, weight in percent)
    ("US-east", 14),
    ("US-west", 12),
    ("US", 6),
    ("CA", 4),
    ("DE", 9),
    ("FR", 5),
    ("NL", 5),
    ("PL", 3),
    ("SE", 2),
    ("FI", 2),
    ("IE", 2),
    ("ES", 2),
    ("IT", 2),
    ("GB", 5),
    ("JP", 5),
    ("KR", 3),
    ("SG", 4),
    ("IN", 3),
    ("BR", 5),
    ("AU", 3),
    ("ZA", 1),
]
GPUS = [("NVIDIA GeForce RTX 4090", 24), ("NVIDIA RTX A6000", 48), ("NVIDIA A100-SXM4", 80)]
SLOTS = [1, 2, 4, 8, 16, 32]

POLICIES: dict[str, dict[str, object] | None] = {
    "default": None,
    "sort=price": {"sort": "price"},
    "sort=latency": {"sort": "latency"},
    "EU only": {"regions_allow": ["eu"]},
    "restrictive (~1%)": {
        "regions_allow": ["JP"],
        "data_collection": "deny",
        "min_reputation": 0.6,
    },
    "deny + rep>=0.7": {"data_collection": "deny", "min_reputation": 0.7},
}
ELIGIBLE_CASES = ("default", "deny + rep>=0.7")


def percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---------------------------------------------------------------- the fleet


def capabilities_json(rng: random.Random, public_key: str) -> bytes:
    """One provider's announcement, as the bytes the gateway would receive."""
    region = rng.choices([r for r, _ in REGIONS], weights=[w for _, w in REGIONS])[0]
    gpu, gib = rng.choice(GPUS)
    price_in = rng.randint(2, 100) * TOKEN // 100
    price_out = price_in * rng.choice([1, 2, 3, 4])
    return json.dumps(
        {
            "public_key": public_key,
            "agent_version": "0.1.0",
            "models": [
                {
                    "name": MODEL,
                    "weights_sha256": WEIGHTS_SHA256,
                    "kind": "text",
                    "context_length": 8192,
                    "price_input_per_mtok": price_in,
                    "price_output_per_mtok": price_out,
                }
            ],
            "hardware": {
                "cpu": "AMD Ryzen 9 7950X",
                "cpu_cores": rng.choice([8, 16, 32]),
                "ram_bytes": rng.choice([32, 64, 128]) << 30,
                "gpus": [{"name": gpu, "memory_bytes": gib << 30}] * rng.choice([1, 1, 2, 4]),
            },
            "region": region,
            "max_concurrent_jobs": rng.choice(SLOTS),
            "label": f"rig-{public_key[:6]}",
            "no_retention": rng.random() < 0.2,
        }
    ).encode()


def shape(live: LiveProvider, rng: random.Random) -> None:
    """Reputation, load and health as a fleet that has been running a while has them."""
    live.reputation = rng.betavariate(5, 2)
    slots = live.max_concurrent_jobs
    live.active_jobs = slots if rng.random() < 0.1 else rng.randint(0, slots - 1)
    health = live.health
    if rng.random() < 0.85:
        health.ttft_ms = rng.lognormvariate(5.5, 0.6)  # median ~245 ms
        health.tokens_per_s = rng.uniform(15.0, 160.0)
        health.samples = rng.randint(1, 5_000)
    if rng.random() < 0.01:
        health.backoff_s = 5.0
        health.open_until = NOW + 5.0
        health.failures_in_row = 3


@dataclass
class Fleet:
    size: int
    registry: ProviderRegistry
    ids: list[str]
    caps_bytes: float  # per provider
    registry_bytes: float  # per provider
    build_s: float


def build(size: int, seed: int) -> Fleet:
    """A registry of ``size`` providers, and what each costs in memory.

    Traced: parsing each announcement as the gateway parses a Register frame, adding it
    to the registry, then dropping the parsed messages (the gateway keeps only what the
    registry keeps). ``caps_bytes`` is what parsing allocates per provider (what a
    registry that kept the messages would hold); ``registry_bytes`` what stays.
    """
    rng = random.Random(seed)
    started = time.perf_counter()
    raw = [capabilities_json(rng, rng.randbytes(32).hex()) for _ in range(size)]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    parsed = [Capabilities.model_validate_json(body) for body in raw]
    gc.collect()
    caps_bytes = tracemalloc.get_traced_memory()[0] - base - sys.getsizeof(parsed)
    registry = ProviderRegistry()
    for caps in parsed:
        shape(registry.add(caps.public_key, caps, now=0.0), rng)
    ids = [caps.public_key for caps in parsed]
    del parsed, raw
    gc.collect()
    registry_bytes = tracemalloc.get_traced_memory()[0] - base - sys.getsizeof(ids)
    tracemalloc.stop()
    gc.collect()
    gc.freeze()
    return Fleet(
        size,
        registry,
        ids,
        caps_bytes / size,
        registry_bytes / size,
        time.perf_counter() - started,
    )


# ---------------------------------------------------------------- the cases


def v0_choose(registry: ProviderRegistry, rng: random.Random) -> LiveProvider | None:
    """The v0 router: power of two choices among the providers with a free slot."""
    open_ = [p for p in registry.serving(MODEL) if p.free_slots > 0]
    if len(open_) < 2:
        return open_[0] if open_ else None
    first, second = rng.sample(open_, 2)
    if first.load != second.load:
        return first if first.load < second.load else second
    return first if first.free_slots >= second.free_slots else second


def policy_of(raw: dict[str, object] | None) -> EffectivePolicy:
    return effective([None if raw is None else Policy.parse(raw)])


def route_of(raw: dict[str, object] | None) -> RouteRequest:
    return RouteRequest(
        MODEL, policy_of(raw), prompt_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS
    )


def passes(case: str, p: LiveProvider) -> bool:
    """The bench's own reading of each policy, to check the router's picks against."""
    country = country_of(p.capabilities.region)
    if case == "EU only":
        return country in EU
    if case == "restrictive (~1%)":
        return country == "JP" and p.capabilities.no_retention and p.reputation >= 0.6
    if case == "deny + rep>=0.7":
        return p.capabilities.no_retention and p.reputation >= 0.7
    return True


@dataclass
class Case:
    name: str
    call: Callable[[], object]
    calls: int
    eligible: int | None = None
    against: Case | None = None  # the baseline; None: this is one
    samples: list[int] = field(default_factory=list)  # wall ns per call
    cpu: list[int] = field(default_factory=list)  # this thread's CPU ns per call
    refused: int = 0


def decision_cases(fleet: Fleet, decisions: int, scans: int) -> list[Case]:
    registry = fleet.registry
    pool = registry.pool(MODEL)
    router = Router(random.Random(11))  # as the hub makes it: the default sample
    rng = random.Random(13)
    v0_calls = decisions if fleet.size <= 1_000 else max(SLICES, decisions // 3)
    base = Case("v0 p2c (baseline)", lambda: v0_choose(registry, rng), v0_calls)
    cases = [base]
    for name, raw in POLICIES.items():
        request = route_of(raw)
        allowed = router.eligible(pool, request)
        count = 0 if isinstance(allowed, NoRoute) else len(allowed)

        for _ in range(50):  # untimed: the picks obey the policy
            decision = router.choose(pool, request, NOW)
            if isinstance(decision, Decision) and not passes(name, decision.provider):
                raise RuntimeError(f"{name}: the router picked a provider the policy forbids")
        cases.append(
            Case(
                f"choose: {name}",
                lambda request=request: router.choose(pool, request, NOW),
                decisions,
                count,
                base,
            )
        )
    for name in ELIGIBLE_CASES:
        request = route_of(POLICIES[name])
        # What the gateway does once per request besides choosing: is anyone allowed
        # (early exit), and the dearest allowed provider for the money hold (price index).
        cases.append(
            Case(
                f"any allowed + hold walk: {name}",
                lambda request=request: (
                    router.any_eligible(pool, request),
                    next(router.by_price(pool, request, descending=True), None),
                ),
                decisions,
                against=base,
            )
        )
        cases.append(
            Case(
                f"full scan (error path only): {name}",
                lambda request=request: router.eligible(pool, request),
                scans,
                against=base,
            )
        )
    return cases


def registry_cases(fleet: Fleet, ops: int) -> list[Case]:
    """Remove one provider and add it back; v0's two dict stores as the baseline."""
    registry = fleet.registry
    rng = random.Random(17)
    victims = [registry.get(pid) for pid in rng.sample(fleet.ids, ops)]
    v0_providers: dict[str, LiveProvider] = {}
    v0_by_model: dict[str, dict[str, LiveProvider]] = {MODEL: {}}
    for pid in fleet.ids:
        live = registry.get(pid)
        if live is not None:
            v0_providers[pid] = live
            v0_by_model[MODEL][pid] = live
    removing = iter(victims)
    adding = iter(victims)
    v0_removing = iter(victims)
    v0_adding = iter(victims)

    def remove() -> None:
        live = next(removing)
        if live is not None:
            registry.remove(live.provider_id)

    def add() -> None:
        live = next(adding)
        if live is not None:
            registry.add(live.provider_id, live.capabilities, now=0.0)

    def v0_remove() -> None:
        live = next(v0_removing)
        if live is not None:
            v0_providers.pop(live.provider_id, None)
            v0_by_model[MODEL].pop(live.provider_id, None)

    def v0_add() -> None:
        live = next(v0_adding)
        if live is not None:
            caps = live.capabilities
            offers = {offer.name: offer for offer in caps.models}
            fresh = LiveProvider(
                live.provider_id, caps, 0.0, offers=offers, status={MODEL: "routable"}
            )
            v0_providers[live.provider_id] = fresh
            v0_by_model[MODEL][live.provider_id] = fresh

    # Slices keep the pairing: every provider is removed before it is added back.
    base_remove = Case("v0 remove (baseline)", v0_remove, ops)
    base_add = Case("v0 add (baseline)", v0_add, ops)
    return [
        base_remove,
        base_add,
        Case("registry.remove", remove, ops, against=base_remove),
        Case("registry.add", add, ops, against=base_add),
    ]


def run_cases(cases: list[Case]) -> None:
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    for slice_no in range(SLICES):
        for case in cases:
            share = case.calls // SLICES + (1 if slice_no < case.calls % SLICES else 0)
            call, samples, cpu = case.call, case.samples, case.cpu
            for _ in range(share):
                cpu_started = cpu_clock()
                started = clock()
                result = call()
                samples.append(clock() - started)
                cpu.append(cpu_clock() - cpu_started)
                if isinstance(result, NoRoute):
                    case.refused += 1


# ---------------------------------------------------------------- report


def add_rows(table: Table, size: int, cases: list[Case]) -> None:
    for case in cases:
        base = case.against or case
        median = statistics.median(case.samples) / 1000
        ratio = median / (statistics.median(base.samples) / 1000)
        eligible = "" if case.eligible is None else f"{case.eligible / size:.1%}"
        table.add_row(
            f"{size:,}",
            case.name,
            eligible,
            f"{median:,.1f}",
            f"{percentile(case.samples, 0.99) / 1000:,.1f}",
            "1.00x" if case is base else f"{ratio:.2f}x",
            f"{statistics.median(case.cpu) / 1000:,.1f}",
            str(len(case.samples)),
            str(case.refused) if case.refused else "",
        )
    table.add_section()


def timing_table(title: str, caption: str) -> Table:
    table = Table(title=title, caption=caption)
    for column in ("providers", "case", "eligible", "median µs", "p99 µs", "ratio to baseline"):
        table.add_column(column, justify="right" if column != "case" else "left")
    table.add_column("cpu median µs", justify="right")
    table.add_column("calls", justify="right")
    table.add_column("no route", justify="right")
    return table


def profile(fleet: Fleet, console: Console) -> None:
    router = Router(random.Random(11))
    pool = fleet.registry.pool(MODEL)
    request = route_of(None)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(2_000):
        router.choose(pool, request, NOW)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    console.print(f"cProfile, 2,000 default decisions at {fleet.size:,} providers")
    console.print(out.getvalue(), markup=False, highlight=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument(
        "--decisions", type=int, default=2_000, help="decisions per case (half at 100k+)"
    )
    parser.add_argument("--registry-ops", type=int, default=2_000, help="removes and adds")
    parser.add_argument("--profile", action="store_true", help="profile the largest size")
    args = parser.parse_args()
    if min(args.sizes) < 2 or args.decisions < SLICES or args.registry_ops < SLICES:
        parser.error("sizes must be 2 or more; decisions and registry ops at least 10")
    console = Console(width=max(Console().width, 132))  # the timing tables are wide
    started = time.perf_counter()
    if args.profile:
        profile(build(max(args.sizes), seed=1), console)
        return
    decisions = timing_table(
        "Router decision time (one model)",
        "ratio: median against v0 p2c at the same size; eligible: share of providers the "
        "policy allows; no route: decisions that found nobody",
    )
    registry_ops = timing_table(
        "Registry updates (one provider)",
        "ratio: median against the v0 registry's dict stores at the same size",
    )
    memory = Table(
        title="Memory per provider (tracemalloc, net)",
        caption="parsed: what parsing the announcements allocates; kept: what stays once "
        "they are added to the registry and the parsed messages dropped (card with shared "
        "offers and hardware, LiveProvider, offers, status, health, pool and price index)",
    )
    for column in ("providers", "parsed B", "kept B", "target B", "build s"):
        memory.add_column(column, justify="right")
    for size in sorted(args.sizes):
        with console.status(f"{size:,} providers: building…") as status:
            fleet = build(size, seed=size)
            large = size > 10_000
            count = args.decisions // 2 if large else args.decisions
            scans = 20 if large else 60 if size > 1_000 else 300
            status.update(f"{size:,} providers: routing…")
            cases = decision_cases(fleet, count, scans)
            run_cases(cases)
            status.update(f"{size:,} providers: registry updates…")
            updates = registry_cases(fleet, min(args.registry_ops, size))
            run_cases(updates)
        add_rows(decisions, size, cases)
        add_rows(registry_ops, size, updates)
        caps, reg = fleet.caps_bytes, fleet.registry_bytes
        memory.add_row(f"{size:,}", f"{caps:,.0f}", f"{reg:,.0f}", "1,000", f"{fleet.build_s:.1f}")
        del fleet, cases, updates
        gc.unfreeze()
        gc.collect()
    console.print(decisions)
    console.print(registry_ops)
    console.print(memory)
    console.print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
