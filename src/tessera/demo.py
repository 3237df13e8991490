"""`tessera demo`: a whole local network in one command, toured with the openai SDK.

Starts one gateway and N provider processes on 127.0.0.1 (each in its own region, at its
own price, serving the tiny text model and all-MiniLM-L6-v2), creates a funded dev key,
and shows the network answering the official client. The tiny model is pinned in a model
catalog (calibrated once and cached beside the model), so providers pass its join
challenge before they are routed and every request is audited by another provider; the
demo's providers are the operator's own, so they are its validators. Child processes are
always stopped on exit, Ctrl-C included.

By default the money is on a local chain (demo_chain.py): anvil, the four contracts, the
consumer's tokens deposited in the vault and the providers' stake bonded there; the tour
ends with a provider cashing its cheque. ``--no-chain`` keeps everything in the gateway's
journal, funded by dev-mode mints.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from tessera.dev_money import DEFAULT_STAKE, fund_account, stake_provider
from tessera.key_file import load_or_create_key
from tessera.ledger.accounts import TOKEN
from tessera.private_files import secure_data_dir, write_private
from tessera.protocol.signing import public_key_hex
from tessera.units import format_tokens

if TYPE_CHECKING:
    from tessera.demo_chain import DemoChain

console = Console()

DEMO_FUNDS = 100 * TOKEN  # deposited for the demo account (minted, in dev mode, without a chain)

REGIONS = [
    ("US-east", "us-east-1", 200_000_000, 600_000_000),
    ("DE-eu", "frankfurt", 150_000_000, 500_000_000),
    ("JP-apac", "tokyo", 250_000_000, 700_000_000),
    ("BR-sa", "sao-paulo", 120_000_000, 450_000_000),
    ("IN-apac", "mumbai", 100_000_000, 400_000_000),
]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so a killed demo leaves no orphans."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Network:
    """The child processes of a local network; stop() always ends them all."""

    data_dir: Path
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        logs = self.data_dir / "logs"
        logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        # Logs are private (they name keys and requests). The child keeps its own copy of
        # the log's descriptor; ours closes at once.
        fd = os.open(logs / f"{name}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tessera.cli", *args],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.processes.append((name, proc))
        return proc

    def dead(self) -> list[str]:
        return [name for name, proc in self.processes if proc.poll() is not None]

    def stop(self) -> None:
        for _, proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in self.processes:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for_network(
    base: str, providers: int, network: Network, timeout_s: float = 300
) -> dict[str, object]:
    """Poll /health until ``providers`` providers are connected."""
    deadline = time.monotonic() + timeout_s
    health: dict[str, object] = {}
    with console.status("starting the network…") as status:
        while time.monotonic() < deadline:
            dead = network.dead()
            if dead:
                raise RuntimeError(
                    f"{', '.join(dead)} exited; see {network.data_dir / 'logs'} for why"
                )
            try:
                health = httpx.get(f"{base}/health", timeout=2).json()
                status.update(f"waiting for providers: {health.get('providers', 0)}/{providers}")
                if int(health.get("providers", 0)) >= providers:  # type: ignore[call-overload]
                    return health
            except httpx.HTTPError:
                status.update("waiting for the gateway…")
            time.sleep(0.5)
    raise RuntimeError(f"the network did not come up in {timeout_s:.0f}s: {health}")


async def create_api_key(data_dir: Path, name: str = "demo") -> str:
    """A new API key in the SQLite store under ``data_dir`` (migrating it first)."""
    from tessera.store.api_keys import ApiKeyStore
    from tessera.store.engine import create_engine, database_url_for
    from tessera.store.migrate import upgrade_to_head

    url = database_url_for(data_dir)
    await upgrade_to_head(url)
    engine = create_engine(url)
    try:
        plaintext, _ = await ApiKeyStore(engine).create(name)
    finally:
        await engine.dispose()
    return plaintext


def catalog_for(model_dir: Path) -> Path:
    """The catalog pinning the demo's model: calibrated once, kept beside the model, and
    calibrated again if the model was retrained."""
    from tessera.provider.model_hash import weights_sha256
    from tessera.verify.catalog import Catalog

    path = model_dir.parent / f"{model_dir.name}.catalog.json"
    try:
        current = weights_sha256(model_dir) in {
            m.weights_sha256 for m in Catalog.load(path).models()
        }
    except ValueError:  # missing or unreadable: calibrate afresh
        current = False
    if not current:
        path.unlink(missing_ok=True)
        console.print("calibrating audit tolerances for the tiny model (once, about a minute)")
        done = subprocess.run(
            [sys.executable, "-m", "tessera.cli", "catalog", "calibrate", str(model_dir),
             "--catalog", str(path)],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"calibrating {model_dir} failed (exit {done.returncode}); delete the model "
                "directory to retrain it, or run `tessera catalog calibrate` to see why"
            )
    return path


def wait_for_model(base: str, model: str, network: Network, timeout_s: float = 120) -> None:
    """Wait until some provider passed ``model``'s join challenge and is routed for it."""
    deadline = time.monotonic() + timeout_s
    with console.status(f"providers are answering the {model} join challenge…"):
        while time.monotonic() < deadline:
            if network.dead():
                raise RuntimeError(f"{', '.join(network.dead())} exited")
            if model in httpx.get(f"{base}/health", timeout=5).json().get("models", []):
                return
            time.sleep(0.3)
    raise RuntimeError(f"no provider passed the {model} challenge in {timeout_s:.0f}s")


