"""A cheater caught by the audits is slashed on chain, and its consumer refunded there.

Real processes on a real anvil: a `tessera gateway` settling on the chain (seated on the
StakeManager's committee, every request audited), three `tessera provider` validators and
one cheating provider (tests/support/cheating_provider.py, ``random``: made-up tokens
under the real model's name, the join challenge answered honestly), each bound and bonded
on chain. The consumer deposits in the vault and sends requests with the official
`openai` client at a price only the cheater meets, until the cheater is banned. The
gateway proposes a slash per upheld case with the consumer's address as refund; after the
challenge window it executes them: the cheater's on-chain stake falls by the table's
share each time, the
consumer's deposit in the vault rises by what the journal could not claw back, and the
consumer ends with every unit of its upheld cases back. Journal and vault agree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from tessera.chain.anvil import AnvilNode, rpc, start_anvil
from tessera.chain.client import ChainClient
from tessera.chain.deploy import DeployParams, deploy_to
from tessera.chain.keys import EthKey, write_key_file
from tessera.chain.wallet import Wallet, fund_eth, mint
from tessera.demo import Network, free_port, wait_for_network
from tessera.key_file import load_or_create_key
from tessera.ledger.accounts import TOKEN
from tessera.protocol.signing import public_key_hex

from support.audited_network import spawn_cheaters
from support.live_network import TEXT_MODEL, create_key
from support.verified_network import wait_routable

pytestmark = pytest.mark.e2e

STAKE = 10 * TOKEN  # the gateway's default minimum
DEPOSIT = 20 * TOKEN
CHALLENGE_S = 30  # DeployParams.for_tests
VALIDATOR_PRICE = ("2000000000", "6000000000")
CHEAP_PRICE = (500_000_000, 1_500_000_000)
ONLY_THE_CHEAP = {
    "provider": {"max_price": {"prompt": CHEAP_PRICE[0], "completion": CHEAP_PRICE[1]}}
}


@pytest.fixture
def anvil() -> Iterator[AnvilNode]:
    node = start_anvil()
    try:
        yield node
    finally:
        node.stop()


def funded(client: ChainClient, tokens: int = 0) -> EthKey:
    key = EthKey.generate()
    fund_eth(client, key.address, 10**19)
    if tokens:
        mint(client, key.address, tokens)
    return key


def bind_and_bond(client: ChainClient, key_file: Path) -> str:
    """A provider's account binds the provider's Ed25519 key and bonds the stake."""
    account = funded(client, STAKE)
    with Wallet(client, account) as wallet:
        wallet.bind(wallet.binding(load_or_create_key(key_file)))
        wallet.bond(STAKE)
    return account.address


def wait_for(what: str, check: Any, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_audited_cheater_is_slashed_on_chain_and_its_consumer_refunded(
    tmp_path: Path, anvil: AnvilNode, tiny_model_dir: Path, tiny_catalog: Path
) -> None:
    gateway_key = EthKey.generate()
    write_key_file(tmp_path / "gateway-eth.key", gateway_key)
    params = DeployParams.for_tests(committee=(gateway_key.address,), threshold=1)
    deployment = deploy_to(anvil.url, params=params)
    deployment.save(tmp_path / "deployment.json")
    client = ChainClient(anvil.url, deployment)
    fund_eth(client, gateway_key.address, 10**19)

    names = ["validator-1", "validator-2", "validator-3", "cheater"]
    key_files = {name: tmp_path / f"{name}.key" for name in names}
    ids = {name: public_key_hex(load_or_create_key(path)) for name, path in key_files.items()}
    accounts = {name: bind_and_bond(client, path) for name, path in key_files.items()}

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    network = Network(tmp_path)
    http = httpx.Client(base_url=base)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TESSERA_GATEWAY_AUDIT_PROBATION", "100000")  # audit every request
        patch.setenv("TESSERA_GATEWAY_CHAIN_POLL_S", "0.2")
        patch.setenv("TESSERA_GATEWAY_CHAIN_COLLECT_S", "1")
        patch.setenv("TESSERA_GATEWAY_CHAIN_MIN_PAYOUT_UNITS", "1")
        network.spawn(
            "gateway",
            ["gateway", "--port", str(port), "--data-dir", str(tmp_path),
             "--catalog", str(tiny_catalog),
             *(f"--validator={ids[n]}" for n in names if n.startswith("validator")),
             "--chain-url", anvil.url, "--deployment", str(tmp_path / "deployment.json"),
             "--chain-key-file", str(tmp_path / "gateway-eth.key"),
             "--chain-confirmations", "0"],
        )  # fmt: skip
    try:
        api_key = create_key(tmp_path)
        wait_for_network(base, 0, network, timeout_s=60)
        http.headers["Authorization"] = f"Bearer {api_key}"
        for name in names[:3]:
            network.spawn(
                name,
                ["provider", "--gateway", base, "--model", str(tiny_model_dir),
                 "--label", name, "--price-in", VALIDATOR_PRICE[0],
                 "--price-out", VALIDATOR_PRICE[1], "--key-file", str(key_files[name]),
                 "--threads", "1", "--max-concurrent-jobs", "2"],
            )  # fmt: skip
        spawn_cheaters(
            network,
            "cheater",
            ["--gateway", base, "--model-dir", str(tiny_model_dir), "--catalog",
             str(tiny_catalog), "--price-in", str(CHEAP_PRICE[0]), "--price-out",
             str(CHEAP_PRICE[1]), "--cheater", f"random={key_files['cheater']}"],
        )  # fmt: skip
        wait_for_network(base, 4, network, timeout_s=240)
        wait_routable(base, list(ids.values()), TEXT_MODEL, network, timeout_s=240)

        # The consumer links its address and deposits; the journal credits it.
        consumer = funded(client, DEPOSIT)
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
        with Wallet(client, consumer) as wallet:
            wallet.deposit(gateway_key.address, DEPOSIT, custodial_cap=DEPOSIT)
        wait_for("the deposit", lambda: http.get("/v1/account").json()["balance"] == DEPOSIT)

        # Requests only the cheater's price meets, until it is banned.
        ai = openai.OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0)
        served: dict[str, int] = {}
        for turn in range(40):
            try:
                answer = ai.chat.completions.with_raw_response.create(
                    model=TEXT_MODEL,
                    messages=[{"role": "user", "content": f"Tell me a fable, number {turn}."}],
                    max_tokens=8,
                    extra_body=ONLY_THE_CHEAP,
                )
            except openai.APIStatusError:
                break  # nobody left at that price: the cheater is banned
            assert answer.headers["x-tessera-provider"] == ids["cheater"]
            served[answer.headers["x-request-id"]] = int(answer.headers["x-tessera-cost"])
            status = http.get(f"/v1/providers/{ids['cheater']}/reputation").json()
            if status["models"].get(TEXT_MODEL) == "banned":
                break
        assert served, "the cheater served nothing"
        wait_for(
            "the cheater's ban",
            lambda: (
                http.get(f"/v1/providers/{ids['cheater']}/reputation")
                .json()["models"]
                .get(TEXT_MODEL)
                == "banned"
            ),
        )
        cases = wait_for(
            "every served request's audit case to close",
            lambda: (
                rows
                if len(
                    rows := [
                        c
                        for c in http.get(
                            f"/v1/audit-cases?provider={ids['cheater']}&limit=100"
                        ).json()["data"]
                        if c["status"] != "open"
                    ]
                )
                == len(served)
                else None
            ),
        )
        upheld = [c for c in cases if c["status"] == "upheld"]
        assert upheld and {c["reason"] for c in upheld} == {"wrong_model"}

        # Proposed at once, one per upheld case; taken only after the challenge window
        # (every proposal must be made before the clock jumps past it).
        wait_for(
            "a slash proposal per upheld case",
            lambda: http.get("/v1/chain").json()["slashing"]["proposed"] >= len(upheld),
        )
        assert client.bonded(accounts["cheater"]) == STAKE

        # Collects go on meanwhile: deposit + collected moves only by deposits and refunds.
        def paid_in() -> int:
            return client.deposits(consumer.address, gateway_key.address) + client.collected(
                consumer.address, gateway_key.address
            )

        paid_in_before = paid_in()
        rpc(anvil.url, "evm_increaseTime", [CHALLENGE_S + 1])
        rpc(anvil.url, "evm_mine")
        # Each upheld case is an offence proven: wrong_model takes half of what is left.
        left = STAKE
        for _ in upheld:
            left -= max(1, left // 2)
        wait_for("every slash", lambda: client.bonded(accounts["cheater"]) == left)
        for name in names[:3]:
            assert client.bonded(accounts[name]) == STAKE  # honest stake untouched

        # Made whole: clawed back in the journal, the rest refunded into the vault deposit.
        not_refunded = sum(
            cost for request_id, cost in served.items()
            if request_id not in {c["request_id"] for c in upheld}
        )  # fmt: skip
        wait_for(
            "the consumer's refund",
            lambda: http.get("/v1/account").json()["balance"] == DEPOSIT - not_refunded,
        )
        assert paid_in() - paid_in_before > 0  # refunded into the vault deposit
        assert client.insurance_pool() > 0  # the rest of the slashed stake
        wait_for(
            "the journal to match the vault", lambda: http.get("/v1/chain").json()["problems"] == []
        )
    finally:
        http.close()
        network.stop()
