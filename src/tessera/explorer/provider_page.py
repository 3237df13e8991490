"""One provider's page: declared offers, measured record, uptime, reputation with its
formula, why it gets work or not, audits, slashes with evidence, paid and earned per day.
"""

from __future__ import annotations

from html import escape
from typing import Any

from tessera.explorer.frame import (
    audit_table,
    bps,
    card,
    framed,
    pcts,
    share,
    slash_table,
    table,
    utc,
)
from tessera.units import format_tokens


def provider_page(detail: dict[str, Any]) -> str:
    """One provider: declared offers, measured record, uptime per epoch, reputation with
    its formula, why it gets (no) work, audits, slashes with evidence, earnings per day."""
    row = detail["provider"]
    pid = escape(row["provider_id"])
    return framed(
        f"Provider {pid[:12]}",
        f'data-page="provider" data-provider="{pid}"',
        f'<a href="/explorer/api/v1/providers/{pid}">JSON</a>',
        provider_main(detail),
        live=True,
    )


def provider_main(detail: dict[str, Any]) -> str:
    """The provider page's body: also the fragment its live stream sends."""
    row = detail["provider"]
    record = detail["record"] or {}
    measured = row["measured"] or {}
    ledger = detail["ledger"]
    reputation = detail["reputation"]
    status_cls = {"routable": "ok", "offline": "bad"}.get(row["status"], "na")
    label = f" ({escape(row['label'])})" if row["label"] else ""
    rate = measured.get("success_rate")
    cards = [
        card("status", "provider.status", escape(row["status"]),
              f"{row['active_jobs']}/{row['declared']['max_concurrent_jobs']} slots busy",
              status_cls),
        card("region (declared)", "provider.region", escape(row["region"]),
              ", ".join(escape(g) for g in row["declared"]["gpus"]) or "CPU"),
        card("stake bonded", "provider.bonded", format_tokens(row["bonded"]), "tokens"),
        card("reputation", "provider.reputation",
              "—" if row["reputation"] is None else f"{row['reputation']:g}", "score in [0, 1]"),
        card("requests (measured)", "provider.measured.requests",
              str(measured.get("requests", 0)), f"{measured.get('errors', 0)} errors"),
        card("success rate", "provider.measured.success_rate",
              "—" if rate is None else f"{rate * 100:.2f} %",
              "no settled requests" if rate is None else "measured"),
        card("paid by consumers", "provider.measured.cost",
              format_tokens(measured.get("cost", 0)), "tokens, before fees"),
    ]  # fmt: skip
    if ledger is not None:
        cards.append(
            card(
                "earnings (ledger)",
                "ledger.earnings",
                format_tokens(ledger["earnings"]),
                f"balance {format_tokens(ledger['balance'])}",
            )
        )
    return (
        f"<h1>Provider <code>{escape(row['provider_id'])}</code>{label}</h1>"
        f'<p id="asof">as of {utc(detail["as_of"])} (snapshot {detail["version"]}). '
        "<em>Declared</em> is what the provider announced; <em>measured</em> is what this "
        "gateway saw.</p>"
        f'<section class="cards">{"".join(cards)}</section>'
        f"<h2>Models (declared)</h2>{_offers_table(detail['offers'])}"
        f"<h2>Latency and throughput per model (measured)</h2>"
        f"{_model_stats_table(record.get('models', {}))}"
        "<h2>Uptime</h2><p>Seen connected by this gateway's checks: "
        + " / ".join(f"{w} {share(detail['seen_online'][w])}" for w in ("5m", "30m", "24h"))
        + f" (n={detail['seen_online']['24h']['checks']} checks in 24 h).</p>"
        f"<h3>Per epoch, against its SLA</h3>{_uptime(detail['uptime'])}"
        f"<h2>Why it gets work, or not</h2>{_routing(detail['routing'])}"
        f"<h2>Reputation</h2>{_reputation(reputation)}"
        f"<h2>Audits</h2>{_audits(record.get('audits'))}"
        f"<h2>Slashes</h2>{_slashes(record.get('slashes'))}"
        f"<h2>Paid and earned per day</h2>{_per_day(record.get('paid_by_day', []))}"
    )


def _offers_table(offers: list[dict[str, Any]]) -> str:
    rows = [
        f'<tr data-model="{escape(o["model"])}"><td>{escape(o["model"])}</td>'
        f"<td>{escape(o['kind'])}</td><td><code>{escape(o['weights_sha256'])}</code></td>"
        f'<td class="num">{format_tokens(o["price_input_per_mtok"])}</td>'
        f'<td class="num">{format_tokens(o["price_output_per_mtok"])}</td>'
        f'<td class="{"ok" if o["audited"] else "na"}">'
        f"{'audited' if o['audited'] else 'not audited'}</td>"
        f"<td>{escape(o['status'] or '—')}</td></tr>"
        for o in offers
    ]
    head = ["model", "kind", "weights sha256", "price in /1M", "price out /1M", "audits",
            "status"]  # fmt: skip
    return table(head, rows, "no models announced", "offers")


