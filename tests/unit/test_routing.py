"""The router and routing policy: every policy field, scoring, stickiness, breakers."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tessera.market.health import BreakerPolicy, ProviderHealth
from tessera.market.policy import Policy, PolicyError, effective
from tessera.market.quotes import MaxPrice
from tessera.market.registry import LiveProvider, ProviderRegistry
from tessera.market.routing import Decision, NoRoute, Router, RouteRequest
from tessera.market.sticky import StickyTable, conversation_digest

from factories import capabilities, offer

MODEL = "m"


def pid(n: int) -> str:
    return f"{n:02x}" * 32


def network(*specs: dict[str, object]) -> ProviderRegistry:
    """Providers p0, p1, ... with per-provider overrides: region, price, slots, ..."""
    registry = ProviderRegistry()
    for n, spec in enumerate(specs):
        price = int(spec.get("price", 100))  # type: ignore[call-overload]
        caps = capabilities(
            models=[offer(MODEL, price_input_per_mtok=price, price_output_per_mtok=price)],
            slots=int(spec.get("slots", 4)),  # type: ignore[call-overload]
        ).model_copy(
            update={
                "public_key": pid(n),
                "region": spec.get("region", "US"),
                "no_retention": spec.get("no_retention", False),
            }
        )
        live = registry.add(pid(n), caps, now=0.0)
        live.reputation = float(spec.get("reputation", 0.5))  # type: ignore[arg-type]
    return registry


def route(registry: ProviderRegistry, *layers: Policy, **kw: object) -> Decision | NoRoute:
    router = Router(random.Random(7))
    request = RouteRequest(MODEL, effective(layers), output_tokens=100, **kw)  # type: ignore[arg-type]
    return router.choose(registry.pool(MODEL), request, now=0.0)


def picks(registry: ProviderRegistry, *layers: Policy, n: int = 60) -> Counter[str]:
    router = Router(random.Random(3))
    request = RouteRequest(MODEL, effective(layers), output_tokens=100)
    out: Counter[str] = Counter()
    for _ in range(n):
        decision = router.choose(registry.pool(MODEL), request, now=0.0)
        assert isinstance(decision, Decision), decision
        out[decision.provider.provider_id] += 1
    return out


def refused(decision: Decision | NoRoute) -> NoRoute:
    assert isinstance(decision, NoRoute), decision
    return decision


# ---------------------------------------------------------------- policy fields


def test_only_and_ignore_accept_ids_and_prefixes() -> None:
    registry = network({}, {}, {})
    assert set(picks(registry, Policy(only=frozenset({pid(1)})))) == {pid(1)}
    assert set(picks(registry, Policy(only=frozenset({pid(2)[:8]})))) == {pid(2)}
    assert set(picks(registry, Policy(ignore=frozenset({pid(0), pid(1)})))) == {pid(2)}
    no = refused(route(registry, Policy(ignore=frozenset({pid(0), pid(1), pid(2)}))))
    assert (no.busy, no.constraint) == (False, "ignore")


def test_order_tries_listed_providers_first_then_falls_back() -> None:
    registry = network({}, {}, {})
    decision = route(registry, Policy(order=(pid(2), pid(1))))
    assert isinstance(decision, Decision)
    assert (decision.provider.provider_id, decision.reason) == (pid(2), "order[0]")
    for _ in range(4):
        registry.acquire(pid(2))
    decision = route(registry, Policy(order=(pid(2), pid(1))))
    assert isinstance(decision, Decision) and decision.reason == "order[1]"
    for _ in range(4):
        registry.acquire(pid(1))
    fallback = route(registry, Policy(order=(pid(2), pid(1))))
    assert isinstance(fallback, Decision) and fallback.provider.provider_id == pid(0)
    # Without fallbacks the listed providers are all there is: busy, so wait.
    no = refused(route(registry, Policy(order=(pid(2), pid(1)), allow_fallbacks=False)))
    assert no.busy


def test_sort_price_takes_the_cheapest_tier() -> None:
    registry = network({"price": 300}, {"price": 100}, {"price": 100}, {"price": 200})
    counts = picks(registry, Policy(sort="price"))
    assert set(counts) == {pid(1), pid(2)}


def test_sort_latency_and_throughput_use_measured_speed() -> None:
    registry = network({}, {}, {})
    speeds = {pid(0): (900.0, 50.0), pid(1): (120.0, 20.0), pid(2): (400.0, 80.0)}
    for provider_id, (ttft, tps) in speeds.items():
        health = registry.health(provider_id)
        health.ttft_ms, health.tokens_per_s = ttft, tps
    assert set(picks(registry, Policy(sort="latency"))) == {pid(1)}
    assert set(picks(registry, Policy(sort="throughput"))) == {pid(2)}


def test_max_price_names_the_constraint() -> None:
    registry = network({"price": 300}, {"price": 200})
    capped = Policy(max_price=MaxPrice(prompt=None, completion=250))
    assert set(picks(registry, capped)) == {pid(1)}
    no = refused(route(registry, Policy(max_price=MaxPrice(completion=10))))
    assert no.constraint == "max_price"
    assert "max_price" in no.message


def test_data_collection_deny_routes_only_to_no_retention_providers() -> None:
    registry = network({"no_retention": False}, {"no_retention": True})
    assert set(picks(registry, Policy(data_collection="deny"))) == {pid(1)}
    only_retaining = network({"no_retention": False})
    assert refused(route(only_retaining, Policy(data_collection="deny"))).constraint == (
        "data_collection"
    )


def test_regions_allow_and_deny_use_countries_and_coarse_regions() -> None:
    registry = network({"region": "US"}, {"region": "DE"}, {"region": "FR"}, {"region": "JP"})
    eu = Policy.parse({"regions_allow": ["eu"]})
    assert set(picks(registry, eu)) == {pid(1), pid(2)}
    assert set(picks(registry, Policy.parse({"regions_allow": ["jp", "us"]}))) == {pid(0), pid(3)}
    assert set(picks(registry, Policy.parse({"regions_deny": ["eu", "US"]}))) == {pid(3)}
    only_us = network({"region": "US"})
    no = refused(route(only_us, eu))
    assert no.constraint == "regions_allow" and "eu" in no.message


def test_a_self_declared_region_suffix_does_not_make_a_provider_european() -> None:
    registry = network({"region": "US-eu"})
    assert refused(route(registry, Policy.parse({"regions_allow": ["eu"]}))).constraint == (
        "regions_allow"
    )


def test_min_reputation_filters() -> None:
    registry = network({"reputation": 0.3}, {"reputation": 0.8})
    assert set(picks(registry, Policy(min_reputation=0.5))) == {pid(1)}
    assert refused(route(registry, Policy(min_reputation=0.9))).constraint == "min_reputation"


def test_parse_refuses_bad_values() -> None:
    with pytest.raises(PolicyError, match="regions_allow"):
        Policy.parse({"regions_allow": ["atlantis"]})
    with pytest.raises(PolicyError, match="too short"):
        Policy.parse({"only": ["ab"]})
    with pytest.raises(PolicyError, match="sort"):
        Policy.parse({"sort": "cheapest"})
    with pytest.raises(PolicyError, match="min_reputation"):
        Policy.parse({"min_reputation": 2})


# ---------------------------------------------------------------- key policy layers


def test_a_request_can_narrow_its_keys_policy_but_never_widen_it() -> None:
    registry = network({"region": "US"}, {"region": "DE"}, {"region": "FR"})
    key = Policy.parse({"regions_allow": ["eu"]}, source="API key")
    # Narrowing: only France.
    assert set(picks(registry, key, Policy.parse({"regions_allow": ["FR"]}))) == {pid(2)}
    # Widening to the US is impossible: the key's layer still applies.
    no = refused(route(registry, key, Policy.parse({"regions_allow": ["US"]})))
    assert no.constraint == "regions_allow"
    assert no.source == "request" and "regions_allow [eu] (set by the API key) left 2" in no.message
    # allow_fallbacks: false in the key holds even if the request says true.
    layered = effective([Policy(allow_fallbacks=False), Policy(allow_fallbacks=True)])
    assert not layered.allow_fallbacks
    # The tighter max_price wins.
    prices = effective([Policy(max_price=MaxPrice(5, 5)), Policy(max_price=MaxPrice(9, 3))])
    assert prices.max_price == MaxPrice(5, 3)


def test_an_eu_only_key_never_reaches_a_provider_outside_the_eu() -> None:
    regions = ["US", "DE", "JP", "FR", "BR", "IT", "GB", "CH", "NL"]
    registry = network(*({"region": r} for r in regions))
    key = Policy.parse({"regions_allow": ["eu"]}, source="API key")
    for request in (
        None,
        Policy(sort="price"),
        Policy(order=(pid(0),)),
        Policy(ignore=frozenset({pid(1)})),
    ):
        layers = [key] if request is None else [key, request]
        for chosen in picks(registry, *layers, n=40):
            region = regions[int(chosen[:2], 16)]
            assert region in {"DE", "FR", "IT", "NL"}, (request, region)


# ---------------------------------------------------------------- scoring and load


def test_default_pick_spreads_load_among_the_best() -> None:
    registry = network(*({} for _ in range(6)))
    router = Router(random.Random(5))
    request = RouteRequest(MODEL, output_tokens=100)
    chosen: Counter[str] = Counter()
    for _ in range(120):
        decision = router.choose(registry.pool(MODEL), request, now=0.0)
        assert isinstance(decision, Decision)
        chosen[decision.provider.provider_id] += 1
        registry.acquire(decision.provider.provider_id)
        if decision.provider.active_jobs >= 3:
            registry.release(decision.provider.provider_id)  # a job finished
    # Every provider got work, and none got most of it: no herding on one.
    assert len(chosen) == 6 and max(chosen.values()) < 60


def test_cheaper_reputable_providers_win_more_often() -> None:
    registry = network(
        {"price": 100, "reputation": 0.9},
        {"price": 400, "reputation": 0.2},
        {"price": 100, "reputation": 0.9},
    )
    counts = picks(registry, n=200)
    assert counts[pid(1)] < counts[pid(0)] and counts[pid(1)] < counts[pid(2)]


def test_full_and_excluded_providers_are_skipped() -> None:
    registry = network({"slots": 1}, {"slots": 1}, {"slots": 1})
    registry.acquire(pid(0))
    decision = route(registry, exclude={pid(1)})
    assert isinstance(decision, Decision) and decision.provider.provider_id == pid(2)
    registry.acquire(pid(2))
    no = refused(route(registry, exclude={pid(1)}))
    assert no.busy and no.constraint == "capacity"


def test_the_route_header_says_why() -> None:
    registry = network({}, {})
    decision = route(registry)
    assert isinstance(decision, Decision)
    header = decision.header()
    for part in ("best of 2", "score=", "price=", "latency=", "reputation=", "considered=2/2"):
        assert part in header


def test_large_pools_are_sampled_and_restrictive_policies_still_find_the_rare_match() -> None:
    specs = [{"region": "US"} for _ in range(999)] + [{"region": "DE"}]
    registry = network(*specs)
    router = Router(random.Random(1), sample=64)
    request = RouteRequest(MODEL, effective([Policy.parse({"regions_allow": ["eu"]})]))
    decision = router.choose(registry.pool(MODEL), request, now=0.0)
    assert isinstance(decision, Decision) and decision.provider.capabilities.region == "DE"
    # The default pick scores a sample, never the whole pool.
    decision = router.choose(registry.pool(MODEL), RouteRequest(MODEL), now=0.0)
    assert isinstance(decision, Decision) and decision.considered <= 64


# ---------------------------------------------------------------- stickiness


def test_a_conversation_sticks_to_its_provider_while_it_is_good() -> None:
    registry = network({}, {}, {})
    sticky = route(registry, sticky=pid(1))
    assert isinstance(sticky, Decision) and (sticky.provider.provider_id, sticky.reason) == (
        pid(1),
        "sticky",
    )
    for _ in range(4):
        registry.acquire(pid(1))
    moved = route(registry, sticky=pid(1))
    assert isinstance(moved, Decision) and moved.provider.provider_id != pid(1)


def test_sticky_table_keys_by_conversation_and_expires() -> None:
    table = StickyTable(ttl_s=10)
    turns = [("user", "hi")]
    first = conversation_digest("key", MODEL, [*turns, ("assistant", "hello")])
    table.remember(first, "p", now=0.0)
    # The next turn's messages minus its newest one are the remembered conversation.
    assert (
        table.lookup(conversation_digest("key", MODEL, [*turns, ("assistant", "hello")]), 5) == "p"
    )
    assert (
        table.lookup(conversation_digest("other key", MODEL, [*turns, ("assistant", "hello")]), 5)
        is None
    )
    assert table.lookup(first, 11) is None


# ---------------------------------------------------------------- circuit breaker


def test_breaker_opens_after_repeated_failures_and_backs_off() -> None:
    policy = BreakerPolicy(failures=3, backoff_s=5, backoff_max_s=12)
    health = ProviderHealth()
    assert not health.failed(policy, "x", now=0)
    assert not health.failed(policy, "x", now=0)
    assert health.failed(policy, "x", now=0)
    assert health.state(1) == "open" and not health.admits(1)
    assert health.state(5) == "half_open" and health.admits(5)
    health.started(5)
    assert not health.admits(5)  # one trial at a time
    assert health.failed(policy, "x", now=6)  # the trial failed: reopen, doubled
    assert health.open_until == 16
    health.started(16.5)
    assert health.failed(policy, "x", now=17)
    assert health.backoff_s == 12  # capped
    health.started(29.5)
    health.succeeded(ttft_ms=100.0, tokens=11, generation_s=1.0)
    assert health.state(30) == "closed" and health.tokens_per_s == 10.0


def test_router_skips_open_breakers_and_says_so() -> None:
    registry = network({}, {})
    policy = BreakerPolicy(failures=1)
    for n in (0, 1):
        registry.health(pid(n)).failed(policy, "boom", now=0.0)
    no = refused(route(registry))
    assert no.busy and no.constraint == "circuit_open"
    registry.health(pid(1)).succeeded(None, 0, 0)
    decision = route(registry)
    assert isinstance(decision, Decision) and decision.provider.provider_id == pid(1)


def test_health_survives_a_reconnect() -> None:
    registry = network({})
    registry.health(pid(0)).failed(BreakerPolicy(failures=1), "boom", now=0.0)
    live = registry.get(pid(0))
    assert isinstance(live, LiveProvider)
    registry.remove(pid(0))
    again = registry.add(pid(0), live.capabilities, now=1.0)
    assert again.health.state(1.0) == "open"


def test_price_walks_and_existence_check_never_need_the_whole_pool() -> None:
    registry = network(
        {"price": 300, "region": "US"},
        {"price": 100, "region": "DE"},
        {"price": 200, "region": "FR"},
        {"price": 50, "region": "JP"},
    )
    router = Router(random.Random(2))
    eu = RouteRequest(MODEL, effective([Policy.parse({"regions_allow": ["eu"]})]))
    pool = registry.pool(MODEL)
    cheap_first = [p.provider_id for p in router.by_price(pool, eu)]
    assert cheap_first == [pid(1), pid(2)]
    assert [p.provider_id for p in router.by_price(pool, eu, descending=True)] == [pid(2), pid(1)]
    assert router.any_eligible(pool, eu) is None
    oceania = RouteRequest(MODEL, effective([Policy.parse({"regions_allow": ["oceania"]})]))
    nobody = router.any_eligible(pool, oceania)
    assert isinstance(nobody, NoRoute) and nobody.constraint == "regions_allow"
    # Removing a provider keeps the price index in step with the pool.
    registry.remove(pid(1))
    assert [p.provider_id for p in router.by_price(pool, eu)] == [pid(2)]
    assert len(pool.by_price) == len(pool) == 3
