"""``tessera sim``: run a scenario of the network simulator and write its report."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from tessera.sim.engine import Run, run
from tessera.sim.report import catch_plot, report, timeline_plot, to_json, to_markdown
from tessera.sim.scenario import NAMES, Scenario, ScenarioError, load

console = Console(stderr=True)


def sim(
    scenario: Annotated[
        str, typer.Argument(help=f"One of {', '.join(NAMES)}, or a scenario .toml file.")
    ],
    providers: Annotated[
        int | None, typer.Option(min=1, max=10_000_000, help="Providers (default: the scenario's).")
    ] = None,
    hours: Annotated[
        float | None,
        typer.Option(min=0.001, max=168, help="Virtual hours (default: the scenario's)."),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(min=1, max=100, help="Seeds 1..K (default: the scenario's).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write SCENARIO.md, SCENARIO.json and the plot here.")
    ] = None,
    jobs: Annotated[
        int | None, typer.Option(min=1, max=64, help="Seeds run at once (default: the cores).")
    ] = None,
) -> None:
    """Run SCENARIO over a modelled fleet through the gateway's own routing, overload,
    breaker, audit, dispute and ledger code, and print its headline table (same seeds,
    same report, byte for byte)."""
    try:
        chosen = load(scenario)
    except ScenarioError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    count = seeds or chosen.seeds
    runs = run_seeds(chosen, count, providers, hours, jobs or min(count, os.cpu_count() or 1))
    body = report(runs)
    plot_name = f"{chosen.name}-caught.svg"
    timeline_name = f"{chosen.name}-ttft.svg"
    markdown = to_markdown(body, plot_name, timeline_name)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{chosen.name}.json").write_text(to_json(body))
        (out / f"{chosen.name}.md").write_text(markdown)
        (out / plot_name).write_text(catch_plot(runs))
        (out / timeline_name).write_text(timeline_plot(body))
        console.print(f"report written to {out / chosen.name}.md and .json")
    print(markdown)
    for r in runs:
        console.print(
            f"seed {r.seed}: {r.wall_s:.1f} s wall, {r.events / r.wall_s:,.0f} provider-steps "
            "and requests per second"
        )


def run_seeds(
    scenario: Scenario, count: int, providers: int | None, hours: float | None, jobs: int
) -> list[Run]:
    """Seeds 1..count, ``jobs`` at a time in separate processes (each seed is independent,
    so the order they finish in changes nothing)."""
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{scenario.name}: {count} seeds", total=count)
        if jobs == 1:
            runs = []
            for seed in range(1, count + 1):
                runs.append(run(scenario, seed, providers, hours))
                progress.advance(task)
            return runs
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [
                pool.submit(run, scenario, seed, providers, hours) for seed in range(1, count + 1)
            ]
            done = []
            for future in futures:
                done.append(future.result())
                progress.advance(task)
            return done
