"""Registry: provider bindings and gateway signers with a grace for retired keys."""

from __future__ import annotations

import boa
from contract_kit import SIGNER_GRACE_S, Blueprints, System, actor, binding_digest, events

NODE_KEY = bytes(range(32))
ED25519_SIG = bytes(64)


def _now() -> int:
    return boa.env.evm.patch.timestamp


def test_binding_digest_matches_an_independent_encoder(system: System) -> None:
    alice = actor("alice")
    until = _now() + 3600
    assert system.registry.binding_digest(alice.address, NODE_KEY, until, 3) == binding_digest(
        system.registry, alice.address, NODE_KEY, until, 3
    )


def test_bind_stores_and_logs_the_binding(system: System) -> None:
    alice = actor("alice")
    until = _now() + 3600
    system.registry.bind(NODE_KEY, until, 1, ED25519_SIG, sender=alice.address)
    (bound,) = events(system.registry, "Bound")
    assert system.registry.bindings(alice.address) == (NODE_KEY, until, 1, ED25519_SIG)
    assert (bound.account, bound.key, bound.valid_until, bound.nonce) == (
        alice.address,
        NODE_KEY,
        until,
        1,
    )


def test_binding_nonce_must_increase(system: System) -> None:
    alice = actor("alice")
    until = _now() + 3600
    with boa.reverts("registry: nonce not increasing"):
        system.registry.bind(NODE_KEY, until, 0, ED25519_SIG, sender=alice.address)
    system.registry.bind(NODE_KEY, until, 5, ED25519_SIG, sender=alice.address)
    for stale in (5, 4):
        with boa.reverts("registry: nonce not increasing"):
            system.registry.bind(bytes(32), until, stale, ED25519_SIG, sender=alice.address)
    system.registry.bind(bytes(32), until, 6, ED25519_SIG, sender=alice.address)
    assert system.registry.bindings(alice.address)[0] == bytes(32)


def test_binding_must_not_be_expired(system: System) -> None:
    alice = actor("alice")
    with boa.reverts("registry: binding expired"):
        system.registry.bind(NODE_KEY, _now() - 1, 1, ED25519_SIG, sender=alice.address)
    system.registry.bind(NODE_KEY, _now(), 1, ED25519_SIG, sender=alice.address)


def test_bindings_are_per_account(system: System) -> None:
    alice, mallory = actor("alice"), actor("mallory")
    until = _now() + 3600
    system.registry.bind(NODE_KEY, until, 9, ED25519_SIG, sender=alice.address)
    # Mallory can claim the same key only for her own account; Alice's stays hers.
    system.registry.bind(NODE_KEY, until, 1, ED25519_SIG, sender=mallory.address)
    assert system.registry.bindings(alice.address)[2] == 9


def test_a_gateway_signs_for_itself_until_it_names_a_key(system: System) -> None:
    gateway, hot = actor("gateway"), actor("hot")
    assert system.registry.is_signer(gateway.address, gateway.address)
    assert not system.registry.is_signer(gateway.address, hot.address)
    assert not system.registry.is_signer(gateway.address, "0x" + "00" * 20)
    assert system.registry.current_signer(gateway.address) == gateway.address


def test_signer_rotation_keeps_the_old_key_for_its_grace(system: System) -> None:
    registry = system.registry
    gateway, hot1, hot2 = actor("gateway"), actor("hot1"), actor("hot2")
    registry.set_gateway_signer(hot1.address, sender=gateway.address)
    (logged,) = events(registry, "GatewaySigner")
    assert (logged.gateway, logged.signer, logged.previous) == (
        gateway.address,
        hot1.address,
        gateway.address,
    )
    assert registry.is_signer(gateway.address, hot1.address)
    assert registry.is_signer(gateway.address, gateway.address)  # in its grace
    assert registry.gateway_of(hot1.address) == gateway.address

    boa.env.time_travel(seconds=SIGNER_GRACE_S // 2)
    registry.set_gateway_signer(hot2.address, sender=gateway.address)
    assert registry.gateway_of(hot1.address) == "0x" + "00" * 20
    assert registry.gateway_of(hot2.address) == gateway.address
    assert registry.is_signer(gateway.address, hot1.address)
    assert registry.is_signer(gateway.address, gateway.address)

    # The gateway's own address retired first, so its grace ends first.
    boa.env.time_travel(seconds=SIGNER_GRACE_S - SIGNER_GRACE_S // 2)
    assert not registry.is_signer(gateway.address, gateway.address)
    assert registry.is_signer(gateway.address, hot1.address)
    boa.env.time_travel(seconds=SIGNER_GRACE_S // 2)
    assert not registry.is_signer(gateway.address, hot1.address)
    assert registry.is_signer(gateway.address, hot2.address)


def test_renaming_a_retired_key_makes_it_current_again(system: System) -> None:
    registry = system.registry
    gateway, hot1, hot2 = actor("gateway"), actor("hot1"), actor("hot2")
    registry.set_gateway_signer(hot1.address, sender=gateway.address)
    registry.set_gateway_signer(hot2.address, sender=gateway.address)
    registry.set_gateway_signer(hot1.address, sender=gateway.address)
    boa.env.time_travel(seconds=SIGNER_GRACE_S + 1)
    assert registry.is_signer(gateway.address, hot1.address)
    assert not registry.is_signer(gateway.address, hot2.address)


def test_another_gateways_key_cannot_be_taken(system: System) -> None:
    registry = system.registry
    honest, rogue, hot = actor("honest"), actor("rogue"), actor("hot")
    registry.set_gateway_signer(hot.address, sender=honest.address)
    with boa.reverts("registry: signer taken"):
        registry.set_gateway_signer(hot.address, sender=rogue.address)
    with boa.reverts("registry: empty signer"):
        registry.set_gateway_signer("0x" + "00" * 20, sender=rogue.address)


def test_a_gateway_can_reclaim_its_own_address(system: System) -> None:
    registry = system.registry
    victim, rogue = actor("victim"), actor("rogue")
    registry.set_gateway_signer(victim.address, sender=rogue.address)
    assert registry.gateway_of(victim.address) == rogue.address
    registry.set_gateway_signer(victim.address, sender=victim.address)
    assert registry.gateway_of(victim.address) == victim.address
    assert registry.current_signer(victim.address) == victim.address


def test_zero_grace_retires_at_once(blueprints: Blueprints) -> None:
    registry = blueprints.registry.deploy(0)
    gateway, hot = actor("gateway"), actor("hot")
    registry.set_gateway_signer(hot.address, sender=gateway.address)
    assert not registry.is_signer(gateway.address, gateway.address)
    assert registry.is_signer(gateway.address, hot.address)
