"""The front-door bench's report: the tables with their ratios, issue 12's targets met or
missed by how much, and bench/RESULTS.md."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from front_door_common import LOAD_CORE, MAX_TOKENS, REPO, ROWS, SERVER_CORE, Results
from front_door_procs import others_cpu

# ================================================================ report


def _f(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "n/a"
    x = a / b
    return f"{x:,.0f}×" if x >= 100 else f"{x:.1f}×" if x >= 10 else f"{x:.2g}×"


def _added(a: float | None, b: float | None) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return "n/a"
    return f"{a - b:+,.2f}"


SERVERS = ("litellm", "gateway", "agent")
ON_SERVER_CORE = {  # the servers each row runs on core 1
    "litellm": ("litellm",),
    "tessera-shared": ("gateway", "agent"),
    "tessera-split": ("gateway",),
}


def answers(result: dict[str, Any]) -> int:
    """What a point's servers answered, whatever its mode: requests, or whole streams."""
    if "completed" in result:
        return int(result["completed"] + result["errors"])
    if "sent" in result:
        return int(result["ok"] + result["errors"])
    return int(result["requests"])


def cpu_ms_per(result: dict[str, Any], server: str, count: int) -> float:
    """Milliseconds of ``server``'s CPU per answer over one point (NaN if it did not run)."""
    used = (result.get("cpu_s") or {}).get(server)
    if used is None or not count:
        return math.nan
    return 1000 * used / count


def core_busy_pct(result: dict[str, Any], row: str) -> float:
    """How busy the servers kept core 1 during a point: their CPU over its wall time."""
    used = result.get("cpu_s") or {}
    wall = result.get("wall_s")
    if not wall:
        return math.nan
    return 100 * sum(used.get(n, 0.0) for n in ON_SERVER_CORE.get(row, ())) / wall


