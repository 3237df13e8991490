"""StakeManager: bonding, unbonding that stays slashable, committee slashes, bounces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import boa
import pytest
from contract_kit import (
    CHALLENGE_S,
    KIND_DOWNTIME,
    KIND_FORGED,
    KIND_TAMPERED,
    KIND_WRONG_MODEL,
    MIN_MEMBER_STAKE,
    TOKEN,
    UNBONDING_S,
    System,
    actor,
    bond,
    events,
    fund,
    seat_committee,
)

EVIDENCE = b"\x42" * 32


def _propose(
    system: System,
    offender: str,
    kind: int = KIND_WRONG_MODEL,
    *,
    evidence: bytes = EVIDENCE,
    consumers: Sequence[str] = (),
    gateways: Sequence[str] | None = None,
    amounts: Sequence[int] = (),
) -> int:
    if gateways is None:
        gateways = [actor("gateway").address] * len(consumers)
    return system.stake.propose_slash(
        offender,
        kind,
        evidence,
        list(consumers),
        list(gateways),
        list(amounts),
        sender=system.committee[0].address,
    )


def _approved(system: System, offender: str, kind: int = KIND_WRONG_MODEL, **refunds: Any) -> int:
    """A proposal by member 0, approved by member 1 (2 of 3)."""
    seat_committee(system)
    proposal = _propose(system, offender, kind, **refunds)
    system.stake.approve_slash(proposal, sender=system.committee[1].address)
    return proposal


# --- stake ---------------------------------------------------------------------------------


def test_bond_takes_tokens_and_logs(system: System) -> None:
    alice = actor("alice")
    fund(system, alice.address, 10 * TOKEN, system.stake.address)
    system.stake.bond(4 * TOKEN, sender=alice.address)
    (logged,) = events(system.stake, "Bonded")
    assert (logged.account, logged.amount, logged.bonded) == (alice.address, 4 * TOKEN, 4 * TOKEN)
    assert system.stake.bonded(alice.address) == 4 * TOKEN
    assert system.token.balanceOf(system.stake.address) == 4 * TOKEN
    with boa.reverts("stake: zero amount"):
        system.stake.bond(0, sender=alice.address)


def test_bond_needs_an_allowance(system: System) -> None:
    alice = actor("alice")
    fund(system, alice.address, TOKEN)
    with boa.reverts():
        system.stake.bond(TOKEN, sender=alice.address)


def test_unbond_restarts_the_delay_for_the_whole_amount(system: System) -> None:
    alice = actor("alice")
    bond(system, alice.address, 10 * TOKEN)
    system.stake.unbond(3 * TOKEN, sender=alice.address)
    first_unlock = system.stake.unlock_at(alice.address)
    boa.env.time_travel(seconds=UNBONDING_S - 1)
    system.stake.unbond(2 * TOKEN, sender=alice.address)
    (logged,) = events(system.stake, "Unbonded")
    assert logged.unbonding == 5 * TOKEN
    assert logged.unlock_at == first_unlock + UNBONDING_S - 1
    assert (system.stake.bonded(alice.address), system.stake.unbonding(alice.address)) == (
        5 * TOKEN,
        5 * TOKEN,
    )
    with boa.reverts("stake: not bonded"):
        system.stake.unbond(5 * TOKEN + 1, sender=alice.address)
    with boa.reverts("stake: zero amount"):
        system.stake.unbond(0, sender=alice.address)


def test_withdraw_before_unlock_is_refused(system: System) -> None:
    alice = actor("alice")
    bond(system, alice.address, 10 * TOKEN)
    with boa.reverts("stake: nothing unbonding"):
        system.stake.withdraw(sender=alice.address)
    system.stake.unbond(10 * TOKEN, sender=alice.address)
    boa.env.time_travel(seconds=UNBONDING_S - 1)
    with boa.reverts("stake: still locked"):
        system.stake.withdraw(sender=alice.address)
    boa.env.time_travel(seconds=1)
    system.stake.withdraw(sender=alice.address)
    (logged,) = events(system.stake, "StakeWithdrawn")
    assert logged.amount == 10 * TOKEN
    assert system.token.balanceOf(alice.address) == 10 * TOKEN
    assert system.stake.slashable(alice.address) == 0


def test_slash_table_matches_the_ledger(system: System) -> None:
    from tessera.ledger.slashing_table import DEFAULT_RULES

    by_reason = {rule.reason: rule.stake_bps for rule in DEFAULT_RULES}
    assert system.stake.slash_bps(KIND_FORGED) == by_reason["forged_receipt"]
    assert system.stake.slash_bps(KIND_WRONG_MODEL) == by_reason["wrong_model"]
    assert system.stake.slash_bps(KIND_TAMPERED) == by_reason["tampered_output"]
    assert system.stake.slash_bps(KIND_DOWNTIME) == by_reason["downtime"]
    assert system.stake.slash_bps(0) == system.stake.slash_bps(5) == 0


# --- slashing ------------------------------------------------------------------------------


def test_unbond_then_slash_still_takes_unbonding_stake(system: System) -> None:
    provider = actor("provider")
    bond(system, provider.address, 10 * TOKEN)
    system.stake.unbond(8 * TOKEN, sender=provider.address)
    proposal = _approved(system, provider.address, KIND_FORGED)
    boa.env.time_travel(seconds=CHALLENGE_S)
    system.stake.execute_slash(proposal)
    (logged,) = events(system.stake, "SlashExecuted")
    assert (logged.amount, logged.refunded, logged.to_insurance) == (10 * TOKEN, 0, 10 * TOKEN)
    assert system.stake.slashable(provider.address) == 0
    assert system.vault.insurance_pool() == 10 * TOKEN
    boa.env.time_travel(seconds=UNBONDING_S)
    with boa.reverts("stake: nothing unbonding"):
        system.stake.withdraw(sender=provider.address)


def test_slash_takes_bonded_before_unbonding(system: System) -> None:
    provider = actor("provider")
    bond(system, provider.address, 10 * TOKEN)
    system.stake.unbond(6 * TOKEN, sender=provider.address)
    proposal = _approved(system, provider.address, KIND_WRONG_MODEL)
    boa.env.time_travel(seconds=CHALLENGE_S)
    system.stake.execute_slash(proposal)
    # Half of 10 is 5: all 4 bonded, then 1 of the 6 unbonding.
    assert system.stake.bonded(provider.address) == 0
    assert system.stake.unbonding(provider.address) == 5 * TOKEN


def test_downtime_slash_takes_at_least_one_unit(system: System) -> None:
    provider = actor("provider")
    bond(system, provider.address, 99)
    proposal = _approved(system, provider.address, KIND_DOWNTIME)
    boa.env.time_travel(seconds=CHALLENGE_S)
    system.stake.execute_slash(proposal)
    assert system.stake.bonded(provider.address) == 98


def test_slash_with_nothing_slashable_closes_the_proposal(system: System) -> None:
    provider = actor("provider")
    proposal = _approved(system, provider.address, KIND_FORGED)
    boa.env.time_travel(seconds=CHALLENGE_S)
    system.stake.execute_slash(proposal)
    assert events(system.stake, "SlashExecuted")[0].amount == 0
    with boa.reverts("stake: already executed"):
        system.stake.execute_slash(proposal)


def test_refunds_go_to_consumers_first_then_insurance(system: System) -> None:
    provider, gateway = actor("provider"), actor("gateway")
    c1, c2 = actor("c1"), actor("c2")
    bond(system, provider.address, 20 * TOKEN)
    proposal = _approved(
        system,
        provider.address,
        KIND_WRONG_MODEL,
        consumers=[c1.address, c2.address],
        gateways=[gateway.address, gateway.address],
        amounts=[3 * TOKEN, 4 * TOKEN],
    )
    boa.env.time_travel(seconds=CHALLENGE_S)
    system.stake.execute_slash(proposal)
    refunds = events(system.stake, "Refunded")
    assert [(r.consumer, r.amount) for r in refunds] == [
        (c1.address, 3 * TOKEN),
        (c2.address, 4 * TOKEN),
    ]
    (logged,) = events(system.stake, "SlashExecuted")
    assert (logged.amount, logged.refunded, logged.to_insurance) == (
        10 * TOKEN,
        7 * TOKEN,
        3 * TOKEN,
    )
    assert system.vault.deposits(c1.address, gateway.address) == 3 * TOKEN
    assert system.vault.deposits(c2.address, gateway.address) == 4 * TOKEN
    assert system.vault.insurance_pool() == 3 * TOKEN
    assert system.token.balanceOf(system.vault.address) == 10 * TOKEN


def test_refunds_beyond_the_slash_are_paid_in_order(system: System) -> None:
    provider, gateway = actor("provider"), actor("gateway")
    c1, c2, c3 = actor("c1"), actor("c2"), actor("c3")
    bond(system, provider.address, 10 * TOKEN)
    proposal = _approved(
        system,
        provider.address,
        KIND_WRONG_MODEL,
        consumers=[c1.address, c2.address, c3.address],
        gateways=[gateway.address] * 3,
        amounts=[3 * TOKEN, 4 * TOKEN, 5 * TOKEN],
    )
    boa.env.time_travel(seconds=CHALLENGE_S)
    system.stake.execute_slash(proposal)
    assert system.vault.deposits(c2.address, gateway.address) == 2 * TOKEN
    assert system.vault.deposits(c3.address, gateway.address) == 0
    assert system.vault.insurance_pool() == 0


def test_a_refunded_consumer_withdraws_it(system: System) -> None:
    provider, gateway, consumer = actor("provider"), actor("gateway"), actor("consumer")
    bond(system, provider.address, 10 * TOKEN)
    proposal = _approved(
        system, provider.address, consumers=[consumer.address], amounts=[2 * TOKEN]
    )
    boa.env.time_travel(seconds=CHALLENGE_S)
    system.stake.execute_slash(proposal)
    system.vault.request_withdraw(gateway.address, sender=consumer.address)
    boa.env.time_travel(seconds=system.vault.unlock_period())
    system.vault.withdraw(gateway.address, sender=consumer.address)
    assert system.token.balanceOf(consumer.address) == 2 * TOKEN


def test_threshold_must_be_reached(system: System) -> None:
    provider = actor("provider")
    bond(system, provider.address, 10 * TOKEN)
    seat_committee(system)
    proposal = _propose(system, provider.address)
    (logged,) = events(system.stake, "SlashProposed")
    assert (logged.id, logged.offender, logged.kind, logged.evidence) == (
        proposal,
        provider.address,
        KIND_WRONG_MODEL,
        EVIDENCE,
    )
    assert proposal == 1
    boa.env.time_travel(seconds=CHALLENGE_S)
    with boa.reverts("stake: not enough approvals"):
        system.stake.execute_slash(proposal)
    system.stake.approve_slash(proposal, sender=system.committee[2].address)
    assert events(system.stake, "SlashApproved")[0].approvals == 2
    system.stake.execute_slash(proposal)


def test_each_member_approves_once(system: System) -> None:
    provider = actor("provider")
    seat_committee(system)
    proposal = _propose(system, provider.address)
    with boa.reverts("stake: already approved"):
        system.stake.approve_slash(proposal, sender=system.committee[0].address)
    system.stake.approve_slash(proposal, sender=system.committee[1].address)
    with boa.reverts("stake: already approved"):
        system.stake.approve_slash(proposal, sender=system.committee[1].address)


def test_only_staked_members_vote(system: System) -> None:
    provider, outsider = actor("provider"), actor("outsider")
    with boa.reverts("stake: member stake too low"):
        _propose(system, provider.address)
    bond(system, system.committee[0].address, MIN_MEMBER_STAKE)
    proposal = _propose(system, provider.address)
    bond(system, system.committee[1].address, MIN_MEMBER_STAKE - 1)
    with boa.reverts("stake: member stake too low"):
        system.stake.approve_slash(proposal, sender=system.committee[1].address)
    bond(system, outsider.address, MIN_MEMBER_STAKE)
    with boa.reverts("stake: not a committee member"):
        system.stake.approve_slash(proposal, sender=outsider.address)


def test_challenge_window_holds_execution(system: System) -> None:
    provider = actor("provider")
    bond(system, provider.address, 10 * TOKEN)
    proposal = _approved(system, provider.address)
    boa.env.time_travel(seconds=CHALLENGE_S - 1)
    with boa.reverts("stake: in challenge window"):
        system.stake.execute_slash(proposal)
    boa.env.time_travel(seconds=1)
    system.stake.execute_slash(proposal)


def test_governance_vetoes_within_the_window_only(system: System) -> None:
    provider = actor("provider")
    bond(system, provider.address, 10 * TOKEN)
    proposal = _approved(system, provider.address)
    with boa.reverts("stake: not governance"):
        system.stake.veto_slash(proposal, sender=system.committee[0].address)
    boa.env.time_travel(seconds=CHALLENGE_S - 1)
    system.stake.veto_slash(proposal, sender=system.governance.address)
    assert events(system.stake, "SlashVetoed")[0].id == proposal
    boa.env.time_travel(seconds=1)
    with boa.reverts("stake: vetoed"):
        system.stake.execute_slash(proposal)
    assert system.stake.slashable(provider.address) == 10 * TOKEN

    late = _propose(system, provider.address, evidence=b"\x01" * 32)
    boa.env.time_travel(seconds=CHALLENGE_S)
    with boa.reverts("stake: window closed"):
        system.stake.veto_slash(late, sender=system.governance.address)


def test_evidence_is_used_once_unless_vetoed(system: System) -> None:
    provider = actor("provider")
    bond(system, provider.address, 10 * TOKEN)
    proposal = _approved(system, provider.address)
    with boa.reverts("stake: evidence already used"):
        _propose(system, provider.address)
    _propose(system, provider.address, KIND_TAMPERED)  # another offence, same evidence
    system.stake.veto_slash(proposal, sender=system.governance.address)
    again = _propose(system, provider.address)
    system.stake.approve_slash(again, sender=system.committee[1].address)
    boa.env.time_travel(seconds=CHALLENGE_S)
    system.stake.execute_slash(again)
    with boa.reverts("stake: evidence already used"):
        _propose(system, provider.address)


def test_a_new_committee_lapses_pending_proposals(system: System) -> None:
    provider, newcomer = actor("provider"), actor("newcomer")
    bond(system, provider.address, 10 * TOKEN)
    proposal = _approved(system, provider.address)
    members = [system.committee[0].address, newcomer.address]
    with boa.reverts("stake: not governance"):
        system.stake.set_committee(members, 1, sender=newcomer.address)
    system.stake.set_committee(members, 1, sender=system.governance.address)
    assert events(system.stake, "CommitteeSet")[0].version == 2
    assert not system.stake.is_member(system.committee[1].address)
    assert system.stake.is_member(newcomer.address)
    boa.env.time_travel(seconds=CHALLENGE_S)
    with boa.reverts("stake: committee changed"):
        system.stake.execute_slash(proposal)
    again = _propose(system, provider.address)  # the lapsed evidence may be brought again
    boa.env.time_travel(seconds=CHALLENGE_S)
    system.stake.execute_slash(again)


@pytest.mark.parametrize(
    ("members", "threshold", "reason"),
    [
        (2, 0, "stake: bad threshold"),
        (2, 3, "stake: bad threshold"),
        (0, 1, "stake: bad threshold"),
    ],
)
def test_committee_shape_is_checked(
    system: System, members: int, threshold: int, reason: str
) -> None:
    addresses = [actor(f"m{i}").address for i in range(members)]
    with boa.reverts(reason):
        system.stake.set_committee(addresses, threshold, sender=system.governance.address)


def test_committee_members_are_distinct(system: System) -> None:
    member = actor("m").address
    with boa.reverts("stake: duplicate member"):
        system.stake.set_committee([member, member], 1, sender=system.governance.address)


def test_proposals_are_checked(system: System) -> None:
    provider, consumer = actor("provider"), actor("consumer")
    seat_committee(system)
    with boa.reverts("stake: unknown kind"):
        _propose(system, provider.address, 9)
    with boa.reverts("stake: refund lengths"):
        _propose(system, provider.address, consumers=[consumer.address], amounts=[])
    with boa.reverts("stake: empty consumer"):
        _propose(system, provider.address, consumers=["0x" + "00" * 20], amounts=[1])
    with boa.reverts("stake: no such proposal"):
        system.stake.approve_slash(7, sender=system.committee[1].address)
    proposal = _propose(system, provider.address, consumers=[consumer.address], amounts=[5])
    assert system.stake.proposal_refunds(proposal) == [
        (consumer.address, actor("gateway").address, 5)
    ]


# --- bounces and wiring --------------------------------------------------------------------


def test_only_the_vault_covers_bounces(system: System) -> None:
    gateway, provider = actor("gateway"), actor("provider")
    bond(system, gateway.address, 10 * TOKEN)
    with boa.reverts("stake: not the vault"):
        system.stake.cover_bounce(gateway.address, provider.address, TOKEN, sender=provider.address)


def test_cover_bounce_takes_bonded_then_unbonding(system: System) -> None:
    gateway, provider = actor("gateway"), actor("provider")
    bond(system, gateway.address, 10 * TOKEN)
    system.stake.unbond(7 * TOKEN, sender=gateway.address)
    paid = system.stake.cover_bounce(
        gateway.address, provider.address, 5 * TOKEN, sender=system.vault.address
    )
    assert paid == 5 * TOKEN
    assert (system.stake.bonded(gateway.address), system.stake.unbonding(gateway.address)) == (
        0,
        5 * TOKEN,
    )
    paid = system.stake.cover_bounce(
        gateway.address, provider.address, 50 * TOKEN, sender=system.vault.address
    )
    assert paid == 5 * TOKEN
    assert system.token.balanceOf(provider.address) == 10 * TOKEN


def test_vault_is_set_once_by_governance(system: System) -> None:
    with boa.reverts("stake: vault already set"):
        system.stake.set_vault(actor("x").address, sender=system.governance.address)
    with boa.reverts("stake: not governance"):
        system.stake.set_vault(actor("x").address, sender=actor("x").address)
