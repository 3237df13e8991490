"""The network on a real chain, as strangers use it: a `tessera gateway` process settling on
anvil, a provider process serving the tiny model, the official `openai` client doing the
work. Money ends where the journal says, to the base unit; when the gateway is SIGKILLed
and never comes back, the provider still cashes its cheque and the consumer still
withdraws what it did not spend."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from tessera.chain.anvil import AnvilNode, rpc, start_anvil
from tessera.chain.client import ChainClient
from tessera.chain.deploy import DeployParams, deploy_to, dev_key_for
from tessera.chain.keys import EthKey, write_key_file
from tessera.chain.sender import TxSender
from tessera.chain.typed_data import SignedCheque, sign_binding
from tessera.demo import Network, free_port, wait_for_network
from tessera.key_file import load_or_create_key
from tessera.ledger.accounts import TOKEN

from support.live_network import TEXT_MODEL, create_key, provider_key_file, start_provider

pytestmark = pytest.mark.integration

DEPOSIT = 20 * TOKEN
STAKE = 10 * TOKEN  # the gateway's default minimum


class Actors:
    """The chain, and one key per person, each with gas."""

    def __init__(self, node: AnvilNode, root: Path) -> None:
        self.node = node
        self.deployment = deploy_to(node.url, params=DeployParams.for_tests())
        self.deployment_file = root / "deployment.json"
        self.deployment.save(self.deployment_file)
        self.client = ChainClient(node.url, self.deployment)
        self.minter = TxSender(self.client.w3, dev_key_for(self.client.w3))

    def key(self, tokens: int = 0) -> EthKey:
        key = EthKey.generate()
        rpc(self.node.url, "anvil_setBalance", [key.address, hex(10**20)])
        if tokens:
            self.minter.transact(self.client.token.functions.mint(key.address, tokens))
        return key

    def transact(self, key: EthKey, *calls: Any) -> None:
        sender = TxSender(self.client.w3, key)
        try:
            for call in calls:
                sender.transact(call)
        finally:
            sender.close()


@pytest.fixture
def actors(tmp_path: Path) -> Iterator[Actors]:
    node = start_anvil()
    try:
        chain = Actors(node, tmp_path)
        yield chain
        chain.minter.close()
    finally:
        node.stop()


def wait_for(what: str, check: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_money_on_chain_equals_the_journal_and_survives_a_killed_gateway(
    tmp_path: Path, actors: Actors, tiny_model_dir: Path
) -> None:
    chain, vault, token = actors, actors.client.vault, actors.client.token
    gateway_key = chain.key()
    write_key_file(tmp_path / "gateway-eth.key", gateway_key)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    network = Network(tmp_path)
    settings = {  # the chain's tuning; what a person sets is on the command line
        "CHAIN_POLL_S": "0.2",
        "CHAIN_COLLECT_S": "1",
        "CHAIN_MIN_PAYOUT_UNITS": "1",
        "CHAIN_WEI_PER_TOKEN": str(10**30),  # gas is nothing next to a token: push all
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in settings.items():
            patch.setenv(f"TESSERA_GATEWAY_{name}", value)
        network.spawn(
            "gateway",
            [
                "gateway",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path),
                "--chain-url",
                chain.node.url,
                "--deployment",
                str(chain.deployment_file),
                "--chain-key-file",
                str(tmp_path / "gateway-eth.key"),
                "--chain-confirmations",
                "0",
            ],
        )
    try:
        api_key = create_key(tmp_path)
        wait_for_network(base, 0, network, timeout_s=60)
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {api_key}"})

        # The provider binds its Ed25519 identity to an account and bonds its stake there.
        provider_account = chain.key(tokens=STAKE)
        signing_key = load_or_create_key(provider_key_file(network, 1))
        binding = sign_binding(
            signing_key,
            chain.deployment.chain_id,
            chain.client.registry.address,
            provider_account.address,
            2**40,
            1,
        )
        chain.transact(
            provider_account,
            chain.client.registry.functions.bind(
                binding.key, binding.valid_until, binding.nonce, binding.signature
            ),
            token.functions.approve(chain.client.stake.address, STAKE),
            chain.client.stake.functions.bond(STAKE),
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TESSERA_PROVIDER_CHEQUE_POLL_S", "0.3")  # the agent keeps its cheque
            start_provider(network, base, tiny_model_dir, 1, "US-east", embeddings=False)
        wait_for_network(base, 1, network, timeout_s=240)
        provider_id = signing_key.verify_key.encode().hex()

        # The consumer links an address and deposits from it; the gateway credits it.
        consumer = chain.key(tokens=DEPOSIT)
        template = http.get("/v1/account/chain").json()["link_message"]
        signed = Account.sign_message(
            encode_defunct(text=template.replace("<address>", consumer.address)),
            consumer.private_key,
        )
        linked = http.post(
            "/v1/account/chain-link",
            json={"address": consumer.address, "signature": "0x" + signed.signature.hex()},
        )
        assert linked.status_code == 200, linked.text
        chain.transact(
            consumer,
            token.functions.approve(vault.address, DEPOSIT),
            vault.functions.deposit(gateway_key.address, DEPOSIT, DEPOSIT),
        )
        wait_for("the deposit", lambda: http.get("/v1/account").json()["balance"] == DEPOSIT)

        # The work, with the official client. Settlement runs every second meanwhile: it
        # collects what was spent and pays the provider, pushing once per vault epoch and
        # by cheque otherwise.
        from openai import OpenAI

        client = OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0)
        ids = []
        for topic in ("foxes", "wolves", "owls", "bees"):
            answer = client.chat.completions.with_raw_response.create(
                model=TEXT_MODEL,
                messages=[{"role": "user", "content": f"Tell me about {topic}."}],
                max_tokens=8,
            )
            ids.append(answer.headers["x-request-id"])
        views = [http.get(f"/v1/requests/{i}").json() for i in ids]
        spent = sum(v["cost"] for v in views)
        earned = sum(v["provider_earned"] for v in views)
        assert spent > 0 and earned > 0
        assert http.get("/v1/account").json()["balance"] == DEPOSIT - spent
        cheque_json = wait_for(
            "a cheque for all of it",
            lambda: (
                c
                if (c := http.get(f"/v1/providers/{provider_id}/cheque").json()).get("cumulative")
                == earned
                else None
            ),
        )
        wait_for(
            "the collect",
            lambda: chain.client.collected(consumer.address, gateway_key.address) == spent,
        )
        pushed = wait_for(
            "a pushed payout", lambda: chain.client.token_balance(provider_account.address)
        )
        assert 0 < pushed <= earned
        assert chain.client.deposits(consumer.address, gateway_key.address) == DEPOSIT - spent
        wait_for(
            "the journal to match the vault", lambda: http.get("/v1/chain").json()["problems"] == []
        )
        http.close()
        # The provider agent fetched and kept its newest cheque beside its key.
        kept_dir = provider_key_file(network, 1).parent / "cheques"
        kept = wait_for(
            "the agent to keep its cheque",
            lambda: next(
                (
                    f
                    for f in kept_dir.glob("*.json")
                    if json.loads(f.read_text())["cumulative"] == earned
                ),
                None,
            ),
        )
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600

        # The gateway dies for good.
        gateway = next(proc for name, proc in network.processes if name == "gateway")
        os.kill(gateway.pid, signal.SIGKILL)
        gateway.wait(10)

        # The provider cashes the cheque its agent kept, without the gateway.
        assert SignedCheque.load(kept) == SignedCheque.from_json(cheque_json)
        chain.transact(
            provider_account,
            vault.functions.cash(
                gateway_key.address,
                provider_account.address,
                cheque_json["cumulative"],
                SignedCheque.load(kept).signature,
            ),
        )
        assert chain.client.token_balance(provider_account.address) == earned
        # The consumer takes back what it did not spend, after the unlock delay.
        chain.transact(consumer, vault.functions.request_withdraw(gateway_key.address))
        rpc(chain.node.url, "evm_increaseTime", [21])
        rpc(chain.node.url, "evm_mine")
        chain.transact(consumer, vault.functions.withdraw(gateway_key.address))
        assert chain.client.token_balance(consumer.address) == DEPOSIT - spent
        # The vault still holds the gateway's fees: what it collected less what it paid.
        assert chain.client.gateway_balance(gateway_key.address) == spent - earned
    finally:
        network.stop()