def tables(results: Results, rows: list[str]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every table as (title, columns, rows of cells): rendered by rich and as Markdown."""
    out = []
    closed_rows = []
    for row in rows:
        for c, r in results.closed.get(row, {}).items():
            direct = results.closed.get("direct", {}).get(c)
            lite = results.closed.get("litellm", {}).get(c)
            closed_rows.append(
                [
                    row, str(c), _f(r["rps"], 0), _f(r["p50_ms"], 2), _f(r["p99_ms"], 2),
                    str(r["errors"]),
                    _added(r["p50_ms"], direct and direct["p50_ms"]),
                    _added(r["p99_ms"], direct and direct["p99_ms"]),
                    _ratio(r["rps"], lite and lite["rps"]),
                    _ratio(r["rps"], direct and direct["rps"]),
                    others_cpu(r),
                ]
            )  # fmt: skip
    out.append(
        (
            f"Closed loop (wrk), non-streaming chat, max_tokens {MAX_TOKENS}",
            ["path", "c", "req/s", "p50 ms", "p99 ms", "errors", "added p50 ms", "added p99 ms",
             "req/s vs LiteLLM", "req/s vs direct", "others' CPU % (core 0 / 1)"],
            closed_rows,
        )
    )  # fmt: skip
    open_rows = []
    for row in rows:
        for rate, r in results.open.get(row, {}).items():
            direct = results.open.get("direct", {}).get(rate)
            lite = results.open.get("litellm", {}).get(rate)
            open_rows.append(
                [
                    row, str(rate), _f(r["achieved"], 0), _f(r["p50_ms"], 2), _f(r["p99_ms"], 2),
                    str(r["errors"]), str(r["timeouts"]),
                    _added(r["p50_ms"], direct and direct["p50_ms"]),
                    _added(r["p99_all_ms"], direct and direct["p99_all_ms"]),
                    _ratio(r["achieved"], lite and lite["achieved"]),
                    _ratio(r["achieved"], direct and direct["achieved"]),
                    _f(r["lag_p99_ms"], 2), _f(r["drain_s"], 1),
                    others_cpu(r),
                ]
            )  # fmt: skip
    out.append(
        (
            "Open loop: fixed send schedule, latency from the scheduled time",
            ["path", "rate/s", "achieved/s", "p50 ms", "p99 ms", "errors", "timeouts",
             "added p50 ms", "added p99 ms (failures ∞)", "achieved vs LiteLLM",
             "achieved vs direct", "send lag p99 ms", "drain s", "others' CPU % (core 0 / 1)"],
            open_rows,
        )
    )  # fmt: skip
    stream_rows = []
    for row in rows:
        for n, r in results.streams.get(row, {}).items():
            direct = results.streams.get("direct", {}).get(n)
            lite = results.streams.get("litellm", {}).get(n)
            stream_rows.append(
                [
                    row, str(n), str(r["completed"]), str(r["errors"]),
                    _f(r["ttft_p50_ms"], 2), _f(r["ttft_p99_ms"], 2),
                    _added(r["ttft_p50_ms"], direct and direct["ttft_p50_ms"]),
                    _added(r["ttft_p99_ms"], direct and direct["ttft_p99_ms"]),
                    _ratio(r["completed"], lite and lite["completed"]),
                    _ratio(r["completed"], direct and direct["completed"]),
                    _f(r["gap_p99_ms"], 1), _f(r["max_gap_ms"], 0),
                    str(r["stalls"]), str(r["stalled_streams"]),
                    others_cpu(r),
                ]
            )  # fmt: skip
    out.append(
        (
            "Concurrent streams, 20 ms between upstream chunks",
            ["path", "streams", "completed", "errors", "TTFT p50 ms", "TTFT p99 ms",
             "added TTFT p50", "added TTFT p99", "completed vs LiteLLM",
             "completed vs direct", "gap p99 ms", "max gap ms", "stalls >100 ms",
             "streams stalled", "others' CPU % (core 0 / 1)"],
            stream_rows,
        )
    )  # fmt: skip
    cpu_rows = []
    for row in rows:
        if row == "direct":
            continue
        for phase, unit, figures in (
            ("closed loop c=", "", results.closed.get(row, {})),
            ("open loop ", "/s", results.open.get(row, {})),
            ("streams ", "", results.streams.get(row, {})),
        ):
            for x, r in figures.items():
                done = answers(r)
                cpu_rows.append(
                    [
                        row, f"{phase}{x}{unit}", str(done),
                        *(_f(cpu_ms_per(r, name, done), 3) for name in SERVERS),
                        _f(core_busy_pct(r, row), 0),
                    ]
                )  # fmt: skip
    out.append(
        (
            "CPU per answer (a stream counts as one answer), ms",
            ["path", "point", "answers", *SERVERS, "servers' core busy %"],
            cpu_rows,
        )
    )
    names = sorted({name for _, rss in results.memory for name in rss})
    out.append(
        (
            "Resident memory after each phase, MiB",
            ["after", *names],
            [[phase, *(_f(rss.get(n), 0) for n in names)] for phase, rss in results.memory],
        )
    )
    return out


def _best(points: dict[int, dict[str, Any]], clean: bool = False) -> tuple[float, int, int]:
    """(best req/s, its concurrency, its errors) over a row's closed-loop points; with
    ``clean``, points without errors first."""
    if not points:
        return math.nan, 0, 0
    candidates = [(c, r) for c, r in points.items() if not clean or r["errors"] == 0] or list(
        points.items()
    )
    c, r = max(candidates, key=lambda cr: cr[1]["rps"])
    return r["rps"], c, r["errors"]


def targets(results: Results) -> list[list[str]]:
    """Issue 12's targets: [target, figure, verdict, margin]."""
    out: list[list[str]] = []

    def at_least(
        name: str, figure: float, goal: float, unit: str, detail: str = "", ok: bool = True
    ) -> None:
        if math.isnan(figure):
            out.append([name, "not measured", "—", ""])
            return
        met = figure >= goal and ok
        margin = f"{figure - goal:+,.0f} {unit} ({figure / goal:.1%} of the target)" if goal else ""
        out.append([name, f"{figure:,.1f} {unit}{detail}", "met" if met else "MISSED", margin])

    def at_most(name: str, figure: float, goal: float, unit: str, detail: str = "") -> None:
        if math.isnan(figure):
            out.append([name, "not measured", "—", ""])
            return
        met = figure <= goal
        margin = f"{figure - goal:+,.2f} {unit} ({figure / goal:.1f}× the limit)" if goal else ""
        out.append([name, f"{_f(figure, 2)} {unit}{detail}", "met" if met else "MISSED", margin])

    split = results.closed.get("tessera-split", {})
    shared = results.closed.get("tessera-shared", {})
    direct = results.closed.get("direct", {})
    rps, c, errors = _best(split, clean=True)
    at_least(
        "gateway on its own core: ≥ 2,000 req/s with no errors",
        rps, 2000, "req/s", f" at c={c}, {errors} errors", ok=errors == 0,
    )  # fmt: skip
    lite_rps = _best(results.closed.get("litellm", {}))[0]
    ratio = rps / lite_rps if lite_rps else math.nan
    at_least(
        "gateway on its own core: ≥ 20× LiteLLM",
        ratio,
        20,
        "×",
        f" ({rps:,.0f} vs {lite_rps:,.0f} req/s)",
    )
    at_least(
        "gateway and agent sharing a core: ≥ 1,000 req/s",
        _best(shared)[0],
        1000,
        "req/s",
        f" at c={_best(shared)[1]}",
    )
    for label, points in (
        ("gateway on its own core", split),
        ("gateway and agent on one core", shared),
    ):
        one, base = points.get(1), direct.get(1)
        p50 = one["p50_ms"] - base["p50_ms"] if one and base else math.nan
        p99 = one["p99_ms"] - base["p99_ms"] if one and base else math.nan
        at_most(f"added latency at c=1, {label}: p50 ≤ 1 ms", p50, 1.0, "ms")
        at_most(f"added latency at c=1, {label}: p99 ≤ 2 ms", p99, 2.0, "ms")
    open_split, open_direct = results.open.get("tessera-split", {}), results.open.get("direct", {})
    got, base = open_split.get(500), open_direct.get(500)
    added = got["p99_all_ms"] - base["p99_all_ms"] if got and base else math.nan
    detail = (
        f" ({got['achieved']:,.0f} req/s achieved, {got['errors']} errors, {got['timeouts']} timeouts)"
        if got
        else ""
    )
    at_most(
        "open loop 500 req/s, gateway on its own core: added p99 ≤ 5 ms", added, 5.0, "ms", detail
    )
    got = open_split.get(1500)
    if got:
        failures = got["errors"] + got["timeouts"]
        out.append(
            [
                "open loop 1,500 req/s, gateway on its own core: no errors",
                f"{got['errors']} errors, {got['timeouts']} timeouts of {got['sent']:,} "
                f"({got['achieved']:,.0f} req/s achieved)",
                "met" if failures == 0 else "MISSED",
                f"{failures / got['sent']:.1%} of requests failed" if failures else "",
            ]
        )
    else:
        out.append(
            ["open loop 1,500 req/s, gateway on its own core: no errors", "not measured", "—", ""]
        )
    st, base = (
        results.streams.get("tessera-split", {}).get(256),
        results.streams.get("direct", {}).get(256),
    )
    if st:
        out.append(
            [
                "256 streams, gateway on its own core: no stall > 100 ms",
                f"{st['stalls']} stalls in {st['stalled_streams']} of {st['completed']} streams "
                f"(max gap {_f(st['max_gap_ms'], 0)} ms, {st['errors']} errors)",
                "met" if st["stalls"] == 0 and st["errors"] == 0 else "MISSED",
                f"{st['stalled_streams'] / max(1, st['completed']):.1%} of streams stalled"
                if st["stalls"]
                else "",
            ]
        )
    added = st["ttft_p99_ms"] - base["ttft_p99_ms"] if st and base else math.nan
    at_most("256 streams, gateway on its own core: added TTFT p99 ≤ 5 ms", added, 5.0, "ms")
    return out


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "kernel": platform.release(),
        "load average at the start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def versions(litellm_version: str, wrk: str | None) -> dict[str, str]:
    def out(cmd: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            got = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO)
            return (
                (got.stdout or got.stderr).strip().splitlines()[0]
                if (got.stdout or got.stderr)
                else ""
            )
        return ""

    import uvloop

    return {
        "python": platform.python_version(),
        "tessera (git)": out(["git", "describe", "--always", "--dirty", "--abbrev=12"]),
        "litellm": litellm_version,
        "load generator": (out([wrk, "-v"]) if wrk else "") or "the Python closed loop (no wrk)",
        "uvloop": uvloop.__version__,
    }


def why_missed(results: Results, duration: int) -> list[str]:
    """Why the throughput and latency targets are missed, from this run's own CPU figures:
    what an answer costs the gateway and the agent bounds what one core can do."""
    out: list[str] = []
    split, shared = (
        results.closed.get("tessera-split", {}),
        results.closed.get("tessera-shared", {}),
    )
    lite = results.closed.get("litellm", {})

    def per(r: dict[str, Any] | None, server: str) -> float:
        return math.nan if r is None else cpu_ms_per(r, server, answers(r))

    top = split.get(max(split, default=0))
    gateway = per(top, "gateway")
    if not math.isnan(gateway):
        line = (
            f"**Throughput.** At c={max(split)} the gateway used {gateway:.3f} ms of CPU per "
            f"answer, so one core answers at most {1000 / gateway:,.0f} req/s. 2,000 req/s "
            f"needs 0.5 ms or less: {gateway / 0.5:.1f}× less work per answer."
        )
        litellm = per(lite.get(max(lite, default=0)), "litellm")
        if not math.isnan(litellm):
            line += f" LiteLLM used {litellm:.3f} ms per answer ({litellm / gateway:.1f}×)."
        out.append(line)
    top = shared.get(max(shared, default=0))
    both = per(top, "gateway") + per(top, "agent")
    if not math.isnan(both):
        out.append(
            f"**Sharing a core.** The gateway and the agent together used {both:.3f} ms per "
            f"answer at c={max(shared)}: at most {1000 / both:,.0f} req/s on one core, where "
            "1,000 req/s needs 1 ms or less."
        )
    one = split.get(1)
    path = per(one, "gateway") + per(one, "agent")
    if one is not None and not math.isnan(path):
        out.append(
            f"**Latency at c=1.** With one request at a time the gateway spent "
            f"{per(one, 'gateway'):.3f} ms of CPU per answer and the agent "
            f"{per(one, 'agent'):.3f} ms, and the gateway's core was "
            f"{core_busy_pct(one, 'tessera-split'):.0f} % busy. Part of that work runs after "
            "the answer is sent (the capture and its commit, the countersignature, the "
            "request log), so the next request mostly arrives while it still runs and waits "
            "for it; the rest is on the answer's path, with two extra socket hops (client to "
            "gateway, gateway to agent). The target allows 1 ms added at the median."
        )
    point = results.open.get("tessera-split", {}).get(500)
    if point and point.get("wall_s"):
        busy = core_busy_pct(point, "tessera-split")
        cost = per(point, "gateway")
        out.append(
            f"**Open loop at 500/s.** The gateway's core was {busy:.0f} % busy "
            f"({cost:.3f} ms per answer). Arrivals are random, so requests that come together "
            f"wait for each other: a 5 ms p99 leaves room for about {5 / cost:.0f} answers "
            "queued ahead of a request, all the gateway's other work (its batched writes, "
            "garbage collection) included."
        )
    streams = results.streams.get("tessera-split", {})
    direct = results.streams.get("direct", {}).get(256)
    light = streams.get(min(streams, default=0))
    cost = per(light, "gateway")
    if direct and not math.isnan(cost):
        asked = (direct["completed"] + direct["errors"]) / duration
        out.append(
            f"**256 streams.** A stream cost the gateway {cost:.3f} ms of CPU at "
            f"{min(streams)} streams (its request, hold and capture, and every chunk relayed). "
            f"256 streams ask for about {asked:,.0f} streams/s (the direct row's rate), "
            f"{asked * cost / 1000:.1f} s of CPU per second: more than one core, so chunks "
            "queue behind each other, first tokens wait and gaps between chunks grow."
        )
    return out


def markdown(
    results: Results,
    rows: list[str],
    info: dict[str, dict[str, str]],
    args: argparse.Namespace,
) -> str:
    def table(columns: list[str], cells: list[list[str]]) -> str:
        lines = [
            "| " + " | ".join(columns) + " |",
            "| " + " | ".join("---" for _ in columns) + " |",
        ]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines)

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Front door, side by side",
        "",
        f"Written by `bench/front_door.py` on {now} "
        f"(`{' '.join(['bench/front_door.py', *sys.argv[1:]])}`). Regenerate with `make bench` or "
        "`.venv/bin/python bench/front_door.py`.",
        "",
        "Layout: the mock upstream (bench/mock_upstream.py) and every load generator on core 0, "
        "the servers on core 1 (the `tessera-split` row moves the provider agent to core 0). "
        f"Non-streaming chat with max_tokens {MAX_TOKENS}; {args.duration} s per point; "
        f"streams of {args.stream_tokens} tokens with 20 ms between upstream chunks. The "
        "Tessera rows run with money on: a funded key, a staked provider priced at 100/300 base "
        "units per million tokens, hold and capture, receipts, request log.",
        "",
    ]
    parts += ["Rows:", ""] + [f"- `{row}`: {ROWS[row]}" for row in rows] + [""]
    for title, values in info.items():
        parts += [f"## {title}", ""] + [f"- {k}: {v}" for k, v in values.items()] + [""]
    parts += [
        "## Targets (issue 12)",
        "",
        table(["target", "figure", "verdict", "margin"], targets(results)),
        "",
    ]
    reasons = why_missed(results, args.duration)
    if reasons:
        parts += ["### Why, from this run's CPU figures", ""] + [f"- {r}" for r in reasons]
        parts.append("")
    for title, columns, cells in tables(results, rows):
        parts += [f"## {title}", "", table(columns, cells), ""]
    parts += [
        "## How to read it",
        "",
        "- Closed loop: wrk on core 0, one thread, c connections; req/s counts 2xx answers; "
        "errors are socket errors, timeouts and non-2xx answers. Added latency is the row's "
        "percentile minus direct's at the same c.",
        "- Open loop: a generator in bench/front_door.py (`--worker`) sends on a fixed "
        "schedule over a pool of keep-alive connections (at most "
        f"{args.max_conns}); latency counts from the scheduled send time, so a server that "
        f"falls behind is charged for the queue. Unanswered after {args.timeout:.0f} s is a "
        "timeout. p50/p99 are over 2xx answers; the added p99 counts failures as infinite. "
        "Send lag is how late the generator itself sent (its own health); drain is how long "
        "the server stayed busy after the load stopped, on what the load left behind.",
        "- Streams: each of N connections streams one answer after another; time to first "
        "token is the first SSE event with non-empty content; a stall is a gap over 100 ms "
        "between two SSE events of one stream.",
        "- Memory: VmRSS of each server process (with its children) after each phase.",
        "- Others' CPU: how busy processes outside this run kept core 0 (load) and core 1 "
        "(servers) while a point was measured, in percent of that core (/proc/stat less this "
        "run's own processes, each pinned to one core). A point with a high share on a core "
        "it needed was disturbed and is worth measuring again.",
    ]
    if args.nice:
        parts.append(f"- Every process of this run ran at niceness {args.nice} (`--nice`).")
    notes = [*results.notes, *disturbed(results)]
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


DISTURBED_PCT = 25.0


def disturbed(results: Results) -> list[str]:
    """A note naming the points during which other processes took over DISTURBED_PCT of a
    core the point used (direct: the load core only; the proxies: both)."""
    points = []
    for phase, unit, by_row in (
        ("closed loop c=", "", results.closed),
        ("open loop ", "/s", results.open),
        ("streams ", "", results.streams),
    ):
        for row, figures in by_row.items():
            for x, r in figures.items():
                shares = r.get("others_pct") or {}
                used = (LOAD_CORE,) if row == "direct" else (LOAD_CORE, SERVER_CORE)
                if max((shares.get(c, 0.0) for c in used), default=0.0) > DISTURBED_PCT:
                    points.append(f"{row} {phase}{x}{unit} ({others_cpu(r)})")
    if not points:
        return []
    return [
        f"Other processes took more than {DISTURBED_PCT:.0f} % of core 0 or core 1 during "
        f"{len(points)} points, whose figures are likely understated (measure again on a quiet machine): "
        + "; ".join(points)
        + "."
    ]
