"""PaymentVault: deposits, collected spends, cashed and settled cheques, bounces."""

from __future__ import annotations

import boa
import pytest
from contract_kit import (
    EPOCH_S,
    SIGNER_GRACE_S,
    TOKEN,
    UNLOCK_S,
    Actor,
    System,
    actor,
    bond,
    cheque_digest,
    events,
    fund,
    sign_cheque,
    sign_permit,
    sign_spend,
    spend_digest,
)

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

consumer, gateway, provider = actor("consumer"), actor("gateway"), actor("provider")


def _deposit(
    system: System, amount: int = 100 * TOKEN, cap: int = 0, who: Actor = consumer
) -> None:
    fund(system, who.address, amount, system.vault.address)
    system.vault.deposit(gateway.address, amount, cap, sender=who.address)


def _collect(system: System, cumulative: int, signer: Actor = consumer) -> int:
    signature = sign_spend(signer, system.vault, consumer.address, gateway.address, cumulative)
    return system.vault.collect(consumer.address, gateway.address, cumulative, signature)


def _cash(system: System, cumulative: int, signer: Actor = gateway, to: Actor = provider) -> int:
    signature = sign_cheque(signer, system.vault, gateway.address, to.address, cumulative)
    return system.vault.cash(gateway.address, to.address, cumulative, signature)


def _earn(system: System, amount: int) -> None:
    """Gives the gateway a collected balance of `amount`."""
    _deposit(system, amount)
    _collect(system, system.vault.collected(consumer.address, gateway.address) + amount)


def _now() -> int:
    return boa.env.evm.patch.timestamp


# --- digests and signatures ----------------------------------------------------------------


def test_digests_match_an_independent_encoder(system: System) -> None:
    vault = system.vault
    assert vault.spend_digest(consumer.address, gateway.address, 12345) == spend_digest(
        vault, consumer.address, gateway.address, 12345
    )
    assert vault.cheque_digest(gateway.address, provider.address, 777) == cheque_digest(
        vault, gateway.address, provider.address, 777
    )
    domain = vault.eip712Domain()
    assert (domain[1], domain[2], domain[4]) == ("Tessera", "1", vault.address)


def test_malformed_signatures_are_refused(system: System) -> None:
    _deposit(system)
    good = sign_spend(consumer, system.vault, consumer.address, gateway.address, TOKEN)
    r, s, v = good[:32], int.from_bytes(good[32:64], "big"), good[64]
    high_s = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])  # same signer, high s
    with boa.reverts("ecdsa: invalid signature `s` value"):
        system.vault.collect(consumer.address, gateway.address, TOKEN, high_s)
    for bad_v in (0, 1, 29):
        with boa.reverts("ecdsa: invalid signature"):
            system.vault.collect(
                consumer.address, gateway.address, TOKEN, good[:64] + bytes([bad_v])
            )
    with boa.reverts("vault: signature not 65 bytes"):
        system.vault.collect(consumer.address, gateway.address, TOKEN, good[:64])
    assert _collect(system, TOKEN) == TOKEN


# --- deposits and withdrawals --------------------------------------------------------------


def test_deposit_logs_the_balance_and_cap(system: System) -> None:
    _deposit(system, 10 * TOKEN, cap=TOKEN)
    fund(system, consumer.address, 5 * TOKEN, system.vault.address)
    system.vault.deposit(gateway.address, 5 * TOKEN, 2 * TOKEN, sender=consumer.address)
    (logged,) = events(system.vault, "Deposited")
    assert (
        logged.consumer,
        logged.gateway,
        logged.amount,
        logged.balance,
        logged.custodial_cap,
    ) == (
        consumer.address,
        gateway.address,
        5 * TOKEN,
        15 * TOKEN,
        2 * TOKEN,
    )
    assert system.token.balanceOf(system.vault.address) == 15 * TOKEN
    with boa.reverts("vault: empty gateway"):
        system.vault.deposit("0x" + "00" * 20, 0, 0, sender=consumer.address)


def test_permit_deposit_in_one_transaction(system: System) -> None:
    fund(system, consumer.address, 9 * TOKEN)
    deadline = _now() + 60
    v, r, s = sign_permit(consumer, system.token, system.vault.address, 9 * TOKEN, deadline)
    system.vault.deposit_with_permit(
        gateway.address, 9 * TOKEN, 0, deadline, v, r, s, sender=consumer.address
    )
    assert system.vault.deposits(consumer.address, gateway.address) == 9 * TOKEN
    assert system.token.balanceOf(consumer.address) == 0