def _model_stats_table(models: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, stats in models.items():
        rate = stats["success_rate"]
        rows.append(
            f'<tr data-model="{escape(name)}"><td>{escape(name)}</td>'
            f'<td class="num">{stats["requests"]}</td>'
            f'<td class="num">{"—" if rate is None else f"{rate * 100:.1f} %"}</td>'
            f'<td class="num">{pcts(stats["ttft_ms"])}</td>'
            f'<td class="num">{pcts(stats["tokens_per_s"])}</td></tr>'
        )
    head = ["model", "requests", "success", "TTFT ms p50/p75/p90/p99",
            "decode tokens/s p50/p75/p90/p99"]  # fmt: skip
    return table(head, rows, "no requests measured yet", "model-stats")


def _uptime(uptime: dict[str, Any] | None) -> str:
    """A strip of epochs (oldest left), each coloured against its SLA, and the downtime."""
    if uptime is None:
        return '<p class="na">no uptime tracked by this gateway</p>'
    epochs = list(reversed(uptime["epochs"]))  # stored newest first
    current = uptime["current"]
    cells = []
    width = 14
    for i, e in enumerate(epochs):
        colour = "#cf222e" if e["breach"] else ("#1a7f37" if e["down_ms"] == 0 else "#bf8700")
        title = (
            f"{utc(e['epoch_start'])}: {bps(e['uptime_bps'])} up (SLA {bps(e['sla_uptime_bps'])})"
        )
        cells.append(
            f'<rect x="{i * width}" y="0" width="{width - 2}" height="24" fill="{colour}">'
            f"<title>{escape(title)}</title></rect>"
        )
    strip = (
        f'<svg viewBox="0 0 {max(1, len(epochs)) * width} 24" height="24" '
        f'width="{max(1, len(epochs)) * width}" role="img" aria-label="uptime per epoch">'
        f"{''.join(cells)}</svg>"
        if epochs
        else '<p class="na">no epoch has ended yet</p>'
    )
    now = (
        f"Epoch in progress (since {utc(current['epoch_start'])}): "
        f'<span data-k="uptime.current.uptime_bps">{bps(current["uptime_bps"])}</span> up, '
        f"state {escape(current['state'])}, SLA line {bps(current['sla_uptime_bps'])}."
        if current
        else "Not tracked now (not connected)."
    )
    down = [
        f'<tr><td>{utc(e["epoch_start"])}</td><td class="num">{e["down_ms"] / 1000:.1f}</td>'
        f'<td class="num">{bps(e["uptime_bps"])}</td><td class="num">{bps(e["sla_uptime_bps"])}</td>'
        f'<td class="{"bad" if e["breach"] else "na"}">{"breach" if e["breach"] else "within SLA"}</td>'
        f'<td class="num">{format_tokens(e["slashed"])}</td></tr>'
        for e in uptime["epochs"]
        if e["down_ms"] > 0
    ]
    return (
        f"<p>{now} Epochs of {uptime['epoch_s']} s; green: no downtime, amber: some, red: "
        f"below the SLA.</p>{strip}<h3>Downtime</h3>"
        + table(
            ["epoch", "down s", "uptime", "SLA", "verdict", "slashed"],
            down,
            "no downtime in the epochs shown",
            "downtime",
        )
    )


def _routing(routing: dict[str, Any] | None) -> str:
    if routing is None:
        return '<p class="na">unknown to this gateway</p>'
    if not routing["connected"]:
        return "".join(f'<p class="bad">{escape(r)}</p>' for r in routing["reasons"])
    rows = []
    for m in routing["models"]:
        reasons = "; ".join(escape(r) for r in m["reasons"]) or "routed"
        excluded = ", ".join(f"{escape(k)}: {v}" for k, v in m["excluded_by"].items()) or "—"
        rows.append(
            f'<tr data-model="{escape(m["model"])}"><td>{escape(m["model"])}</td>'
            f"<td>{escape(m['status'])}</td><td>{reasons}</td>"
            f'<td class="num">{m["recent_requests"]}</td>'
            f'<td class="num">{m["eligible_for"]}</td><td>{excluded}</td></tr>'
        )
    head = ["model", "status", "reasons", "recent requests", "eligible for",
            "excluded by (count)"]  # fmt: skip
    return table(head, rows, "no models", "routing")


def _reputation(rep: dict[str, Any] | None) -> str:
    if rep is None:
        return '<p class="na">no record</p>'
    parts = (
        f'score <strong data-k="reputation.score">{rep["score"]:.4f}</strong> = '
        f"completion {rep['completion_rate']:.4f}, uptime {rep['uptime']:.4f}; "
        f"jobs {rep['jobs_completed']} completed, {rep['jobs_failed']} failed; audits "
        f"{rep['audits_passed']} passed, {rep['audits_cleared']} cleared, "
        f"{rep['audits_failed']} failed; {rep['slashes']} slashes, "
        f"{rep['receipts_refused']} receipts refused, {rep['dissents']} dissents"
    )
    formula = "<br>".join(escape(line) for line in rep["formula"])
    return f"<p>{parts}.</p><p><code>{formula}</code></p>"


def _audits(audits: dict[str, Any] | None) -> str:
    if audits is None:
        return '<p class="na">no audit closed since this gateway started</p>'
    return (
        f'<p><span data-k="audits.passed">{audits["passed"]}</span> passed, '
        f'<span data-k="audits.failed">{audits["failed"]}</span> failed.</p>'
        + audit_table(audits["recent"], with_provider=False)
    )


def _slashes(slashes: dict[str, Any] | None) -> str:
    if slashes is None:
        return '<p class="na">never slashed</p>'
    return (
        f'<p><span data-k="slashes.count">{slashes["count"]}</span> slashes, '
        f"{format_tokens(slashes['slashed_units'])} tokens taken, "
        f"{format_tokens(slashes['refunded_units'])} refunded.</p>"
        + slash_table(slashes["recent"], with_provider=False)
    )


def _per_day(days: list[dict[str, Any]]) -> str:
    rows = [
        f'<tr><td>{utc(d["day"])[:10]}</td><td class="num">{format_tokens(d["cost"])}</td>'
        f'<td class="num">{format_tokens(d["earned"])}</td></tr>'
        for d in reversed(days)
    ]
    head = ["day (UTC)", "paid by consumers (tokens)", "earned, after the protocol fee"]
    return table(head, rows, "nothing paid yet", "per-day")
