"""ChainClient against a real node: typed reads, decoded events, collect and cash with
signed cumulative messages, and the contract's refusals surfaced with their reasons."""

from __future__ import annotations

import dataclasses

import pytest

from tessera.chain.client import MAX_SETTLE, ChainClient, Spend
from tessera.chain.errors import TransactionReverted
from tessera.chain.keys import EthKey
from tessera.errors import ConfigError, InvalidRequest
from tessera.ledger.accounts import TOKEN

from support.chain import Chain

pytestmark = pytest.mark.integration


def depositor(chain: Chain, gateway: str, amount: int, cap: int = 0) -> EthKey:
    """A consumer with ``amount`` deposited at ``gateway``."""
    key = chain.funded_key(tokens=amount)
    client, sender = chain.client, chain.sender(key)
    try:
        sender.transact(client.token.functions.approve(client.vault.address, amount))
        sender.transact(client.vault.functions.deposit(gateway, amount, cap))
    finally:
        sender.close()
    return key


def test_reads_name_the_deployment(chain: Chain) -> None:
    client = chain.client
    assert client.chain_id == 31337
    assert client.token.functions.decimals().call() == 9
    assert client.is_minter(chain.deployment.deployer)
    assert client.current_epoch() == client.block_timestamp() // chain.params.epoch_length_s
    latest, latest_hash = client.block("latest")
    finalized, _ = client.block("finalized")
    assert finalized <= latest and latest_hash.startswith("0x") and len(latest_hash) == 66
    assert client.block(latest)[1] == latest_hash
    nobody = EthKey.generate().address
    assert client.bindings(nobody) is None
    assert client.gateway_of(nobody) is None
    assert client.current_signer(nobody) == nobody
    assert client.epoch_root(nobody, 1) == bytes(32)
    with pytest.raises(InvalidRequest, match="not an Ethereum address"):
        client.token_balance("0x1234")
    with pytest.raises(InvalidRequest, match="unknown block tag"):
        client.block("newest")


def test_a_deployment_for_another_chain_is_refused(chain: Chain) -> None:
    other = type(chain.deployment)(
        chain_id=1,
        contracts=chain.deployment.contracts,
        deployer=chain.deployment.deployer,
    )
    with pytest.raises(ConfigError, match="chain 31337 but the deployment is for chain 1"):
        ChainClient(chain.url, other)


def test_events_are_decoded_sorted_and_keyed_the_same_on_every_read(chain: Chain) -> None:
    gateway = EthKey.generate().address
    start = chain.client.block()[0] + 1
    consumer = depositor(chain, gateway, 5 * TOKEN, cap=TOKEN)
    end = chain.client.block()[0]

    events = chain.client.events(start, end)
    names = [(e.contract, e.name) for e in events]
    assert names == [
        ("token", "Transfer"),  # the mint
        ("token", "Approval"),
        ("token", "Approval"),  # transferFrom spends the allowance
        ("token", "Transfer"),
        ("vault", "Deposited"),
    ]
    deposited = events[-1]
    assert deposited.args == {
        "consumer": consumer.address,
        "gateway": gateway,
        "amount": 5 * TOKEN,
        "balance": 5 * TOKEN,
        "custodial_cap": TOKEN,
    }
    assert [(e.block_number, e.log_index) for e in events] == sorted(
        (e.block_number, e.log_index) for e in events
    )
    # Read again, in one-block chunks: the same events under the same keys.
    again = chain.client.events(start, end, chunk_blocks=1)
    assert [e.key for e in again] == [e.key for e in events]
    assert len({e.key for e in events}) == len(events)
    assert chain.client.events(end + 1, end) == []


