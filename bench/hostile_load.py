"""An honest key's latency while strangers attack the gateway, against the same key alone.

Baseline: the honest key sends five short chats a second, one at a time, to a live
network (a gateway and two provider agents serving the tiny model, eight jobs each at
once, one forward pass at a time) with nothing else running. Then the same beside each
attack and both: one key looping over every input that once made the gateway answer an
unhandled 500 or trip every provider's circuit breaker (tests/support/hostile_load.py),
and another key keeping 64 long requests in flight. The target is an honest p99 within 2×
of its unloaded value. The flood's admitted jobs run on the same providers as the honest
key's: the gateway bounds how many slots they take (market/fair_share.py) and the
providers give each account's jobs an equal share of their passes, with a few passes of
credit for an account back from idle (market/compute_turns.py), so an honest short answer
waits for about one flood pass and then runs its own back to back. The passes run in
Linux's SCHED_IDLE class (provider/compute_priority.py), so the event loops on the machine
never wait behind one for a CPU, and each agent lowers its own session's share (Linux
autogroup, where a thread's class ranks it only inside its session); the attack process
runs in a session of its own, lowered the same way; a refused request's unread body is not
drained (gateway/http_server.py). On one machine the loops still share the two cores with
each other and with the clients: each phase also prints how busy the machine was and how long each server's event loop
waited for a CPU per second (the kernel's schedstat), which is where the honest tail goes,
and the honest key's time as the gateway logged it, split at the provider's first token.

What is left of the tail is CPU share on a machine that runs everything, not a queue in the
network. Beside both attacks (2026-12-07, 2 cores), almost all of it was in the providers:
the span from an honest job asking for its first turn to its last pass had a p99 of 89 ms
against a client p99 of 115 ms. ``perf sched`` over the twelve slowest honest passes (147
ms in all) found the pass thread running for 64 ms of them while the other provider's
passes ran 125 ms on the two cores, the attack process 52 ms and the gateway 33 ms. Other
settings made it worse (p99 ratio): passes at normal priority 7×, passes at nice 19
instead of SCHED_IDLE 6×; each provider pinned to a core of its own, 3.1×.
Run::

    PYTHONPATH=src:tests python bench/hostile_load.py [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from front_door_procs import busy_per_core_s, cpu_seconds, loop_wait_s  # noqa: E402

from tessera.dev_money import fund_account  # noqa: E402
from tessera.store.api_keys import ApiKeyStore  # noqa: E402
from tessera.store.engine import create_engine, database_url_for  # noqa: E402
from tessera.store.requests_log import RequestLog, RequestRecord  # noqa: E402

from support.hostile_load import Tally, run_load, run_unloaded  # noqa: E402
from support.live_network import create_key_with_id, start_network  # noqa: E402
from support.tiny_model import ensure_tiny_model  # noqa: E402
from support.verified_network import ledger_check  # noqa: E402


@dataclass
class Pressure:
    """How loaded the machine was during one phase: cores busy (all processes), each
    server's CPU in cores, and how long its event loop waited for a CPU, ms per second."""

    machine_cores: float = 0.0
    cpu_cores: dict[str, float] | None = None
    loop_wait_ms_per_s: dict[str, float] | None = None


