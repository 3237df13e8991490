"""Independent gateways and one provider that dials out to all of them, as real processes.

Each gateway is its own operator: its own data directory, SQLite database, ledger, API key
and funded account. The provider bonds stake on each one separately (through each
gateway's API, exactly as `tessera stake` does) and is started once with one
``--gateway`` flag per gateway, so no single operator can cut it off. Processes run
through :class:`tessera.demo.Network`, so ``stop()`` always ends them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from tessera.demo import Network, create_api_key, free_port, wait_for_network
from tessera.dev_money import DEFAULT_FUNDS, fund_account, stake_provider

from support.verified_network import environment

PROVIDER = "provider"
PRICE_IN = 100_000_000  # base units per million tokens: every request costs something
PRICE_OUT = 300_000_000


@dataclass
class GatewayProcess:
    """One operator's gateway: where it listens and keeps its state, and its consumer key."""

    name: str
    port: int
    data_dir: Path
    api_key: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw: Any) -> OpenAI:
        return OpenAI(base_url=f"{self.base}/v1", api_key=self.api_key, max_retries=0, **kw)

    def get(self, path: str, **kw: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        response = httpx.get(f"{self.base}{path}", headers=headers, timeout=10, **kw)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


@dataclass
class MultiGatewayNetwork:
    network: Network
    gateways: dict[str, GatewayProcess]
    key_file: Path
    provider_id: str
    funds: int = DEFAULT_FUNDS

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return next(proc for n, proc in self.network.processes if n == name)

    def kill_gateway(self, name: str) -> None:
        """SIGKILL a gateway: no shutdown, no goodbye, sockets reset by the kernel."""
        proc = self.process(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.network.processes.remove((name, proc))

    def restart_gateway(self, name: str) -> None:
        """Start a killed gateway again on the same port and data directory."""
        spawn_gateway(self.network, self.gateways[name])

    def provider_log(self) -> str:
        return (self.network.data_dir / "logs" / f"{PROVIDER}.log").read_text(errors="replace")

    def stop(self) -> None:
        self.network.stop()


def spawn_gateway(network: Network, gateway: GatewayProcess) -> None:
    args = ["gateway", "--port", str(gateway.port), "--data-dir", str(gateway.data_dir), "--dev"]
    network.spawn(gateway.name, args)


def wait_routable(
    gateway: GatewayProcess, provider_id: str, network: Network, timeout_s: float = 120
) -> dict[str, Any]:
    """Poll the gateway's public provider view until the provider is connected and routable."""
    deadline = time.monotonic() + timeout_s
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if network.dead():
            raise RuntimeError(f"{', '.join(network.dead())} exited; see {network.data_dir}/logs")
        with contextlib.suppress(httpx.HTTPError):
            view = gateway.get(f"/v1/providers/{provider_id}")
            if view["connected"] and view["routable"]:
                return view
        time.sleep(0.2)
    raise RuntimeError(f"{provider_id[:12]} not routable on {gateway.name} in {timeout_s}s: {view}")


def start_multi_gateway(
    root: Path,
    model_dir: Path,
    names: tuple[str, ...] = ("a", "b"),
    provider_env: dict[str, str] | None = None,
    max_concurrent_jobs: int = 2,
) -> MultiGatewayNetwork:
    """Start one dev-mode gateway per name, fund a consumer on each, bond the provider's
    stake on each, then start the single provider with one ``--gateway`` per gateway."""
    network = Network(root)
    key_file = root / "provider.key"
    gateways: dict[str, GatewayProcess] = {}
    try:
        for name in names:
            data_dir = root / f"gateway-{name}"
            data_dir.mkdir(parents=True)
            # Made before the gateway starts, so the two never migrate the database at once.
            api_key = asyncio.run(create_api_key(data_dir, f"consumer-{name}"))
            gateways[name] = GatewayProcess(name, free_port(), data_dir, api_key)
            spawn_gateway(network, gateways[name])
        provider_id = ""
        for gateway in gateways.values():
            wait_for_network(gateway.base, 0, network, timeout_s=60)
            fund_account(gateway.base, gateway.api_key, DEFAULT_FUNDS)
            provider_id = stake_provider(gateway.base, key_file)
        args = ["provider"]
        for gateway in gateways.values():
            args += ["--gateway", gateway.base]
        args += [
            "--model", str(model_dir),
            "--region", "US-east",
            "--label", "multi-gateway",
            "--price-in", str(PRICE_IN),
            "--price-out", str(PRICE_OUT),
            "--key-file", str(key_file),
            "--threads", "1",
            "--max-concurrent-jobs", str(max_concurrent_jobs),
        ]  # fmt: skip
        with environment(provider_env or {}):
            network.spawn(PROVIDER, args)
        for gateway in gateways.values():
            wait_routable(gateway, provider_id, network, timeout_s=240)
    except BaseException:
        network.stop()
        raise
    return MultiGatewayNetwork(network, gateways, key_file, provider_id)


def ledger_check(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`tessera ledger check` on a gateway's database: replays the journal offline."""
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli", "ledger", "check", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
