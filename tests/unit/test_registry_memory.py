"""The registry keeps a compact card, not the parsed announcement, and shares what
providers announce alike."""

from __future__ import annotations

from nacl.signing import SigningKey

from tessera.market.registry import ProviderCard, ProviderRegistry

from support.scripted_peers import caps_for


def test_equal_offers_and_hardware_are_kept_once() -> None:
    registry = ProviderRegistry()
    lives = []
    for _ in range(3):
        caps = caps_for(SigningKey.generate(), slots=2, model="m")
        lives.append(registry.add(caps.public_key, caps, now=0.0))
    first, second, third = lives
    assert isinstance(first.capabilities, ProviderCard)
    assert first.offers["m"] is second.offers["m"] is third.offers["m"]
    assert first.offers is second.offers
    assert first.capabilities.hardware is second.capabilities.hardware
    assert first.status is second.status and first.status["m"] == "routable"


def test_a_status_change_touches_one_provider_only() -> None:
    registry = ProviderRegistry()
    caps = [caps_for(SigningKey.generate(), slots=2, model="m") for _ in range(2)]
    a, b = (registry.add(c.public_key, c, now=0.0) for c in caps)
    registry.set_status(a.provider_id, "m", "banned")
    assert registry.get(a.provider_id).status["m"] == "banned"  # type: ignore[union-attr]
    assert b.status["m"] == "routable"
    assert [p.provider_id for p in registry.serving("m")] == [b.provider_id]


def test_a_shared_label_is_counted_and_forgotten_as_holders_leave() -> None:
    registry = ProviderRegistry()
    caps = [caps_for(SigningKey.generate(), slots=2, model="m") for _ in range(3)]
    caps = [c.model_copy(update={"label": "Rig  One"}) for c in caps]
    ids = [registry.add(c.public_key, c, now=0.0).provider_id for c in caps]
    assert registry.label_shared_with(ids[0]) == 2
    registry.remove(ids[1])
    assert registry.label_shared_with(ids[0]) == 1
    registry.remove(ids[2])
    assert registry.label_shared_with(ids[0]) == 0
    again = registry.add(caps[2].public_key, caps[2], now=1.0)
    assert registry.label_shared_with(again.provider_id) == 1
