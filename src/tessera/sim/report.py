"""A scenario's report: each seed's figures, their mean with a 95 % confidence interval
over seeds, as JSON and as Markdown with an SVG plot.

Only what the seeds decide goes in (no wall-clock time), so the same seeds give the same
files byte for byte; timings are printed by the command and recorded by ``bench/sim.py``.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from importlib import resources
from typing import Any

import numpy as np

from tessera.sim.engine import Run, money_holds
from tessera.sim.scenario import audit_policy
from tessera.sim.world import BASE_UNITS
from tessera.verify.disputes import upheld_chance
from tessera.verify.sampling import reputation_rate

# Student's t for a two-sided 95 % interval, by degrees of freedom (seeds - 1).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip
SERVERLESS = ("AWS Bedrock", "llama-3.1-8b-instruct")  # the serverless baseline
SELF_HOSTED = ("AWS", "p5.48xlarge")  # the self-hosting baseline: H100 on demand
SELF_HOSTED_TPS = 2693.0  # one H100 saturated, Llama-3-8B (research/simulation.md §3d)


def seed_figures(run: Run) -> dict[str, Any]:
    """Everything one seed measured (plain numbers, rounded so the JSON is stable)."""
    s = run.scenario
    t = run.totals
    w = run.world
    sm = run.samples
    duration = run.hours * 3600.0
    ok = sm["ok"].astype(bool)
    refused = sm["refused"].astype(bool)
    attempts = sm["attempts"]
    ttft = sm["network_ms"] + sm["queue_ms"] + sm["prefill_ms"]
    by_region = {}
    for i, region in enumerate(s.regions):
        mine = ok & (sm["region"] == i)
        by_region[region.name] = {
            "requests": int(mine.sum()),
            "ttft_ms": _pcts(ttft[mine]),
            "tpot_ms": _pcts(sm["tpot_ms"][mine]),
            "split_ms": {
                part: _r(float(sm[f"{part}_ms"][mine].mean())) if mine.any() else None
                for part in ("network", "queue", "prefill")
            },
        }
    count = max(1, len(ok))
    cheaters = w.cheat
    caught = cheaters & (w.caught_after >= 0)
    tokens_usd = t.paid / BASE_UNITS * s.token_usd
    per_mtok = tokens_usd / t.output_tokens * 1e6 if t.output_tokens else None
    serverless, self_hosted = _baselines(t.served_tps / max(t.capacity_tps, 1e-9))
    gpu_hours = float(w.online_s.sum()) / 3600.0
    watts = np.array([g.watts for g in s.gpus])[w.gpu]
    kwh = float((watts * w.online_s).sum()) / 3600.0 / 1000.0
    income = float(w.earned.sum()) / BASE_UNITS * s.token_usd
    honest_online = ~w.banned
    uptime = w.online_s[honest_online] / duration
    return {
        "seed": run.seed,
        "providers": run.providers,
        "hours": run.hours,
        "requests": {
            "served_by_the_network": t.requests,
            "sampled": len(ok),
            "answered": _r(float(ok.sum()) / count),
            "success_first_try": _r(float((ok & (attempts == 1)).sum()) / count),
            "continued_after_failover": _r(float((ok & (attempts > 1)).sum()) / count),
            "answered_after_refusal": _r(float((ok & (sm["tries"] > 1)).sum()) / count),
            "refused": _r(float(refused.sum()) / count),
            "failed": _r(float((~ok & ~refused).sum()) / count),
        },
        "gateway": {
            "replicas": t.replicas,
            "refused_share_of_requests": _r(t.refused / t.offered) if t.offered else None,
            "refused_share_of_tries": _r(t.refusals / t.tries) if t.tries else None,
        },
        "latency_by_region": by_region,
        "requests_by_gpu": {
            g.name: _r(float((w.gpu[sm["provider"][ok]] == i).mean())) if ok.any() else None
            for i, g in enumerate(s.gpus)
        },
        "providers_by_gpu": {
            g.name: _r(float((w.gpu == i).mean())) for i, g in enumerate(s.gpus)
        },
        "ttft_ms": _pcts(ttft[ok]),
        "tpot_ms": _pcts(sm["tpot_ms"][ok]),
        "utilisation": _r(t.served_tps / t.capacity_tps) if t.capacity_tps else None,
        "online_share": _r(float(np.mean(t.online_share))) if t.online_share else None,
        "sla": {
            "declared_uptime": s.sla_uptime,
            "providers_meeting_it": _r(float((uptime >= s.sla_uptime).mean())) if uptime.size else None,
        },
        "cost": {
            "consumer_usd_per_mtok_output": _r(per_mtok),
            "serverless_usd_per_mtok": serverless,
            "self_hosted_usd_per_mtok": self_hosted,
            "cheaper_than_serverless": _r(1 - per_mtok / serverless) if per_mtok and serverless else None,
            "cheaper_than_self_hosted": _r(1 - per_mtok / self_hosted) if per_mtok and self_hosted else None,
        },
        "cheaters": {
            "providers": int(cheaters.sum()),
            "caught": int(caught.sum()),
            "by_kind": {c.kind: _kind(run, i) for i, c in enumerate(s.cheaters)},
            "receipts_refused": t.cases.receipts_refused,
            "false_slashes": t.cases.false_slashes,
            "slashed_tokens": _r(t.slashed / BASE_UNITS),
            "refunded_tokens": _r((t.refunded + t.clawed_back) / BASE_UNITS),
        },
        "broken_providers": _broken(t),
        "audits": {
            "audits": t.cases.audits,
            "disputes": t.cases.disputes,
            "upheld": t.cases.upheld,
            "cleared": t.cases.cleared,
            "inconclusive": t.cases.inconclusive,
            "dissents": t.cases.dissents,
            "auditors_paid_tokens": _r(t.auditors_paid / BASE_UNITS),
        },
        "providers_income": {
            "usd_per_gpu_hour": _r(income / gpu_hours) if gpu_hours else None,
            "electricity_usd_per_gpu_hour": _r(kwh * s.electricity_usd_per_kwh / gpu_hours) if gpu_hours else None,
            **_margins(run, watts),
        },
        "conversations": _conversations(sm, ok, ttft),
        "by_minute": _by_minute(sm, ok, refused, ttft),
        "ledger": {
            "paid": t.paid,
            "earned": t.earned,
            "fees": t.fees,
            "verification_pool": t.verification_pool,
            "slashed": t.slashed,
            "refunded": t.refunded,
            "clawed_back": t.clawed_back,
            "auditors_paid": t.auditors_paid,
            "conserved": money_holds(t),
        },
    }  # fmt: skip


def _margins(run: Run, watts: np.ndarray) -> dict[str, float | None]:
    """Among honest providers that were online: the share whose earnings fell short of
    their electricity, and the Gini coefficient of earnings (0: even; 1: one took all)."""
    w = run.world
    s = run.scenario
    mine = (w.online_s > 0) & ~w.cheat
    if not mine.any():
        return {"share_below_electricity": None, "gini_of_earnings": None}
    earned = w.earned[mine].astype(np.float64) / BASE_UNITS * s.token_usd
    power = watts[mine] * w.online_s[mine] / 3600.0 / 1000.0 * s.electricity_usd_per_kwh
    ordered = np.sort(earned)
    n = ordered.size
    total = float(ordered.sum())
    # Gini from the sorted values: 1 - 2 * (area under the Lorenz curve).
    gini = 0.0 if total == 0 else float((2 * np.arange(1, n + 1) - n - 1) @ ordered / (n * total))
    return {
        "share_below_electricity": _r(float((earned < power).mean())),
        "gini_of_earnings": _r(gini),
    }


def _by_minute(
    sm: dict[str, np.ndarray], ok: np.ndarray, refused: np.ndarray, ttft: np.ndarray
) -> list[dict[str, Any]]:
    """The sampled requests by the minute they were first sent: how many, the shares
    answered and refused, the answered ones' TTFT p50/p99."""
    if sm["at"].size == 0:
        return []
    minute = (sm["at"] // 60).astype(np.int64)
    out = []
    for m in range(int(minute.max()) + 1):
        mine = minute == m
        answered = mine & ok
        out.append(
            {
                "minute": m,
                "requests": int(mine.sum()),
                "answered": _r(float(answered.sum()) / max(1, int(mine.sum()))),
                "refused": _r(float((mine & refused).sum()) / max(1, int(mine.sum()))),
                "ttft_ms_p50": _pct(ttft[answered], 50),
                "ttft_ms_p99": _pct(ttft[answered], 99),
            }
        )
    return out


def report(runs: list[Run]) -> dict[str, Any]:
    """Every seed's figures and, for each number, the mean and 95 % interval over seeds."""
    seeds = [seed_figures(r) for r in runs]
    first = runs[0]
    return {
        "scenario": first.scenario.name,
        "description": first.scenario.description,
        "config_sha256": first.config_hash,
        "providers": first.providers,
        "hours": first.hours,
        "seeds": [r.seed for r in runs],
        "summary": _summarise(seeds),
        "per_seed": seeds,
    }


def to_json(body: dict[str, Any]) -> str:
    return json.dumps(body, indent=1, sort_keys=True) + "\n"


def to_markdown(body: dict[str, Any], plot: str, timeline: str = "") -> str:
    """The headline table, latency by region, and the cheater plot."""
    s = body["summary"]

    def ci(path: str, fmt: str = "{:.3g}") -> str:
        node: Any = s
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if not node or node.get("mean") is None:
            return "n/a"
        mean, half = node["mean"], node["ci95"]
        return fmt.format(mean) + ("" if half is None else " ± " + fmt.format(half))

    lines = [
        f"# Simulation: {body['scenario']}",
        "",
        body["description"],
        "",
        f"{body['providers']:,} providers behind {_replicas(body)} gateway replicas, "
        f"{body['hours']:g} h of virtual time, seeds "
        f"{', '.join(map(str, body['seeds']))}; config {body['config_sha256']}. Means over "
        "seeds with their 95 % confidence interval (Student's t).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| requests served by the network | {ci('requests.served_by_the_network', '{:,.0f}')} |",
        f"| answered (success), of all sampled requests | {ci('requests.answered', '{:.2%}')} |",
        f"| … on the first provider | {ci('requests.success_first_try', '{:.2%}')} |",
        f"| … after a failover to another provider | {ci('requests.continued_after_failover', '{:.3%}')} |",
        f"| refused by the gateway on every try (503: not a success) | {ci('requests.refused', '{:.2%}')} |",
        f"| failed (every provider attempt failed) | {ci('requests.failed', '{:.3%}')} |",
        f"| answered only on a retry after a refusal (part of answered) | {ci('requests.answered_after_refusal', '{:.2%}')} |",
        f"| gateway refusals: share of the network's requests / of all tries | {ci('gateway.refused_share_of_requests', '{:.2%}')} / {ci('gateway.refused_share_of_tries', '{:.2%}')} |",
        f"| TTFT p50 / p99 of answered requests (ms) | {ci('ttft_ms.p50')} / {ci('ttft_ms.p99')} |",
        f"| time per output token p50 / p99 (ms) | {ci('tpot_ms.p50')} / {ci('tpot_ms.p99')} |",
        f"| utilisation of the fleet | {ci('utilisation', '{:.1%}')} |",
        f"| providers meeting their declared uptime | {ci('sla.providers_meeting_it', '{:.1%}')} |",
        f"| consumer price, USD per 1M output tokens | {ci('cost.consumer_usd_per_mtok_output')} |",
        f"| cheaper than serverless ({SERVERLESS[0]} {SERVERLESS[1]}) | {ci('cost.cheaper_than_serverless', '{:.1%}')} |",
        f"| cheaper than self-hosting on {SELF_HOSTED[0]} {SELF_HOSTED[1]} | {ci('cost.cheaper_than_self_hosted', '{:.1%}')} |",
        f"| cheaters caught | {ci('cheaters.caught', '{:.0f}')} of {ci('cheaters.providers', '{:.0f}')} |",
        *(
            f"| {kind}: requests until caught, median (formula); an audit vote fails it | {ci(f'cheaters.by_kind.{kind}.requests_to_catch_median')} ({ci(f'cheaters.by_kind.{kind}.formula_median')}); {ci(f'cheaters.by_kind.{kind}.vote_fails_it', '{:.1%}')} |"
            for kind in body["summary"].get("cheaters", {}).get("by_kind", {})
        ),
        *_optional_rows(body, ci),
        f"| audits / disputes (first vote failed) / upheld / cleared | {ci('audits.audits', '{:.0f}')} / {ci('audits.disputes', '{:.0f}')} / {ci('audits.upheld', '{:.0f}')} / {ci('audits.cleared', '{:.0f}')} |",
        f"| false slashes (upheld over a request not cheated) | {ci('cheaters.false_slashes', '{:.0f}')} |",
        f"| provider income, USD per GPU-hour | {ci('providers_income.usd_per_gpu_hour')} |",
        f"| electricity, USD per GPU-hour | {ci('providers_income.electricity_usd_per_gpu_hour')} |",
        f"| honest providers earning less than their electricity | {ci('providers_income.share_below_electricity', '{:.1%}')} |",
        f"| Gini of providers' earnings | {ci('providers_income.gini_of_earnings', '{:.2f}')} |",
        f"| ledger conserved in every seed | {all(seed['ledger']['conserved'] for seed in body['per_seed'])} |",
        "",
        "Answered, refused and failed add up to every sampled request. A request is sent "
        "to the gateway once and, each time its replicas refuse it for overload (503 with "
        "Retry-After), again after the Retry-After, as the openai SDK does, up to the "
        "scenario's retries: refused on every try, it counts as refused: not a success and not a "
        "provider's failure (no provider saw it, no money moved, no provider's uptime "
        "counts it). TTFT counts answered requests from their first try, the Retry-After "
        "waits included.",
        "",
        "## Latency by consumer region",
        "",
        "| region | TTFT p50 | TTFT p99 | network | queue | prefill | TPOT p50 |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for region in body["per_seed"][0]["latency_by_region"]:
        base = f"latency_by_region.{region}"
        lines.append(
            f"| {region} | {ci(base + '.ttft_ms.p50')} | {ci(base + '.ttft_ms.p99')} | "
            f"{ci(base + '.split_ms.network')} | {ci(base + '.split_ms.queue')} | "
            f"{ci(base + '.split_ms.prefill')} | {ci(base + '.tpot_ms.p50')} |"
        )
    lines += [
        "",
        "Times in ms, of answered requests; TTFT = network round trip + queueing (at the "
        "gateway for a provider slot, and the time lost to refusals and failovers) + prefill.",
        "",
        *(
            [
                f"![TTFT minute by minute]({timeline})",
                "",
                "TTFT p50 (dark) and p99 (orange) of the answered sampled requests, minute "
                "by minute (by when each was first sent), one line per seed.",
                "",
            ]
            if timeline
            else []
        ),
        "## Who serves: the router's choices by GPU class",
        "",
        "| GPU class | share of providers | share of requests |",
        "|---|---|---|",
    ]
    for gpu in body["per_seed"][0]["requests_by_gpu"]:
        lines.append(
            f"| {gpu} | {ci('providers_by_gpu.' + gpu, '{:.1%}')} | "
            f"{ci('requests_by_gpu.' + gpu, '{:.1%}')} |"
        )
    lines += [
        "",
        "Requests are routed by the gateway's own router (market.routing) under the "
        "consumers' policy: price, speed, free capacity, reputation and stake decide.",
        "",
        "## Cheaters: requests served until caught",
        "",
        f"![requests until caught]({plot})",
        "",
        "The measured share of each kind of cheater caught within n requests against "
        "1 − (1 − q)ⁿ. For the audited kinds, q = audit rate × cheat probability × "
        "d(1 − (1 − d)²): an auditor fails a cheated request with chance d, and a case is "
        "upheld when 2 of 3 do; a forged receipt is refused whenever one is sent (q = its "
        "cheat probability), by the gateway's receipt check on every request. A "
        "failed first vote opens a dispute that the gateway's own Case, auditor order, "
        "penalty order and ban rule decide (verify.disputes, verify.auditors, "
        "verify.penalties).",
        "",
    ]
    return "\n".join(lines)


def _replicas(body: dict[str, Any]) -> str:
    counts = {seed["gateway"]["replicas"] for seed in body["per_seed"]}
    return ", ".join(f"{c:,}" for c in sorted(counts))


def timeline_plot(body: dict[str, Any]) -> str:
    """SVG: the sampled requests' TTFT p50 and p99 minute by minute, every seed drawn, so a
    flash crowd or an outage shows where it starts and how long the backlog lasts."""
    width, height, pad = 560, 260, 44
    seeds = [seed["by_minute"] for seed in body["per_seed"]]
    minutes = max((len(s) for s in seeds), default=0)
    values = [row[k] for s in seeds for row in s for k in ("ttft_ms_p50", "ttft_ms_p99")
              if row[k] is not None]  # fmt: skip
    top = max(values, default=1.0) * 1.05
    last = max(1, minutes - 1)

    def line(rows: list[dict[str, Any]], key: str, colour: str) -> str:
        coords = " ".join(
            f"{pad + (width - 2 * pad) * r['minute'] / last:.1f},"
            f"{height - pad - (height - 2 * pad) * r[key] / top:.1f}"
            for r in rows
            if r[key] is not None
        )
        return f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>'

    lines = "".join(line(s, "ttft_ms_p50", "#14213d") + line(s, "ttft_ms_p99", "#fca311")
                    for s in seeds)  # fmt: skip
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11"><rect width="{width}" height="{height}" fill="#fff"/>'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
        f'<line x1="{pad}" y1="{height - pad}" x2="{pad}" y2="{pad}" stroke="#999"/>'
        f'<text x="{pad}" y="{pad - 8}">TTFT ms (top {top:,.0f})</text>'
        f'<text x="{width - pad}" y="{height - 12}" text-anchor="end">minute ({minutes})</text>'
        f"{lines}"
        f'<text x="{width - pad}" y="{pad}" text-anchor="end" fill="#14213d">p50</text>'
        f'<text x="{width - pad}" y="{pad + 14}" text-anchor="end" fill="#c07a00">p99</text>'
        "</svg>\n"
    )


COLOURS = ("#14213d", "#2a9d8f", "#e76f51", "#6a4c93")


def catch_plot(runs: list[Run]) -> str:
    """SVG: per kind of cheater, the share caught within n requests, measured (solid)
    and by the formula 1 - (1 - q)^n (dashed)."""
    kinds = runs[0].scenario.cheaters
    caught = [
        np.concatenate([r.world.caught_after[(r.world.cheat_kind == i) & (r.world.caught_after >= 0)]
                        for r in runs])
        for i in range(len(kinds))
    ]  # fmt: skip
    totals = [sum(int((r.world.cheat_kind == i).sum()) for r in runs) for i in range(len(kinds))]
    everything = np.concatenate(caught) if caught else np.zeros(0)
    width, height, pad = 560, 260, 40
    top = max(10, int(np.percentile(everything, 99)) if everything.size else 10)
    xs = np.linspace(0, top, 60)

    def x(v: float) -> float:
        return pad + (width - 2 * pad) * v / top

    def y(v: float) -> float:
        return height - pad - (height - 2 * pad) * v

    def line(points: list[tuple[float, float]], colour: str, dash: str = "") -> str:
        if not points:
            return ""
        coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in points)
        return (
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" {dash} points="{coords}"/>'
        )

    drawn = ""
    for i, kind in enumerate(kinds):
        colour = COLOURS[i % len(COLOURS)]
        q = _catch_chance(runs[0], i)
        measured = [(x(n), y(float((caught[i] <= n).sum()) / max(totals[i], 1))) for n in xs]
        formula = [(x(n), y(1 - (1 - q) ** n)) for n in xs] if q else []
        drawn += line(measured, colour) + line(formula, colour, 'stroke-dasharray="5,4"')
        drawn += (
            f'<text x="{width - pad}" y="{y(0.05 + 0.08 * i)}" text-anchor="end" '
            f'fill="{colour}">{kind.kind}</text>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11"><rect width="{width}" height="{height}" fill="#fff"/>'
        f'<line x1="{pad}" y1="{y(0)}" x2="{width - pad}" y2="{y(0)}" stroke="#999"/>'
        f'<line x1="{pad}" y1="{y(0)}" x2="{pad}" y2="{y(1)}" stroke="#999"/>'
        f'<text x="{pad}" y="{y(1) - 6}">share caught (solid: measured; dashed: 1 − (1 − q)ⁿ)</text>'
        f'<text x="{width - pad}" y="{height - 10}" text-anchor="end">requests served ({top})</text>'
        + drawn
        + "</svg>\n"
    )


