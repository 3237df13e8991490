"""A gateway that settles on a real chain (anvil): deposits in the vault become balances,
what consumers spend is collected from their deposits, a withdrawal freezes and empties
the balance, and the journal matches the vault to the unit throughout."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from eth_account import Account
from eth_account.messages import encode_defunct
from nacl.signing import SigningKey
from typer.testing import CliRunner

from tessera.chain.anvil import AnvilNode, rpc, start_anvil
from tessera.chain.client import ChainClient
from tessera.chain.deploy import DeployParams, deploy_to, dev_key_for
from tessera.chain.deployment import Deployment
from tessera.chain.errors import TransactionReverted
from tessera.chain.keys import EthKey, write_key_file
from tessera.chain.sender import TxSender
from tessera.chain.typed_data import SignedCheque, sign_binding, sign_cheque
from tessera.ledger import chain_book
from tessera.ledger.accounts import FEES, TOKEN, cheques_of, earnings_of
from tessera.ledger.book import Book, BookPolicy
from tessera.ledger.slashing_table import chain_kind
from tessera.money_cli import ledger_app
from tessera.protocol.signing import public_key_hex
from tessera.store.chain import ChainStore, Cursor, SlashClaim
from tessera.store.engine import create_engine, database_url_for
from tessera.store.ledger import LedgerStore

from support.audit_peers import CLOSED, catalog_file, join, join_validators, stop, wait_status
from support.scripted_peers import (
    LiveGateway,
    account,
    answer,
    chat_body,
    journal_problems,
    live_gateway,
    poll,
    priced,
)

pytestmark = pytest.mark.integration

REAL = 3 * 1_000 + 1 * 2_000  # what answer() costs at PRICE: 3 prompt + 1 completion tokens
DEPOSIT = 50 * TOKEN


@dataclass
class Chain:
    node: AnvilNode
    deployment: Deployment
    deployment_file: Path
    client: ChainClient
    minter: TxSender

    def funded_key(self, tokens: int = 0) -> EthKey:
        """A new key with gas, and ``tokens`` base units minted to it."""
        key = EthKey.generate()
        rpc(self.node.url, "anvil_setBalance", [key.address, hex(10**20)])
        if tokens:
            self.minter.transact(self.client.token.functions.mint(key.address, tokens))
        return key

    def sender(self, key: EthKey) -> TxSender:
        return TxSender(self.client.w3, key)

    def mine(self, blocks: int = 1) -> None:
        rpc(self.node.url, "anvil_mine", [hex(blocks)])

    def wait_out(self, seconds: int) -> None:
        rpc(self.node.url, "evm_increaseTime", [seconds])
        self.mine()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    node = start_anvil()
    try:
        deployment = deploy_to(node.url, params=DeployParams.for_tests())
        path = tmp_path_factory.mktemp("chain") / "deployment.json"
        deployment.save(path)
        client = ChainClient(node.url, deployment)
        minter = TxSender(client.w3, dev_key_for(client.w3))
        yield Chain(node, deployment, path, client, minter)
        minter.close()
    finally:
        node.stop()


def chain_options(gateway_dir: Path, chain: Chain, key: EthKey) -> dict[str, Any]:
    """live_gateway options for a gateway settling on ``chain`` with ``key``."""
    key_file = gateway_dir / "gateway-eth.key"
    if not key_file.exists():
        write_key_file(key_file, key)
    return {
        "funds": 0,
        "chain_url": chain.node.url,
        "chain_deployment": chain.deployment_file,
        "chain_key_file": key_file,
        "chain_confirmations": 0,  # anvil mines a block per transaction; nothing reorgs
        "chain_poll_s": 0.05,
        "chain_collect_s": 3600.0,  # the tests collect and pay when they mean to
        "chain_min_payout_units": 1,
        "chain_wei_per_token": 10**30,  # gas is free next to a token: push every payout
    }


@pytest.fixture
async def chain_gateway(gateway_dir: Path, chain: Chain) -> AsyncIterator[LiveGateway]:
    async with live_gateway(
        gateway_dir, **chain_options(gateway_dir, chain, chain.funded_key())
    ) as gw:
        yield gw


def watcher(gw: LiveGateway) -> Any:
    return gw.app.state.gateway.chain


def deposit(chain: Chain, consumer: EthKey, gateway: str, amount: int, cap: int) -> None:
    sender = chain.sender(consumer)
    try:
        sender.transact(chain.client.token.functions.approve(chain.client.vault.address, amount))
        sender.transact(chain.client.vault.functions.deposit(gateway, amount, cap))
    finally:
        sender.close()


async def link(client: httpx.AsyncClient, consumer: EthKey) -> httpx.Response:
    template = (await client.get("/v1/account/chain")).json()["link_message"]
    message = template.replace("<address>", consumer.address)
    signed = Account.sign_message(encode_defunct(text=message), consumer.private_key)
    return await client.post(
        "/v1/account/chain-link",
        json={"address": consumer.address, "signature": "0x" + signed.signature.hex()},
    )


async def booked(gw: LiveGateway, chain: Chain) -> None:
    """Wait until the watcher has booked every block mined so far."""
    head = chain.client.block("latest")[0]
    async with asyncio.timeout(10):
        while watcher(gw).cursor.block_number < head:
            await asyncio.sleep(0.02)


async def status(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/chain")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_deposit_spend_collect_withdraw_matches_the_vault(
    chain_gateway: LiveGateway, chain: Chain
) -> None:
    gw = chain_gateway
    gateway_address = watcher(gw).gateway
    consumer = chain.funded_key(tokens=DEPOSIT)
    await asyncio.to_thread(deposit, chain, consumer, gateway_address, DEPOSIT, DEPOSIT)
    async with gw.client() as client:
        await booked(gw, chain)
        # Not linked yet: the deposit waits, nothing is spendable.
        assert (await account(client))["balance"] == 0
        assert (await status(client))["unlinked_deposits"] == DEPOSIT
        linked = await link(client, consumer)
        assert linked.status_code == 200, linked.text
        assert linked.json()["credited"] == DEPOSIT
        assert (await account(client))["balance"] == DEPOSIT
        again = await link(client, consumer)  # linking twice credits nothing twice
        assert again.json()["credited"] == 0
        assert (await status(client))["problems"] == []

        # Spend off chain, then collect it on chain with the gateway's custodial signature.
        peer, beat = await priced(gw)
        for _ in range(3):
            request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
            await answer(peer, await peer.recv())
            assert (await request).status_code == 200
        assert (await account(client))["balance"] == DEPOSIT - 3 * REAL
        (collected,) = await watcher(gw).collect()
        assert (collected.consumer, collected.amount) == (consumer.address, 3 * REAL)
        assert chain.client.collected(consumer.address, gateway_address) == 3 * REAL
        assert await watcher(gw).collect() == []  # nothing new was spent
        await booked(gw, chain)
        view = await status(client)
        assert view["problems"] == [], view
        assert view["vault"]["gateway_balance"] == 3 * REAL

        # Withdraw: the request freezes the balance, the payout empties it.
        sender = chain.sender(consumer)
        sender.transact(chain.client.vault.functions.request_withdraw(gateway_address))
        await booked(gw, chain)
        assert (await account(client))["balance"] == 0
        refused = await client.post("/v1/chat/completions", json=chat_body())
        assert refused.status_code == 429  # frozen: nothing spendable
        chain.wait_out(21)
        sender.transact(chain.client.vault.functions.withdraw(gateway_address))
        sender.close()
        await booked(gw, chain)
        assert chain.client.token_balance(consumer.address) == DEPOSIT - 3 * REAL
        view = await status(client)
        assert view["problems"] == [], view
        assert view["backing"] == 3 * REAL == view["vault"]["gateway_balance"]
        beat.cancel()
    assert await journal_problems(gw) == []


async def test_link_refuses_a_signature_that_is_not_the_addresses(
    chain_gateway: LiveGateway, chain: Chain
) -> None:
    consumer, other = EthKey.generate(), EthKey.generate()
    async with chain_gateway.client() as client:
        template = (await client.get("/v1/account/chain")).json()["link_message"]
        message = template.replace("<address>", consumer.address)
        by_other = Account.sign_message(encode_defunct(text=message), other.private_key)
        cases: list[dict[str, Any]] = [
            {"address": consumer.address, "signature": "0x" + by_other.signature.hex()},
            {"address": consumer.address, "signature": "0x" + "00" * 65},
            {"address": "0x" + "zz" * 20, "signature": "0x" + "00" * 65},
            {"address": consumer.address},
            {"address": consumer.address, "signature": "0x" + "00" * 65, "extra": 1},
        ]
        for body in cases:
            response = await client.post("/v1/account/chain-link", json=body)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error"]["type"] == "invalid_request_error"
        # A link for another account's id (a replayed signature) does not verify here.
        wrong = template.replace("<address>", consumer.address).replace("acct_", "acct_x")
        signed = Account.sign_message(encode_defunct(text=wrong), consumer.private_key)
        response = await client.post(
            "/v1/account/chain-link",
            json={"address": consumer.address, "signature": "0x" + signed.signature.hex()},
        )
        assert response.json()["error"]["code"] == "invalid_signature"
        assert watcher(chain_gateway).addresses_of("anything") == []
    async with httpx.AsyncClient(base_url=chain_gateway.base) as anonymous:
        assert (await anonymous.get("/v1/account/chain")).status_code == 401


async def test_a_restarted_gateway_books_nothing_twice(gateway_dir: Path, chain: Chain) -> None:
    key = chain.funded_key()
    options = chain_options(gateway_dir, chain, key)
    consumer = chain.funded_key(tokens=2 * DEPOSIT)
    async with live_gateway(gateway_dir, **options) as gw:
        async with gw.client() as client:
            assert (await link(client, consumer)).status_code == 200
        await asyncio.to_thread(deposit, chain, consumer, key.address, DEPOSIT, DEPOSIT)
        await booked(gw, chain)
        api_key = gw.api_key
    # The gateway forgets how far it booked (as if it crashed before saving the cursor):
    # it reads every block again on restart.
    engine = create_engine(database_url_for(gateway_dir))
    try:
        await ChainStore(engine).save_cursor(
            key.address, Cursor(chain.deployment.start_block - 1, "")
        )
    finally:
        await engine.dispose()
    await asyncio.to_thread(deposit, chain, consumer, key.address, DEPOSIT, DEPOSIT)
    async with live_gateway(gateway_dir, **options) as gw:
        await booked(gw, chain)
        async with httpx.AsyncClient(
            base_url=gw.base, headers={"Authorization": f"Bearer {api_key}"}
        ) as client:
            assert (await account(client))["balance"] == 2 * DEPOSIT
            view = await status(client)
        assert view["problems"] == [], json.dumps(view)


def bind(chain: Chain, account: EthKey, signing_key: Any, nonce: int = 1) -> None:
    """The provider's account binds its Ed25519 key (``signing_key``) in the Registry."""
    binding = sign_binding(
        signing_key,
        chain.deployment.chain_id,
        chain.client.registry.address,
        account.address,
        2**40,
        nonce,
    )
    sender = chain.sender(account)
    try:
        sender.transact(
            chain.client.registry.functions.bind(
                binding.key, binding.valid_until, binding.nonce, binding.signature
            )
        )
    finally:
        sender.close()


