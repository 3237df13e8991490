"""The front door side by side: one OpenAI-compatible mock upstream (bench/mock_upstream.py)
called directly, through LiteLLM's proxy, and through Tessera (a dev gateway and one
provider agent whose upstream backend is the mock), in one run on one machine.

Layout (two cores): the mock and every load generator on core 0; the servers on core 1.

- ``direct``: the mock itself;
- ``litellm``: LiteLLM's proxy from PyPI (its own venv under .cache/bench), one uvicorn
  worker, the mock as an ``openai/`` model with ``api_base``, no database, no telemetry,
  logging at ERROR;
- ``tessera-shared``: ``tessera gateway --dev`` and one ``tessera provider --upstream``,
  both on core 1, the provider staked and priced (money path on), limits raised so the
  bench key is never answered 429;
- ``tessera-split``: the same processes with the agent moved to core 0 (the gateway on
  its own core).

Phases, non-streaming chat with ``max_tokens`` 4 unless said:

- closed loop with ``wrk`` (Debian's package, a Lua script for the body) at c = 1, 16, 64:
  req/s, p50/p99, errors, and the latency added over direct;
- open loop at 100, 500, 1,500 req/s from our generator (``--worker``, in
  front_door_load.py): requests leave on a fixed schedule whatever the answers do,
  latency counts from the scheduled time (no coordinated omission), anything not
  answered within ``--timeout`` is a timeout;
- 64, 128, 256 concurrent streams against the mock restarted with ``--chunk-delay-ms 20``:
  time to first token (first non-empty content) and gaps between SSE events, a gap over
  100 ms being a stall;
- the resident memory of every server process after each phase (from /proc).

Prints a table per phase with ratios to LiteLLM and to direct, and writes
bench/RESULTS.md (machine, versions, date, every figure, and issue 12's targets met or
missed by how much). Every process it starts is stopped on exit, Ctrl-C and errors
included. Run::

    .venv/bin/python bench/front_door.py [--quick] [--duration S] [--no-litellm]

This file measures and runs the phases; the load generator is front_door_load.py, the
processes front_door_procs.py, the tables and RESULTS.md front_door_report.py, and what
they share front_door_common.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from front_door_common import (
    CACHE,
    CONCURRENCY,
    LOAD_CORE,
    MAX_TOKENS,
    MESSAGES,
    MODEL,
    RATES,
    REPO,
    RESULTS,
    ROWS,
    SERVER_CORE,
    STREAMS,
    Results,
    Target,
)
from front_door_load import run_worker
from front_door_procs import (
    OthersMeter,
    Started,
    Tessera,
    ensure_litellm,
    ensure_wrk,
    pin,
    pinned_child,
    rss_mib,
    start_litellm,
    start_mock,
    start_tessera,
    wait_quiet,
)
from front_door_report import machine, markdown, tables, targets, versions, why_missed

# ================================================================ measuring


def _lua(name: str, key: str | None, directory: Path) -> Path:
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS})
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    script = directory / f"post-{name}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{body}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"{auth}"
        "done = function(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        '  io.write(string.format("WRKJSON {\\"requests\\":%.0f,\\"duration_us\\":%.0f,'
        '\\"connect\\":%.0f,\\"read\\":%.0f,\\"write\\":%.0f,\\"status\\":%.0f,'
        '\\"timeout\\":%.0f,\\"p50_us\\":%.1f,\\"p99_us\\":%.1f}\\n",\n'
        "    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,\n"
        "    e.timeout, latency:percentile(50), latency:percentile(99)))\n"
        "end\n"
    )
    return script


class Bench:
    """Runs one measured point at a time against a target, each in a process on core 0."""

    def __init__(
        self,
        args: argparse.Namespace,
        workdir: Path,
        wrk: str | None,
        results: Results,
        meter: OthersMeter,
    ) -> None:
        self.args = args
        self.workdir = workdir
        self.wrk = wrk
        self.results = results
        self.meter = meter

    def _worker(self, spec: dict[str, Any], limit_s: float) -> dict[str, Any]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
        got = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=limit_s,
            preexec_fn=pinned_child(LOAD_CORE),
        )
        for line in got.stdout.splitlines():
            if line.startswith("RESULT "):
                return cast(dict[str, Any], json.loads(line[7:]))
        raise RuntimeError(f"load generator failed ({got.returncode}): {got.stderr[-2000:]}")

    def _spec(self, target: Target, mode: str, **kw: Any) -> dict[str, Any]:
        return {
            "mode": mode,
            "host": "127.0.0.1",
            "port": target.port,
            "path": "/v1/chat/completions",
            "key": target.key,
            "timeout": self.args.timeout,
            **kw,
        }

    def closed(self, target: Target, concurrency: int, duration: int) -> dict[str, Any]:
        noise: dict[str, Any] = {}
        with self.meter.measuring(noise):
            result = self._closed(target, concurrency, duration)
        return result | noise

    def _closed(self, target: Target, concurrency: int, duration: int) -> dict[str, Any]:
        if self.wrk is None:
            spec = self._spec(target, "closed", concurrency=concurrency, duration=duration)
            return self._worker(spec, duration + 120)
        url = f"http://127.0.0.1:{target.port}/v1/chat/completions"
        cmd = [
            self.wrk,
            "-t1",
            f"-c{concurrency}",
            f"-d{duration}s",
            "--timeout",
            f"{int(self.args.timeout)}s",
        ]
        cmd += ["-s", str(_lua(target.name, target.key, self.workdir)), url]
        got = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=duration + 120,
            preexec_fn=pinned_child(LOAD_CORE),
        )
        line = next((x for x in got.stdout.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(
                f"wrk failed ({got.returncode}): {got.stdout[-1000:]} {got.stderr[-1000:]}"
            )
        w = json.loads(line[8:])
        errors = int(w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"])
        ok = max(0, int(w["requests"]) - int(w["status"]))
        return {
            "requests": int(w["requests"]),
            "rps": ok / (w["duration_us"] / 1e6),
            "p50_ms": w["p50_us"] / 1000,
            "p99_ms": w["p99_us"] / 1000,
            "errors": errors,
        }

    def open(self, target: Target, rate: int, duration: int) -> dict[str, Any]:
        spec = self._spec(
            target, "open", rate=rate, duration=duration, max_conns=self.args.max_conns
        )
        noise: dict[str, Any] = {}
        with self.meter.measuring(noise):
            result = self._worker(spec, duration + self.args.timeout + 120)
        # How long the server kept working on what the load left behind.
        result["drain_s"] = wait_quiet(target.pids, limit_s=self.args.drain_limit)
        return result | noise

    def streams(self, target: Target, count: int, duration: int) -> dict[str, Any]:
        spec = self._spec(
            target, "streams", streams=count, duration=duration, max_tokens=self.args.stream_tokens
        )
        spec["timeout"] = max(self.args.timeout, 30.0)
        noise: dict[str, Any] = {}
        with self.meter.measuring(noise):
            result = self._worker(spec, duration + spec["timeout"] + 120)
        if result.get("failures"):
            print(f"{count} streams: failed {result['failures']}", file=sys.stderr, flush=True)
        wait_quiet(target.pids, limit_s=self.args.drain_limit)
        return result | noise


# ================================================================ main


def fresh_workdir(base: Path) -> Path:
    """This run's own directory under ``base`` (logs, configs, the gateway's data), so two
    runs at once never delete each other's files; those of runs no longer alive go, the
    last one's logs stay until the next run."""
    base.mkdir(parents=True, exist_ok=True)
    for old in base.iterdir():
        pid = old.name.removeprefix("run-")
        if old.name.startswith("run-") and pid.isdigit() and _alive(int(pid)):
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    workdir = base / f"run-{os.getpid()}"
    workdir.mkdir()
    return workdir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per point (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 s per point, for a smoke run")
    parser.add_argument("--timeout", type=float, default=5.0, help="open-loop request timeout, s")
    parser.add_argument("--max-conns", type=int, default=256, help="open-loop connection cap")
    parser.add_argument(
        "--drain-limit", type=float, default=60.0, help="longest wait for a server to go idle, s"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run everything at this niceness (negative needs root): on a machine others "
        "use, their processes then disturb the figures less",
    )
    parser.add_argument("--stream-tokens", type=int, default=16, help="tokens per streamed answer")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM row")
    parser.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.duration = min(args.duration, 2)
    args.duration = max(1, args.duration)
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@dataclass
class Servers:
    """Everything measured; ``stop`` ends every process this run started (idempotent)."""

    mock: Started
    tessera: Tessera | None = None
    litellm: Started | None = None
    litellm_key: str = ""

    def pids(self) -> dict[str, int]:
        pids = {"mock": self.mock.proc.pid}
        if self.litellm:
            pids["litellm"] = self.litellm.proc.pid
        if self.tessera:
            pids |= {"gateway": self.tessera.gateway_pid, "agent": self.tessera.agent_pid}
        return pids

    def targets(self) -> dict[str, Target]:
        out = {"direct": Target("direct", self.mock.port, None, [])}
        if self.litellm:
            pid = self.litellm.proc.pid
            out["litellm"] = Target("litellm", self.litellm.port, self.litellm_key, [pid])
        if self.tessera:
            t = self.tessera
            for row in ("tessera-shared", "tessera-split"):
                out[row] = Target(row, t.port, t.key, [t.gateway_pid, t.agent_pid])
        return out

    def layout(self, row: str) -> None:
        """Pin the Tessera processes as ``row`` wants them; fail if one has died."""
        if self.tessera is None or not row.startswith("tessera"):
            return
        if dead := self.tessera.network.dead():
            logs = self.tessera.network.data_dir / "logs"
            raise RuntimeError(f"{', '.join(dead)} exited; see {logs}")
        pin(self.tessera.gateway_pid, SERVER_CORE)
        pin(self.tessera.agent_pid, LOAD_CORE if row == "tessera-split" else SERVER_CORE)

    def stop(self) -> None:
        for stop in (
            self.tessera.network.stop if self.tessera else None,
            self.litellm.stop if self.litellm else None,
            self.mock.stop,
        ):
            if stop is not None:
                with contextlib.suppress(Exception):
                    stop()


def start_servers(
    console: Any, workdir: Path, litellm_exe: Path | None, results: Results
) -> Servers:
    """The mock, LiteLLM's proxy (when installed) and Tessera; stops what started if any
    of them fails."""
    servers = Servers(start_mock(0, workdir / "mock.log", "--tokens", str(MAX_TOKENS)))
    try:
        console.print(f"mock upstream on port {servers.mock.port} (core {LOAD_CORE})")
        if litellm_exe:
            try:
                with console.status("starting LiteLLM's proxy…"):
                    servers.litellm, servers.litellm_key = start_litellm(
                        litellm_exe, servers.mock.port, workdir
                    )
            except RuntimeError as exc:
                why = f"LiteLLM did not start ({exc}); see {workdir / 'litellm.log'}"
                results.notes.append(why)
                console.print(f"[yellow]{why}; its row is skipped[/]")
            else:
                console.print(f"LiteLLM proxy on port {servers.litellm.port} (core {SERVER_CORE})")
        (workdir / "tessera").mkdir()
        servers.tessera = start_tessera(servers.mock.port, workdir / "tessera")
        console.print(
            f"Tessera gateway on port {servers.tessera.port} with one provider agent "
            f"(core {SERVER_CORE})"
        )
    except BaseException:
        servers.stop()
        raise
    return servers


def measure(bench: Bench, servers: Servers, rows: list[str], console: Any, workdir: Path) -> None:
    """Every phase for every row, with a progress bar; fills ``bench.results``."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    results, args, targets_by_row = bench.results, bench.args, servers.targets()

    def memory(label: str) -> None:
        rss = {name: rss_mib(pid) for name, pid in servers.pids().items()}
        results.memory.append((label, rss))

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    points = len(rows) * (len(CONCURRENCY) + len(RATES) + len(STREAMS))
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("measuring…", total=points)

        def step(description: str) -> None:
            progress.update(task, description=description)

        for row in rows:
            target = targets_by_row[row]
            servers.layout(row)
            step(f"{row}: warming up…")
            bench.closed(target, 16, 1)
            wait_quiet(target.pids)
            for c in CONCURRENCY:
                step(f"{row}: closed loop c={c}…")
                results.closed.setdefault(row, {})[c] = bench.closed(target, c, args.duration)
                wait_quiet(target.pids)
                progress.advance(task)
            memory(f"{row}: closed loop")
            for rate in RATES:
                step(f"{row}: open loop {rate}/s…")
                results.open.setdefault(row, {})[rate] = bench.open(target, rate, args.duration)
                progress.advance(task)
            memory(f"{row}: open loop")
        step("restarting the mock with 20 ms between chunks…")
        port = servers.mock.port
        servers.mock.stop()
        delayed = ("--tokens", str(args.stream_tokens), "--chunk-delay-ms", "20")
        servers.mock = start_mock(port, workdir / "mock.log", *delayed)
        for row in rows:
            target = targets_by_row[row]
            servers.layout(row)
            step(f"{row}: warming up streams…")
            bench.streams(target, 8, 1)
            for n in STREAMS:
                step(f"{row}: {n} concurrent streams…")
                results.streams.setdefault(row, {})[n] = bench.streams(target, n, args.duration)
                progress.advance(task)
            memory(f"{row}: streams")


def report(console: Any, results: Results, rows: list[str], duration: int) -> None:
    from rich.table import Table

    console.print("rows: " + "; ".join(f"[bold]{row}[/]: {ROWS[row]}" for row in rows))
    for title, columns, cells in tables(results, rows):
        table = Table(title=title)
        for column in columns:
            left = column in ("path", "after")
            table.add_column(column, justify="left" if left else "right", no_wrap=left)
        for cells_row in cells:
            table.add_row(*cells_row)
        console.print(table)
    verdicts = Table(title="Issue 12 targets")
    for column in ("target", "figure", "verdict", "margin"):
        verdicts.add_column(column)
    for target_row in targets(results):
        style = {"met": "green", "MISSED": "red"}.get(target_row[2], "")
        verdicts.add_row(*target_row, style=style)
    console.print(verdicts)
    for reason in why_missed(results, duration):
        console.print(reason.replace("**", ""))


def main() -> int:
    args = parse_args()
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 200)
    if (os.cpu_count() or 1) < 2:
        console.print("[red]needs two cores (the load on core 0, the servers on core 1)[/]")
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})
    # Measure the tree this file lives in, also in the processes it starts.
    sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]
    paths = [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    workdir = fresh_workdir(CACHE / "front-door")
    info = {"Machine": machine()}
    results = Results()
    with console.status("checking wrk and LiteLLM (installed once into .cache/bench)…"):
        wrk = ensure_wrk()
        litellm_exe, litellm_version = (
            (None, "skipped (--no-litellm)") if args.no_litellm else ensure_litellm()
        )
    if wrk is None:
        results.notes.append("wrk could not be installed: the closed loop used our own generator.")
        console.print(
            "[yellow]wrk could not be installed; the closed loop uses our own generator[/]"
        )
    if litellm_exe is None:
        results.notes.append(f"LiteLLM row not run: {litellm_version}")
        console.print(f"[yellow]LiteLLM row not run: {litellm_version}[/]")
    info["Versions"] = versions(litellm_version if litellm_exe else "not run", wrk)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by everything started
    bench = Bench(args, workdir, wrk, results, OthersMeter(dict))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    servers = None
    try:
        servers = start_servers(console, workdir, litellm_exe, results)
        bench.meter.servers = servers.pids
        rows = [row for row in ROWS if row in servers.targets()]
        measure(bench, servers, rows, console, workdir)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: nothing written[/]")
        return 130
    finally:
        if servers is not None:
            with console.status("stopping every process…"):
                servers.stop()
        signal.signal(signal.SIGTERM, previous)
    info["Machine"]["load average at the end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report(console, results, rows, args.duration)
    if not args.no_results:
        RESULTS.write_text(markdown(results, rows, info, args))
        console.print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
