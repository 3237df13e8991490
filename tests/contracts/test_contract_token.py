"""TesseraToken: metadata, minting rights and EIP-2612 permit."""

from __future__ import annotations

import boa
from contract_kit import TOKEN, System, actor, sign_permit


def test_metadata_matches_the_ledger_unit(system: System) -> None:
    token = system.token
    assert (token.name(), token.symbol(), token.decimals()) == ("Tessera", "TSR", 9)
    assert token.totalSupply() == 0
    domain = token.eip712Domain()
    assert (domain[1], domain[2], domain[4]) == ("Tessera Token", "1", token.address)


def test_deployer_owns_and_mints(system: System) -> None:
    alice = actor("alice")
    assert system.token.owner() == system.governance.address
    system.token.mint(alice.address, 5 * TOKEN, sender=system.governance.address)
    assert system.token.balanceOf(alice.address) == 5 * TOKEN
    assert system.token.totalSupply() == 5 * TOKEN


def test_only_a_minter_mints(system: System) -> None:
    alice = actor("alice")
    with boa.reverts("erc20: access is denied"):
        system.token.mint(alice.address, 1, sender=alice.address)


def test_permit_sets_an_allowance_once(system: System) -> None:
    alice, bob = actor("alice"), actor("bob")
    deadline = boa.env.evm.patch.timestamp + 100
    v, r, s = sign_permit(alice, system.token, bob.address, 7, deadline)
    system.token.permit(alice.address, bob.address, 7, deadline, v, r, s)
    assert system.token.allowance(alice.address, bob.address) == 7
    with boa.reverts("erc20: invalid signature"):
        system.token.permit(alice.address, bob.address, 7, deadline, v, r, s)