async def spend(client: httpx.AsyncClient, peer: Any, times: int) -> None:
    for _ in range(times):
        request = asyncio.create_task(client.post("/v1/chat/completions", json=chat_body()))
        await answer(peer, await peer.recv())
        assert (await request).status_code == 200


async def test_providers_are_paid_by_push_and_by_cheque_without_the_gateway(
    gateway_dir: Path, chain: Chain
) -> None:
    key = chain.funded_key()
    options = chain_options(gateway_dir, chain, key)
    consumer = chain.funded_key(tokens=DEPOSIT)
    provider_account = chain.funded_key()
    async with live_gateway(gateway_dir, **options) as gw, gw.client() as client:
        api_key = gw.api_key
        ledger = gw.app.state.gateway.bookkeeper.book.ledger
        assert (await link(client, consumer)).status_code == 200
        await asyncio.to_thread(deposit, chain, consumer, key.address, DEPOSIT, DEPOSIT)
        peer, beat = await priced(gw)
        # A binding the key never signed is ignored; the real one is believed.
        impostor = chain.funded_key()
        forged = sign_binding(
            SigningKey.generate(),
            chain.deployment.chain_id,
            chain.client.registry.address,
            impostor.address,
            2**40,
            1,
        )
        sender = chain.sender(impostor)
        sender.transact(
            chain.client.registry.functions.bind(
                bytes.fromhex(peer.provider_id), forged.valid_until, 1, forged.signature
            )
        )
        sender.close()
        await asyncio.to_thread(bind, chain, provider_account, peer.key)
        await booked(gw, chain)
        assert watcher(gw).payees[peer.provider_id].address == provider_account.address

        await spend(client, peer, 3)
        earned = ledger.balance(earnings_of(peer.provider_id))
        assert earned > 0
        assert (await client.get(f"/v1/providers/{peer.provider_id}/cheque")).status_code == 404
        # Before the spend is collected the vault cannot cover the payout: the cheque is
        # signed, and the epoch's one settle is kept for when the vault can pay it.
        settled_before = chain.client.last_settled_epoch(key.address)
        (cheque,) = await watcher(gw).pay_providers()
        assert cheque.cumulative == earned and cheque.provider == provider_account.address
        assert chain.client.token_balance(provider_account.address) == 0
        assert chain.client.last_settled_epoch(key.address) == settled_before
        await watcher(gw).collect()
        assert await watcher(gw).pay_providers() == []  # the same cheque, now pushed
        # The first payout of the epoch is pushed: the provider holds its earnings.
        assert chain.client.token_balance(provider_account.address) == earned
        await booked(gw, chain)
        assert ledger.balance(cheques_of(peer.provider_id)) == 0
        assert ledger.balance(earnings_of(peer.provider_id)) == 0
        # The epoch's commitment: a root anyone with the journal can recompute.
        root = chain_book.ledger_root(ledger.balances())
        epoch = await watcher(gw).post_epoch()
        assert epoch is not None and await watcher(gw).post_epoch() is None
        assert chain.client.vault.functions.epoch_root(key.address, epoch).call() == root

        # More work in the same epoch: a cheque only, which the provider cashes itself.
        await spend(client, peer, 2)
        more = ledger.balance(earnings_of(peer.provider_id))
        await watcher(gw).collect()
        await watcher(gw).pay_providers()
        served = (await client.get(f"/v1/providers/{peer.provider_id}/cheque")).json()
        assert served["cumulative"] == earned + more
        assert chain.client.token_balance(provider_account.address) == earned  # not pushed
        beat.cancel()
    # The gateway is gone; the provider cashes what it was handed.
    payee = chain.sender(provider_account)
    try:
        # A cheque the provider signs itself for more is refused; the gateway's is paid.
        greedy = sign_cheque(
            provider_account.private_key,
            chain.deployment.chain_id,
            chain.client.vault.address,
            key.address,
            provider_account.address,
            10 * (earned + more),
        )
        with pytest.raises(TransactionReverted):
            chain.client.cash(payee, greedy)
        chain.client.cash(payee, SignedCheque.from_json(served))
        chain.client.cash(payee, SignedCheque.from_json(served))  # a replay pays nothing
    finally:
        payee.close()
    assert chain.client.token_balance(provider_account.address) == earned + more
    # Back up, the gateway books the payment it did not make.
    async with live_gateway(gateway_dir, **options) as gw:
        await booked(gw, chain)
        ledger = gw.app.state.gateway.bookkeeper.book.ledger
        assert ledger.balance(cheques_of(peer.provider_id)) == 0
        async with httpx.AsyncClient(
            base_url=gw.base, headers={"Authorization": f"Bearer {api_key}"}
        ) as client:
            view = await status(client)
    assert view["problems"] == [], view
    assert view["backing"] == view["vault"]["linked_deposits"] + view["vault"]["gateway_balance"]


