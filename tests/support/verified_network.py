"""A network that audits: a calibrated catalog, validator providers, and the audit APIs.

Built on live_network.py: the same `tessera` CLI processes on free ports, but the gateway
pins the tiny model in a catalog (the ``tiny_catalog`` fixture) and names some
providers as validators, and the providers differ in dtype and torch threads, as honest
providers on different hardware do.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tessera.demo import Network, free_port, wait_for_network
from tessera.dev_money import DEFAULT_STAKE, fund_account, stake_provider
from tessera.key_file import load_or_create_key
from tessera.protocol.signing import public_key_hex

from support.live_network import LiveNetwork, create_key

ROUTABLE = "routable"


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """How one provider process runs its model, whether the operator trusts it, and its
    price (base units per million input and output tokens)."""

    dtype: str
    threads: int
    validator: bool
    max_concurrent_jobs: int = 3
    price: tuple[int, int] = (100, 300)
    name: str | None = None  # its process and key file name; provider-N when None

    @property
    def setup(self) -> str:
        return f"{self.dtype}/threads={self.threads}"


@dataclass(frozen=True, slots=True)
class Joined:
    """What a ``join_more`` hook of :func:`start_verified_network` started: how many
    provider identities will connect, and which of them must pass the join challenge."""

    connected: int
    routable: tuple[str, ...] = ()


JoinMore = Callable[[Network, str], Joined]


@dataclass
class VerifiedNetwork:
    live: LiveNetwork
    catalog: Path
    providers: dict[str, ProviderSpec]  # provider id -> how it runs
    names: dict[str, str]  # provider id -> process name (its spec's name, or provider-N)
    stake: int
    phases: dict[str, float] = field(default_factory=dict)  # what took how long, seconds


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the processes spawned inside (Network copies ours)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def start_verified_network(
    data_dir: Path,
    model_dir: Path,
    catalog: Path,
    specs: Sequence[ProviderSpec],
    gateway_env: Mapping[str, str] | None = None,
    timeout_s: float = 240,
    join_more: JoinMore | None = None,
) -> VerifiedNetwork:
    """Gateway with ``catalog`` and validators, then one staked provider per spec, then
    whatever ``join_more(network, base)`` starts (staked by it); every spec's provider and
    every id the hook names routable (join challenge passed) before this returns."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    network = Network(data_dir)
    names = [spec.name or f"provider-{i}" for i, spec in enumerate(specs, start=1)]
    key_files = [data_dir / f"{name}.key" for name in names]
    ids = [public_key_hex(load_or_create_key(path)) for path in key_files]
    validators = [pid for pid, spec in zip(ids, specs, strict=True) if spec.validator]
    args = ["gateway", "--port", str(port), "--data-dir", str(data_dir), "--dev",
            "--catalog", str(catalog)]  # fmt: skip
    for pid in validators:
        args += ["--validator", pid]
    with environment(gateway_env or {}):
        network.spawn("gateway", args)
    try:
        api_key = create_key(data_dir)
        wait_for_network(base, 0, network, timeout_s=60)
        fund_account(base, api_key, 1_000 * 10**9)
        for spec, key_file, name in zip(specs, key_files, names, strict=True):
            stake_provider(base, key_file)
            network.spawn(
                name,
                [
                    "provider",
                    "--gateway", base,
                    "--model", str(model_dir),
                    "--label", f"{spec.setup}{' validator' if spec.validator else ''}",
                    "--price-in", str(spec.price[0]),
                    "--price-out", str(spec.price[1]),
                    "--key-file", str(key_file),
                    "--dtype", spec.dtype,
                    "--threads", str(spec.threads),
                    "--max-concurrent-jobs", str(spec.max_concurrent_jobs),
                ],
            )  # fmt: skip
        more = join_more(network, base) if join_more is not None else Joined(0)
        wait_for_network(base, len(specs) + more.connected, network, timeout_s=timeout_s)
        model = _catalog_model(base)
        wait_routable(base, [*ids, *more.routable], model, network, timeout_s=timeout_s)
    except BaseException:
        network.stop()
        raise
    live = LiveNetwork(base, api_key, network, data_dir, port)
    return VerifiedNetwork(
        live,
        catalog,
        dict(zip(ids, specs, strict=True)),
        dict(zip(ids, names, strict=True)),
        DEFAULT_STAKE,
    )


def _catalog_model(base: str) -> str:
    models = httpx.get(f"{base}/v1/catalog", timeout=10).json()["data"]
    if len(models) != 1:
        raise RuntimeError(f"expected one catalog model, got {models}")
    return str(models[0]["name"])


def reputation(base: str, provider_id: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/v1/providers/{provider_id}/reputation", timeout=10)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def wait_routable(
    base: str, ids: Sequence[str], model: str, network: Network, timeout_s: float
) -> None:
    """Wait until every provider passed the model's join challenge (or say who did not)."""
    deadline = time.monotonic() + timeout_s
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        dead = network.dead()
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited; see {network.data_dir / 'logs'}")
        status = {pid[:12]: reputation(base, pid)["models"].get(model) for pid in ids}
        if all(s == ROUTABLE for s in status.values()):
            return
        time.sleep(0.5)
    raise RuntimeError(f"providers not routable for {model} after {timeout_s:.0f}s: {status}")


def all_audits(base: str, page: int = 200) -> list[dict[str, Any]]:
    """Every audit the gateway stored, newest first (pages with ``before``)."""
    found: list[dict[str, Any]] = []
    before: int | None = None
    with httpx.Client(timeout=30) as http:
        while True:
            params: dict[str, Any] = {"limit": page}
            if before is not None:
                params["before"] = before
            response = http.get(f"{base}/v1/audits", params=params)
            response.raise_for_status()
            rows = response.json()["data"]
            found.extend(rows)
            if len(rows) < page:
                return found
            before = int(rows[-1]["id"])


def wait_for_cases(
    base: str, request_ids: Sequence[str], timeout_s: float
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Poll each request's audit case until it closed; (closed cases, ids still open)."""
    closed: dict[str, dict[str, Any]] = {}
    waiting = list(request_ids)
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=30) as http:
        while waiting:
            still: list[str] = []
            for request_id in waiting:
                response = http.get(f"{base}/v1/audit-cases/{request_id}")
                if response.status_code == 404:
                    still.append(request_id)
                    continue
                response.raise_for_status()
                closed[request_id] = response.json()
            waiting = still
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
    return closed, waiting


def ledger_check(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """``tessera ledger check`` over the gateway's database (stopped or running)."""
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli", "ledger", "check", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