def _optional_rows(body: dict[str, Any], ci: Any) -> list[str]:
    """Rows for what only some scenarios have: chats, broken providers."""
    summary = body["summary"]
    rows = []
    if (summary["conversations"]["later_turns"]["mean"] or 0) > 0:
        rows += [
            f"| chats: later turns back on their provider (sticky) | {ci('conversations.sticky_share_of_later_turns', '{:.1%}')} |",
            f"| chats: prefill / TTFT p50 of later turns, sticky vs elsewhere (ms) | {ci('conversations.prefill_ms_p50_sticky')} vs {ci('conversations.prefill_ms_p50_elsewhere')} / {ci('conversations.ttft_ms_p50_sticky')} vs {ci('conversations.ttft_ms_p50_elsewhere')} |",
        ]
    if (summary["broken_providers"]["providers"]["mean"] or 0) > 0:
        rows.append(
            f"| broken providers: jobs each failed, breaker openings each, time shut out | {ci('broken_providers.failed_jobs_each')}, {ci('broken_providers.breaker_openings_each')}, {ci('broken_providers.share_of_time_shut_out', '{:.1%}')} |"
        )
    return rows


def _conversations(sm: dict[str, np.ndarray], ok: np.ndarray, ttft: np.ndarray) -> dict[str, Any]:
    """Chats: how often a later turn found its provider again (sticky, with the
    conversation's prefix in its cache), and what that saved."""
    later = ok & (sm["turn"] > 0)
    warm, cold = later & sm["warm"].astype(bool), later & ~sm["warm"].astype(bool)
    return {
        "later_turns": int(later.sum()),
        "later_turns_share": _r(float(later.sum()) / max(1, int(ok.sum()))),
        "sticky_share_of_later_turns": _r(float(warm.sum()) / later.sum()) if later.any() else None,
        "prefill_ms_p50_sticky": _pct(sm["prefill_ms"][warm], 50),
        "prefill_ms_p50_elsewhere": _pct(sm["prefill_ms"][cold], 50),
        "ttft_ms_p50_sticky": _pct(ttft[warm], 50),
        "ttft_ms_p50_elsewhere": _pct(ttft[cold], 50),
    }