async def test_a_deposit_reorganized_away_before_it_is_final_is_never_credited(
    gateway_dir: Path, chain: Chain
) -> None:
    options = chain_options(gateway_dir, chain, chain.funded_key())
    options["chain_confirmations"] = 3
    consumer = chain.funded_key(tokens=2 * DEPOSIT)
    async with live_gateway(gateway_dir, **options) as gw, gw.client() as client:
        assert (await link(client, consumer)).status_code == 200
        gateway_address = watcher(gw).gateway
        await asyncio.to_thread(deposit, chain, consumer, gateway_address, DEPOSIT, DEPOSIT)
        rpc(chain.node.url, "anvil_rollback", [2])  # the approve and the deposit vanish
        chain.mine(5)
        await booked_through(gw, chain.client.block("latest")[0] - 3)
        assert (await account(client))["balance"] == 0
        assert chain.client.deposits(consumer.address, gateway_address) == 0
        await asyncio.to_thread(deposit, chain, consumer, gateway_address, DEPOSIT, DEPOSIT)
        chain.mine(3)
        await booked_through(gw, chain.client.block("latest")[0] - 3)
        assert (await account(client))["balance"] == DEPOSIT
        assert (await status(client))["problems"] == []


async def test_a_reorganization_below_the_booked_block_stops_booking_loudly(
    gateway_dir: Path, chain: Chain
) -> None:
    consumer = chain.funded_key(tokens=DEPOSIT)
    options = chain_options(gateway_dir, chain, chain.funded_key())
    async with live_gateway(gateway_dir, **options) as gw, gw.client() as client:
        assert (await link(client, consumer)).status_code == 200
        gateway_address = watcher(gw).gateway
        await asyncio.to_thread(deposit, chain, consumer, gateway_address, DEPOSIT, DEPOSIT)
        await booked(gw, chain)
        assert (await account(client))["balance"] == DEPOSIT  # booked at 0 confirmations
        rpc(chain.node.url, "anvil_rollback", [1])  # ...and then the deposit vanished
        chain.mine(2)
        async with asyncio.timeout(10):
            while watcher(gw).halted is None:
                await asyncio.sleep(0.02)
        view = await status(client)
        assert view["halted"] and "replaced block" in view["halted"]
        assert any("--chain-confirmations" in p for p in view["problems"])
        assert (await account(client))["balance"] == DEPOSIT  # nothing booked twice either