def test_permit_deposit_survives_a_front_run_permit(system: System) -> None:
    fund(system, consumer.address, 9 * TOKEN)
    deadline = _now() + 60
    v, r, s = sign_permit(consumer, system.token, system.vault.address, 9 * TOKEN, deadline)
    system.token.permit(consumer.address, system.vault.address, 9 * TOKEN, deadline, v, r, s)
    system.vault.deposit_with_permit(
        gateway.address, 9 * TOKEN, 0, deadline, v, r, s, sender=consumer.address
    )
    assert system.vault.deposits(consumer.address, gateway.address) == 9 * TOKEN


def test_permit_deposit_without_a_valid_permit_fails(system: System) -> None:
    fund(system, consumer.address, 9 * TOKEN)
    deadline = _now() + 60
    v, r, s = sign_permit(provider, system.token, system.vault.address, 9 * TOKEN, deadline)
    with boa.reverts():
        system.vault.deposit_with_permit(
            gateway.address, 9 * TOKEN, 0, deadline, v, r, s, sender=consumer.address
        )


def test_withdraw_before_unlock_is_refused(system: System) -> None:
    _deposit(system, 10 * TOKEN)
    with boa.reverts("vault: no withdrawal requested"):
        system.vault.withdraw(gateway.address, sender=consumer.address)
    system.vault.request_withdraw(gateway.address, sender=consumer.address)
    assert events(system.vault, "WithdrawRequested")[0].unlock_at == _now() + UNLOCK_S
    boa.env.time_travel(seconds=UNLOCK_S - 1)
    with boa.reverts("vault: still locked"):
        system.vault.withdraw(gateway.address, sender=consumer.address)
    boa.env.time_travel(seconds=1)
    system.vault.withdraw(gateway.address, sender=consumer.address)
    assert events(system.vault, "Withdrawn")[0].amount == 10 * TOKEN
    assert system.token.balanceOf(consumer.address) == 10 * TOKEN
    with boa.reverts("vault: nothing to withdraw"):
        system.vault.withdraw(gateway.address, sender=consumer.address)


def test_a_deposit_cancels_a_pending_withdrawal(system: System) -> None:
    _deposit(system, 10 * TOKEN)
    system.vault.request_withdraw(gateway.address, sender=consumer.address)
    _deposit(system, TOKEN)
    boa.env.time_travel(seconds=UNLOCK_S)
    with boa.reverts("vault: no withdrawal requested"):
        system.vault.withdraw(gateway.address, sender=consumer.address)
    assert _collect(system, 2 * TOKEN) == 2 * TOKEN


def test_deposits_are_per_gateway(system: System) -> None:
    other = actor("other-gateway")
    _deposit(system, 10 * TOKEN)
    fund(system, consumer.address, 5 * TOKEN, system.vault.address)
    system.vault.deposit(other.address, 5 * TOKEN, 0, sender=consumer.address)
    assert _collect(system, 50 * TOKEN) == 10 * TOKEN
    assert system.vault.deposits(consumer.address, other.address) == 5 * TOKEN


# --- collect -------------------------------------------------------------------------------


def test_collect_moves_the_signed_cumulative_once(system: System) -> None:
    _deposit(system, 10 * TOKEN)
    assert _collect(system, 3 * TOKEN) == 3 * TOKEN
    (logged,) = events(system.vault, "Collected")
    assert (logged.amount, logged.collected) == (3 * TOKEN, 3 * TOKEN)
    assert _collect(system, 3 * TOKEN) == 0  # replayed: pays nothing
    assert _collect(system, 2 * TOKEN) == 0  # stale: pays nothing
    assert _collect(system, 5 * TOKEN) == 2 * TOKEN
    assert system.vault.gateway_balance(gateway.address) == 5 * TOKEN
    assert system.vault.deposits(consumer.address, gateway.address) == 5 * TOKEN


def test_collect_beyond_the_deposit_takes_the_rest_later(system: System) -> None:
    _deposit(system, 4 * TOKEN)
    assert _collect(system, 10 * TOKEN) == 4 * TOKEN
    _deposit(system, 20 * TOKEN)
    assert _collect(system, 10 * TOKEN) == 6 * TOKEN
    assert system.vault.collected(consumer.address, gateway.address) == 10 * TOKEN


