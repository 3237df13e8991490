"""Deploy the four contracts, in dependency order, and wire them together.

Order: Token; Registry(signer_grace); StakeManager(token, unbonding_period,
challenge_period, governance, committee, threshold, min_member_stake);
PaymentVault(token, registry, stake, unlock_period, epoch_length, governance); then
``stake.set_vault(vault)`` by governance. Governance is the deployer unless it is given
(then ``set_vault`` must be sent by it: we only deploy with governance == deployer, and
say so). The committee defaults to the governance address alone, threshold 1.

Three lines from Python::

    with anvil() as node:
        deployment = deploy_to(node.url, params=DeployParams.for_tests())
        ...
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import Any

from eth_utils import to_checksum_address
from web3 import Web3

from tessera.chain.anvil import ANVIL_CHAIN_ID, DEV_PRIVATE_KEY
from tessera.chain.artifacts import Artifact, load_artifacts
from tessera.chain.deployment import ARTIFACT_OF, Deployment
from tessera.chain.keys import EthKey
from tessera.chain.sender import TxSender
from tessera.errors import ConfigError

log = logging.getLogger(__name__)

DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class DeployParams:
    """Constructor arguments. Defaults are production values; :meth:`for_tests` gives
    periods short enough for a test to wait out (with ``evm_increaseTime``)."""

    signer_grace_s: int = DAY_S
    unbonding_period_s: int = 7 * DAY_S
    challenge_period_s: int = 2 * DAY_S
    unlock_period_s: int = DAY_S
    epoch_length_s: int = 3600
    governance: str | None = None  # None: the deployer
    committee: tuple[str, ...] = ()  # empty: the governance address alone
    threshold: int = 1
    min_member_stake: int = 0  # base units a member must have bonded to vote

    @classmethod
    def for_tests(cls, **overrides: Any) -> DeployParams:
        short = cls(
            signer_grace_s=30,
            unbonding_period_s=60,
            challenge_period_s=30,
            unlock_period_s=20,
            epoch_length_s=60,
        )
        return replace(short, **overrides)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["committee"] = list(self.committee)
        return out


def connect(url: str, timeout_s: float = 30.0) -> Web3:
    """A synchronous web3 over HTTP to ``url``."""
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout_s}))


def dev_key_for(w3: Web3) -> EthKey:
    """anvil's well-known first account, refused on any chain but a local 31337 one."""
    chain_id = w3.eth.chain_id
    if chain_id != ANVIL_CHAIN_ID:
        raise ConfigError(
            f"chain {chain_id} is not a local dev chain: pass --key with the deployer's key file"
        )
    log.warning("using anvil's public dev key (account #0) as deployer: local chains only")
    return EthKey.from_hex(DEV_PRIVATE_KEY)


def deploy(
    sender: TxSender,
    params: DeployParams = DeployParams(),
    artifacts: dict[str, Artifact] | None = None,
) -> Deployment:
    """Deploy and wire all four contracts from ``sender``'s account."""
    artifacts = artifacts or load_artifacts()
    w3 = sender.w3
    deployer = sender.address
    governance = to_checksum_address(params.governance or deployer)
    if governance != deployer:
        raise ConfigError(
            "deploy with the governance key itself (stake.set_vault must come from it); "
            "hand governance over afterwards"
        )
    committee = [to_checksum_address(a) for a in params.committee] or [governance]

    def create(name: str, *args: Any) -> tuple[str, int]:
        artifact = artifacts[name]
        factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = sender.transact(factory.constructor(*args))
        address = receipt["contractAddress"]
        if address is None:
            raise ConfigError(f"deploying {name} created no contract")
        log.info("deployed %s at %s", name, address)
        return to_checksum_address(address), int(receipt["blockNumber"])

    token, start_block = create(ARTIFACT_OF["token"])
    registry, _ = create(ARTIFACT_OF["registry"], params.signer_grace_s)
    stake, _ = create(
        ARTIFACT_OF["stake"],
        token,
        params.unbonding_period_s,
        params.challenge_period_s,
        governance,
        committee,
        params.threshold,
        params.min_member_stake,
    )
    vault, _ = create(
        ARTIFACT_OF["vault"],
        token,
        registry,
        stake,
        params.unlock_period_s,
        params.epoch_length_s,
        governance,
    )
    stake_contract = w3.eth.contract(address=stake, abi=artifacts[ARTIFACT_OF["stake"]].abi)
    sender.transact(stake_contract.functions.set_vault(vault))
    recorded = replace(params, governance=governance, committee=tuple(committee))
    return Deployment(
        chain_id=sender.chain_id,
        contracts={"token": token, "registry": registry, "stake": stake, "vault": vault},
        deployer=deployer,
        params=recorded.to_json(),
        start_block=start_block,
    )


def deploy_to(
    url: str, key: EthKey | None = None, params: DeployParams | None = None
) -> Deployment:
    """Connect to ``url`` and deploy from ``key`` (anvil's dev key on a 31337 chain)."""
    w3 = connect(url)
    sender = TxSender(w3, key or dev_key_for(w3))
    try:
        return deploy(sender, params or DeployParams())
    finally:
        sender.close()