async def booked_through(gw: LiveGateway, block: int) -> None:
    async with asyncio.timeout(10):
        while watcher(gw).cursor.block_number < block:
            await asyncio.sleep(0.02)


def bond(chain: Chain, account: EthKey, amount: int) -> None:
    sender = chain.sender(account)
    try:
        sender.transact(chain.client.token.functions.approve(chain.client.stake.address, amount))
        sender.transact(chain.client.stake.functions.bond(amount))
    finally:
        sender.close()


async def test_the_router_counts_the_stake_bonded_on_chain(gateway_dir: Path, chain: Chain) -> None:
    options = chain_options(gateway_dir, chain, chain.funded_key())
    options["min_stake_units"] = 10 * TOKEN
    options["queue_timeout_s"] = 0.3
    consumer = chain.funded_key(tokens=DEPOSIT)
    provider_account = chain.funded_key(tokens=10 * TOKEN)
    async with live_gateway(gateway_dir, **options) as gw, gw.client() as client:
        assert (await link(client, consumer)).status_code == 200
        await asyncio.to_thread(deposit, chain, consumer, watcher(gw).gateway, DEPOSIT, DEPOSIT)
        peer, beat = await priced(gw)
        await booked(gw, chain)
        unstaked = await client.post("/v1/chat/completions", json=chat_body())
        assert unstaked.status_code == 503, unstaked.text
        # Bound but not bonded: still not routed. Bonded on chain: routed.
        await asyncio.to_thread(bind, chain, provider_account, peer.key)
        await booked(gw, chain)
        assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 503
        await asyncio.to_thread(bond, chain, provider_account, 10 * TOKEN)
        await booked(gw, chain)
        assert watcher(gw).bonded(peer.provider_id) == 10 * TOKEN
        await spend(client, peer, 1)
        status_view = (await client.get(f"/v1/providers/{peer.provider_id}")).json()
        assert status_view["bonded"] == 10 * TOKEN, status_view
        # Unbonding on chain takes it out of the routing at once.
        sender = chain.sender(provider_account)
        sender.transact(chain.client.stake.functions.unbond(1))
        sender.close()
        await booked(gw, chain)
        assert (await client.post("/v1/chat/completions", json=chat_body())).status_code == 503
        beat.cancel()


