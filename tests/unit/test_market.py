import random
from collections import Counter

import pytest

from tessera.market.registry import ProviderRegistry, SlotError
from tessera.market.routing import choose_provider

from factories import capabilities, offer


def registry_with(n: int, slots: int = 2, model: str = "m") -> ProviderRegistry:
    registry = ProviderRegistry()
    for i in range(n):
        caps = capabilities(models=[offer(model)], slots=slots)
        registry.add(f"p{i}", caps, now=0.0)
    return registry


def test_add_and_remove_index_by_model() -> None:
    registry = ProviderRegistry()
    registry.add("a", capabilities(models=[offer("x"), offer("y")]), now=0)
    registry.add("b", capabilities(models=[offer("y")]), now=0)
    assert {p.provider_id for p in registry.serving("y")} == {"a", "b"}
    registry.remove("a")
    assert registry.serving("x") == []
    assert [p.provider_id for p in registry.serving("y")] == ["b"]
    # A model seen once stays known, so requests for it get 503 rather than 404.
    assert registry.is_known("x")
    assert not registry.is_known("z")


def test_slots_never_exceed_declared_concurrency() -> None:
    registry = registry_with(1, slots=2)
    registry.acquire("p0")
    registry.acquire("p0")
    with pytest.raises(SlotError):
        registry.acquire("p0")
    registry.release("p0")
    registry.acquire("p0")
    assert registry.get("p0").active_jobs == 2  # type: ignore[union-attr]


def test_release_after_disconnect_is_harmless() -> None:
    registry = registry_with(1)
    registry.acquire("p0")
    registry.remove("p0")
    registry.release("p0")
    assert len(registry) == 0


def test_summaries_report_price_range_and_count() -> None:
    registry = ProviderRegistry()
    registry.add("a", capabilities(models=[offer("x", price_input_per_mtok=5)]), now=0)
    registry.add("b", capabilities(models=[offer("x", price_input_per_mtok=9)]), now=0)
    (summary,) = registry.summaries()
    assert (summary.providers, summary.price_input_min, summary.price_input_max) == (2, 5, 9)


def test_choose_skips_full_and_excluded_providers() -> None:
    registry = registry_with(3, slots=1)
    registry.acquire("p0")
    rng = random.Random(1)
    picks = {
        choose_provider(registry.serving("m"), rng, exclude={"p1"}).provider_id for _ in range(20)
    }  # type: ignore[union-attr]
    assert picks == {"p2"}
    registry.acquire("p2")
    assert choose_provider(registry.serving("m"), rng, exclude={"p1"}) is None


def test_power_of_two_prefers_less_loaded() -> None:
    registry = registry_with(2, slots=4)
    registry.acquire("p0")
    registry.acquire("p0")
    rng = random.Random(0)
    picks = Counter(choose_provider(registry.serving("m"), rng).provider_id for _ in range(50))  # type: ignore[union-attr]
    assert picks == {"p1": 50}


def test_power_of_two_spreads_load() -> None:
    registry = registry_with(8, slots=100)
    rng = random.Random(3)
    for _ in range(400):
        chosen = choose_provider(registry.serving("m"), rng)
        assert chosen is not None
        registry.acquire(chosen.provider_id)
    loads = [p.active_jobs for p in registry.all()]
    # Uniform random picks would spread by ~20 here; two choices keep it within a few.
    assert max(loads) - min(loads) <= 4
