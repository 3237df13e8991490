"""The `tessera` command line: gateway, provider, keys, models, demo."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.logging import RichHandler

from tessera import __version__
from tessera.catalog_cli import catalog_app
from tessera.chain_cli import chain_app
from tessera.config import GatewaySettings, ProviderSettings, default_data_dir
from tessera.errors import TesseraError
from tessera.keys_cli import keys_app
from tessera.money_cli import account_app, earnings_app, ledger_app, stake_app
from tessera.receipt_cli import receipt_app
from tessera.sim_cli import sim
from tessera.wallet_cli import wallet_app

app = typer.Typer(
    help="Tessera: an open network that turns idle GPUs into one inference cloud.",
    no_args_is_help=True,
    add_completion=False,
)
models_app = typer.Typer(help="Make and inspect local models.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(account_app, name="account")
app.add_typer(stake_app, name="stake")
app.add_typer(earnings_app, name="earnings")
app.add_typer(ledger_app, name="ledger")
app.add_typer(receipt_app, name="receipt")
app.add_typer(catalog_app, name="catalog")
app.add_typer(chain_app, name="chain")
app.add_typer(wallet_app, name="wallet")
app.command(name="sim")(sim)
provider_app = typer.Typer(
    help="Run a provider agent (with no subcommand), or ask a gateway about it (status)."
)
app.add_typer(provider_app, name="provider")

console = Console(stderr=True)
DataDir = Annotated[Path, typer.Option(help="Where the database and keys live.")]
DatabaseUrl = Annotated[
    str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in --data-dir).")
]


LogFormatOption = Annotated[
    str,
    typer.Option(
        "--log-format",
        envvar="TESSERA_LOG_FORMAT",
        help="text (for people) or json (one object per line, with its request id).",
    ),
]


def _logging(verbose: bool, log_format: str = "text") -> None:
    from tessera.log_format import json_handler

    if log_format not in ("text", "json"):
        console.print(f"[bold red]error:[/] --log-format must be text or json, not {log_format!r}")
        raise typer.Exit(2)
    handler: logging.Handler = (
        json_handler()
        if log_format == "json"
        else RichHandler(console=console, show_path=False, rich_tracebacks=True)
    )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[handler],
    )
    for noisy in ("httpx", "uvicorn.access", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(error: TesseraError) -> None:
    console.print(f"[bold red]error:[/] {error.message}")
    raise typer.Exit(2)


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


@app.command()
def gateway(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: DataDir = default_data_dir(),
    database_url: DatabaseUrl = None,
    dev: Annotated[
        bool, typer.Option("--dev", help="Dev mode: accounts and providers may mint test tokens.")
    ] = False,
    min_stake: Annotated[
        str | None,
        typer.Option(help="Stake (tokens) a provider must bond to get work; default 10."),
    ] = None,
    unbonding_delay_s: Annotated[
        float | None, typer.Option(help="Seconds unbonding stake stays slashable (default 7 days).")
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(help="Model catalog: weight hashes, audit tolerances, join challenges."),
    ] = None,
    validator: Annotated[
        list[str],
        typer.Option(help="Public key of a provider you run as a trusted auditor; repeatable."),
    ] = [],  # noqa: B006
    nats_url: Annotated[
        str | None,
        typer.Option(
            help="NATS server the gateway replicas share (nats://127.0.0.1:4222); the "
            "gateway's events are published there on tsr.v1.evt.*",
        ),
    ] = None,
    standby: Annotated[
        bool,
        typer.Option(
            "--standby",
            help="If another gateway owns this database's ledger, wait and take over when it "
            "stops (instead of refusing to start).",
        ),
    ] = False,
    chain_url: Annotated[
        str | None,
        typer.Option(
            help="EVM JSON-RPC URL: deposits, stake and payouts settle on this chain "
            "(start a local one with `tessera chain up`).",
        ),
    ] = None,
    deployment: Annotated[
        Path | None,
        typer.Option(help="The contracts' deployment file (`tessera chain up` writes one)."),
    ] = None,
    chain_key_file: Annotated[
        Path | None,
        typer.Option(
            help="The gateway's Ethereum key file (default DATA_DIR/gateway-eth.key, "
            "created when missing).",
        ),
    ] = None,
    chain_confirmations: Annotated[
        int | None,
        typer.Option(
            help="Book chain events this many blocks below the head (default: the "
            "chain's finalized block).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    log_format: LogFormatOption = "text",
) -> None:
    """Run a gateway: the OpenAI-compatible API and the provider hub."""
    from tessera.gateway.app import create_app
    from tessera.gateway.http_server import serve
    from tessera.private_files import restrict_new_files, secure_data_dir
    from tessera.units import parse_tokens

    restrict_new_files()
    _logging(verbose, log_format)
    extra: dict[str, object] = {}
    if dev:
        extra["dev_mode"] = True
    if min_stake is not None:
        try:
            extra["min_stake_units"] = parse_tokens(min_stake)
        except ValueError as exc:
            console.print(f"[bold red]error:[/] --min-stake: {exc}")
            raise typer.Exit(2) from None
    if unbonding_delay_s is not None:
        extra["unbonding_delay_s"] = unbonding_delay_s
    if catalog is not None:
        extra["catalog_file"] = catalog
    if validator:
        extra["validator_keys"] = validator
    if standby:
        extra["standby"] = True
    if nats_url:
        extra["nats_url"] = nats_url
    if (chain_url is None) != (deployment is None) and not _chain_from_env(chain_url, deployment):
        console.print(
            "[bold red]error:[/] --chain-url and --deployment go together: the chain and the "
            "contracts deployed on it (`tessera chain up` prints both)."
        )
        raise typer.Exit(2)
    for name, value in (
        ("chain_url", chain_url),
        ("chain_deployment", deployment),
        ("chain_key_file", chain_key_file),
        ("chain_confirmations", chain_confirmations),
    ):
        if value is not None:
            extra[name] = value
    settings = GatewaySettings(
        host=host, port=port, data_dir=data_dir, database_url=database_url, **extra
    )
    console.print(f"[bold]Tessera gateway[/] {__version__} on http://{host}:{port}")
    secure_data_dir(settings.data_dir)
    serve(create_app(settings), settings)


def _chain_from_env(chain_url: str | None, deployment: Path | None) -> bool:
    """True when the half not given on the command line is set in the environment."""
    if chain_url is None:
        return bool(os.environ.get("TESSERA_GATEWAY_CHAIN_URL"))
    return bool(os.environ.get("TESSERA_GATEWAY_CHAIN_DEPLOYMENT"))


@provider_app.callback(invoke_without_command=True)
def provider(
    context: typer.Context,
    gateway: Annotated[
        list[str], typer.Option("--gateway", help="Gateway URL; repeat to serve several.")
    ] = ["http://127.0.0.1:8000"],  # noqa: B006
    model: Annotated[
        list[str],
        typer.Option("--model", help="Model directory, or 'minilm'; repeat to serve several."),
    ] = [],  # noqa: B006
    upstream: Annotated[
        str | None, typer.Option(help="OpenAI-compatible upstream base URL (vLLM, llama.cpp).")
    ] = None,
    upstream_model: Annotated[str | None, typer.Option(help="Model name at the upstream.")] = None,
    served_name: Annotated[str | None, typer.Option(help="Name to announce for it.")] = None,
    weights_sha256: Annotated[
        str | None, typer.Option(help="Hash of its weights (`tessera models hash DIR`).")
    ] = None,
    upstream_kind: Annotated[str, typer.Option(help="text or embedding.")] = "text",
    upstream_context: Annotated[int, typer.Option(help="Its context length.")] = 4096,
    region: Annotated[str, typer.Option(help="ISO country code, e.g. US or DE-eu.")] = "US",
    label: Annotated[str, typer.Option(help="Name shown to users.")] = "",
    price_in: Annotated[int, typer.Option(help="Base units per million input tokens.")] = 0,
    price_out: Annotated[int, typer.Option(help="Base units per million output tokens.")] = 0,
    max_concurrent_jobs: Annotated[int, typer.Option(help="Jobs run at once.")] = 4,
    key_file: Annotated[Path, typer.Option(help="Ed25519 identity file (0600).")] = (
        default_data_dir() / "provider.key"
    ),
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16.")
    ] = "auto",
    parallel_passes: Annotated[
        int | None,
        typer.Option(
            help="Forward passes run at once; jobs take turns by paying account. Default: one "
            "on a GPU, on a CPU the cores available divided by --threads."
        ),
    ] = None,
    compute_priority: Annotated[
        Literal["idle", "low", "normal"] | None,
        typer.Option(
            help="CPU priority of forward passes (default idle: what nothing else wants)."
        ),
    ] = None,
    no_retention: Annotated[
        bool,
        typer.Option(
            "--no-retention", help="Declare that prompts and outputs are not kept after a job."
        ),
    ] = False,
    sla_uptime: Annotated[
        float | None,
        typer.Option(
            "--sla-uptime",
            metavar="PERCENT",
            help="Uptime you promise per epoch, e.g. 99.5; downtime beyond it is slashed "
            "a small share of stake. Default: no promise.",
        ),
    ] = None,
    drain_timeout_s: Annotated[
        float | None,
        typer.Option(help="On SIGTERM or Ctrl-C, seconds running jobs may finish (default 30)."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    log_format: LogFormatOption = "text",
) -> None:
    """Run a provider agent: load models, dial out to the gateway, serve jobs.

    SIGTERM or Ctrl-C leaves gracefully: the gateways are told goodbye (no new work, and no
    SLA downtime counted), running jobs finish, then it exits 0. A second signal stops
    waiting for them.
    """
    if context.invoked_subcommand is not None:
        return  # `tessera provider status ...`: the subcommand does the work
    from tessera.private_files import restrict_new_files
    from tessera.provider.compute_priority import lower_this_session
    from tessera.provider.hardware import probe
    from tessera.provider.identity import load_or_create_key
    from tessera.provider.loading import UpstreamSpec, load_local, load_upstream, turn_width
    from tessera.provider.turn_gate import TurnGate

    restrict_new_files()
    _logging(verbose, log_format)
    extra: dict[str, object] = {}
    if sla_uptime is not None:
        if not 0 <= sla_uptime <= 100:
            console.print("[bold red]error:[/] --sla-uptime is a percentage from 0 to 100")
            raise typer.Exit(2)
        extra["sla_uptime_bps"] = round(sla_uptime * 100)
    if drain_timeout_s is not None:
        extra["drain_timeout_s"] = drain_timeout_s
    if no_retention:
        extra["no_retention"] = True
    if parallel_passes is not None:
        extra["parallel_passes"] = parallel_passes
    if compute_priority is not None:
        extra["compute_priority"] = compute_priority  # else the environment's, or idle
    try:
        settings = ProviderSettings(
            gateway_urls=gateway,
            key_file=key_file,
            region=region,
            label=label,
            max_concurrent_jobs=max_concurrent_jobs,
            price_input_per_mtok=price_in,
            price_output_per_mtok=price_out,
            torch_threads=threads,
            device=device,
            dtype=dtype,
            **extra,
        )
        key = load_or_create_key(settings.key_file)
        served = []
        # The local models share this machine's compute, turn by turn.
        gate = TurnGate(turn_width(settings)) if model else None
        for spec in model:
            with console.status(f"loading {spec}…"):
                served.append(load_local(spec, settings, gate))
            console.print(f"loaded [bold]{served[-1].offer.name}[/] ({spec})")
        if model:  # the passes yield to other sessions' programs too (compute_priority)
            lower_this_session(settings.compute_priority)
        if upstream:
            if not (upstream_model and weights_sha256):
                console.print("[red]--upstream needs --upstream-model and --weights-sha256[/]")
                raise typer.Exit(2)
            spec_ = UpstreamSpec(
                base_url=upstream,
                upstream_model=upstream_model,
                served_name=served_name or upstream_model,
                weights_sha256=weights_sha256,
                kind=upstream_kind,
                context_length=upstream_context,
            )
            served.append(load_upstream(spec_, settings))
        if not served:
            console.print(
                "[red]nothing to serve:[/] give --model DIR, --model minilm or --upstream"
            )
            raise typer.Exit(2)
    except TesseraError as exc:
        _fail(exc)
        return
    with asyncio.Runner(loop_factory=fast_event_loop()) as runner:
        runner.run(_run_provider(settings, key, served, probe()))


def fast_event_loop():  # type: ignore[no-untyped-def]
    """uvloop's event loop where it is installed (it is a dependency; the gateway's uvicorn
    picks it too): the agent spends most of its time in socket I/O and frame handling."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _run_provider(settings, key, served, hardware) -> None:  # type: ignore[no-untyped-def]
    import signal

    from tessera.gc_tuning import settle_heap
    from tessera.provider.agent import ProviderAgent

    agent = ProviderAgent(settings, key, served, hardware, on_status=_print_status)
    console.print(f"provider id [bold]{agent.provider_id}[/]")
    settle_heap()  # the models are loaded: what lives now lives as long as the process
    stop = asyncio.Event()

    def on_signal(name: str) -> None:
        if not stop.is_set():
            console.print(
                f"{name}: leaving (waiting up to {settings.drain_timeout_s:g}s for running "
                "jobs; signal again to stop now)"
            )
            stop.set()
        else:
            console.print(f"{name}: not waiting for running jobs")
            agent.hurry()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
        except (NotImplementedError, RuntimeError):  # no loop signal handlers here
            pass
    await agent.run(stop)
    console.print("left every gateway; bye")