async def test_ledger_check_reconciles_the_journal_with_the_vault(
    gateway_dir: Path, chain: Chain
) -> None:
    options = chain_options(gateway_dir, chain, chain.funded_key())
    consumer = chain.funded_key(tokens=DEPOSIT)
    async with live_gateway(gateway_dir, **options) as gw, gw.client() as client:
        assert (await link(client, consumer)).status_code == 200
        await asyncio.to_thread(deposit, chain, consumer, watcher(gw).gateway, DEPOSIT, DEPOSIT)
        await booked(gw, chain)
    cli = typer.Typer()
    cli.add_typer(ledger_app, name="ledger")
    args = [
        "ledger",
        "check",
        "--data-dir",
        str(gateway_dir),
        "--chain-url",
        chain.node.url,
        "--deployment",
        str(chain.deployment_file),
    ]
    sound = await asyncio.to_thread(CliRunner().invoke, cli, args)
    assert sound.exit_code == 0, sound.stderr
    assert "as the vault holds" in sound.stderr
    # A credit no deposit backs (a bug, or a hand in the database) is named.
    engine = create_engine(database_url_for(gateway_dir))
    try:
        store = LedgerStore(engine)
        book = Book(BookPolicy(), await store.load())
        forged = book.chain_move(
            lambda ledger: chain_book.credit_deposit(ledger, "acct_forged", 7, "0xf:0", 1.0)
        )
        assert forged is not None
        await store.append([forged])
    finally:
        await engine.dispose()
    broken = await asyncio.to_thread(CliRunner().invoke, cli, args)
    assert broken.exit_code == 1
    said = " ".join(broken.stderr.split())  # the console wraps long lines
    assert f"backs {DEPOSIT + 7} base units on chain but the vault holds {DEPOSIT}" in said


