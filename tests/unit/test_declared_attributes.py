"""Self-declared attributes (issue 11, finding 10): what routing may rely on, and what not.

Claiming ``DE-eu`` won every EU request whatever the provider's real place; ``order`` and
``only`` took 8-hex-character id prefixes (32 bits: a stranger grinds a key sharing one);
a label could copy a real provider's.
"""

from __future__ import annotations

import random

import pytest

from tessera.market.attributes import attributes
from tessera.market.policy import Policy, PolicyError, effective
from tessera.market.regions import (
    CONSISTENT,
    CONTRADICTED,
    UNCHECKED,
    distance_km,
    region_check,
)
from tessera.market.registry import ProviderRegistry
from tessera.market.routing import Decision, NoRoute, Router, RouteRequest

from factories import capabilities, offer

FRANKFURT = (50.1, 8.7)
SYDNEY = (-33.9, 151.2)


def pid(n: int) -> str:
    return f"{n:02x}" * 32


@pytest.mark.parametrize("field", ["order", "only", "ignore"])
def test_id_prefixes_need_64_bits(field: str) -> None:
    with pytest.raises(PolicyError) as caught:
        Policy.parse({field: ["abcdef12"]})
    assert caught.value.param == f"provider.{field}"
    assert "16" in str(caught.value)
    with pytest.raises(PolicyError):
        Policy.parse({field: ["not-hex-at-all-but-long-enough"]})
    assert Policy.parse({field: [pid(1)[:16]]}) is not None
    assert Policy.parse({field: [pid(1)]}) is not None


def test_distance_sanity() -> None:
    assert 15_000 < distance_km(*FRANKFURT, *SYDNEY) < 17_000


def test_a_round_trip_too_short_for_the_declared_country_contradicts_it() -> None:
    # 5 ms from Frankfurt: within 500 km. Germany fits; the US and Australia cannot.
    assert region_check("DE-eu", 5.0, *FRANKFURT) == CONSISTENT
    assert region_check("US", 5.0, *FRANKFURT) == CONTRADICTED
    assert region_check("AU", 5.0, *FRANKFURT) == CONTRADICTED
    # A slow link allows far countries: consistent, not proven.
    assert region_check("US", 150.0, *FRANKFURT) == CONSISTENT
    # Nothing to check against.
    assert region_check("DE", 5.0, None, None) == UNCHECKED
    assert region_check("DE", None, *FRANKFURT) == UNCHECKED
    assert region_check("ZW", 1.0, *FRANKFURT) == UNCHECKED  # not in the table


def network() -> ProviderRegistry:
    registry = ProviderRegistry()
    for n, (region, check) in enumerate(
        [("DE-eu", CONTRADICTED), ("FR", CONSISTENT), ("US", CONTRADICTED)]
    ):
        caps = capabilities(models=[offer("m")]).model_copy(
            update={"public_key": pid(n), "region": region, "no_retention": True}
        )
        registry.add(pid(n), caps, now=0.0, rtt_ms=2.0, region_check=check)
    return registry


def routed(registry: ProviderRegistry, raw: dict[str, object]) -> set[str] | NoRoute:
    router = Router(random.Random(1))
    request = RouteRequest("m", effective([Policy.parse(raw)]))
    out = set()
    for _ in range(30):
        decision = router.choose(registry.pool("m"), request, now=0.0)
        if isinstance(decision, NoRoute):
            return decision
        assert isinstance(decision, Decision)
        out.add(decision.provider.provider_id)
    return out


def test_a_contradicted_region_matches_no_region_policy() -> None:
    registry = network()
    assert routed(registry, {"regions_allow": ["eu"], "data_collection": "deny"}) == {pid(1)}
    assert routed(registry, {"regions_allow": ["DE"]}).constraint == "regions_allow"  # type: ignore[union-attr]
    # Nor is it known to be outside a denied region.
    assert routed(registry, {"regions_deny": ["CN"]}) == {pid(1)}
    assert routed(registry, {}) == {pid(0), pid(1), pid(2)}  # no region asked: all serve


def test_attributes_say_what_is_declared_and_what_was_checked() -> None:
    registry = network()
    live = registry.get(pid(0))
    assert live is not None
    shown = attributes(live, registry.label_shared_with(pid(0)))
    assert shown["region"]["check"] == CONTRADICTED and shown["region"]["rtt_ms"] == 2.0
    assert shown["no_retention"] == {
        "value": True,
        "declared": True,
        "check": "unchecked",
        "how": shown["no_retention"]["how"],
    }
    assert shown["identity"]["check"] == "verified"


def test_a_copied_label_is_flagged_on_every_holder() -> None:
    registry = ProviderRegistry()
    for n, label in enumerate(["Acme GPU Cloud", "acme  gpu cloud", "Other"]):
        caps = capabilities().model_copy(update={"public_key": pid(n), "label": label})
        registry.add(pid(n), caps, now=0.0)
    assert [registry.label_shared_with(pid(n)) for n in range(3)] == [1, 1, 0]
    live = registry.get(pid(0))
    assert live is not None
    assert attributes(live, 1)["label"]["check"] == "duplicate"
    registry.remove(pid(1))
    assert registry.label_shared_with(pid(0)) == 0