def test_anyone_may_submit_a_spend(system: System) -> None:
    _deposit(system, 4 * TOKEN)
    signature = sign_spend(consumer, system.vault, consumer.address, gateway.address, TOKEN)
    system.vault.collect(
        consumer.address, gateway.address, TOKEN, signature, sender=actor("relayer").address
    )
    assert system.vault.gateway_balance(gateway.address) == TOKEN


def test_a_forged_spend_is_refused(system: System) -> None:
    _deposit(system, 10 * TOKEN, cap=10 * TOKEN)
    with boa.reverts("vault: bad spend signer"):
        _collect(system, TOKEN, signer=actor("mallory"))
    # A spend signed for another gateway does not verify for this one.
    other = sign_spend(consumer, system.vault, consumer.address, provider.address, TOKEN)
    with boa.reverts("vault: bad spend signer"):
        system.vault.collect(consumer.address, gateway.address, TOKEN, other)


def test_custodial_spend_above_the_cap_collects_only_the_cap(system: System) -> None:
    _deposit(system, 100 * TOKEN, cap=5 * TOKEN)
    boa.env.time_travel(seconds=EPOCH_S - _now() % EPOCH_S)  # the start of an epoch
    assert _collect(system, 8 * TOKEN, signer=gateway) == 5 * TOKEN
    assert system.vault.custodial_left(consumer.address, gateway.address) == 0
    assert _collect(system, 8 * TOKEN, signer=gateway) == 0
    # The consumer's own signature is not capped.
    assert _collect(system, 20 * TOKEN) == 15 * TOKEN
    boa.env.time_travel(seconds=EPOCH_S)
    assert system.vault.custodial_left(consumer.address, gateway.address) == 5 * TOKEN
    assert _collect(system, 23 * TOKEN, signer=gateway) == 3 * TOKEN
    assert _collect(system, 30 * TOKEN, signer=gateway) == 2 * TOKEN


def test_custodial_cap_zero_means_own_signatures_only(system: System) -> None:
    _deposit(system, 10 * TOKEN)
    assert _collect(system, TOKEN, signer=gateway) == 0
    system.vault.set_custodial_cap(gateway.address, TOKEN, sender=consumer.address)
    assert events(system.vault, "CustodialCapSet")[0].cap == TOKEN
    assert _collect(system, TOKEN, signer=gateway) == TOKEN


def test_custodial_spends_follow_signer_rotation(system: System) -> None:
    hot1, hot2 = actor("hot1"), actor("hot2")
    _deposit(system, 10 * TOKEN, cap=10 * TOKEN)
    system.registry.set_gateway_signer(hot1.address, sender=gateway.address)
    assert _collect(system, TOKEN, signer=hot1) == TOKEN
    system.registry.set_gateway_signer(hot2.address, sender=gateway.address)
    assert _collect(system, 2 * TOKEN, signer=hot1) == TOKEN  # in its grace
    boa.env.time_travel(seconds=SIGNER_GRACE_S)
    with boa.reverts("vault: bad spend signer"):
        _collect(system, 3 * TOKEN, signer=hot1)
    assert _collect(system, 3 * TOKEN, signer=hot2) == TOKEN


def test_collect_works_during_the_unlock_but_not_after(system: System) -> None:
    _deposit(system, 10 * TOKEN)
    system.vault.request_withdraw(gateway.address, sender=consumer.address)
    boa.env.time_travel(seconds=UNLOCK_S - 1)
    assert _collect(system, TOKEN) == TOKEN
    boa.env.time_travel(seconds=1)
    with boa.reverts("vault: withdrawal unlocked"):
        _collect(system, 2 * TOKEN)
    system.vault.withdraw(gateway.address, sender=consumer.address)
    with boa.reverts("vault: withdrawal unlocked"):
        _collect(system, 2 * TOKEN)
    assert system.token.balanceOf(consumer.address) == 9 * TOKEN


# --- cash ----------------------------------------------------------------------------------