@contextmanager
def measuring(processes: list[tuple[str, int]]) -> Iterator[Pressure]:
    pressure = Pressure()
    started = time.monotonic()
    busy = sum(busy_per_core_s().values())
    cpu = {name: cpu_seconds([pid]) for name, pid in processes}
    waited = {name: loop_wait_s(pid) for name, pid in processes}
    yield pressure
    elapsed = time.monotonic() - started
    pressure.machine_cores = (sum(busy_per_core_s().values()) - busy) / elapsed
    pressure.cpu_cores = {n: (cpu_seconds([pid]) - cpu[n]) / elapsed for n, pid in processes}
    pressure.loop_wait_ms_per_s = {
        n: (loop_wait_s(pid) - waited[n]) * 1000 / elapsed for n, pid in processes
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--flood", type=int, default=64, help="the flooding key's concurrency")
    parser.add_argument("--hostile-clients", type=int, default=4)
    parser.add_argument(
        "--provider-slots",
        type=int,
        default=8,
        help="jobs each provider runs at once: room for the flood to crowd an honest job",
    )
    args = parser.parse_args()
    console = Console()
    # Two providers share this machine's cores: each runs one forward pass at a time, as a
    # provider alone on its own machine would by default.
    os.environ["TESSERA_PROVIDER_PARALLEL_PASSES"] = "1"
    model_dir = ensure_tiny_model()
    with tempfile.TemporaryDirectory() as tmp:
        with console.status("starting a gateway and two providers…"):
            live = start_network(
                Path(tmp), model_dir, embeddings=False, max_concurrent_jobs=args.provider_slots
            )
        try:
            made = [create_key_with_id(live.data_dir) for _ in range(3)]
            for key, _ in made:
                fund_account(live.base, key)
            (honest, honest_id), (hostile, _), (flood, _) = made
            servers = [(name, proc.pid) for name, proc in live.network.processes]
            pressures: dict[str, Pressure] = {}
            windows: dict[str, tuple[datetime, datetime]] = {}
            with console.status(f"honest key alone for {args.seconds:.0f} s…"):
                asyncio.run(run_unloaded(live.base, honest, 3.0))  # warm up
                with measuring(servers) as pressures["alone"], window(windows, "alone"):
                    alone = asyncio.run(run_unloaded(live.base, honest, args.seconds))
            phases = {"alone": alone}
            for name, clients, flooders in (
                ("hostile input only", args.hostile_clients, 0),
                ("flood only", 0, args.flood),
                ("hostile input and flood", args.hostile_clients, args.flood),
            ):
                with (
                    console.status(f"honest key beside {name} for {args.seconds:.0f} s…"),
                    measuring(servers) as pressures[name],
                    window(windows, name),
                ):
                    phases[name] = asyncio.run(
                        run_load(
                            live.base,
                            honest,
                            hostile,
                            flood,
                            args.seconds,
                            hostile_clients=clients,
                            flood_concurrency=flooders,
                        )
                    )
        finally:
            live.network.stop()
        checked = ledger_check(live.data_dir)
        logged = asyncio.run(honest_log(live.data_dir, honest_id))
    report(console, phases, args)
    report_split(console, logged, windows)
    report_pressure(console, pressures)
    console.print(f"ledger check after the run: {'ok' if checked.returncode == 0 else 'FAILED'}")
    if checked.returncode:
        console.print(checked.stdout, checked.stderr)


@contextmanager
def window(windows: dict[str, tuple[datetime, datetime]], name: str) -> Iterator[None]:
    """Note when a phase ran, to find its requests in the gateway's request log."""
    start = datetime.now(UTC)
    try:
        yield
    finally:
        windows[name] = (start, datetime.now(UTC))


async def honest_log(data_dir: Path, key_id: str) -> list[RequestRecord]:
    """Every request the honest key made, as the gateway logged it (its own timings)."""
    engine = create_engine(database_url_for(data_dir))
    try:
        key = await ApiKeyStore(engine).get(key_id)
        if key is None:
            return []
        return await RequestLog(engine).for_account(key.account_id, limit=1_000_000)
    finally:
        await engine.dispose()


def report_split(
    console: Console, logged: list[RequestRecord], windows: dict[str, tuple[datetime, datetime]]
) -> None:
    """The honest key's time as the gateway measured it: until the provider's first token
    (routing, the hold, the provider's queue, turn and first pass) and after it (the other
    passes and the relay). Shows whether an attack's cost lands before work starts or in
    the providers' passes."""
    table = Table(title="Honest key, where the time went (the gateway's request log), ms")
    for column in ("beside", "requests", "to first token p50 / p99", "after it p50 / p99"):
        table.add_column(column, justify="right")
    for name, (start, end) in windows.items():
        rows = [r for r in logged if start <= r.created_at < end and r.ttft_ms is not None]
        if not rows:
            continue
        first = sorted(float(r.ttft_ms or 0) for r in rows)
        rest = sorted(float(r.latency_ms) - float(r.ttft_ms or 0) for r in rows)
        table.add_row(
            name,
            str(len(rows)),
            f"{_at(first, 0.5):.0f} / {_at(first, 0.99):.0f}",
            f"{_at(rest, 0.5):.0f} / {_at(rest, 0.99):.0f}",
        )
    console.print(table)


def _at(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(console: Console, phases: dict[str, Tally], args: argparse.Namespace) -> None:
    table = Table(title="Honest key, short chats (4 output tokens) five a second, ms")
    for column in ("beside", "requests", "errors", "p50", "p90", "p99", "p99 ratio"):
        table.add_column(column, justify="right")
    base99 = phases["alone"].percentile(0.99)
    for name, tally in phases.items():
        table.add_row(
            name,
            str(len(tally.honest_ms)),
            str(len(tally.honest_errors)),
            f"{statistics.median(tally.honest_ms):.1f}",
            f"{tally.percentile(0.9):.1f}",
            f"{tally.percentile(0.99):.1f}",
            f"{tally.percentile(0.99) / base99:.2f}x",
        )
    console.print(table)
    attacked = phases["hostile input and flood"]
    answers = Table(title="What the attackers got (status: count; 0 = connection closed)")
    answers.add_column("traffic")
    answers.add_column("statuses")
    answers.add_row(
        f"{args.hostile_clients} hostile clients",
        ", ".join(f"{k}: {v}" for k, v in sorted(attacked.statuses["hostile"].items())),
    )
    answers.add_row(
        f"flood, {args.flood} in flight",
        ", ".join(f"{k}: {v}" for k, v in sorted(attacked.statuses["flood"].items())),
    )
    console.print(answers)
    for error in attacked.honest_errors[:5]:
        console.print(f"honest error: {error}")


def report_pressure(console: Console, pressures: dict[str, Pressure]) -> None:
    cores = len(busy_per_core_s())
    names = list(next(iter(pressures.values())).cpu_cores or {})
    order = " / ".join(names)
    table = Table(title=f"The machine during each phase ({cores} cores, every process on it)")
    table.add_column("beside")
    table.add_column("cores busy", justify="right")
    table.add_column(f"CPU, cores: {order}", justify="right")
    table.add_column(f"event loop waited for a CPU, ms/s: {order}", justify="right")
    for phase, p in pressures.items():
        cpu, waits = p.cpu_cores or {}, p.loop_wait_ms_per_s or {}
        table.add_row(
            phase,
            f"{p.machine_cores:.2f}",
            " / ".join(f"{cpu[n]:.2f}" for n in names),
            " / ".join(f"{waits[n]:.0f}" for n in names),
        )
    console.print(table)


if __name__ == "__main__":
    main()
