"""What the simulator costs at 10,000, 100,000 and 1,000,000 providers: wall time, peak
memory and work per second for one seed of a scenario, each size in its own process (so
its peak memory is its own). The 10,000-provider run is the baseline the ratios use: work
per second should hold as the fleet grows (every per-provider step is a numpy operation).

    PYTHONPATH=src python bench/sim.py [--scenario baseline] [--hours 1] [--sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys
from tessera.sim.engine import run
from tessera.sim.scenario import load
scenario, providers, hours = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
result = run(load(scenario), seed=1, providers=providers, hours=hours)
print(json.dumps({
    "wall_s": result.wall_s,
    "events": result.events,
    "steps": result.totals.steps,
    "sampled": int(result.samples["ok"].size),
    "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def measure(scenario: str, providers: int, hours: float) -> dict[str, float]:
    env_path = str(REPO / "src")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, scenario, str(providers), str(hours)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", default="baseline")
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    args = parser.parse_args()
    console = Console()
    table = Table(title=f"tessera sim {args.scenario}: one seed, {args.hours:g} virtual hour(s)")
    for column in ("providers", "steps", "sampled requests", "wall (s)", "peak memory (MiB)",
                   "provider-steps + requests per s", "per s vs 10k"):  # fmt: skip
        table.add_column(column, justify="right")
    base = None
    for size in (int(s) for s in args.sizes.split(",")):
        with console.status(f"{size:,} providers"):
            m = measure(args.scenario, size, args.hours)
        rate = m["events"] / m["wall_s"]
        base = base or rate
        table.add_row(f"{size:,}", f"{m['steps']:,}", f"{m['sampled']:,}", f"{m['wall_s']:.1f}",
                      f"{m['peak_mib']:,.0f}", f"{rate:,.0f}", f"{rate / base:.2f}x")  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