def _broken(t: Any) -> dict[str, Any]:
    """What broken providers cost, and how the gateway's breakers held them off."""
    b = t.breakers
    steps = b.broken * t.steps
    return {
        "providers": b.broken,
        "failed_jobs_each": _r(b.failed_jobs / b.broken) if b.broken else None,
        "breaker_openings_each": _r(b.openings / b.broken) if b.broken else None,
        "share_of_time_shut_out": _r(b.shut_steps / steps) if steps else None,
    }


def _kind(run: Run, index: int) -> dict[str, Any]:
    """How the cheaters of one kind fared: caught, and after how many requests, against
    the formula."""
    w = run.world
    kind = run.scenario.cheaters[index]
    mine = w.cheat_kind == index
    caught = mine & (w.caught_after >= 0)
    requests_to_catch = w.caught_after[caught]
    q = _catch_chance(run, index)
    return {
        "providers": int(mine.sum()),
        "caught": int(caught.sum()),
        "vote_fails_it": _r(kind.seen) if kind.audited else None,  # receipts: checked
        "requests_to_catch_median": _median(requests_to_catch),
        "requests_to_catch_p90": _pct(requests_to_catch, 90),
        "catch_chance_per_request": _r(q),
        "formula_median": None if not q else math.ceil(math.log(0.5) / math.log1p(-q)),
        "seconds_to_catch_median": _median(w.caught_at[caught]),
    }


