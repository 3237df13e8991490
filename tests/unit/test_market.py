import pytest

from tessera.market.registry import ProviderRegistry, SlotError

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


def test_models_served_before_a_start_are_awaited_until_announced_again() -> None:
    registry = ProviderRegistry()
    registry.add("live", capabilities(models=[offer("y")]), now=0)
    registry.remember_models(["x", "y"])  # read from the store at start
    assert registry.is_known("x") and registry.is_awaited("x")
    assert registry.is_known("y") and not registry.is_awaited("y")  # already back
    assert not registry.is_known("z") and not registry.is_awaited("z")
    registry.add("back", capabilities(models=[offer("x")]), now=1)
    registry.remove("back")
    assert registry.is_known("x") and not registry.is_awaited("x")  # came back, left again
