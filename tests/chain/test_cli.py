"""`tessera chain` and `tessera wallet` end to end: deploy to a fresh anvil, create a
wallet, fund it, deposit by permit, read the balance; and the errors say what to run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from typer.testing import CliRunner

from tessera.chain.anvil import AnvilNode, free_port, start_anvil
from tessera.chain.deployment import Deployment
from tessera.chain.keys import EthKey
from tessera.cli import app
from tessera.ledger.accounts import TOKEN
from tessera.private_files import write_private

from support.chain import Chain

pytestmark = pytest.mark.integration

runner = CliRunner()


def tessera(*args: object, code: int = 0) -> str:
    """Run the CLI in process; its output with rich's line wrapping undone."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output if code == 0 else " ".join(result.output.split())


@pytest.fixture(scope="module")
def fresh_node() -> Iterator[AnvilNode]:
    node = start_anvil()
    try:
        yield node
    finally:
        node.stop()


def test_up_fund_mint_deposit_and_balance(fresh_node: AnvilNode, tmp_path: Path) -> None:
    out = tmp_path / "deployment.json"
    url = ["--chain-url", fresh_node.url]
    printed = tessera("chain", "up", "--dev", *url, "--out", out, "--json")
    deployment = Deployment.load(out)
    assert json.loads(printed[printed.index("{") : printed.rindex("}") + 1])["contracts"] == (
        deployment.contracts
    )
    assert deployment.params["unlock_period_s"] == 20  # --dev: test periods
    # Again against the same live chain: reused, not deployed twice.
    tessera("chain", "up", "--dev", *url, "--out", out)
    assert Deployment.load(out) == deployment

    on = [*url, "--deployment", out]
    key = tmp_path / "wallet.key"
    address = tessera("wallet", "create", "--key-file", key).split()[-1]
    assert tessera("wallet", "address", "--key-file", key).strip() == address
    tessera("chain", "fund", "--key-file", key, "--eth", "0.5", *on)
    tessera("chain", "mint", "10", "--key-file", key, *on)
    gateway = EthKey.generate().address
    tessera("wallet", "deposit", gateway, "2.5", "--cap", "1", "--key-file", key, *on)
    held = json.loads(
        tessera("wallet", "balance", "--gateway", gateway, "--key-file", key, "--json", *on)
    )
    assert held == {
        "address": address,
        "eth_wei": held["eth_wei"],
        "tokens": 7_500_000_000,
        "bonded": 0,
        "unbonding": 0,
        "stake_unlock_at": 0,
        "gateway": gateway,
        "deposit": 2_500_000_000,
        "custodial_cap": TOKEN,
        "custodial_left": TOKEN,
        "withdraw_unlock_at": 0,
    }
    assert 0 < held["eth_wei"] < 5 * 10**17  # gas was paid from the 0.5 ETH
    status = json.loads(tessera("chain", "status", "--json", *on))
    assert status["vault_holds"] == 2_500_000_000
    assert status["contracts"] == deployment.contracts
    # The gateway deposited for, seen from the vault's events: nothing collected or settled.
    assert status["gateways"] == {gateway: {"balance": 0, "last_settled_epoch": 0}}
    shown = " ".join(tessera("chain", "status", *on).split())
    assert f"gateway {gateway[:10]}" in shown and "last settled epoch none" in shown
    # More precision than one base unit is refused, not rounded.
    refused = tessera("wallet", "deposit", gateway, "0.0000000001", "--key-file", key, *on, code=2)
    assert "more than 9 decimal places" in refused


def test_wallet_stake_bind_and_cash_on_the_shared_chain(chain: Chain, tmp_path: Path) -> None:
    on = ["--chain-url", chain.url, "--deployment", chain.deployment_file]
    gateway = chain.funded_key()
    key = tmp_path / "wallet.key"
    funded = chain.funded_key(tokens=3 * TOKEN)
    tessera("wallet", "import", "--key-file", key, "--private-key", funded.private_key.hex())
    tessera("wallet", "bond", "2", "--key-file", key, *on)
    tessera("wallet", "unbond", "0.5", "--key-file", key, *on)
    assert chain.client.unbonding(funded.address) == TOKEN // 2
    early = tessera("wallet", "withdraw-stake", "--key-file", key, *on, code=2)
    assert "unlocks in" in early

    provider_key = tmp_path / "provider.key"
    write_private(provider_key, SigningKey.generate().encode().hex() + "\n")
    tessera("wallet", "bind", "--provider-key", provider_key, "--key-file", key, *on)
    assert chain.client.bindings(funded.address) is not None

    # A cheque, as the gateway serves it, that neither its balance nor its bond covers.
    cheque = chain.client.sign_cheque(gateway.private_key, gateway.address, funded.address, 1)
    cheque_file = tmp_path / "cheque.json"
    cheque_file.write_text(json.dumps({"object": "cheque", **cheque.to_json()}))
    not_covered = tessera("wallet", "cash", cheque_file, "--key-file", key, *on)
    assert "not covered yet" in not_covered  # the gateway has neither balance nor bond


def test_errors_say_what_to_run(chain: Chain, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    out = tessera("chain", "status", "--chain-url", chain.url, "--deployment", missing, code=2)
    assert "no deployment file at" in out and "nowhere.json" in out
    assert "tessera chain up" in out
    out = tessera("wallet", "address", "--key-file", tmp_path / "none.key", code=2)
    assert "tessera wallet create" in out
    key = tmp_path / "wallet.key"
    tessera("wallet", "create", "--key-file", key)
    out = tessera("wallet", "create", "--key-file", key, code=2)
    assert "already exists" in out
    on = ["--chain-url", chain.url, "--deployment", chain.deployment_file]
    out = tessera(
        "wallet", "deposit", chain.funded_key().address, "1", "--key-file", key, *on, code=2
    )
    assert "too few to deposit" in out and "tessera chain mint" in out
    out = tessera(
        "wallet", "bind", "--provider-key", tmp_path / "p.key", "--key-file", key, *on, code=2
    )
    assert "no provider key" in out
    dead = f"http://127.0.0.1:{free_port()}"
    out = tessera(
        "chain", "status", "--chain-url", dead, "--deployment", chain.deployment_file, code=2
    )
    assert "is the chain URL right and the node up?" in out


def test_chain_up_runs_anvil_until_stopped(tmp_path: Path) -> None:
    out, port = tmp_path / "deployment.json", free_port()
    env = {**os.environ, "HOME": str(tmp_path)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tessera.cli",
            "chain",
            "up",
            "--dev",
            "--port",
            str(port),
            "--out",
            str(out),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not out.exists():
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "chain up wrote no deployment in 30 s"
            time.sleep(0.1)
        status = json.loads(
            tessera(
                "chain",
                "status",
                "--chain-url",
                f"http://127.0.0.1:{port}",
                "--deployment",
                out,
                "--json",
            )
        )
        assert status["contracts"] == Deployment.load(out).contracts
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=10)[0].decode()
    assert process.returncode == 0, output
    assert "stopping the chain" in output
    # anvil went with it: the port is free again.
    node = start_anvil(port=port)
    node.stop()