def _catch_chance(run: Run, index: int) -> float:
    """The chance one request of an established cheater of the kind is caught. Audited
    kinds: the rate the real policy gives an unblemished record, at the audit floor, times
    cheating, times the chance an audit of a cheated request is upheld (2 of 3 auditors,
    each with the kind's detection d: d(1 - (1 - d)^2)). A forged receipt: every one is
    checked, so the chance it is sent."""
    s = run.scenario
    kind = s.cheaters[index]
    if not kind.audited:
        return kind.cheat_probability
    policy = audit_policy(s)
    rate = reputation_rate(policy, s.audits.initial_clean_audits, 0)
    return rate * kind.cheat_probability * upheld_chance(kind.seen, kind.seen)


def _baselines(utilisation: float) -> tuple[float | None, float | None]:
    """USD per 1M output tokens: the serverless list price of the same model's output,
    and an H100 rented on demand serving at this run's utilisation."""
    data = json.loads(
        resources.files("tessera.explorer").joinpath("reference_prices.json").read_text()
    )
    serverless = next((Decimal(e["output"]) for e in data["entries"]
                       if (e["vendor"], e["model"]) == SERVERLESS), None)  # fmt: skip
    hour = next((Decimal(e["usd_per_gpu_hour"]) for e in data.get("gpu_hours", [])
                 if (e["vendor"], e["instance"]) == SELF_HOSTED), None)  # fmt: skip
    self_hosted = None
    if hour is not None and utilisation > 0:
        self_hosted = float(hour) / (SELF_HOSTED_TPS * utilisation * 3600.0) * 1e6
    return (None if serverless is None else float(serverless)), _r(self_hosted)


