"""The contracts' ABI and deployment bytecode, compiled from ``contracts/*.vy`` on first use.

No bytecode is committed: the sources are the truth. Compiling all four takes a few
seconds, so the result is cached in ``.cache/contracts/<key>.json``, where the key hashes
every ``.vy`` source, the vyper and snekmate versions and the EVM version. A second
process (a test worker, the gateway, the CLI) reuses the file; it is written atomically,
so a reader never sees half of it. Change a source and the key changes.

Overrides: ``TESSERA_CONTRACTS_DIR`` (or ``contracts_dir=``) for the sources,
``TESSERA_CONTRACTS_CACHE`` (or ``cache_dir=``) for the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tessera.errors import ConfigError

CONTRACT_NAMES = ("Token", "Registry", "StakeManager", "PaymentVault")
EVM_VERSION = "prague"  # vyper 0.4.3's default, and anvil 1.7.1's
REPO_ROOT = Path(__file__).resolve().parents[3]
CONTRACTS_ENV = "TESSERA_CONTRACTS_DIR"
CACHE_ENV = "TESSERA_CONTRACTS_CACHE"
_FORMAT = 1  # bump when the cache file's layout changes

_memo: dict[str, dict[str, Artifact]] = {}
_memo_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Artifact:
    """One compiled contract: its ABI and the bytecode that deploys it (hex, 0x-prefixed)."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str


def contracts_dir(override: Path | None = None) -> Path:
    """The folder of ``*.vy`` sources: the argument, ``$TESSERA_CONTRACTS_DIR``, or the
    repository's ``contracts/`` (the package is installed editable)."""
    if override is not None:
        return Path(override).expanduser().resolve()
    env = os.environ.get(CONTRACTS_ENV)
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "contracts"


def cache_dir(override: Path | None = None) -> Path:
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else REPO_ROOT / ".cache" / "contracts"


def source_key(folder: Path) -> str:
    """A hash of everything the bytecode depends on: sources, compiler, library, EVM."""
    digest = hashlib.sha256()
    for part in (_FORMAT, _version("vyper"), _version("snekmate"), EVM_VERSION):
        digest.update(f"{part}\n".encode())
    for path in sorted(folder.glob("*.vy")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def load_artifacts(contracts: Path | None = None, cache: Path | None = None) -> dict[str, Artifact]:
    """All four contracts by name, from the cache when the sources are unchanged, else
    compiled now (and cached). Raises ConfigError when a source is missing or does not
    compile."""
    folder = contracts_dir(contracts)
    missing = [name for name in CONTRACT_NAMES if not (folder / f"{name}.vy").is_file()]
    if missing:
        raise ConfigError(
            f"no {', '.join(m + '.vy' for m in missing)} in {folder}; run from a Tessera "
            f"checkout or point ${CONTRACTS_ENV} at the contracts folder"
        )
    key = source_key(folder)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
        path = cache_dir(cache) / f"{key}.json"
        artifacts = _read_cache(path)
        if artifacts is None:
            artifacts = {name: compile_contract(folder / f"{name}.vy") for name in CONTRACT_NAMES}
            _write_cache(path, artifacts)
        _memo[key] = artifacts
        return artifacts


def compile_contract(path: Path) -> Artifact:
    """Compile one ``.vy`` file with the vyper Python API. Imports resolve from the file's
    folder and from ``sys.path`` (snekmate lives in site-packages)."""
    import vyper
    from vyper.compiler.input_bundle import FileInput, FilesystemInputBundle
    from vyper.compiler.settings import Settings
    from vyper.exceptions import VyperException

    path = Path(path).resolve()
    # vyper gives the *last* search path the highest precedence: the contract's own folder.
    search = [Path(p) for p in reversed(sys.path) if p and Path(p).is_dir()]
    bundle = FilesystemInputBundle([*search, path.parent])
    try:
        source = bundle.load_file(path)
        if not isinstance(source, FileInput):
            raise ConfigError(f"{path} is not a Vyper source file")
        output = vyper.compile_from_file_input(
            source,
            input_bundle=bundle,
            settings=Settings(evm_version=EVM_VERSION),
            output_formats=["abi", "bytecode"],
        )
    except VyperException as exc:
        raise ConfigError(
            f"{path.name} does not compile with vyper {vyper.__version__}: {exc}"
        ) from exc
    return Artifact(name=path.stem, abi=output["abi"], bytecode=output["bytecode"])


def _read_cache(path: Path) -> dict[str, Artifact] | None:
    try:
        raw = json.loads(path.read_text())
        return {
            name: Artifact(name, raw[name]["abi"], raw[name]["bytecode"]) for name in CONTRACT_NAMES
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or damaged: compile again and overwrite


def _write_cache(path: Path, artifacts: dict[str, Artifact]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {name: {"abi": a.abi, "bytecode": a.bytecode} for name, a in artifacts.items()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(body, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"
