"""``tessera catalog``: the operator's model catalog (pinned weights, tolerances, challenges).

``calibrate`` runs a model honestly several ways, derives its audit tolerances and join
challenges (see ``tessera.models.calibrate``) and adds or replaces its entry in the
catalog file; ``show`` prints a catalog. The gateway reads the file with ``--catalog``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from tessera.errors import TesseraError
from tessera.models.calibrate import CalibrationReport, Plan, calibrate, save_entry
from tessera.provider.backends.base import BackendError
from tessera.verify.catalog import Catalog

catalog_app = typer.Typer(
    help="The model catalog: weight hashes, audit tolerances, join challenges.",
    no_args_is_help=True,
)
console = Console()
progress_console = Console(stderr=True)


def _fail(message: str) -> NoReturn:
    progress_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


@catalog_app.command("calibrate")
def calibrate_command(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL_DIR",
            help="Causal LM or sentence-transformers directory, or 'minilm'.",
        ),
    ],
    catalog: Annotated[
        Path, typer.Option(help="Catalog file to add the model to (created if missing).")
    ],
    name: Annotated[
        str | None, typer.Option(help="Model name (default: its manifest, else the directory).")
    ] = None,
    prompts: Annotated[
        int | None, typer.Option(help="How many reference prompts to run (default: all).")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Fewer prompts and seeds: a smoke check.")
    ] = False,
) -> None:
    """Measure honest deviations of a model, derive its tolerances, pin it in the catalog."""
    try:
        if catalog.exists():
            Catalog.load(catalog)  # refuse a broken file before minutes of work
        report = calibrate(
            model, name=name, plan=Plan.standard(prompts, quick=quick), console=progress_console
        )
        save_entry(catalog, report.model)
    except TesseraError as exc:
        _fail(exc.message)
    except (ValueError, BackendError, OSError) as exc:
        _fail(str(exc))
    console.print(_cosines_table(report) if report.cosines else _pairs_table(report))
    for run, count in report.divergent.items():
        if count:
            console.print(f"{run}: greedy tokens differ from the reference on {count} prompt(s)")
    entry = report.model
    console.print(
        f"wrote [bold]{entry.name}[/] ({entry.weights_sha256[:16]}…) to {catalog}: "
        f"{len(entry.challenges)} challenges, {entry.calibration.tokens} tokens compared"
    )
    console.print(_catalog_table(Catalog([entry])))


@catalog_app.command("show")
def show(file: Annotated[Path, typer.Argument(help="Catalog file.")]) -> None:
    """Print every model in a catalog file with its tolerances and calibration."""
    try:
        catalog = Catalog.load(file)
    except ValueError as exc:
        _fail(str(exc))
    if not len(catalog):
        console.print(f"{file}: no models")
        return
    console.print(_catalog_table(catalog))


def _pairs_table(report: CalibrationReport) -> Table:
    model = report.model
    table = Table(title=f"{model.name}: honest deviations (generator x auditor, log-prob nats)")
    table.add_column("generator", overflow="fold")
    table.add_column("auditor", overflow="fold")
    for column in ("tokens", "max |d|", "max mean |d|", "greedy gap", "max rank"):
        table.add_column(column, justify="right")
    table.add_column(f"tail >{model.tolerances.top_k}", justify="right")
    for p in report.pairs:
        table.add_row(
            p.generator,
            p.auditor,
            str(p.tokens),
            f"{p.max_abs:.2e}",
            f"{p.mean_abs:.2e}",
            "-" if p.greedy_gap is None else f"{p.greedy_gap:.2e}",
            str(p.max_rank),
            "-" if p.tail_fraction is None else f"{p.tail_fraction:.3f}",
        )
    return table


def _cosines_table(report: CalibrationReport) -> Table:
    table = Table(title=f"{report.model.name}: least cosine between honest runs")
    table.add_column("run", overflow="fold")
    table.add_column("other run", overflow="fold")
    table.add_column("inputs", justify="right")
    table.add_column("least cosine", justify="right")
    for p in report.cosines:
        table.add_row(p.first, p.second, str(p.inputs), f"{p.worst:.8f}")
    return table


def _catalog_table(catalog: Catalog) -> Table:
    table = Table(title="model catalog")
    for column in ("model", "kind", "weights", "challenges", "tolerances", "calibrated on"):
        table.add_column(column, overflow="fold")
    for m in catalog.models():
        t, c = m.tolerances, m.calibration
        if m.kind == "text":
            tolerances = (
                f"|d| max {t.logprob_abs_max:.3g}, mean {t.logprob_abs_mean:.3g}\n"
                f"greedy gap {t.greedy_gap:.3g}\ntop_k {t.top_k}, tail {t.tail_fraction:.3g}"
            )
            seen = (
                f"{len(c.runs)} runs, {c.tokens} tokens, margin {c.margin:g}\n"
                f"worst |d| {c.observed_logprob_abs_max:.2e}, "
                f"mean {c.observed_logprob_abs_mean:.2e}\n"
                f"worst gap {c.observed_greedy_gap:.2e}, tail {c.observed_tail_fraction:.3g}"
            )
        else:
            tolerances = f"min cosine {t.min_cosine:.6f}"
            worst = "-" if c.observed_min_cosine is None else f"{c.observed_min_cosine:.6f}"
            seen = f"{len(c.runs)} runs, margin {c.margin:g}\nworst cosine {worst}"
        table.add_row(
            m.name, m.kind, m.weights_sha256[:16] + "…", str(len(m.challenges)), tolerances, seen
        )
    return table