def test_decode_receipt_gives_the_receipts_events_in_log_order(chain: Chain) -> None:
    key = chain.funded_key(tokens=2 * TOKEN)
    client, sender = chain.client, chain.sender(key)
    try:
        sender.transact(client.token.functions.approve(client.stake.address, 2 * TOKEN))
        receipt = sender.transact(client.stake.functions.bond(2 * TOKEN))
    finally:
        sender.close()
    events = chain.client.decode_receipt(receipt)
    assert [e.name for e in events] == ["Approval", "Transfer", "Bonded"]
    assert events[-1].args == {"account": key.address, "amount": 2 * TOKEN, "bonded": 2 * TOKEN}
    assert {e.tx_hash for e in events} == {receipt["transactionHash"].to_0x_hex()}


def test_collect_a_signed_spend_and_replay_pays_nothing(chain: Chain) -> None:
    gateway = chain.funded_key()
    consumer = depositor(chain, gateway.address, 10 * TOKEN)
    client = chain.client
    spend = client.sign_spend(consumer.private_key, consumer.address, gateway.address, 3 * TOKEN)
    sender = chain.sender(gateway)
    try:
        receipt = client.collect(sender, spend)
        (collected,) = [e for e in client.decode_receipt(receipt) if e.name == "Collected"]
        assert collected.args["amount"] == 3 * TOKEN
        # The same spend again: accepted and pays 0 (cumulative amounts).
        replay = client.collect(sender, spend)
        (again,) = client.decode_receipt(replay)
        assert again.args == {**collected.args, "amount": 0}
    finally:
        sender.close()
    assert client.collected(consumer.address, gateway.address) == 3 * TOKEN
    assert client.deposits(consumer.address, gateway.address) == 7 * TOKEN
    assert client.gateway_balance(gateway.address) == 3 * TOKEN


def test_a_forged_spend_is_refused_with_the_vaults_reason(chain: Chain) -> None:
    gateway = chain.funded_key()
    consumer = depositor(chain, gateway.address, 10 * TOKEN)
    thief = EthKey.generate()
    forged = chain.client.sign_spend(thief.private_key, consumer.address, gateway.address, TOKEN)
    bad_length = Spend(consumer.address, gateway.address, TOKEN, b"\x01" * 64)
    sender = chain.sender(gateway)
    try:
        nonce = sender.next_nonce
        with pytest.raises(TransactionReverted, match="vault: bad spend signer") as refused:
            chain.client.collect(sender, forged)
        assert refused.value.reason == "vault: bad spend signer"
        with pytest.raises(TransactionReverted, match="vault: signature not 65 bytes"):
            chain.client.collect(sender, bad_length)
        assert sender.next_nonce == nonce  # a refusal uses no nonce
    finally:
        sender.close()
    assert chain.client.deposits(consumer.address, gateway.address) == 10 * TOKEN