async def test_a_cheque_above_the_gateways_funds_is_paid_from_its_bond(
    gateway_dir: Path, chain: Chain
) -> None:
    key = chain.funded_key(tokens=100 * TOKEN)
    await asyncio.to_thread(bond, chain, key, 100 * TOKEN)  # the bond behind its cheques
    options = chain_options(gateway_dir, chain, key)
    consumer = chain.funded_key(tokens=DEPOSIT)
    provider_account = chain.funded_key()
    async with live_gateway(gateway_dir, **options) as gw, gw.client() as client:
        ledger = gw.app.state.gateway.bookkeeper.book.ledger
        assert (await link(client, consumer)).status_code == 200
        await asyncio.to_thread(deposit, chain, consumer, key.address, DEPOSIT, DEPOSIT)
        peer, beat = await priced(gw)
        await asyncio.to_thread(bind, chain, provider_account, peer.key)
        await booked(gw, chain)
        await spend(client, peer, 2)
        earned = ledger.balance(earnings_of(peer.provider_id))
        fees = ledger.balance(FEES)
        # Nothing collected yet: the vault holds no balance for the gateway, so the push
        # skips the payment, and the cheque, cashed, bounces onto the gateway's bond.
        (cheque,) = await watcher(gw).pay_providers()
        assert chain.client.gateway_balance(key.address) == 0
        assert chain.client.token_balance(provider_account.address) == 0
        payee = chain.sender(provider_account)
        try:
            chain.client.cash(payee, cheque)
        finally:
            payee.close()
        assert chain.client.token_balance(provider_account.address) == earned
        assert chain.client.bonded(key.address) == 100 * TOKEN - earned
        await booked(gw, chain)
        assert ledger.balance(FEES) == fees + earned  # the operator is owed its bond back
        assert (await status(client))["problems"] == []
        await watcher(gw).collect()
        await booked(gw, chain)
        assert (await status(client))["problems"] == []
        beat.cancel()