@provider_app.command("status")
def provider_status(
    gateway: Annotated[
        list[str], typer.Option("--gateway", help="Gateway URL; repeat to ask several.")
    ] = ["http://127.0.0.1:8000"],  # noqa: B006
    key_file: Annotated[Path, typer.Option(help="The provider's key file.")] = (
        default_data_dir() / "provider.key"
    ),
    provider_id: Annotated[
        str | None, typer.Option("--id", help="Provider id (instead of --key-file).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Ask each gateway whether it routes this provider work, and if not, why."""
    import httpx
    from rich.table import Table

    from tessera.key_file import load_or_create_key
    from tessera.protocol.signing import public_key_hex

    if provider_id is None:
        if not key_file.expanduser().exists():
            console.print(f"[red]no key file at {key_file}[/]: pass --key-file or --id")
            raise typer.Exit(2)
        try:
            provider_id = public_key_hex(load_or_create_key(key_file))
        except TesseraError as exc:
            _fail(exc)
            return
    answers: dict[str, object] = {}
    failed = False
    for url in gateway:
        try:
            response = httpx.get(f"{url.rstrip('/')}/v1/providers/{provider_id}/status", timeout=10)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            answers[url] = {"error": f"cannot reach the gateway: {type(exc).__name__}: {exc}"}
            failed = True
            continue
        answers[url] = body
        failed |= response.status_code != 200
    if as_json:
        print(json.dumps(answers, indent=2))
        raise typer.Exit(1 if failed else 0)
    out = Console()
    for url, body in answers.items():
        assert isinstance(body, dict)
        if "error" in body:
            error = body["error"]
            message = error.get("message") if isinstance(error, dict) else error
            out.print(f"[bold]{url}[/]: [red]{message}[/]")
            continue
        if not body.get("connected"):
            out.print(f"[bold]{url}[/]: [red]not connected[/] ({'; '.join(body['reasons'])})")
            continue
        health = body["health"]
        out.print(
            f"[bold]{url}[/]: connected from {body['region']}, reputation "
            f"{body['reputation']:.2f}, {body['load']['active_jobs']}/"
            f"{body['load']['max_concurrent_jobs']} busy, breaker {health['breaker']}, "
            f"bonded {body['stake']['bonded']} base units"
        )
        table = Table("model", "status", "eligible for", "why not")
        for model in body["models"]:
            table.add_row(
                model["model"],
                model["status"],
                f"{model['eligible_for']} of the last {model['recent_requests']} requests",
                "\n".join(model["reasons"]) or "-",
            )
        out.print(table)
    raise typer.Exit(1 if failed else 0)


def _print_status(url: str, status: str) -> None:
    console.print(f"[cyan]{url}[/] {status}")


# ------------------------------------------------------------------ models


@models_app.command("make-tiny")
def models_make_tiny(
    directory: Path,
    steps: Annotated[
        int | None, typer.Option(help="Training steps (default: a few minutes).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train a small GPT-style model on shipped public-domain text into DIRECTORY."""
    from tessera.models.make_tiny import make_tiny

    kwargs = {} if steps is None else {"steps": steps}
    path = make_tiny(directory, seed=seed, show_progress=True, **kwargs)
    console.print(f"wrote [bold]{path}[/]")


@models_app.command("hash")
def models_hash(directory: Path) -> None:
    """Print the SHA-256 model hash of a model directory's weights."""
    from tessera.provider.model_hash import weights_sha256

    try:
        print(weights_sha256(directory))
    except TesseraError as exc:
        _fail(exc)


# ------------------------------------------------------------------ demo


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Gateway port (0: pick a free one).")] = 8000,
    providers: Annotated[
        int, typer.Option(help="Provider processes to start (0: the gateway only).")
    ] = 3,
    data_dir: Annotated[Path, typer.Option(help="Where the demo keeps its state.")] = Path(
        ".cache/demo"
    ),
    model_dir: Annotated[Path, typer.Option(help="Text model directory (made if missing).")] = Path(
        ".cache/models/tessera-tiny"
    ),
    once: Annotated[bool, typer.Option("--once", help="Exit after the tour.")] = False,
    no_chain: Annotated[
        bool,
        typer.Option(
            "--no-chain",
            help="Keep the money in the gateway's journal (dev mints) instead of on a local chain.",
        ),
    ] = False,
) -> None:
    """Start a whole local network, tour it with the openai SDK, then stay up.

    With --providers 0, only the gateway and a funded key: a network for your own providers.
    """
    from tessera.demo import run_demo
    from tessera.private_files import restrict_new_files

    restrict_new_files()
    sys.exit(
        run_demo(
            port=port,
            providers=providers,
            data_dir=data_dir,
            model_dir=model_dir,
            once=once,
            chain=not no_chain,
        )
    )


if __name__ == "__main__":
    app()
