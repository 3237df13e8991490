"""The demo's chain: tokens, stake and payouts on a local anvil instead of dev mints.

``tessera demo`` (without ``--no-chain``) starts a fresh anvil, deploys the four contracts
with test periods (a 60 s vault epoch, a 30 s challenge window) and the demo gateway's
address on the slashing committee, and then does what people would: each provider binds
its Ed25519 key to an Ethereum account and bonds its stake there; the consumer links an
address to its API key's account and deposits tokens in the vault. The tour ends by
cashing a provider's cheque and showing its ERC-20 balance rise.

Each run is a new chain, so the gateway's ledger from an earlier run is moved aside
(``tessera.db.previous``) rather than reconciled against a vault that never held its
tokens. (anvil can save its state to a file, but a reloaded anvil serves no state for the
blocks before the reload, and the gateway reads the vault at the block it booked last.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct

from tessera.chain.anvil import AnvilNode, start_anvil
from tessera.chain.client import ChainClient
from tessera.chain.deploy import DeployParams, deploy_to
from tessera.chain.keys import EthKey, create_key_file, load_key_file
from tessera.chain.sender import state_path_for
from tessera.chain.typed_data import SignedCheque
from tessera.chain.wallet import Wallet, dev_sender, fund_eth, mint
from tessera.key_file import load_or_create_key
from tessera.units import format_tokens

GAS_WEI = 10**19  # 10 ETH of gas for each demo key
# The demo gateway's settlement: a collect and cheques every few seconds, and every
# payout worth a cheque (the defaults wait for payouts worth their gas at mainnet prices).
SETTLEMENT_ENV = {
    "TESSERA_GATEWAY_CHAIN_POLL_S": "0.5",
    "TESSERA_GATEWAY_CHAIN_COLLECT_S": "5",
    "TESSERA_GATEWAY_CHAIN_MIN_PAYOUT_UNITS": "1",
}
LEDGER_FILES = ("tessera.db", "tessera.db-wal", "tessera.db-shm")


@dataclass
class DemoChain:
    node: AnvilNode
    client: ChainClient
    deployment_file: Path
    gateway_key_file: Path
    gateway: str  # the gateway's Ethereum address

    @property
    def url(self) -> str:
        return self.node.url

    def gateway_args(self) -> list[str]:
        return [
            "--chain-url", self.url,
            "--deployment", str(self.deployment_file),
            "--chain-key-file", str(self.gateway_key_file),
        ]  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """What demo.json says about the chain, so anyone can look with their own tools."""
        deployment = self.client.deployment
        return {
            "chain_url": self.url,
            "chain_id": deployment.chain_id,
            "contracts": dict(deployment.contracts),
            "gateway_address": self.gateway,
        }

    def stop(self) -> None:
        self.node.stop()


def start_chain(data_dir: Path) -> DemoChain:
    """Start anvil, deploy, and fund the gateway's gas; a fresh ledger for the new chain."""
    chain_dir = data_dir / "chain"
    chain_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(mode=0o700, parents=True, exist_ok=True)
    key_file = data_dir / "gateway-eth.key"
    key = load_key_file(key_file) if key_file.exists() else create_key_file(key_file)
    node = start_anvil(
        block_time_s=1,  # blocks keep coming, so the finalized tag moves without traffic
        log_path=data_dir / "logs" / "anvil.log",
    )
    try:
        deployment_file = chain_dir / "deployment.json"
        params = DeployParams.for_tests(committee=(key.address,), threshold=1)
        deployment = deploy_to(node.url, params=params)
        deployment.save(deployment_file)
        _move_ledger_aside(data_dir)
        client = ChainClient(node.url, deployment)
        _gas(client, key.address)
        return DemoChain(node, client, deployment_file, key_file, key.address)
    except BaseException:
        node.stop()
        raise


def eth_key_file_of(provider_key_file: Path) -> Path:
    """A provider's Ethereum key file, beside its Ed25519 one."""
    return provider_key_file.with_name(provider_key_file.stem + "-eth.key")


def consumer_key_file(data_dir: Path) -> Path:
    return data_dir / "consumer-eth.key"


def _eth_key(path: Path) -> EthKey:
    return load_key_file(path) if path.exists() else create_key_file(path)


def fund_parties(chain: DemoChain, grants: list[tuple[Path, int]]) -> None:
    """Gas, and ``tokens`` minted up to the amount asked, for each (key file, tokens),
    from anvil's dev key: every transaction sent first and then awaited, so they all land
    in the next block or two instead of a block each, one after the other."""
    client = chain.client
    sender = dev_sender(client)
    try:
        sent = []
        for path, tokens in grants:
            address = _eth_key(path).address
            if _needs_gas(client, address):
                sent.append(sender.send({"to": address, "data": "0x"}, value_wei=GAS_WEI))
            short = _token_shortfall(client, address, tokens)
            if short > 0:
                sent.append(sender.send(client.token.functions.mint(address, short)))
        for tx_hash in sent:
            sender.wait(tx_hash)
    finally:
        sender.close()


def stake_on_chain(chain: DemoChain, provider_key_file: Path, stake: int) -> str:
    """The provider's account (its own key file beside the Ed25519 one) binds the
    provider's key and bonds ``stake``; nothing is sent that is already in place."""
    signing_key = load_or_create_key(provider_key_file)
    key = _eth_key(eth_key_file_of(provider_key_file))
    client = chain.client
    _gas(client, key.address)
    with Wallet(client, key) as wallet:
        bound = client.bindings(key.address)
        if bound is None or bound.key != signing_key.verify_key.encode():
            wallet.bind(wallet.binding(signing_key))
        missing = stake - client.bonded(key.address)
        if missing > 0:
            if client.token_balance(key.address) < missing:
                mint(client, key.address, missing)
            wallet.bond(missing)
    return key.address