async def test_a_cheater_caught_by_audits_is_slashed_on_chain_and_its_consumer_refunded(
    gateway_dir: Path, chain: Chain
) -> None:
    key = chain.funded_key()
    # Governance seats the gateway on the StakeManager's committee (threshold 1).
    chain.minter.transact(chain.client.stake.functions.set_committee([key.address], 1))
    options = chain_options(gateway_dir, chain, key)
    stake = 10 * TOKEN
    options["min_stake_units"] = stake
    consumer = chain.funded_key(tokens=DEPOSIT)
    cheat_account = chain.funded_key(tokens=stake)
    cheat_key = SigningKey.generate()
    validators = [SigningKey.generate() for _ in range(3)]

    async def says_something_else(peer: Any, job: dict[str, Any]) -> None:
        await answer(peer, job, text="not what the model says")

    async with (
        live_gateway(
            gateway_dir,
            catalog_file=catalog_file(gateway_dir),
            validator_keys=[public_key_hex(k) for k in validators],
            **options,
        ) as gw,
        gw.client() as client,
    ):
        assert (await link(client, consumer)).status_code == 200
        await asyncio.to_thread(deposit, chain, consumer, key.address, DEPOSIT, DEPOSIT)
        await asyncio.to_thread(bind, chain, cheat_account, cheat_key)
        await asyncio.to_thread(bond, chain, cheat_account, stake)
        await booked(gw, chain)
        tasks = await join_validators(gw, client, gateway_dir, validators)
        cheat, more = await join(
            gw, gateway_dir, "cheat", key=cheat_key, on_job=says_something_else
        )
        tasks += more
        await wait_status(client, cheat, "routable")
        assert (await account(client))["balance"] == DEPOSIT

        response = await client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 200, response.text
        assert response.headers["x-tessera-provider"] == cheat.provider_id
        cost = int(response.headers["x-tessera-cost"])
        cases = await poll(
            client,
            f"/v1/audit-cases?provider={cheat.provider_id}",
            lambda body: body["data"] and body["data"][0]["status"] in CLOSED,
        )
        case = cases["data"][0]
        assert case["status"] == "upheld" and case["reason"] == "tampered_output"
        assert case["refunded"] == cost and case["slashed"] == stake // 2
        # Its earnings came back from the journal at once; the rest (the request's fee,
        # already paid to an auditor) waits for the stake the chain will take.
        short = DEPOSIT - (await account(client))["balance"]
        assert 0 < short < cost
        async with asyncio.timeout(10):
            while not watcher(gw).proposals:
                await asyncio.sleep(0.05)
        (proposal_id,) = watcher(gw).proposals.values()
        proposal = chain.client.proposal(proposal_id)
        assert proposal.offender == cheat_account.address and proposal.kind == 3
        assert chain.client.bonded(cheat_account.address) == stake  # not before the window
        assert await watcher(gw).execute_slashes() == []
        chain.wait_out(chain.client.challenge_period())
        assert await watcher(gw).execute_slashes() == [proposal_id]
        assert await watcher(gw).execute_slashes() == []
        assert chain.client.bonded(cheat_account.address) == stake - stake // 2
        # The refund is the vault's: added to the consumer's deposit, booked like one.
        assert chain.client.deposits(consumer.address, key.address) == DEPOSIT + short
        await booked(gw, chain)
        assert (await account(client))["balance"] == DEPOSIT
        assert watcher(gw).bonded(cheat.provider_id) == stake - stake // 2
        view = await status(client)
        assert view["problems"] == [], view
        assert view["slashing"] == {"queued": 0, "proposed": 1, "refused": []}
        assert chain.client.insurance_pool() >= stake // 2 - short
        stop(tasks)
    assert await journal_problems(gw) == []