def _summarise(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and 95 % interval of every number found at the same place in every seed."""

    def walk(nodes: list[Any]) -> Any:
        head = nodes[0]
        if isinstance(head, dict):
            return {k: walk([n.get(k) if isinstance(n, dict) else None for n in nodes])
                    for k in head if k not in ("seed", "ledger", "by_minute")}  # fmt: skip
        values = [float(v) for v in nodes if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(values) != len(nodes) or not values:
            return {"mean": None, "ci95": None, "n": len(values)}
        mean = sum(values) / len(values)
        if len(values) < 2:
            return {"mean": _r(mean), "ci95": None, "n": 1}
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        t = _T95.get(len(values) - 1, 1.96)
        return {"mean": _r(mean), "ci95": _r(t * sd / math.sqrt(len(values))), "n": len(values)}

    return walk(seeds)  # type: ignore[no-any-return]


def _pcts(values: np.ndarray) -> dict[str, float | None]:
    return {f"p{q}": _pct(values, q) for q in (50, 90, 99)}


def _pct(values: np.ndarray, q: float) -> float | None:
    return _r(float(np.percentile(values, q))) if values.size else None


def _median(values: np.ndarray) -> float | None:
    return _pct(values, 50)


def _r(value: float | None) -> float | None:
    """Six significant digits: enough to read, and stable across platforms' last bits."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.6g}")