def deposit_for(chain: DemoChain, base: str, api_key: str, data_dir: Path, amount: int) -> str:
    """The consumer's key (``DATA_DIR/consumer-eth.key``): tokens minted to it, linked to
    the API key's account by its signature, ``amount`` deposited for the gateway with a
    custodial cap of all of it. Returns its address once the gateway credited it."""
    key = _eth_key(consumer_key_file(data_dir))
    client = chain.client
    _gas(client, key.address)
    short = _token_shortfall(client, key.address, amount)
    if short > 0:
        mint(client, key.address, short)
    headers = {"Authorization": f"Bearer {api_key}"}
    template = httpx.get(f"{base}/v1/account/chain", headers=headers, timeout=10).json()
    message = template["link_message"].replace("<address>", key.address)
    signed = Account.sign_message(encode_defunct(text=message), key.private_key)
    linked = httpx.post(
        f"{base}/v1/account/chain-link",
        headers=headers,
        json={"address": key.address, "signature": "0x" + signed.signature.hex()},
        timeout=30,
    )
    if linked.status_code != 200:
        raise RuntimeError(f"linking {key.address} failed: {linked.text}")
    with Wallet(client, key) as wallet:
        wallet.deposit(chain.gateway, amount, custodial_cap=amount)
    wait_until(
        "the gateway to credit the deposit (once its block is final)",
        lambda: (
            httpx.get(f"{base}/v1/account", headers=headers, timeout=10).json()["balance"] >= amount
        ),
    )
    return key.address


def wait_until_staked(base: str, provider_ids: list[str], stake: int) -> None:
    """Until the gateway counts each provider's on-chain stake (booked once final)."""

    def staked() -> bool:
        return all(
            int(httpx.get(f"{base}/v1/providers/{p}", timeout=10).json().get("bonded", 0)) >= stake
            for p in provider_ids
        )

    wait_until("the gateway to count the stake bonded on chain", staked)


def settlement_step(
    chain: DemoChain, base: str, consumer: str, provider_key_files: list[Path]
) -> tuple[str, bool, str, str]:
    """Wait for the gateway to collect the tour's spend from the deposit and sign cheques,
    then cash the largest one as its provider would and show its ERC-20 balance rise."""
    client = chain.client
    try:
        wait_until(
            "the gateway to collect the tour's spend on chain",
            lambda: client.collected(consumer, chain.gateway) > 0,
        )
        cheques: list[tuple[SignedCheque, Path]] = []

        def signed() -> bool:
            cheques.clear()
            for key_file in provider_key_files:
                provider_id = load_or_create_key(key_file).verify_key.encode().hex()
                response = httpx.get(f"{base}/v1/providers/{provider_id}/cheque", timeout=10)
                if response.status_code == 200:
                    cheques.append((SignedCheque.from_json(response.json()), key_file))
            return bool(cheques)

        wait_until("a cheque for a provider's earnings", signed)
        cheque, key_file = max(cheques, key=lambda c: c[0].cumulative)
        eth_file = key_file.with_name(key_file.stem + "-eth.key")
        before = client.token_balance(cheque.provider)
        with Wallet(client, load_key_file(eth_file)) as wallet:
            wallet.cash(cheque)
        after = client.token_balance(cheque.provider)
        view = httpx.get(f"{base}/v1/chain", timeout=10).json()
    except (RuntimeError, httpx.HTTPError, KeyError, ValueError) as exc:
        return "settled on chain", False, "-", f"{type(exc).__name__}: {exc}"
    collected = client.collected(consumer, chain.gateway)
    note = (
        f"vault collected {format_tokens(collected)} tokens of the deposit; "
        f"{key_file.stem} cashed its cheque: ERC-20 {format_tokens(before)} -> "
        f"{format_tokens(after)} at {cheque.provider}; journal vs vault: "
        f"{'agree' if not view.get('problems') else view['problems']}"
    )
    ok = after > before and not view.get("problems")
    return "settled on chain", ok, key_file.stem, note


def wait_until(what: str, check: Any, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def forget_chain_ledger(data_dir: Path) -> None:
    """Without a chain, a ledger kept against an earlier run's vault is moved aside too
    (it books a chain that is gone)."""
    marker = data_dir / "chain" / "deployment.json"
    if marker.exists():
        _move_ledger_aside(data_dir)
        marker.unlink()


def _move_ledger_aside(data_dir: Path) -> None:
    """Keep the last ledger as tessera.db.previous; forget the gateway's transactions on
    the old chain (their nonces mean nothing on a new one)."""
    for name in LEDGER_FILES:
        path = data_dir / name
        if path.exists():
            path.replace(path.with_name(name.replace("tessera.db", "tessera.db.previous")))
    sent = state_path_for(data_dir / "gateway-eth.key")
    for suffix in ("", "-wal", "-shm", "-journal"):
        sent.with_name(sent.name + suffix).unlink(missing_ok=True)


def _needs_gas(client: ChainClient, address: str) -> bool:
    return client.w3.eth.get_balance(address) < GAS_WEI // 10  # type: ignore[arg-type]


def _token_shortfall(client: ChainClient, address: str, amount: int) -> int:
    """Tokens ``address`` lacks to hold ``amount`` (0 if it has them)."""
    return max(0, amount - client.token_balance(address))


def _gas(client: ChainClient, address: str) -> None:
    if _needs_gas(client, address):
        fund_eth(client, address, GAS_WEI)
