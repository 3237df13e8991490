"""One anvil node with the four contracts deployed, for every test that needs a chain.

Start it once per session (``tests/chain/conftest.py`` does) and give each test its own
fresh keys from :meth:`Chain.funded_key`, so tests share the node without sharing an
account. Time only moves forward (:meth:`Chain.wait_out`), so no test may rely on the
absolute chain time, only on periods it waits out itself::

    @pytest.fixture(scope="session")
    def chain(tmp_path_factory):
        with running_chain(tmp_path_factory.mktemp("chain")) as chain:
            yield chain
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tessera.chain.anvil import AnvilNode, rpc, start_anvil
from tessera.chain.client import ChainClient
from tessera.chain.deploy import DeployParams, deploy_to, dev_key_for
from tessera.chain.deployment import Deployment
from tessera.chain.keys import EthKey
from tessera.chain.sender import TxSender

GAS_WEI = 10**20  # 100 ETH: more gas than any test spends


@dataclass
class Chain:
    """A running node and its deployment (test periods: ``DeployParams.for_tests``)."""

    node: AnvilNode
    deployment: Deployment
    deployment_file: Path
    client: ChainClient
    minter: TxSender  # the deployer: owner and minter of the token, governance
    params: DeployParams

    @property
    def url(self) -> str:
        return self.node.url

    def funded_key(self, tokens: int = 0) -> EthKey:
        """A new key with gas, and ``tokens`` base units minted to it."""
        key = EthKey.generate()
        rpc(self.node.url, "anvil_setBalance", [key.address, hex(GAS_WEI)])
        if tokens:
            self.mint(key.address, tokens)
        return key

    def mint(self, address: str, tokens: int) -> None:
        self.minter.transact(self.client.token.functions.mint(address, tokens))

    def sender(self, key: EthKey, state_path: Path | None = None) -> TxSender:
        return TxSender(self.client.w3, key, state_path=state_path)

    def mine(self, blocks: int = 1) -> None:
        rpc(self.node.url, "anvil_mine", [hex(blocks)])

    def wait_out(self, seconds: int) -> None:
        """Move the chain's clock ``seconds`` forward and mine a block at the new time."""
        rpc(self.node.url, "evm_increaseTime", [seconds])
        self.mine()


@contextlib.contextmanager
def running_chain(root: Path, params: DeployParams | None = None) -> Iterator[Chain]:
    """Start anvil, deploy (``DeployParams.for_tests()`` unless given), write the
    deployment file under ``root``; stop the node on exit."""
    params = params or DeployParams.for_tests()
    node = start_anvil()
    try:
        deployment = deploy_to(node.url, params=params)
        path = Path(root) / "deployment.json"
        deployment.save(path)
        client = ChainClient(node.url, deployment)
        minter = TxSender(client.w3, dev_key_for(client.w3))
        try:
            yield Chain(node, deployment, path, client, minter, params)
        finally:
            minter.close()
    finally:
        node.stop()