async def test_a_gateway_without_a_chain_says_so_and_nothing_to_retry(gateway_dir: Path) -> None:
    async with live_gateway(gateway_dir) as gw, gw.client() as client:
        replies = [
            await client.get("/v1/chain"),
            await client.get("/v1/account/chain"),
            await client.get(f"/v1/providers/{'ab' * 32}/cheque"),
            await client.post(
                "/v1/account/chain-link",
                json={"address": "0x" + "11" * 20, "signature": "0x" + "22" * 65},
            ),
        ]
    for reply in replies:
        assert reply.status_code == 404, reply.text
        error = reply.json()["error"]
        assert error["code"] == "no_chain" and "--chain-url" in error["message"]


async def test_a_slash_decided_before_a_crash_is_proposed_after_the_restart(
    gateway_dir: Path, chain: Chain
) -> None:
    key = chain.funded_key()
    chain.minter.transact(chain.client.stake.functions.set_committee([key.address], 1))
    options = chain_options(gateway_dir, chain, key)
    offender = chain.funded_key(tokens=10 * TOKEN)
    provider_key = SigningKey.generate()
    provider_id = provider_key.verify_key.encode().hex()
    await asyncio.to_thread(bind, chain, offender, provider_key)
    await asyncio.to_thread(bond, chain, offender, 10 * TOKEN)
    async with live_gateway(gateway_dir, **options) as gw:
        await booked(gw, chain)
        # Decided and proposed in the running gateway: stored, then sent by the loop.
        outcome = await watcher(gw).propose_slash(provider_id, "downtime", "{}", [], "slash:a")
        assert outcome.taken == 10 * TOKEN // 100
        async with asyncio.timeout(10):
            while "slash:a" not in watcher(gw).proposals:
                await asyncio.sleep(0.05)
    # Killed after deciding the next one, before proposing it: the claim is stored queued.
    engine = create_engine(database_url_for(gateway_dir))
    try:
        store = ChainStore(engine)
        crashed = SlashClaim(
            "slash:b", provider_id, offender.address, chain_kind("tampered_output"),
            bytes(range(32)), ()
        )  # fmt: skip
        assert await store.save_claim(crashed)
        async with live_gateway(gateway_dir, **options) as gw:
            async with asyncio.timeout(10):
                while "slash:b" not in watcher(gw).proposals:
                    await asyncio.sleep(0.05)
            assert set(watcher(gw).proposals) == {"slash:a", "slash:b"}
            proposal = chain.client.proposal(watcher(gw).proposals["slash:b"])
            assert proposal.offender == offender.address and proposal.kind == 3
            assert proposal.evidence == bytes(range(32))
        assert await store.queued_claims() == []
        assert set(await store.proposed_claims()) == {"slash:a", "slash:b"}
    finally:
        await engine.dispose()