def test_cash_pays_the_cheque_once(system: System) -> None:
    _earn(system, 10 * TOKEN)
    assert _cash(system, 4 * TOKEN) == 4 * TOKEN
    (logged,) = events(system.vault, "Paid")
    assert (logged.gateway, logged.provider, logged.amount, logged.paid) == (
        gateway.address,
        provider.address,
        4 * TOKEN,
        4 * TOKEN,
    )
    assert _cash(system, 4 * TOKEN) == 0  # replayed
    assert _cash(system, 3 * TOKEN) == 0  # stale
    assert _cash(system, 6 * TOKEN) == 2 * TOKEN
    assert system.token.balanceOf(provider.address) == 6 * TOKEN
    assert system.vault.gateway_balance(gateway.address) == 4 * TOKEN


def test_a_forged_cheque_is_refused(system: System) -> None:
    _earn(system, 10 * TOKEN)
    with boa.reverts("vault: bad cheque signer"):
        _cash(system, TOKEN, signer=provider)
    # A cheque for one provider cannot be cashed by another.
    signature = sign_cheque(gateway, system.vault, gateway.address, provider.address, TOKEN)
    with boa.reverts("vault: bad cheque signer"):
        system.vault.cash(gateway.address, actor("thief").address, TOKEN, signature)


def test_a_cheque_above_the_balance_is_paid_from_the_bond(system: System) -> None:
    _earn(system, 3 * TOKEN)
    bond(system, gateway.address, 5 * TOKEN)
    assert _cash(system, 7 * TOKEN) == 7 * TOKEN
    (bounced,) = events(system.vault, "ChequeBounced")
    assert (bounced.gateway, bounced.provider, bounced.shortfall, bounced.covered) == (
        gateway.address,
        provider.address,
        4 * TOKEN,
        4 * TOKEN,
    )
    assert events(system.vault, "BounceCovered")[0].amount == 4 * TOKEN
    assert system.token.balanceOf(provider.address) == 7 * TOKEN
    assert system.vault.gateway_balance(gateway.address) == 0
    assert system.stake.bonded(gateway.address) == TOKEN


def test_a_bounce_beyond_the_bond_stays_cashable(system: System) -> None:
    _earn(system, 3 * TOKEN)
    bond(system, gateway.address, 2 * TOKEN)
    assert _cash(system, 10 * TOKEN) == 5 * TOKEN
    assert events(system.vault, "ChequeBounced")[0].covered == 2 * TOKEN
    assert system.vault.paid(gateway.address, provider.address) == 5 * TOKEN
    assert _cash(system, 10 * TOKEN) == 0
    _earn(system, 10 * TOKEN)
    assert _cash(system, 10 * TOKEN) == 5 * TOKEN
    assert system.vault.gateway_balance(gateway.address) == 5 * TOKEN


def test_cheques_follow_signer_rotation(system: System) -> None:
    hot = actor("hot")
    _earn(system, 10 * TOKEN)
    system.registry.set_gateway_signer(hot.address, sender=gateway.address)
    assert _cash(system, TOKEN) == TOKEN  # the gateway's own key, in its grace
    assert _cash(system, 2 * TOKEN, signer=hot) == TOKEN
    boa.env.time_travel(seconds=SIGNER_GRACE_S)
    with boa.reverts("vault: bad cheque signer"):
        _cash(system, 3 * TOKEN)


# --- settle and post_epoch -----------------------------------------------------------------


def test_settle_pushes_what_is_owed_and_skips_the_rest(system: System) -> None:
    p1, p2, p3, p4 = (actor(f"p{i}") for i in range(4))
    _earn(system, 10 * TOKEN)
    _cash(system, 2 * TOKEN, to=p2)
    system.vault.settle(
        1,
        [p1.address, p2.address, p3.address, p4.address],
        [3 * TOKEN, 2 * TOKEN, 20 * TOKEN, 5 * TOKEN],
        sender=gateway.address,
    )
    paid = events(system.vault, "Paid")
    assert [(e.provider, e.amount) for e in paid] == [
        (p1.address, 3 * TOKEN),
        (p4.address, 5 * TOKEN),
    ]
    (settled,) = events(system.vault, "Settled")
    assert (settled.epoch, settled.count, settled.total) == (1, 2, 8 * TOKEN)
    assert system.vault.gateway_balance(gateway.address) == 0
    assert system.vault.paid(gateway.address, p3.address) == 0
    assert system.vault.last_settled_epoch(gateway.address) == 1


