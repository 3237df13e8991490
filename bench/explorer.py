"""What the explorer costs: the request path with and without ten live explorer pages, and
the time to build one snapshot (and render its page) at 1,000 and 10,000 providers.

Request path: a gateway process and a provider agent fronting an OpenAI-compatible server
with the tiny model (as bench/gateway_overhead.py); the official openai client sends short
chat requests one at a time, in alternating blocks with no explorer open and with ten
explorer clients each holding the live stream (Server-Sent Events) and reloading the page
every 2 s, so machine noise hits both alike. Snapshot: pure, in this process, over rollups
holding 24 hours of requests. Run::

    PYTHONPATH=src:tests python bench/explorer.py [--requests N] [--providers 1000,10000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from openai import OpenAI
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from tessera.demo import Network, create_api_key, free_port, wait_for_network  # noqa: E402
from tessera.explorer.pages import live_fragments, overview  # noqa: E402
from tessera.explorer.rollups import TapeRow  # noqa: E402
from tessera.explorer.service import Explorer  # noqa: E402
from tessera.market.registry import ProviderRegistry  # noqa: E402
from tessera.protocol.wire import Capabilities  # noqa: E402
from tessera.provider.model_hash import weights_sha256  # noqa: E402
from tessera.store.api_keys import ApiKeyStore, KeyLimits  # noqa: E402
from tessera.store.engine import create_engine, database_url_for  # noqa: E402
from tessera.verify.catalog import Catalog  # noqa: E402

from support.tiny_model import ensure_tiny_model  # noqa: E402
from support.upstream_process import running_upstream  # noqa: E402

MESSAGES = [{"role": "user", "content": "Tell me a story about a fox."}]
VISITORS = 10
BLOCKS = 4  # alternating blocks per condition


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(client: OpenAI) -> float:
    started = time.perf_counter()
    client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1)  # type: ignore[arg-type]
    return (time.perf_counter() - started) * 1000


async def bench_key(data_dir: Path) -> str:
    """A key whose rate limits the benchmark never reaches (it measures latency)."""
    await create_api_key(data_dir, "migrate")  # creates and migrates the database
    engine = create_engine(database_url_for(data_dir))
    try:
        plaintext, _ = await ApiKeyStore(engine).create(
            "bench", limits=KeyLimits(requests_per_minute=10**9, tokens_per_minute=10**12)
        )
    finally:
        await engine.dispose()
    return plaintext


class Visitors:
    """Ten explorer pages: each holds the live stream and reloads the page every 2 s."""

    def __init__(self, base: str, count: int) -> None:
        self.base = base
        self.count = count
        self.stop = threading.Event()
        self.events = 0
        self.pages = 0
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> Visitors:
        self.stop.clear()
        for _ in range(self.count):
            for target in (self._stream, self._reload):
                thread = threading.Thread(target=target, daemon=True)
                thread.start()
                self.threads.append(thread)
        time.sleep(0.5)  # connected before the block starts
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)
        self.threads.clear()

    def _stream(self) -> None:
        with (
            httpx.Client(base_url=self.base, timeout=None) as http,
            http.stream("GET", "/explorer/api/v1/stream?window=24h") as stream,
        ):
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    self.events += 1
                if self.stop.is_set():
                    return

    def _reload(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as http:
            while True:
                http.get("/explorer?window=24h").raise_for_status()
                http.get("/explorer/static/explorer.js").raise_for_status()
                self.pages += 1
                if self.stop.wait(2.0):
                    return


def request_path(console: Console, requests: int) -> dict[str, list[float]]:
    model_dir = ensure_tiny_model()
    samples: dict[str, list[float]] = {"no explorer": [], f"{VISITORS} explorer pages": []}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        with running_upstream(model_dir, data_dir, "tiny", embeddings=False) as upstream:
            network = Network(data_dir)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            try:
                network.spawn(
                    "gateway",
                    ["gateway", "--port", str(port), "--data-dir", tmp, "--min-stake", "0"],
                )
                network.spawn(
                    "provider",
                    [
                        "provider", "--gateway", base, "--upstream", upstream.base_url,
                        "--upstream-model", "tiny", "--served-name", "tiny",
                        "--weights-sha256", weights_sha256(model_dir),
                        "--key-file", str(data_dir / "p.key"),
                    ],
                )  # fmt: skip
                wait_for_network(base, 1, network)
                key = asyncio.run(bench_key(data_dir))
                via = OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
                for _ in range(20):
                    timed(via)
                visitors = Visitors(base, VISITORS)
                per_block = max(1, requests // BLOCKS)
                with console.status("measuring…") as status:
                    for block in range(BLOCKS):
                        status.update(f"block {block + 1}/{BLOCKS}: no explorer")
                        samples["no explorer"] += [timed(via) for _ in range(per_block)]
                        status.update(f"block {block + 1}/{BLOCKS}: {VISITORS} explorer pages")
                        with visitors:
                            samples[f"{VISITORS} explorer pages"] += [
                                timed(via) for _ in range(per_block)
                            ]
                console.print(
                    f"explorer visitors received {visitors.events} live updates and loaded "
                    f"{visitors.pages} pages"
                )
            finally:
                network.stop()
    return samples


def snapshot_cost(providers: int, requests: int) -> dict[str, float]:
    """What one snapshot costs at this many providers: the rollups' fill (s per 100k
    events), the rebuild (presence checks and the snapshot, ms), the overview's render, the
    models list, the claims, and one provider page (ms)."""
    rng = random.Random(7)
    now = time.time()
    explorer = Explorer(lambda: None, clock=lambda: now)  # a clock the loop below moves
    rollups = explorer.rollups
    ids = [f"{i:064x}" for i in range(providers)]
    started = time.perf_counter()
    for i in range(requests):
        at = now - rng.random() * 86_400
        rollups.request(
            TapeRow(f"req_{i}", at, "tiny", rng.choice(ids), "ok", 20, 40, 12_000,
                    300.0, rng.lognormvariate(4, 0.6)),
            rng.lognormvariate(4, 0.5),
        )  # fmt: skip
    fill = (time.perf_counter() - started) / requests * 100_000
    # A real registry of connected providers, as the gateway keeps them.
    registry = ProviderRegistry()
    regions = ["US-east", "DE-eu", "JP-apac", "BR-sa"]
    for i, pid in enumerate(ids):
        caps = Capabilities.model_validate(
            {
                "public_key": pid,
                "agent_version": "0.1.0",
                "models": [
                    {"name": "tiny", "weights_sha256": "ab" * 32, "kind": "text",
                     "context_length": 2048, "price_input_per_mtok": 10**8,
                     "price_output_per_mtok": 3 * 10**8}
                ],
                "hardware": {"cpu": "x", "cpu_cores": 16, "ram_bytes": 64 << 30,
                             "gpus": [{"name": "NVIDIA H100", "memory_bytes": 80 << 30}]
                             * rng.choice([1, 2, 4, 8])},
                "region": rng.choice(regions),
                "max_concurrent_jobs": 4,
                "label": f"p{i}",
            }
        )  # fmt: skip
        registry.add(pid, caps, now=now, status={"tiny": "routable"})
    gateway = SimpleNamespace(
        registry=registry,
        payments=SimpleNamespace(bonded=lambda pid: 10**9),
        bookkeeper=None,
        verifier=SimpleNamespace(catalog=Catalog()),
    )
    explorer._gateway = lambda: gateway
    lives = [registry.get(pid) for pid in ids]
    out = {"fill": fill}

    def timed_ms(name: str, work: Any) -> Any:
        started = time.perf_counter()
        result = work()
        out[name] = (time.perf_counter() - started) * 1000
        return result

    snapshot = timed_ms("first rebuild", explorer.rebuild)
    timed_ms("first models", explorer.models)
    # Steady state: 2 s later, 1,000 more requests spread over the providers, and a
    # tenth of them with a different load.
    now += 2
    for live in rng.sample(lives, len(lives) // 10):
        if live is not None:
            live.active_jobs = rng.randrange(4)
    for i in range(1_000):
        rollups.request(
            TapeRow(f"req_more_{i}", now, "tiny", rng.choice(ids), "ok", 20, 40, 12_000,
                    300.0, rng.lognormvariate(4, 0.6)),
            rng.lognormvariate(4, 0.5),
        )  # fmt: skip
    snapshot = timed_ms("rebuild", explorer.rebuild)
    # The same rebuild as the gateway runs it, in slices: the loop waits at most one slice.
    now += 2
    loop = asyncio.new_event_loop()
    explorer.interval_s = 3600.0  # one rebuild, then the task sleeps and is cancelled
    task = loop.create_task(explorer.run())
    version = explorer.version
    while explorer.version == version:
        loop.run_until_complete(asyncio.sleep(0.001))
    task.cancel()
    loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    loop.close()
    longest = explorer.longest_slice_s
    out["slice"] = longest * 1000
    timed_ms("render", lambda: (live_fragments(snapshot, "24h"), overview(snapshot, "24h")))
    timed_ms("models", explorer.models)
    timed_ms("claims", explorer.claims)
    explorer._gateway = lambda: None  # the page's record and rows (not the live status)
    detail = timed_ms("provider", lambda: asyncio.run(explorer.provider(ids[0])))
    assert detail is not None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--providers", default="1000,10000")
    parser.add_argument("--rollup-requests", type=int, default=200_000)
    args = parser.parse_args()
    console = Console()

    table = Table(title=f"Snapshot at scale ({args.rollup_requests:,} requests over 24 h)")
    columns = ("providers", "fill per 100k events (s)", "first rebuild (ms)",
               "rebuild (ms)", "longest slice (ms)", "overview (ms)", "first models (ms)", "models (ms)",
               "claims (ms)", "provider page (ms)")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="right")
    for count in (int(c) for c in args.providers.split(",")):
        cost = snapshot_cost(count, args.rollup_requests)
        table.add_row(
            f"{count:,}",
            f"{cost['fill']:.2f}",
            *(
                f"{cost[k]:.1f}"
                for k in (
                    "first rebuild",
                    "rebuild",
                    "slice",
                    "render",
                    "first models",
                    "models",
                    "claims",
                    "provider",
                )
            ),
        )
    console.print(table)

    samples = request_path(console, args.requests)
    table = Table(title=f"Short chat request through the gateway, {args.requests} each, ms")
    for column in ("condition", "p50", "p90", "p99", "mean", "p50 ratio"):
        table.add_column(column, justify="right")
    base = statistics.median(samples["no explorer"])
    for name, values in samples.items():
        table.add_row(
            name,
            f"{statistics.median(values):.2f}",
            f"{percentile(values, 0.9):.2f}",
            f"{percentile(values, 0.99):.2f}",
            f"{statistics.fmean(values):.2f}",
            f"{statistics.median(values) / base:.2f}x",
        )
    console.print(table)


if __name__ == "__main__":
    main()