def test_collect_many_in_chunks_with_custodial_signatures(chain: Chain) -> None:
    gateway = chain.funded_key()
    consumers = [depositor(chain, gateway.address, 2 * TOKEN, cap=TOKEN) for _ in range(5)]
    client = chain.client
    # The gateway's own key signs for custodial consumers, within their cap per epoch.
    spends = [
        client.sign_spend(gateway.private_key, c.address, gateway.address, 3 * TOKEN // 2)
        for c in consumers
    ]
    sender = chain.sender(gateway)
    try:
        receipts = client.collect_many(sender, spends, max_in_flight=2)
    finally:
        sender.close()
    assert len(receipts) == 5
    amounts = [
        e.args["amount"]
        for r in receipts
        for e in client.decode_receipt(r)
        if e.name == "Collected"
    ]
    assert amounts == [TOKEN] * 5  # the cap, not the 1.5 signed
    assert client.gateway_balance(gateway.address) == 5 * TOKEN


def test_cheque_cashes_once_and_a_replay_pays_nothing(chain: Chain) -> None:
    gateway = chain.funded_key()
    depositor(chain, gateway.address, 4 * TOKEN)
    consumer = depositor(chain, gateway.address, 4 * TOKEN)
    client = chain.client
    sender = chain.sender(gateway)
    try:
        client.collect(
            sender,
            client.sign_spend(consumer.private_key, consumer.address, gateway.address, 4 * TOKEN),
        )
    finally:
        sender.close()
    provider = chain.funded_key()
    cheque = client.sign_cheque(gateway.private_key, gateway.address, provider.address, 3 * TOKEN)
    assert cheque.signer() == gateway.address
    submitter = chain.sender(chain.funded_key())  # anyone may submit a cheque
    try:
        client.cash(submitter, cheque)
        assert client.token_balance(provider.address) == 3 * TOKEN
        replay = client.cash(submitter, cheque)
        # A cheque signed by anyone but the gateway's signer is refused with the reason.
        forged = client.sign_cheque(
            provider.private_key, gateway.address, provider.address, 4 * TOKEN
        )
        with pytest.raises(TransactionReverted, match="vault: bad cheque signer"):
            client.cash(submitter, forged)
        elsewhere = client.sign_cheque(gateway.private_key, gateway.address, provider.address, 1)
        with pytest.raises(InvalidRequest, match="not this deployment's vault"):
            client.cash(submitter, dataclasses.replace(elsewhere, chain_id=1))
    finally:
        submitter.close()
    (paid,) = client.decode_receipt(replay)
    assert (paid.name, paid.args["amount"], paid.args["paid"]) == ("Paid", 0, 3 * TOKEN)
    assert client.token_balance(provider.address) == 3 * TOKEN
    assert client.gateway_balance(gateway.address) == TOKEN


def test_settle_post_epoch_signer_and_gateway_withdraw(chain: Chain) -> None:
    gateway, hot = chain.funded_key(), chain.funded_key()
    consumer = depositor(chain, gateway.address, 6 * TOKEN)
    client = chain.client
    providers = [EthKey.generate().address for _ in range(3)]
    owner = chain.sender(gateway)
    signer = chain.sender(hot)
    try:
        spend = client.sign_spend(
            consumer.private_key, consumer.address, gateway.address, 6 * TOKEN
        )
        client.collect(owner, spend)
        client.set_gateway_signer(owner, hot.address)
        assert client.current_signer(gateway.address) == hot.address
        assert client.gateway_of(hot.address) == gateway.address
        epoch = client.current_epoch()
        # The hot key acts for its gateway; an entry the balance cannot cover is skipped.
        payments = [(providers[0], TOKEN), (providers[1], 2 * TOKEN), (providers[2], 9 * TOKEN)]
        receipt = client.settle(signer, epoch, payments)
        (settled,) = [e for e in client.decode_receipt(receipt) if e.name == "Settled"]
        assert settled.args == {
            "gateway": gateway.address,
            "epoch": epoch,
            "count": 2,
            "total": 3 * TOKEN,
        }
        with pytest.raises(TransactionReverted, match="epoch already settled"):
            client.settle(signer, epoch, [(providers[2], TOKEN)])
        with pytest.raises(InvalidRequest, match=f"at most {MAX_SETTLE}"):
            client.settle(signer, epoch + 1, [(providers[0], 1)] * (MAX_SETTLE + 1))
        root = bytes(range(32))
        client.post_epoch(signer, epoch, root, 6 * TOKEN, 3 * TOKEN)
        client.post_epoch(signer, epoch, root, 6 * TOKEN, 3 * TOKEN)  # a re-send is harmless
        assert client.epoch_root(gateway.address, epoch) == root
        with pytest.raises(TransactionReverted, match="epoch root differs"):
            client.post_epoch(signer, epoch, bytes(32 * [7]), 0, 0)
        with pytest.raises(InvalidRequest, match="32 bytes"):
            client.post_epoch(signer, epoch, b"short", 0, 0)
        to = EthKey.generate().address
        client.gateway_withdraw(owner, TOKEN, to)
        assert client.token_balance(to) == TOKEN
        assert client.gateway_balance(gateway.address) == 2 * TOKEN
        with pytest.raises(TransactionReverted, match="balance too low"):
            client.gateway_withdraw(owner, 3 * TOKEN, to)
    finally:
        owner.close()
        signer.close()
    assert [client.token_balance(p) for p in providers] == [TOKEN, 2 * TOKEN, 0]
