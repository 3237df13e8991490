"""Where the four contracts live on one chain: the file ``tessera chain up`` writes and
``tessera gateway --deployment FILE`` and the wallet commands read.

The file is plain JSON (no secrets), written atomically::

    {"chain_id": 31337, "contracts": {"token": "0x…", "registry": "0x…",
     "stake": "0x…", "vault": "0x…"}, "deployer": "0x…", "params": {…},
     "start_block": 1}

``start_block`` is the block of the first deployment transaction, where an indexer starts
reading logs.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera.errors import ConfigError

CONTRACT_KEYS = ("token", "registry", "stake", "vault")
# Which compiled artifact each deployment key holds.
ARTIFACT_OF = {
    "token": "Token",
    "registry": "Registry",
    "stake": "StakeManager",
    "vault": "PaymentVault",
}


@dataclass(frozen=True, slots=True)
class Deployment:
    """One deployment of the contracts. Addresses are EIP-55 checksummed."""

    chain_id: int
    contracts: dict[str, str]
    deployer: str
    params: dict[str, Any] = field(default_factory=dict)
    start_block: int = 0

    def address(self, key: str) -> str:
        return self.contracts[key]

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "contracts": dict(self.contracts),
            "deployer": self.deployer,
            "params": dict(self.params),
            "start_block": self.start_block,
        }

    @classmethod
    def from_json(cls, raw: Any, source: str = "deployment") -> Deployment:
        """Parse and check a deployment document; ConfigError names what is wrong."""
        from eth_utils import is_address, to_checksum_address

        if not isinstance(raw, dict):
            raise ConfigError(f"{source} is not a JSON object; write it with `tessera chain up`")
        try:
            chain_id = raw["chain_id"]
            contracts = raw["contracts"]
            deployer = raw["deployer"]
        except KeyError as exc:
            raise ConfigError(
                f"{source} has no {exc.args[0]!r}; write it with `tessera chain up`"
            ) from exc
        if type(chain_id) is not int or chain_id <= 0:
            raise ConfigError(f"{source}: chain_id must be a positive integer")
        if not isinstance(contracts, dict) or set(contracts) != set(CONTRACT_KEYS):
            raise ConfigError(f"{source}: contracts must name exactly {', '.join(CONTRACT_KEYS)}")
        for name, value in [*contracts.items(), ("deployer", deployer)]:
            if not (isinstance(value, str) and is_address(value)):
                raise ConfigError(f"{source}: {name} is not an Ethereum address: {value!r}")
        start_block = raw.get("start_block", 0)
        if type(start_block) is not int or start_block < 0:
            raise ConfigError(f"{source}: start_block must be a block number")
        params = raw.get("params", {})
        if not isinstance(params, dict):
            raise ConfigError(f"{source}: params must be an object")
        return cls(
            chain_id=chain_id,
            contracts={k: to_checksum_address(contracts[k]) for k in CONTRACT_KEYS},
            deployer=to_checksum_address(deployer),
            params=params,
            start_block=start_block,
        )

    def save(self, path: Path) -> None:
        """Write the file atomically (a reader sees the old or the new one, whole)."""
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(self.to_json(), handle, indent=2)
                handle.write("\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Deployment:
        path = Path(path).expanduser()
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(
                f"no deployment file at {path}: start a dev chain with `tessera chain up` "
                "or pass --deployment"
            ) from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read deployment file {path}: {exc}") from exc
        return cls.from_json(raw, source=str(path))
