"""Wallet: what one key does on chain: deposit by permit in one transaction, cap, withdraw
after the unlock, bind an Ed25519 provider key, bond and unbond, dev funding."""

from __future__ import annotations

import dataclasses

import pytest
from nacl.signing import SigningKey

from tessera.chain.anvil import DEV_ADDRESS
from tessera.chain.errors import TransactionReverted
from tessera.chain.keys import EthKey
from tessera.chain.wallet import Wallet, fund_eth, mint
from tessera.errors import InvalidRequest
from tessera.ledger.accounts import TOKEN

from support.chain import Chain

pytestmark = pytest.mark.integration


def test_deposit_with_permit_is_one_transaction(chain: Chain) -> None:
    gateway = EthKey.generate().address
    key = chain.funded_key(tokens=5 * TOKEN)
    with Wallet(chain.client, key) as wallet:
        nonce = wallet.sender.next_nonce
        receipt = wallet.deposit(gateway, 3 * TOKEN, custodial_cap=TOKEN)
        assert wallet.sender.next_nonce == nonce + 1
        assert receipt["to"] == chain.client.vault.address
        assert chain.client.permit_nonce(key.address) == 1
        # No cap given: the current one is kept.
        wallet.deposit(gateway, TOKEN)
        balance = wallet.balance(gateway)
    assert (balance.tokens, balance.deposit, balance.custodial_cap) == (TOKEN, 4 * TOKEN, TOKEN)
    assert balance.custodial_left == TOKEN
    assert chain.client.allowance(key.address, chain.client.vault.address) == 0


def test_deposit_falls_back_to_approve_and_a_shortfall_is_named(chain: Chain) -> None:
    gateway = EthKey.generate().address
    key = chain.funded_key(tokens=2 * TOKEN)
    with Wallet(chain.client, key) as wallet:
        wallet.deposit(gateway, TOKEN, use_permit=False)
        assert chain.client.permit_nonce(key.address) == 0
        with pytest.raises(InvalidRequest, match="holds 1 tokens, too few to deposit 5"):
            wallet.deposit(gateway, 5 * TOKEN)
        with pytest.raises(InvalidRequest, match="0x0"):
            wallet.deposit("0x" + "0" * 40, TOKEN)
    assert chain.client.deposits(key.address, gateway) == TOKEN


def test_withdraw_only_after_the_unlock(chain: Chain) -> None:
    gateway = EthKey.generate().address
    key = chain.funded_key(tokens=2 * TOKEN)
    with Wallet(chain.client, key) as wallet:
        with pytest.raises(InvalidRequest, match="nothing deposited"):
            wallet.request_withdraw(gateway)
        wallet.deposit(gateway, 2 * TOKEN, custodial_cap=0)
        wallet.set_custodial_cap(gateway, TOKEN // 2)
        assert chain.client.custodial_cap(key.address, gateway) == TOKEN // 2
        with pytest.raises(InvalidRequest, match="no withdrawal requested"):
            wallet.withdraw(gateway)
        wallet.request_withdraw(gateway)
        with pytest.raises(InvalidRequest, match="unlocks in"):
            wallet.withdraw(gateway)
        chain.wait_out(chain.params.unlock_period_s)
        wallet.withdraw(gateway)
        assert wallet.balance(gateway).deposit == 0
    assert chain.client.token_balance(key.address) == 2 * TOKEN


def test_bind_a_provider_key_and_refuse_a_wrong_signature(chain: Chain) -> None:
    provider_key = SigningKey.generate()
    key = chain.funded_key()
    with Wallet(chain.client, key) as wallet:
        binding = wallet.binding(provider_key)
        assert binding.nonce == 1
        wallet.bind(binding)
        stored = chain.client.bindings(key.address)
        assert stored == binding
        assert chain.client.verify_binding(stored, bytes(provider_key.verify_key))

        # Signed by another Ed25519 key than the one it names: refused before any gas.
        impostor = SigningKey.generate()
        wrong = dataclasses.replace(
            wallet.binding(provider_key), signature=wallet.binding(impostor).signature
        )
        nonce = wallet.sender.next_nonce
        with pytest.raises(InvalidRequest, match="does not verify"):
            wallet.bind(wrong)
        assert wallet.sender.next_nonce == nonce
        # The Registry itself stores whatever its account sends (the EVM has no Ed25519);
        # every reader then refuses the binding.
        wallet.sender.transact(
            chain.client.registry.functions.bind(
                wrong.key, wrong.valid_until, wrong.nonce, wrong.signature
            )
        )
        assert not chain.client.verify_binding(
            chain.client.bindings(key.address), bytes(provider_key.verify_key)
        )
        with pytest.raises(InvalidRequest, match="not above the current one"):
            wallet.bind(binding)
        other = Wallet(chain.client, chain.funded_key())
        with pytest.raises(InvalidRequest, match="is for"):
            other.bind(wallet.binding(provider_key))
        other.close()
        # An expired binding is refused by the Registry with its reason.
        stale = wallet.binding(provider_key, valid_for_s=-10)
        with pytest.raises(TransactionReverted, match="registry: binding expired"):
            wallet.bind(stale)


def test_bond_unbond_and_withdraw_after_the_unbonding_period(chain: Chain) -> None:
    key = chain.funded_key(tokens=10 * TOKEN)
    with Wallet(chain.client, key) as wallet:
        wallet.bond(10 * TOKEN)
        with pytest.raises(InvalidRequest, match="cannot unbond 11"):
            wallet.unbond(11 * TOKEN)
        with pytest.raises(InvalidRequest, match="nothing is unbonding"):
            wallet.withdraw_stake()
        wallet.unbond(4 * TOKEN)
        balance = wallet.balance()
        assert (balance.bonded, balance.unbonding) == (6 * TOKEN, 4 * TOKEN)
        assert chain.client.slashable(key.address) == 10 * TOKEN
        with pytest.raises(InvalidRequest, match="unlocks in"):
            wallet.withdraw_stake()
        chain.wait_out(chain.params.unbonding_period_s)
        wallet.withdraw_stake()
        balance = wallet.balance()
    assert (balance.tokens, balance.bonded, balance.unbonding) == (4 * TOKEN, 6 * TOKEN, 0)


def test_cash_sends_nothing_when_the_cheque_adds_nothing(chain: Chain) -> None:
    gateway = chain.funded_key(tokens=3 * TOKEN)
    provider = chain.funded_key()
    client = chain.client
    with Wallet(client, gateway) as gw:
        gw.bond(3 * TOKEN)  # an uncovered cheque is paid from the gateway's bond
    cheque = client.sign_cheque(gateway.private_key, gateway.address, provider.address, TOKEN)
    with Wallet(client, provider) as wallet:
        receipt = wallet.cash(cheque)
        assert receipt is not None
        assert [e.name for e in client.decode_receipt(receipt)][-2:] == ["ChequeBounced", "Paid"]
        nonce = wallet.sender.next_nonce
        assert wallet.cash(cheque) is None
        assert wallet.sender.next_nonce == nonce
    assert client.token_balance(provider.address) == TOKEN
    assert client.bonded(gateway.address) == 2 * TOKEN


def test_dev_helpers_fund_and_mint_with_the_dev_key(chain: Chain) -> None:
    to = EthKey.generate().address
    fund_eth(chain.client, to, 10**18)
    mint(chain.client, to, 7 * TOKEN)
    assert chain.client.eth_balance(to) == 10**18
    assert chain.client.token_balance(to) == 7 * TOKEN
    assert chain.deployment.deployer == DEV_ADDRESS
