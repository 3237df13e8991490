"""Latency the network adds to a short non-streaming request, against the backend called directly.

Baseline: the official openai client calls an OpenAI-compatible server (our stand-in for
vLLM, tests/support/openai_server.py) serving the tiny model. Network: the same client
calls a Tessera gateway; a provider agent fronting that same server takes the job over its
WebSocket. The difference is what the gateway, the agent and the extra hop cost. Requests
alternate between the two paths so machine noise hits both alike. Run::

    PYTHONPATH=src:tests python bench/gateway_overhead.py [--requests N] [--max-tokens K]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from openai import OpenAI
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from tessera.demo import Network, create_api_key, free_port, wait_for_network  # noqa: E402
from tessera.provider.model_hash import weights_sha256  # noqa: E402

from support.tiny_model import ensure_tiny_model  # noqa: E402
from support.upstream_process import running_upstream  # noqa: E402

MESSAGES = [{"role": "user", "content": "Tell me a story about a fox."}]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(client: OpenAI, model: str, max_tokens: int) -> float:
    started = time.perf_counter()
    client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        max_tokens=max_tokens,
        temperature=0,  # type: ignore[arg-type]
    )
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=1)
    args = parser.parse_args()
    console = Console()
    model_dir = ensure_tiny_model()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        with running_upstream(model_dir, data_dir, "tiny", embeddings=False) as upstream:
            network = Network(data_dir)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            try:
                # Free and unstaked: this measures the relay and the receipt checks, not money.
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
                key = asyncio.run(create_api_key(data_dir, "bench"))
                direct = OpenAI(base_url=upstream.base_url, api_key="unused", max_retries=0)
                via = OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
                for client in (direct, via):  # warm up both paths
                    for _ in range(10):
                        timed(client, "tiny", args.max_tokens)
                samples: dict[str, list[float]] = {"direct": [], "network": []}
                with console.status("measuring…") as status:
                    for i in range(args.requests):
                        samples["direct"].append(timed(direct, "tiny", args.max_tokens))
                        samples["network"].append(timed(via, "tiny", args.max_tokens))
                        status.update(f"measuring… {i + 1}/{args.requests}")
            finally:
                network.stop()
    table = Table(
        title=f"Short chat request ({args.max_tokens} output token), {args.requests} each, ms"
    )
    for column in ("path", "p50", "p90", "p99", "mean", "p50 ratio"):
        table.add_column(column, justify="right")
    base_p50 = statistics.median(samples["direct"])
    for name, values in samples.items():
        table.add_row(
            name,
            f"{statistics.median(values):.2f}",
            f"{percentile(values, 0.9):.2f}",
            f"{percentile(values, 0.99):.2f}",
            f"{statistics.fmean(values):.2f}",
            f"{statistics.median(values) / base_p50:.2f}x",
        )
    console.print(table)
    added50 = statistics.median(samples["network"]) - base_p50
    added99 = percentile(samples["network"], 0.99) - percentile(samples["direct"], 0.99)
    console.print(f"added by gateway + agent + hop: p50 {added50:.2f} ms, p99 {added99:.2f} ms")


if __name__ == "__main__":
    main()
