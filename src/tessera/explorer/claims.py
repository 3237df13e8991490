"""The network's public claims, each beside its live value, the formula that computes it,
its window, its sample size and the JSON it comes from, so a skeptic can redo the sum.

Pure: built from a snapshot, the models list, the price index and the uptime shares the
caller measured. A claim without enough data says so; it is never shown as 0 or as met.
"""

from __future__ import annotations

from typing import Any

from tessera.explorer.rollups import MIN_SAMPLES


def _claim(
    claim: str,
    value: Any,
    shown: str,
    formula: str,
    window: str,
    samples: int | None,
    data: str,
    source: str = "measured",
) -> dict[str, Any]:
    enough = value is not None and (samples is None or samples >= MIN_SAMPLES)
    return {
        "simulation": simulation(claim),
        "claim": claim,
        "value": value if enough else None,
        "shown": shown if enough else f"insufficient data (n={samples or 0})",
        "formula": formula,
        "window": window,
        "samples": samples,
        "data": data,
        "source": source,
    }


# The simulator scenario that tests each claim at a million providers (src/tessera/sim/
# scenarios/NAME.toml; run it with ``tessera sim NAME``), by the claim's first words.
SCENARIOS = (
    ("Providers serving", "baseline"),
    ("Requests that succeed", "churn"),
    ("Median time to first token", "baseline"),
    ("Provider uptime", "churn"),
    ("Audited answers", "cheaters"),
    ("Cheaters pay", "cheaters"),
    ("Cheaters are caught", "cheaters"),
    ("Every token", "baseline"),
)


def simulation(claim: str) -> dict[str, str]:
    """The scenario behind a claim, and how to run it (price claims: the baseline)."""
    name = next((n for prefix, n in SCENARIOS if claim.startswith(prefix)), "baseline")
    return {
        "scenario": name,
        "command": f"tessera sim {name} --out report",
        "file": f"src/tessera/sim/scenarios/{name}.toml",
    }


def claims(
    snapshot: dict[str, Any],
    uptime: tuple[float | None, int],
    index: dict[str, Any],
    caught_after: list[int] | None = None,
) -> list[dict[str, Any]]:
    """``uptime``: (mean share of checks that found providers connected over 24 h,
    checks); ``caught_after``: per provider caught cheating, the requests it had served
    when its first audit was upheld."""
    day = snapshot["windows"]["24h"]["kpis"]
    month = snapshot["windows"]["30d"]["kpis"]
    network = snapshot["network"]
    settled = day["ok"] + day["errors"]
    audits = month["audits_passed"] + month["audits_failed"]
    out = [
        _claim(
            "Providers serving now",
            network["providers_routable"],
            f"{network['providers_routable']} routable of {network['providers_online']} "
            f"connected, {network['declared']['gpu_count']} GPUs declared",
            "providers connected to this gateway with at least one routable model, at the "
            "last snapshot",
            "now",
            None,
            "/explorer/api/v1/providers?status=routable",
        ),
        _claim(
            "Requests that succeed",
            day["success_rate"],
            "—" if day["success_rate"] is None else f"{day['success_rate'] * 100:.2f} %",
            "ok / (ok + errors) over requests that finished (cancelled ones excluded)",
            "24h",
            settled,
            "/explorer/api/v1/network/summary?window=24h",
        ),
        _claim(
            "Median time to first token",
            day["ttft_p50_ms"],
            "—" if day["ttft_p50_ms"] is None else f"{day['ttft_p50_ms']:g} ms",
            "p50 of time to first token over successful requests, read from a log-spaced "
            "histogram (the bucket's upper edge, at most 25 % above the true value)",
            "24h",
            day["ttft_samples"],
            "/explorer/api/v1/network/summary?window=24h",
        ),
        _claim(
            "Provider uptime",
            uptime[0],
            "—" if uptime[0] is None else f"{uptime[0] * 100:.2f} %",
            "checks that found a provider connected / all checks, one check per provider "
            "per snapshot, over every provider seen",
            "24h",
            uptime[1],
            "/explorer/api/v1/models",
        ),
        _claim(
            "Audited answers that were honest",
            None if audits == 0 else round(month["audits_passed"] / audits, 4),
            "—"
            if audits == 0
            else f"{month['audits_passed'] / audits * 100:.2f} % ({month['audits_failed']} "
            "caught cheating)",
            "audits passed or cleared / audits that reached a verdict",
            "30d",
            audits,
            "/explorer/api/v1/network/summary?window=30d",
        ),
        _claim(
            "Cheaters pay, consumers are refunded",
            month["slashes"],
            f"{month['slashes']} slashes took {month['slashed_units']} base units of stake; "
            f"{month['refunded_units']} refunded to consumers",
            "sum of slashes and refunds, each with its evidence on its provider's page",
            "30d",
            None,
            "/explorer/api/v1/network/summary?window=30d",
        ),
    ]
    caught = sorted(caught_after or [])
    out.append(
        {
            "claim": "Cheaters are caught within N requests",
            "value": caught[-1] if caught else None,
            # Each cheater caught is a fact, not a sample: one is enough to state it.
            "shown": (
                f"within {caught[-1]} requests (median {caught[len(caught) // 2]}) for all "
                f"{len(caught)} providers caught"
                if caught
                else "no cheater caught yet"
            ),
            "formula": "requests a provider had served when its first audit was upheld; "
            "the largest over every provider caught since this gateway started",
            "window": "since start",
            "samples": len(caught),
            "data": "/explorer/api/v1/audits",
            "source": "measured",
            "simulation": simulation("Cheaters are caught"),
        }
    )
    ledger = snapshot["ledger"]
    if ledger is not None:
        out.append(
            _claim(
                "Every token is accounted for",
                ledger["holds"],
                "holds" if ledger["holds"] else "BROKEN: " + "; ".join(ledger["problems"]),
                "every journal entry balances, no account below its floor, escrow equals "
                "the open holds, rechecked at every snapshot",
                "now",
                None,
                "/explorer/api/v1/network/summary",
            )
        )
    for row in index["data"]:
        best = next((r for r in row["references"] if r["cheaper_by_percent"] is not None), None)
        if best is None:
            value, shown = None, "unknown: no exchange rate is declared for the token"
        else:
            value = best["cheaper_by_percent"]
            word = "cheaper" if value >= 0 else "dearer"
            shown = (
                f"{abs(value):.1f} % {word} than {best['vendor']} {best['model']}, the "
                f"cheapest reference of its kind (prices of {index['references_as_of']})"
            )
        claim = _claim(
            f"{row['model']} is cheaper than the hyperscalers",
            value,
            shown,
            "1 - network median blended price / reference blended price; blend "
            f"{index['blend']}; token at {index['token_usd'] or '—'} USD ({index['rate']})",
            "now",
            None,
            "/explorer/api/v1/economics",
            "declared" if best is not None else "unknown",
        )
        if best is None:
            claim["shown"] = shown
        out.append(claim)
    return out