def tour(base_url: str, api_key: str, text_model: str) -> list[tuple[str, bool, str, str]]:
    """Use the network as a developer would; returns (step, ok, provider, what happened)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    steps: list[tuple[str, bool, str, str]] = []
    answered: list[str] = []  # request ids, for the receipt step

    def step(name: str, run) -> None:  # type: ignore[no-untyped-def]
        try:
            provider, note = run()
            steps.append((name, True, provider, note))
        except Exception as exc:
            steps.append((name, False, "-", f"{type(exc).__name__}: {exc}"))

    def models():  # type: ignore[no-untyped-def]
        listed = client.models.list()
        return "-", ", ".join(m.id for m in listed.data)

    def chat():  # type: ignore[no-untyped-def]
        raw = client.chat.completions.with_raw_response.create(
            model=text_model,
            messages=[{"role": "user", "content": "Tell me a story about a fox."}],
            max_tokens=48,
            temperature=0.7,
            seed=7,
        )
        reply = raw.parse()
        answered.append(raw.headers["x-request-id"])
        text = reply.choices[0].message.content or ""
        usage = reply.usage
        note = f"{text.strip()!r} ({usage.prompt_tokens}+{usage.completion_tokens} tokens)"
        return raw.headers["x-tessera-provider"][:12], note

    def stream():  # type: ignore[no-untyped-def]
        with client.chat.completions.with_streaming_response.create(
            model=text_model,
            messages=[{"role": "user", "content": "What did the ant say?"}],
            max_tokens=48,
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            pieces, usage = [], None
            for chunk in response.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                if chunk.usage:
                    usage = chunk.usage
            provider = response.headers["x-tessera-provider"][:12]
        tokens = usage.completion_tokens if usage else "?"
        return provider, f"{len(pieces)} chunks, {tokens} tokens: {''.join(pieces).strip()!r}"

    def embeddings():  # type: ignore[no-untyped-def]
        texts = [
            "The fox jumped over the fence.",
            "A fox leapt across the wall.",
            "Interest rates rose in March.",
        ]
        raw = client.embeddings.with_raw_response.create(model="all-MiniLM-L6-v2", input=texts)
        vectors = [d.embedding for d in raw.parse().data]

        def cos(a: list[float], b: list[float]) -> float:
            dot = sum(x * y for x, y in zip(a, b, strict=True))
            return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

        note = (
            f"{len(vectors[0])} dims; similar {cos(vectors[0], vectors[1]):.3f} vs "
            f"unrelated {cos(vectors[0], vectors[2]):.3f}"
        )
        return raw.headers["x-tessera-provider"][:12], note

    def receipt():  # type: ignore[no-untyped-def]
        from tessera.protocol.receipts import CountersignedReceipt, verify_countersigned

        base = base_url.removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"}
        body = httpx.get(f"{base}/v1/receipts/{answered[0]}", headers=headers, timeout=10)
        body.raise_for_status()
        fields = {k: v for k, v in body.json().items() if k != "object"}
        signed = CountersignedReceipt.model_validate(fields)
        gateway_key = httpx.get(f"{base}/v1/gateway", timeout=10).json()["public_key"]
        verify_countersigned(signed, gateway_key)
        r = signed.receipt
        note = (
            f"provider and gateway signatures verify; weights {r.weights_sha256[:12]}…, "
            f"output {r.output_sha256[:12]}…, {r.prompt_tokens}+{r.completion_tokens} tokens"
        )
        return r.provider_id[:12], note

    def routing():  # type: ignore[no-untyped-def]
        # A routing policy in the request, then the conversation's second turn: the router
        # says why it chose each provider, and the second turn stays where the cache is.
        messages = [{"role": "user", "content": "Who was the wolf?"}]
        first = client.chat.completions.with_raw_response.create(
            model=text_model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=16,
            temperature=0,
            extra_body={"provider": {"sort": "price", "regions_deny": ["asia"]}},
        )
        reply = first.parse().choices[0].message.content or ""
        messages += [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "And the lamb?"},
        ]
        second = client.chat.completions.with_raw_response.create(
            model=text_model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=16,
            temperature=0,
        )
        why = [r.headers.get("x-tessera-route", "?").split(";")[0] for r in (first, second)]
        same = first.headers["x-tessera-provider"] == second.headers["x-tessera-provider"]
        note = f"turn 1: {why[0]}; turn 2: {why[1]} ({'same provider' if same else 'moved'})"
        return second.headers["x-tessera-provider"][:12], note

    step("list models", models)
    step("chat completion", chat)
    step("routing policy", routing)
    step("streamed chat", stream)
    step("embeddings", embeddings)
    step("signed receipt", receipt)
    return steps


def audit_step(base: str, timeout_s: float = 60) -> tuple[str, bool, str, str]:
    """Wait for the tour's audits to close and say how they ended."""
    deadline = time.monotonic() + timeout_s
    cases: list[dict[str, object]] = []
    try:
        while time.monotonic() < deadline:
            cases = httpx.get(f"{base}/v1/audit-cases?limit=50", timeout=10).json()["data"]
            if cases and all(c["status"] != "open" for c in cases):
                break
            time.sleep(0.5)
        audits = httpx.get(f"{base}/v1/audits?limit=50", timeout=10).json()["data"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return "audited", False, "-", f"{type(exc).__name__}: {exc}"
    by_status: dict[str, int] = {}
    for case in cases:
        by_status[str(case["status"])] = by_status.get(str(case["status"]), 0) + 1
    ok = bool(cases) and by_status.get("upheld", 0) == 0 and "open" not in by_status
    summary = ", ".join(f"{n} {status}" for status, n in sorted(by_status.items()))
    note = (
        f"{len(cases)} requests re-scored by another provider ({len(audits)} audits): "
        f"{summary or 'none yet'}; GET /v1/audits shows the evidence"
    )
    return "audited", ok, "-", note


def money_step(base: str, api_key: str) -> tuple[str, bool, str, str]:
    """Show what the tour cost and who earned it, from the gateway's ledger."""
    try:
        headers = {"Authorization": f"Bearer {api_key}"}
        account = httpx.get(f"{base}/v1/account", headers=headers, timeout=10).json()
        totals = httpx.get(f"{base}/v1/ledger", timeout=10).json()
        spent = DEMO_FUNDS - account["balance"] - account["held"]
        note = (
            f"the tour cost {format_tokens(spent)} tokens "
            f"({spent} base units); balance {format_tokens(account['balance'])}; "
            f"fees {totals['fees']}, verification pool {totals['verification_pool']} units"
        )
        return "pay per token", spent > 0, "-", note
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return "pay per token", False, "-", f"{type(exc).__name__}: {exc}"


def _deposit_and_stake(
    chain: DemoChain, base: str, api_key: str, data_dir: Path, key_files: list[Path]
) -> str:
    """The consumer's deposit and every provider's bond, at once: each sends from its own
    key, after one round of gas and mints from the dev key. Returns the consumer's address."""
    from tessera.demo_chain import (
        consumer_key_file,
        deposit_for,
        eth_key_file_of,
        fund_parties,
        stake_on_chain,
    )

    fund_parties(
        chain,
        [(consumer_key_file(data_dir), DEMO_FUNDS)]
        + [(eth_key_file_of(key_file), DEFAULT_STAKE) for key_file in key_files],
    )
    with ThreadPoolExecutor(max_workers=1 + len(key_files)) as pool:
        deposit = pool.submit(deposit_for, chain, base, api_key, data_dir, DEMO_FUNDS)
        stakes = [pool.submit(stake_on_chain, chain, kf, DEFAULT_STAKE) for kf in key_files]
        for stake in stakes:
            stake.result()
        return deposit.result()


def _serve_without_providers(
    base: str, api_key: str, data_dir: Path, network: Network, once: bool
) -> int:
    console.print(
        Panel(
            f"gateway  {base}/v1\nexplorer {base}/explorer\napi key  {api_key}\n"
            f"no providers: start your own with `tessera provider --gateway {base} --model ...`"
            f" after bonding stake (`tessera stake --help`); state and logs in {data_dir}",
            title="the gateway is up",
        )
    )
    return 0 if once else _stay_up(network, data_dir)


def _stay_up(network: Network, data_dir: Path) -> int:
    """Wait until a process of the network exits (1) or Ctrl-C (raises KeyboardInterrupt)."""
    while not network.dead():
        time.sleep(1)
    console.print(f"[red]{', '.join(network.dead())} exited[/]; see {data_dir / 'logs'}")
    return 1


def run_demo(
    port: int, providers: int, data_dir: Path, model_dir: Path, once: bool, chain: bool = True
) -> int:
    """Run the demo; with ``providers`` 0, only the gateway and a funded key (no model, no
    tour): a network for the caller's own providers. ``chain``: money on a local chain."""
    if providers and not (model_dir / ".complete").exists():
        from tessera.models.make_tiny import make_tiny

        console.print(f"no tiny model at {model_dir}: training one now (a few minutes)")
        make_tiny(model_dir, show_progress=True)
    secure_data_dir(data_dir)
    # SIGTERM (kill, a supervisor) stops the network as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    if port and not port_is_free(port):
        console.print(f"[yellow]port {port} is taken[/]: using a free one (or pass --port)")
        port = 0
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    network = Network(data_dir)
    key_files = [data_dir / f"provider-{i + 1}.key" for i in range(providers)]
    validators = [public_key_hex(load_or_create_key(path)) for path in key_files]
    on_chain: DemoChain | None = None
    # web3 and the contracts load only for a chain (other users of this module need none)
    from tessera.demo_chain import (
        SETTLEMENT_ENV,
        forget_chain_ledger,
        settlement_step,
        start_chain,
        wait_until_staked,
    )

    try:
        if chain:
            with console.status("starting a local chain (anvil) and deploying the contracts…"):
                on_chain = start_chain(data_dir)
            for name, value in SETTLEMENT_ENV.items():
                os.environ.setdefault(name, value)
        else:
            forget_chain_ledger(data_dir)
        money = on_chain.gateway_args() if on_chain else ["--dev"]
        catalog = ["--catalog", str(catalog_for(model_dir))] if providers else []
        network.spawn(
            "gateway",
            ["gateway", "--port", str(port), "--data-dir", str(data_dir), *money,
             *catalog, *(f"--validator={key}" for key in validators)],
        )  # fmt: skip
        api_key = asyncio.run(create_api_key(data_dir))
        wait_for_network(base, 0, network)
        # The providers start first: loading their models takes seconds, the chain's
        # transactions below take a block each, and the two overlap. An unstaked provider
        # connects and passes its challenge but gets no work until its stake is counted.
        for i in range(providers):
            region, label, price_in, price_out = REGIONS[i % len(REGIONS)]
            network.spawn(
                f"provider-{i + 1}",
                [
                    "provider",
                    "--gateway", base,
                    "--model", str(model_dir),
                    "--model", "minilm",
                    "--region", region,
                    "--label", f"{label}-{i + 1}",
                    "--price-in", str(price_in),
                    "--price-out", str(price_out),
                    "--key-file", str(key_files[i]),
                    "--threads", "1",
                    "--max-concurrent-jobs", "2",
                ],
            )  # fmt: skip
        consumer = None
        if on_chain is None:
            fund_account(base, api_key, DEMO_FUNDS)
            for key_file in key_files[:providers]:
                stake_provider(base, key_file)
        else:
            with console.status(
                "the consumer deposits in the vault and the providers bond on chain…"
            ):
                consumer = _deposit_and_stake(
                    on_chain, base, api_key, data_dir, key_files[:providers]
                )
        wait_for_network(base, providers, network)
        if on_chain is not None and providers:
            with console.status("waiting for the gateway to count the stake on chain…"):
                wait_until_staked(base, validators, DEFAULT_STAKE)
        summary = {"base_url": f"{base}/v1", "explorer_url": f"{base}/explorer", "api_key": api_key}
        if on_chain is not None:
            summary |= on_chain.summary() | {"consumer_address": consumer}
        write_private(data_dir / "demo.json", json.dumps(summary, indent=2))
        if not providers:
            return _serve_without_providers(base, api_key, data_dir, network, once)
        wait_for_model(base, "tessera-tiny", network)
        steps = tour(f"{base}/v1", api_key, "tessera-tiny")
        steps.append(audit_step(base))
        steps.append(money_step(base, api_key))
        if on_chain is not None and consumer is not None:
            with console.status("waiting for a settlement on chain…"):
                steps.append(settlement_step(on_chain, base, consumer, key_files))
        table = Table(title=f"Tessera demo: {providers} providers behind {base}")
        for column in ("step", "ok", "provider", "what happened"):
            table.add_column(column)
        for name, ok, provider, note in steps:
            table.add_row(name, "[green]yes[/]" if ok else "[red]NO[/]", provider, note)
        console.print(table)
        failed = [s for s in steps if not s[1]]
        if once:
            return 1 if failed else 0
        console.print(
            Panel(
                f"gateway  {base}/v1\nexplorer {base}/explorer\napi key  {api_key}\n"
                f"state and logs in {data_dir}; Ctrl-C stops the network\n"
                "the same routing, audits and ledger at a million providers: "
                "`.venv/bin/tessera sim baseline --out report` (a few minutes)",
                title="the network is up",
            )
        )
        # Plain prints, not rich: snippets must survive copy and paste unwrapped.
        print(
            f"\ncurl {base}/v1/chat/completions \\\n"
            f"  -H 'Authorization: Bearer {api_key}' \\\n"
            "  -H 'Content-Type: application/json' \\\n"
            '  -d \'{"model": "tessera-tiny", "messages": '
            '[{"role": "user", "content": "Tell me a story."}]}\'\n'
        )
        print(
            "from openai import OpenAI\n"
            f'client = OpenAI(base_url="{base}/v1", api_key="{api_key}")\n'
            'reply = client.chat.completions.create(model="tessera-tiny", '
            'messages=[{"role": "user", "content": "Hello"}])\n'
            "print(reply.choices[0].message.content)\n",
            flush=True,
        )
        return _stay_up(network, data_dir)
    except KeyboardInterrupt:
        console.print("stopping…")
        return 0
    except RuntimeError as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return 1
    finally:
        network.stop()
        if on_chain is not None:
            on_chain.stop()
