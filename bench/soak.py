"""Gateway memory over a long run at 80 % of its capacity: flat, or how fast it grows.

The same layout as bench/front_door.py (whose processes and load generator it reuses):
the mock upstream and the load generator on core 0, the gateway and one provider agent
(its upstream the mock, staked and priced, money path on) on core 1. First a closed loop
at 16 connections measures what the gateway serves; then an open loop sends 80 % of that,
non-streaming chat with max_tokens 4, for ``--minutes`` in slices of ``--slice`` seconds.
After each slice it records the gateway's and the agent's resident memory, the slice's
achieved rate, p99 latency and errors.

Memory is flat when the second half of the run grows by less than the noise of a slice;
the table prints the growth per minute over the second half (the first half includes the
caches and pools that fill once). Writes bench/SOAK.md. Run::

    .venv/bin/python bench/soak.py [--minutes 10] [--slice 30] [--share 0.8]
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests"), str(REPO / "bench")]

import front_door as fd  # noqa: E402

OUT = REPO / "bench" / "SOAK.md"


def worker(spec: dict[str, Any], limit_s: float) -> dict[str, Any]:
    """One load slice in front_door's generator, in a process on the load core."""
    cmd = [sys.executable, str(REPO / "bench" / "front_door.py"), "--worker", json.dumps(spec)]
    got = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=limit_s,
        preexec_fn=fd.pinned_child(fd.LOAD_CORE),
    )
    for line in got.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise RuntimeError(f"load generator failed ({got.returncode}): {got.stderr[-2000:]}")


def growth_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, MiB) over the second half of the run."""
    half = points[len(points) // 2 :]
    if len(half) < 2:
        return 0.0
    xs = [t for t, _ in half]
    ys = [m for _, m in half]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in half) / var


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--slice", type=int, default=30, help="seconds per load slice")
    parser.add_argument("--share", type=float, default=0.8, help="of the measured capacity")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="tessera-soak-") as tmp:
        workdir = Path(tmp)
        mock = fd.start_mock(0, workdir / "mock.log")
        tessera = None
        try:
            tessera = fd.start_tessera(mock.port, workdir / "tessera")
            spec = {
                "host": "127.0.0.1",
                "port": tessera.port,
                "path": "/v1/chat/completions",
                "key": tessera.key,
                "timeout": 10.0,
            }
            worker({**spec, "mode": "closed", "concurrency": 16, "duration": 5}, 60)  # warm
            capacity = worker({**spec, "mode": "closed", "concurrency": 16, "duration": 10}, 60)
            rate = max(1, round(capacity["rps"] * args.share))
            console.print(
                f"capacity {capacity['rps']:.0f} req/s at c=16; soaking at {rate} req/s "
                f"for {args.minutes:g} min"
            )
            slices = max(2, round(args.minutes * 60 / args.slice))
            rows: list[dict[str, Any]] = []
            started = time.monotonic()
            with Progress(console=console) as progress:
                task = progress.add_task("soak", total=slices)
                for _ in range(slices):
                    result = worker(
                        {
                            **spec,
                            "mode": "open",
                            "rate": rate,
                            "duration": args.slice,
                            "max_conns": 256,
                        },
                        args.slice + 120,
                    )
                    rows.append(
                        {
                            "minute": (time.monotonic() - started) / 60,
                            "gateway_mib": fd.rss_mib(tessera.gateway_pid),
                            "agent_mib": fd.rss_mib(tessera.agent_pid),
                            **result,
                        }
                    )
                    progress.advance(task)
        finally:
            if tessera is not None:
                tessera.network.stop()
            mock.stop()
    report(console, args, capacity["rps"], rate, rows)
    return 0


def report(
    console: Console,
    args: argparse.Namespace,
    capacity: float,
    rate: int,
    rows: list[dict[str, Any]],
) -> None:
    table = Table(title=f"Soak at {rate} req/s ({args.share:.0%} of {capacity:.0f} req/s)")
    for column in ("minute", "gateway MiB", "agent MiB", "achieved req/s", "p99 ms", "errors"):
        table.add_column(column, justify="right")
    lines = [
        "| minute | gateway MiB | agent MiB | achieved req/s | p99 ms | errors |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        cells = [
            f"{row['minute']:.1f}",
            f"{row['gateway_mib']:.1f}",
            f"{row['agent_mib']:.1f}",
            f"{row['achieved']:.0f}",
            f"{row['p99_ms']:.1f}",
            str(row["errors"] + row["timeouts"]),
        ]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    gateway = growth_per_minute([(r["minute"], r["gateway_mib"]) for r in rows])
    agent = growth_per_minute([(r["minute"], r["agent_mib"]) for r in rows])
    first, last = rows[0]["gateway_mib"], rows[-1]["gateway_mib"]
    console.print(table)
    verdict = (
        f"gateway {first:.1f} -> {last:.1f} MiB; growth over the second half "
        f"{gateway:+.2f} MiB/min (agent {agent:+.2f} MiB/min)"
    )
    console.print(verdict)
    OUT.write_text(
        "# Soak: gateway memory at 80 % of capacity\n\n"
        f"Run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `bench/soak.py "
        f"--minutes {args.minutes:g} --slice {args.slice} --share {args.share}` on "
        f"{fd.machine()['CPU']}. Capacity (closed loop, 16 connections): "
        f"{capacity:.0f} req/s; open loop at {rate} req/s, non-streaming chat, max_tokens 4, "
        "gateway and agent on core 1, mock and load on core 0.\n\n"
        + "\n".join(lines)
        + f"\n\n{verdict}.\n"
    )
    console.print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
