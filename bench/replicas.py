"""Gateway replicas on one machine: requests/s for 1, 2 and 3 replicas, and the extra hop.

One PostgreSQL database (a fresh one on 127.0.0.1:5432), one private nats-server, the mock
upstream (bench/mock_upstream.py) and, per replica, ``tessera gateway --database-url ...
--nats-url ...`` with one staked, priced provider agent connected to it whose upstream is
the mock. The first replica owns the ledger; the others pay through it over NATS.

Phases:

- **scale**: with 1, then 2, then 3 replicas running, a closed loop of ``--concurrency``
  connections spread evenly over the replicas (non-streaming chat, 4 tokens) for
  ``--duration`` s: requests/s, p50/p99, errors. The router sends each request to any
  provider of the cluster, so with N replicas about (N-1)/N of the jobs are relayed to
  another replica, and every request on a replica but the first is paid through the first.
  On this 2-core machine every process shares the same two cores, so this shows the cost
  of the cluster's work, not the capacity of N machines (see the note it prints).
- **hop**: one request at a time, interleaved, on four paths (a provider serving its own
  model name on each of the first two replicas): the request and its provider on the
  owner; on the owner, its provider on the second replica (the relay hop); on the second
  replica with its own provider (money through the owner); and on the second replica, its
  provider on the owner (both). p50/p99 and the added latency against the all-local path.

Run::

    .venv/bin/python bench/replicas.py [--duration S] [--concurrency C] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests"), str(REPO / "bench")]

from front_door_load import closed_loop, percentile  # noqa: E402
from front_door_procs import cpu_seconds, start_mock  # noqa: E402

from tessera.demo import Network, free_port, wait_for_network  # noqa: E402
from tessera.dev_money import fund_account, stake_provider  # noqa: E402

from support.databases import _admin_execute, _find_admin_user  # noqa: E402
from support.live_network import create_key  # noqa: E402
from support.nats_server import NatsServer  # noqa: E402

MESSAGES = [{"role": "user", "content": "Tell me a story about a fox."}]
HIGH = "100000000"


def _agent(network: Network, name: str, base: str, mock_port: int, served: str) -> int:
    key_file = network.data_dir / f"{name}.key"
    stake_provider(base, key_file)
    proc = network.spawn(
        name,
        [
            "provider", "--gateway", base,
            "--upstream", f"http://127.0.0.1:{mock_port}/v1",
            "--upstream-model", "mock", "--served-name", served,
            "--weights-sha256", "be" * 32, "--key-file", str(key_file),
            "--price-in", "100", "--price-out", "300",
            "--max-concurrent-jobs", "1024", "--label", name,
        ],
    )  # fmt: skip
    return proc.pid


def _providers(base: str) -> int:
    return int(httpx.get(f"{base}/health", timeout=5).json()["providers"])


async def _scale(ports: list[int], key: str, concurrency: int, duration: float) -> dict[str, Any]:
    """One closed loop per replica, ``concurrency`` connections in all."""
    share = [concurrency // len(ports) + (i < concurrency % len(ports)) for i in range(len(ports))]
    specs = [
        {
            "host": "127.0.0.1", "port": port, "path": "/v1/chat/completions", "key": key,
            "concurrency": c, "duration": duration, "timeout": 30.0,
        }
        for port, c in zip(ports, share, strict=True)
    ]  # fmt: skip
    results = await asyncio.gather(*(closed_loop(spec) for spec in specs))
    return {
        "rps": sum(r["rps"] for r in results),
        "p50_ms": statistics.median(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "errors": sum(r["errors"] for r in results),
    }


def _timed(client: httpx.Client, base: str, key: str, model: str) -> float:
    started = time.perf_counter()
    response = client.post(
        f"{base}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": model, "messages": MESSAGES, "max_tokens": 4},
    )
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=300, help="per path, hop phase")
    args = parser.parse_args()
    console = Console()
    for name in (
        "ACCOUNT_REQUESTS_PER_MINUTE",
        "KEY_REQUESTS_PER_MINUTE",
    ):
        os.environ[f"TESSERA_GATEWAY_{name}"] = HIGH
    os.environ["TESSERA_GATEWAY_ACCOUNT_MAX_CONCURRENT_REQUESTS"] = "100000"
    os.environ["TESSERA_GATEWAY_KEY_MAX_CONCURRENT_REQUESTS"] = "100000"
    user = asyncio.run(_find_admin_user())
    db = f"tessera_bench_{int(time.time())}"
    asyncio.run(_admin_execute(user, f'CREATE DATABASE "{db}"'))
    url = f"postgresql://{user}@127.0.0.1:5432/{db}"
    scale: dict[int, dict[str, Any]] = {}
    hops: dict[str, list[float]] = {}
    cpu: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        nats = NatsServer(data_dir / "nats").start()
        mock = start_mock(0, data_dir / "mock.log")
        network = Network(data_dir / "data")
        ports: list[int] = []
        pids: list[int] = []
        try:
            key = ""
            for n in (1, 2, 3):
                port = free_port()
                where = ["--data-dir", str(network.data_dir), "--database-url", url]
                gateway = network.spawn(
                    f"gateway-{n}",
                    ["gateway", "--port", str(port), *where, "--nats-url", nats.url, "--dev"],
                )
                base = f"http://127.0.0.1:{port}"
                wait_for_network(base, 0, network, timeout_s=60)
                ports.append(port)
                pids.append(gateway.pid)
                if n == 1:
                    key = create_key(
                        network.data_dir, "--database-url", url, "--rpm", HIGH,
                        "--tpm", "1000000000000", "--max-concurrency", "100000",
                    )  # fmt: skip
                    fund_account(base, key, units=1_000 * 10**9)
                pids.append(_agent(network, f"provider-{n}", base, mock.port, "mock"))
                deadline = time.monotonic() + 60
                while any(_providers(f"http://127.0.0.1:{p}") < n for p in ports):
                    assert time.monotonic() < deadline, "the replicas never saw every provider"
                    time.sleep(0.2)
                with console.status(f"{n} replica(s): closed loop for {args.duration:.0f} s"):
                    asyncio.run(_scale(ports, key, 4, 2.0))  # warm up
                    before = cpu_seconds(pids)
                    scale[n] = asyncio.run(_scale(ports, key, args.concurrency, args.duration))
                    cpu[n] = (cpu_seconds(pids) - before) / args.duration
            a, b = (f"http://127.0.0.1:{p}" for p in ports[:2])
            pids.append(_agent(network, "hop-a", a, mock.port, "hop-a"))
            pids.append(_agent(network, "hop-b", b, mock.port, "hop-b"))
            deadline = time.monotonic() + 60
            while any(_providers(f"http://127.0.0.1:{p}") < 5 for p in ports):
                assert time.monotonic() < deadline, "the hop providers never showed up"
                time.sleep(0.2)
            paths = {
                "owner, its own provider": (a, "hop-a"),
                "owner, provider on replica 2 (relay hop)": (a, "hop-b"),
                "replica 2, its own provider (money via owner)": (b, "hop-b"),
                "replica 2, provider on owner (hop + money)": (b, "hop-a"),
            }
            hops = {name: [] for name in paths}
            with httpx.Client(timeout=30) as client, console.status("hop: measuring…"):
                for base, model in paths.values():  # warm up
                    for _ in range(20):
                        _timed(client, base, key, model)
                for _ in range(args.requests):
                    for name, (base, model) in paths.items():
                        hops[name].append(_timed(client, base, key, model))
        finally:
            network.stop()
            mock.stop()
            nats.stop()
            asyncio.run(_admin_execute(user, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    table = Table(
        title=f"Closed loop, {args.concurrency} connections over the replicas, "
        f"{args.duration:.0f} s, non-streaming chat (4 tokens), all on this machine's "
        f"{os.cpu_count()} cores"
    )
    for column in ("replicas", "req/s", "vs 1", "p50 ms", "p99 ms", "errors", "server CPU"):
        table.add_column(column, justify="right")
    for n, row in scale.items():
        table.add_row(
            str(n),
            f"{row['rps']:.0f}",
            f"{row['rps'] / scale[1]['rps']:.2f}x",
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            str(row["errors"]),
            f"{cpu[n]:.2f} cores",
        )
    console.print(table)
    hop_table = Table(title=f"One request at a time, {args.requests} per path, interleaved, ms")
    for column in ("path", "p50", "p90", "p99", "added p50", "added p99"):
        hop_table.add_column(column, justify="right" if column != "path" else "left")
    base_samples = next(iter(hops.values()))
    for name, samples in hops.items():
        hop_table.add_row(
            name,
            f"{statistics.median(samples):.2f}",
            f"{percentile(samples, 0.9):.2f}",
            f"{percentile(samples, 0.99):.2f}",
            f"{statistics.median(samples) - statistics.median(base_samples):+.2f}",
            f"{percentile(samples, 0.99) - percentile(base_samples, 0.99):+.2f}",
        )
    console.print(hop_table)
    per_request = {n: cpu[n] / scale[n]["rps"] * 1000 for n in scale}
    console.print(
        "server CPU per request (gateways, agents; ms): "
        + ", ".join(f"{n} replica(s) {ms:.2f}" for n, ms in per_request.items())
    )


if __name__ == "__main__":
    main()