def test_settle_epochs_must_increase(system: System) -> None:
    _earn(system, 10 * TOKEN)
    system.vault.settle(5, [provider.address], [TOKEN], sender=gateway.address)
    for stale in (5, 4):
        with boa.reverts("vault: epoch already settled"):
            system.vault.settle(stale, [provider.address], [2 * TOKEN], sender=gateway.address)
    with boa.reverts("vault: length mismatch"):
        system.vault.settle(6, [provider.address], [], sender=gateway.address)


def test_a_signer_settles_for_its_gateway(system: System) -> None:
    hot, stranger = actor("hot"), actor("stranger")
    _earn(system, 10 * TOKEN)
    system.registry.set_gateway_signer(hot.address, sender=gateway.address)
    system.vault.settle(1, [provider.address], [TOKEN], sender=hot.address)
    assert events(system.vault, "Settled")[0].gateway == gateway.address
    system.vault.settle(2, [provider.address], [2 * TOKEN], sender=gateway.address)
    # Anyone else settles only its own (empty) balance.
    system.vault.settle(1, [provider.address], [9 * TOKEN], sender=stranger.address)
    assert system.vault.paid(gateway.address, provider.address) == 2 * TOKEN


def test_post_epoch_commits_a_root_once(system: System) -> None:
    root = b"\x07" * 32
    system.vault.post_epoch(3, root, 10, 8, sender=gateway.address)
    (logged,) = events(system.vault, "EpochPosted")
    assert (logged.gateway, logged.epoch, logged.ledger_root, logged.spent, logged.paid) == (
        gateway.address,
        3,
        root,
        10,
        8,
    )
    system.vault.post_epoch(3, root, 10, 8, sender=gateway.address)  # re-sent
    with boa.reverts("vault: epoch root differs"):
        system.vault.post_epoch(3, b"\x08" * 32, 10, 8, sender=gateway.address)
    assert system.vault.epoch_root(gateway.address, 3) == root


# --- gateway balance, refunds and insurance ------------------------------------------------


def test_gateway_withdraws_its_earnings(system: System) -> None:
    cold = actor("cold")
    _earn(system, 10 * TOKEN)
    with boa.reverts("vault: balance too low"):
        system.vault.gateway_withdraw(11 * TOKEN, cold.address, sender=gateway.address)
    system.vault.gateway_withdraw(4 * TOKEN, cold.address, sender=gateway.address)
    assert events(system.vault, "GatewayWithdrawn")[0].balance == 6 * TOKEN
    assert system.token.balanceOf(cold.address) == 4 * TOKEN


@pytest.mark.parametrize("call", ["credit_refund", "add_insurance"])
def test_only_the_stake_manager_credits(system: System, call: str) -> None:
    args = (consumer.address, gateway.address, 1) if call == "credit_refund" else (1,)
    with boa.reverts("vault: not the stake manager"):
        getattr(system.vault, call)(*args, sender=consumer.address)


def test_governance_pays_insurance_claims(system: System) -> None:
    fund(system, system.stake.address, 5 * TOKEN)
    system.vault.add_insurance(5 * TOKEN, sender=system.stake.address)
    system.token.transfer(system.vault.address, 5 * TOKEN, sender=system.stake.address)
    with boa.reverts("vault: not governance"):
        system.vault.pay_insurance(consumer.address, TOKEN, sender=consumer.address)
    with boa.reverts("vault: pool too low"):
        system.vault.pay_insurance(consumer.address, 6 * TOKEN, sender=system.governance.address)
    system.vault.pay_insurance(consumer.address, 2 * TOKEN, sender=system.governance.address)
    assert system.vault.insurance_pool() == 3 * TOKEN
    assert system.token.balanceOf(consumer.address) == 2 * TOKEN


def test_a_refund_after_a_withdrawal_is_withdrawable_at_once(system: System) -> None:
    _deposit(system, 10 * TOKEN)
    system.vault.request_withdraw(gateway.address, sender=consumer.address)
    boa.env.time_travel(seconds=UNLOCK_S)
    system.vault.withdraw(gateway.address, sender=consumer.address)
    fund(system, system.vault.address, 3 * TOKEN)
    system.vault.credit_refund(
        consumer.address, gateway.address, 3 * TOKEN, sender=system.stake.address
    )
    with boa.reverts("vault: withdrawal unlocked"):
        _collect(system, 3 * TOKEN)
    system.vault.withdraw(gateway.address, sender=consumer.address)
    assert system.token.balanceOf(consumer.address) == 13 * TOKEN
