"""A real network for end-to-end tests: gateway and provider processes on free ports.

Everything here is what a user runs: the `tessera` CLI in subprocesses, real models, real
sockets on 127.0.0.1, and the official `openai` client.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from openai import OpenAI

from tessera.demo import Network, free_port, wait_for_network
from tessera.dev_money import fund_account, stake_provider

TEXT_MODEL = "tessera-tiny"
EMBED_MODEL = "all-MiniLM-L6-v2"


@dataclass
class LiveNetwork:
    base: str
    api_key: str
    network: Network
    data_dir: Path
    port: int

    def client(self, **kw: object) -> OpenAI:
        return OpenAI(base_url=f"{self.base}/v1", api_key=self.api_key, max_retries=0, **kw)  # type: ignore[arg-type]


def create_key(data_dir: Path, *options: str) -> str:
    """A new API key made by `tessera keys create` (``options``: e.g. "--rpm", "6000")."""
    return create_key_with_id(data_dir, *options)[0]


def create_key_with_id(data_dir: Path, *options: str) -> tuple[str, str]:
    """A new API key and its id (``key_…``, what the request log names it by)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tessera.cli",
            "keys",
            "create",
            "--json",
            "--data-dir",
            str(data_dir),
            *options,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    made = json.loads(out.stdout)
    return str(made["key"]), str(made["id"])


def provider_key_file(network: Network, index: int) -> Path:
    return network.data_dir / f"provider-{index}.key"


def start_provider(
    network: Network,
    base: str,
    model_dir: Path,
    index: int,
    region: str,
    embeddings: bool = True,
    max_concurrent_jobs: int = 2,
    price: tuple[int, int] | None = None,
) -> None:
    """A staked provider serving the tiny model and, with ``embeddings``, all-MiniLM-L6-v2
    (sentence-transformers and MiniLM cost a provider about 2 s of CPU more at start);
    ``price``: (input, output) base units per 1M tokens (default 100 and 300 x index)."""
    price_in, price_out = price or (100 * index, 300 * index)
    minilm = ["--model", "minilm"] if embeddings else []
    network.spawn(
        f"provider-{index}",
        [
            "provider",
            "--gateway", base,
            "--model", str(model_dir),
            *minilm,
            "--region", region,
            "--label", f"e2e-{index}",
            "--price-in", str(price_in),
            "--price-out", str(price_out),
            "--key-file", str(provider_key_file(network, index)),
            "--threads", "1",
            "--max-concurrent-jobs", str(max_concurrent_jobs),
        ],
    )  # fmt: skip


def start_network(
    data_dir: Path,
    model_dir: Path,
    providers: int = 2,
    embeddings: bool = True,
    max_concurrent_jobs: int = 2,
    prices: Sequence[tuple[int, int]] | None = None,
    regions: Sequence[str] = ("US-east", "DE-eu"),
) -> LiveNetwork:
    """A dev gateway and ``providers`` providers (see :func:`start_provider`), all
    connected; provider i gets ``prices[i]`` and ``regions[i % len(regions)]``."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    network = Network(data_dir)
    network.spawn("gateway", ["gateway", "--port", str(port), "--data-dir", str(data_dir), "--dev"])
    try:
        api_key = create_key(data_dir)
        wait_for_network(base, 0, network, timeout_s=60)
        fund_account(base, api_key)
        for i in range(providers):
            stake_provider(base, provider_key_file(network, i + 1))
            region = regions[i % len(regions)]
            price = None if prices is None else prices[i]
            start_provider(network, base, model_dir, i + 1, region, embeddings,
                           max_concurrent_jobs, price)  # fmt: skip
        wait_for_network(base, providers, network, timeout_s=240)
    except BaseException:
        network.stop()
        raise
    return LiveNetwork(base, api_key, network, data_dir, port)
