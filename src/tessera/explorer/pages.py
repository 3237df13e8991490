"""The explorer's HTML, rendered on the server from a snapshot: every number is in the page,
so it reads with JavaScript off, and the live fragments (KPIs, the tape, the chart) are the
same functions the Server-Sent Events stream sends, so a live page and a reloaded one agree.

Pure string building; everything user-visible is escaped. No prompt or output text exists
in a snapshot, so none can appear here.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import urlencode

from tessera.units import format_tokens

WINDOW_NAMES = {"1h": "1 hour", "24h": "24 hours", "7d": "7 days", "30d": "30 days", "all": "all"}

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#14213d;color:#fff;padding:12px 20px;display:flex;gap:16px;align-items:baseline;flex-wrap:wrap}
header a{color:#fca311;text-decoration:none}header nav{display:flex;gap:10px;flex-wrap:wrap}main{padding:16px 20px;max-width:1200px;margin:auto}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:10px 12px}
.card .k{font-size:12px;color:#57606a}.card .v{font-size:22px;font-weight:600}
.card .d{font-size:12px;color:#57606a}.ok{color:#1a7f37}.bad{color:#cf222e}.na{color:#8c959f}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border-bottom:1px solid #eaeef2;padding:5px 8px;text-align:left;white-space:nowrap}
th{background:#f0f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto}figure{margin:0 0 12px}figcaption{font-size:12px;color:#57606a}nav.windows a{margin-right:10px}svg{background:#fff;border:1px solid #dde1e6;border-radius:8px}
"""


PAGES = (
    ("overview", "/explorer"),
    ("providers", "/explorer/providers"),
    ("models", "/explorer/models"),
    ("audits", "/explorer/audits"),
    ("slashes", "/explorer/slashes"),
    ("epochs", "/explorer/epochs"),
    ("economics", "/explorer/economics"),
    ("claims", "/explorer/claims"),
    ("check a receipt", "/explorer/receipts"),
)
NAV = (
    "<header><strong>Tessera explorer</strong>\n<nav>"
    + " ".join(f'<a href="{href}">{name}</a>' for name, href in PAGES)
    + "</nav>"
)


def overview(snapshot: dict[str, Any], window: str, fragments: dict[str, str] | None = None) -> str:
    fragments = fragments or live_fragments(snapshot, window)
    links = " ".join(
        f'<a href="/explorer?window={w}"{" aria-current=page" if w == window else ""}>'
        f"{escape(label)}</a>"
        for w, label in WINDOW_NAMES.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Tessera explorer</title><style>{CSS}</style></head>
<body data-window="{escape(window)}">
{NAV}
<span>the network, measured by its gateway; updated live</span>
<a href="/explorer/api/v1/network/summary?window={escape(window)}">JSON</a>
<a href="/explorer/api/v1/requests/recent?format=csv">tape CSV</a></header>
<main>
<nav class="windows">Window: {links}</nav>
<p id="asof">{fragments["asof"]}</p>
<section id="kpis" class="cards">{fragments["kpis"]}</section>
<h2>Over the window</h2>
<div id="spark">{fragments["spark"]}</div>
<h2>Latest requests</h2>
<div class="scroll"><table><thead><tr><th>request</th><th>model</th><th>provider</th>
<th>region</th><th>status</th><th>tokens in/out</th><th>cost (tokens)</th>
<th>latency ms</th><th>TTFT ms</th><th>audit</th></tr></thead><tbody id="tape">{fragments["tape"]}</tbody></table></div>
</main>
<script src="/explorer/static/explorer.js"></script>
</body></html>"""


def providers_page(
    snapshot: dict[str, Any],
    rows: list[dict[str, Any]],
    total: int,
    filters: dict[str, str],
    sort: str,
    offset: int,
    limit: int,
) -> str:
    """Every provider seen, filtered, sorted and paged as asked; declared and measured
    apart. The filter form is a plain GET form: it works without JavaScript."""

    def link(**change: Any) -> str:
        params = {**filters, "sort": sort, "offset": offset, "limit": limit, **change}
        return escape("/explorer/providers?" + urlencode(params))

    sorts = " ".join(
        f'<a href="{link(sort=name, offset=0)}"{" aria-current=page" if name == sort else ""}>'
        f"{name}</a>"
        for name in ("status", "requests", "stake", "reputation", "price", "region")
    )
    body = "".join(_provider_tr(row) for row in rows) or (
        '<tr><td colspan="11" class="na">no provider matches</td></tr>'
    )
    shown = ", ".join(f"{k} = {escape(v)}" for k, v in filters.items()) or "none"
    pages = []
    if offset > 0:
        pages.append(f'<a href="{link(offset=max(0, offset - limit))}">previous</a>')
    if offset + limit < total:
        pages.append(f'<a href="{link(offset=offset + limit)}">next</a>')
    inputs = "".join(
        f'<label>{label} <input name="{name}" value="{escape(filters.get(name, ""))}" '
        f'maxlength="100" size="12"></label> '
        for name, label in (
            ("q", "id or label"),
            ("region", "region"),
            ("model", "model"),
            ("gpu", "GPU"),
        )
    )
    statuses = "".join(
        f'<option value="{v}"{" selected" if filters.get("status", "") == v else ""}>'
        f"{v or 'any'}</option>"
        for v in ("", "routable", "joining", "offline")
    )
    api = escape(f"/explorer/api/v1/providers?{urlencode({**filters, 'sort': sort})}")
    csv_link = escape(
        f"/explorer/api/v1/providers?{urlencode({**filters, 'sort': sort, 'format': 'csv'})}"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Providers · Tessera explorer</title><style>{CSS}</style></head>
<body data-page="providers">
{NAV}
<a href="{api}">JSON</a> <a href="{csv_link}">CSV</a>
</header>
<main>
<form method="get" action="/explorer/providers" id="filters">{inputs}
<label>status <select name="status">{statuses}</select></label>
<input type="hidden" name="sort" value="{escape(sort)}">
<button type="submit">filter</button></form>
<p><span data-k="providers.total">{total}</span> of {len(snapshot["providers"])} providers
seen since this gateway started match (filters: {shown}); showing {offset + 1 if rows else 0}
to {offset + len(rows)}. {" ".join(pages)} Sort: {sorts}.
As of {_time(snapshot["as_of"])}. <em>Declared</em> is what a provider announced;
<em>measured</em> is what this gateway saw.</p>
<div class="scroll"><table><thead><tr><th>provider</th><th>status</th><th>region</th>
<th>GPUs (declared)</th><th>models and prices per 1M in/out (declared)</th>
<th>stake (tokens)</th><th>reputation</th><th>uptime 24 h (seen)</th>
<th>requests (measured)</th><th>success</th><th>TTFT p50 ms</th></tr></thead>
<tbody id="providers">{body}</tbody></table></div>
</main></body></html>"""


def _provider_tr(row: dict[str, Any]) -> str:
    measured = row["measured"] or {}
    status_cls = {"routable": "ok", "offline": "bad"}.get(row["status"], "na")
    models = "; ".join(
        f"{escape(m['model'])} {format_tokens(m['price_input_per_mtok'])}/"
        f"{format_tokens(m['price_output_per_mtok'])}"
        for m in row["declared"]["models"]
    )
    gpus = ", ".join(escape(g) for g in row["declared"]["gpus"]) or "CPU"
    rate = measured.get("success_rate")
    ttft = measured.get("ttft_p50_ms")
    n = measured.get("ttft_samples", 0)
    label = f" ({escape(row['label'])})" if row["label"] else ""
    return (
        f'<tr data-provider="{escape(row["provider_id"])}">'
        f'<td><a href="/explorer/providers/{escape(row["provider_id"])}">'
        f"{escape(row['provider_id'][:12])}</a>{label}</td>"
        f'<td class="{status_cls}" data-k="status">{escape(row["status"])}</td>'
        f"<td>{escape(row['region'])}</td><td>{gpus}</td><td>{models}</td>"
        f'<td class="num">{format_tokens(row["bonded"])}</td>'
        f'<td class="num">{"—" if row["reputation"] is None else row["reputation"]}</td>'
        f'<td class="num">{_share(row["uptime_24h"]) if "uptime_24h" in row else "—"}</td>'
        f'<td class="num" data-k="requests">{measured.get("requests", 0)}</td>'
        f'<td class="num">{"—" if rate is None else f"{rate * 100:.1f} %"}</td>'
        f'<td class="num">{"—" if ttft is None else f"{ttft:g}"}'
        f"{'' if ttft is not None else f' (n={n})'}</td></tr>"
    )


CHARTS = (
    ("requests", "requests", "{:g}"),
    ("success_rate", "success rate", "{:.1%}"),
    ("ttft_p50_ms", "TTFT p50 (ms)", "{:g}"),
)


def live_fragments(
    snapshot: dict[str, Any], window: str, series: dict[str, dict[str, Any]] | None = None
) -> dict[str, str]:
    """The parts of the overview that change: what the stream sends to a live page.
    ``series``: the window's series by metric (None: the last hour's requests only)."""
    if series is None:
        charts = sparkline(snapshot["requests_per_minute"])
    else:
        charts = "".join(
            f'<figure data-metric="{metric}"><figcaption>{escape(title)}, '
            f"{escape(WINDOW_NAMES[window])}, per {_step(series[metric]['step_s'])}"
            f"</figcaption>{sparkline(series[metric]['points'], fmt=fmt)}</figure>"
            for metric, title, fmt in CHARTS
        )
    return {
        "asof": f"as of {_time(snapshot['as_of'])} (snapshot {snapshot['version']})",
        "kpis": kpi_cards(snapshot, window),
        "spark": charts,
        "tape": tape_rows(snapshot["tape"]),
    }


def _step(seconds: int) -> str:
    for size, unit in ((86_400, "day"), (3600, "hour"), (60, "minute")):
        if seconds % size == 0:
            count = seconds // size
            return unit if count == 1 else f"{count} {unit}s"
    return f"{seconds} s"


def kpi_cards(snapshot: dict[str, Any], window: str) -> str:
    summary = snapshot["windows"][window]
    now, before = summary["kpis"], summary["previous"]
    network = snapshot["network"]
    ledger = snapshot["ledger"]
    declared = network["declared"]
    cards = [
        _card("providers online", "network.providers_online", str(network["providers_online"]),
              f"{network['providers_routable']} routable"),
        _card("GPUs (declared)", "network.declared.gpu_count", str(declared["gpu_count"]),
              ", ".join(f"{escape(k)} {v}" for k, v in declared["gpus"].items()) or "CPU only"),
        _card("regions", "network.declared.regions", str(len(declared["regions"])),
              ", ".join(escape(k) for k in declared["regions"]) or "none"),
        _counted("requests", "requests", now, before),
        _counted("tokens", "tokens", now, before),
        _rate(now, before),
        _percentile("TTFT p50 (ms)", "ttft_p50_ms", now, "ttft_samples"),
        _percentile("TTFT p95 (ms)", "ttft_p95_ms", now, "ttft_samples"),
        _percentile("decode tokens/s p50", "tokens_per_s_p50", now, "tokens_per_s_samples"),
        _counted("audits passed", "audits_passed", now, before),
        _counted("audits failed", "audits_failed", now, before),
        _counted("slashes", "slashes", now, before),
        _card("paid by consumers", f"windows.{window}.kpis.cost", format_tokens(now["cost"]),
              "tokens, base units /1e9"),

    ]  # fmt: skip
    if ledger is not None:  # a replica does not know the fee split: its owner does
        cards.append(
            _card(
                "paid to providers",
                f"windows.{window}.kpis.earned",
                format_tokens(now["earned"]),
                "after the protocol fee",
            )
        )
        state = "holds" if ledger["holds"] else "BROKEN"
        cls = "ok" if ledger["holds"] else "bad"
        detail = (
            "every entry balanced" if ledger["holds"] else escape("; ".join(ledger["problems"]))
        )
        cards.append(
            f'<div class="card"><div class="k">ledger invariant</div>'
            f'<div class="v {cls}" data-k="ledger.holds">{state}</div>'
            f'<div class="d">{detail}</div></div>'
        )
    return "".join(cards)


def tape_rows(tape: list[dict[str, Any]]) -> str:
    if not tape:
        return '<tr><td colspan="10" class="na">no requests yet</td></tr>'
    rows = []
    for row in tape:
        provider = row["provider_id"]
        who = (
            f'<a href="/explorer/providers/{escape(provider)}">{escape(provider[:12])}</a>'
            if provider
            else '<span class="na">none</span>'
        )
        ttft = "—" if row["ttft_ms"] is None else f"{row['ttft_ms']:.0f}"
        status_cls = "ok" if row["status"] == "ok" else "bad"
        rows.append(
            f'<tr data-request="{escape(row["request_id"])}"><td>'
            f'<a href="/explorer/requests/{escape(row["request_id"])}">'
            f"{escape(row['request_id'])}</a></td>"
            f"<td>{escape(row['model'])}</td><td>{who}</td>"
            f"<td>{escape(row.get('region') or '—')}</td>"
            f'<td class="{status_cls}">{escape(row["status"])}</td>'
            f'<td class="num">{row["prompt_tokens"]}/{row["completion_tokens"]}</td>'
            f'<td class="num">{format_tokens(row["cost"])}</td>'
            f'<td class="num">{row["latency_ms"]:.0f}</td><td class="num">{ttft}</td>'
            f"<td>{_audit_cell(row.get('audit'))}</td></tr>"
        )
    return "".join(rows)


def _audit_cell(status: str | None) -> str:
    if status is None:
        return '<span class="na">—</span>'
    return f'<span class="{"bad" if status == "upheld" else "ok"}">{escape(status)}</span>'


def sparkline(
    points: list[dict[str, Any]], width: int = 600, height: int = 80, fmt: str = "{:g}"
) -> str:
    """A series as an SVG line drawn on the server (no chart library); a point without data
    (None) breaks the line rather than drawing a 0."""
    if not points:
        return '<p class="na">no data</p>'
    values = [p["value"] for p in points]
    known = [v for v in values if v is not None]
    if not known:
        return f'<p class="na">no data in these {len(values)} points</p>'
    top = max(known)
    step = width / max(1, len(values) - 1)
    runs: list[list[str]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            if runs[-1]:
                runs.append([])
            continue
        y = height - 4 - (v / top * (height - 8) if top else 0)
        runs[-1].append(f"{i * step:.1f},{y:.1f}")
    lines = "".join(
        f'<polyline fill="none" stroke="#1f6feb" stroke-width="2" '
        f'vector-effect="non-scaling-stroke" points="{" ".join(run)}"/>'
        if len(run) > 1
        else f'<circle cx="{run[0].split(",")[0]}" cy="{run[0].split(",")[1]}" r="2" '
        'fill="#1f6feb"/>'
        for run in runs
        if run
    )
    peak = fmt.format(top)
    return (
        f'<svg viewBox="0 0 {width} {height}" width="100%" height="{height}" role="img" '
        f'preserveAspectRatio="none" aria-label="peak {escape(peak)}">{lines}</svg>'
        f'<div class="d">peak {escape(peak)}; {len(values)} points, oldest left; '
        f"{len(values) - len(known)} without data</div>"
    )


def _card(title: str, key: str, value: str, detail: str, cls: str = "") -> str:
    return (
        f'<div class="card"><div class="k">{escape(title)}</div>'
        f'<div class="v {cls}" data-k="{escape(key)}">{value}</div>'
        f'<div class="d">{detail}</div></div>'
    )


def _counted(title: str, name: str, now: dict[str, Any], before: dict[str, Any] | None) -> str:
    prior = None if before is None else before[name]
    return _card(title, f"kpis.{name}", str(now[name]), _delta(now[name], prior))


def _rate(now: dict[str, Any], before: dict[str, Any] | None) -> str:
    rate = now["success_rate"]
    if rate is None:
        return _card("success rate", "kpis.success_rate", "—", "no settled requests", "na")
    shown = f"{rate * 100:.2f} %"
    prior = None if before is None else before["success_rate"]
    detail = "" if prior is None else f"previous window {prior * 100:.2f} %"
    return _card("success rate", "kpis.success_rate", shown, detail)


def _percentile(title: str, name: str, now: dict[str, Any], samples: str) -> str:
    value, n = now[name], now[samples]
    if value is None:
        return _card(title, f"kpis.{name}", "—", f"insufficient data: n={n}, needs 5", "na")
    return _card(title, f"kpis.{name}", f"{value:g}", f"measured, n={n} (bucket upper edge)")


def _delta(now: int, before: int | None) -> str:
    if before is None:
        return "no previous window"
    diff = now - before
    if before == 0:
        return f"{diff:+d} vs previous window"
    return f"{diff:+d} ({diff / before * 100:+.1f} %) vs previous window"


def _time(unix_s: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---------------------------------------------------------------- provider page


def provider_page(detail: dict[str, Any]) -> str:
    """One provider: declared offers, measured record, uptime per epoch, reputation with
    its formula, why it gets (no) work, audits, slashes with evidence, earnings per day."""
    row = detail["provider"]
    pid = escape(row["provider_id"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Provider {pid[:12]} · Tessera explorer</title><style>{CSS}</style></head>
<body data-page="provider" data-provider="{pid}">
{NAV}
<a href="/explorer/api/v1/providers/{pid}">JSON</a></header>
<main id="detail">{provider_main(detail)}</main>
<script src="/explorer/static/explorer.js"></script>
</body></html>"""


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
        _card("status", "provider.status", escape(row["status"]),
              f"{row['active_jobs']}/{row['declared']['max_concurrent_jobs']} slots busy",
              status_cls),
        _card("region (declared)", "provider.region", escape(row["region"]),
              ", ".join(escape(g) for g in row["declared"]["gpus"]) or "CPU"),
        _card("stake bonded", "provider.bonded", format_tokens(row["bonded"]), "tokens"),
        _card("reputation", "provider.reputation",
              "—" if row["reputation"] is None else f"{row['reputation']:g}", "score in [0, 1]"),
        _card("requests (measured)", "provider.measured.requests",
              str(measured.get("requests", 0)), f"{measured.get('errors', 0)} errors"),
        _card("success rate", "provider.measured.success_rate",
              "—" if rate is None else f"{rate * 100:.2f} %",
              "no settled requests" if rate is None else "measured"),
        _card("paid by consumers", "provider.measured.cost",
              format_tokens(measured.get("cost", 0)), "tokens, before fees"),
    ]  # fmt: skip
    if ledger is not None:
        cards.append(
            _card(
                "earnings (ledger)",
                "ledger.earnings",
                format_tokens(ledger["earnings"]),
                f"balance {format_tokens(ledger['balance'])}",
            )
        )
    return (
        f"<h1>Provider <code>{escape(row['provider_id'])}</code>{label}</h1>"
        f'<p id="asof">as of {_time(detail["as_of"])} (snapshot {detail["version"]}). '
        "<em>Declared</em> is what the provider announced; <em>measured</em> is what this "
        "gateway saw.</p>"
        f'<section class="cards">{"".join(cards)}</section>'
        f"<h2>Models (declared)</h2>{_offers_table(detail['offers'])}"
        f"<h2>Latency and throughput per model (measured)</h2>"
        f"{_model_stats_table(record.get('models', {}))}"
        "<h2>Uptime</h2><p>Seen connected by this gateway's checks: "
        + " / ".join(f"{w} {_share(detail['seen_online'][w])}" for w in ("5m", "30m", "24h"))
        + f" (n={detail['seen_online']['24h']['checks']} checks in 24 h).</p>"
        f"<h3>Per epoch, against its SLA</h3>{_uptime(detail['uptime'])}"
        f"<h2>Why it gets work, or not</h2>{_routing(detail['routing'])}"
        f"<h2>Reputation</h2>{_reputation(reputation)}"
        f"<h2>Audits</h2>{_audits(record.get('audits'))}"
        f"<h2>Slashes</h2>{_slashes(record.get('slashes'))}"
        f"<h2>Paid and earned per day</h2>{_per_day(record.get('paid_by_day', []))}"
    )


def _table(head: list[str], rows: list[str], empty: str, table_id: str = "") -> str:
    if not rows:
        return f'<p class="na">{escape(empty)}</p>'
    ident = f' id="{table_id}"' if table_id else ""
    cols = "".join(f"<th>{escape(h)}</th>" for h in head)
    return (
        f'<div class="scroll"><table{ident}><thead><tr>{cols}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
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
    return _table(head, rows, "no models announced", "offers")


def _pcts(p: dict[str, Any]) -> str:
    if p["p50"] is None:
        return f'<span class="na">insufficient data (n={p["samples"]})</span>'
    return (
        f"{p['p50']:g} / {p['p75']:g} / {p['p90']:g} / {p['p99']:g}"
        f' <span class="na">(n={p["samples"]})</span>'
    )


def _model_stats_table(models: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, stats in models.items():
        rate = stats["success_rate"]
        rows.append(
            f'<tr data-model="{escape(name)}"><td>{escape(name)}</td>'
            f'<td class="num">{stats["requests"]}</td>'
            f'<td class="num">{"—" if rate is None else f"{rate * 100:.1f} %"}</td>'
            f'<td class="num">{_pcts(stats["ttft_ms"])}</td>'
            f'<td class="num">{_pcts(stats["tokens_per_s"])}</td></tr>'
        )
    head = ["model", "requests", "success", "TTFT ms p50/p75/p90/p99",
            "decode tokens/s p50/p75/p90/p99"]  # fmt: skip
    return _table(head, rows, "no requests measured yet", "model-stats")


def _bps(value: int | None) -> str:
    return "—" if value is None else f"{value / 100:.2f} %"


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
            f"{_time(e['epoch_start'])}: {_bps(e['uptime_bps'])} up "
            f"(SLA {_bps(e['sla_uptime_bps'])})"
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
        f"Epoch in progress (since {_time(current['epoch_start'])}): "
        f'<span data-k="uptime.current.uptime_bps">{_bps(current["uptime_bps"])}</span> up, '
        f"state {escape(current['state'])}, SLA line {_bps(current['sla_uptime_bps'])}."
        if current
        else "Not tracked now (not connected)."
    )
    down = [
        f'<tr><td>{_time(e["epoch_start"])}</td><td class="num">{e["down_ms"] / 1000:.1f}</td>'
        f'<td class="num">{_bps(e["uptime_bps"])}</td><td class="num">{_bps(e["sla_uptime_bps"])}</td>'
        f'<td class="{"bad" if e["breach"] else "na"}">{"breach" if e["breach"] else "within SLA"}</td>'
        f'<td class="num">{format_tokens(e["slashed"])}</td></tr>'
        for e in uptime["epochs"]
        if e["down_ms"] > 0
    ]
    return (
        f"<p>{now} Epochs of {uptime['epoch_s']} s; green: no downtime, amber: some, red: "
        f"below the SLA.</p>{strip}<h3>Downtime</h3>"
        + _table(
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
    return _table(head, rows, "no models", "routing")


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
    rows = [
        f'<tr><td>{_time(a["at"])}</td><td><a href="/v1/audit-cases/{escape(a["request_id"])}">'
        f"{escape(a['request_id'])}</a></td><td>{escape(a['model'])}</td>"
        f'<td class="{"bad" if a["status"] == "upheld" else "ok"}">{escape(a["status"])}</td>'
        f'<td class="num">{format_tokens(a["slashed_units"])}</td>'
        f'<td class="num">{format_tokens(a["refunded_units"])}</td></tr>'
        for a in audits["recent"]
    ]
    head = ["closed", "request (evidence)", "model", "outcome", "slashed", "refunded"]
    return (
        f'<p><span data-k="audits.passed">{audits["passed"]}</span> passed, '
        f'<span data-k="audits.failed">{audits["failed"]}</span> failed.</p>'
        + _table(head, rows, "no audit closed yet", "audits")
    )


def _evidence(reference: str) -> str:
    kind, _, ident = reference.partition(":")
    if kind == "audit" and ident:
        return f'<a href="/v1/audit-cases/{escape(ident)}">audit case {escape(ident)}</a>'
    return escape(reference) or "—"


def _slashes(slashes: dict[str, Any] | None) -> str:
    if slashes is None:
        return '<p class="na">never slashed</p>'
    rows = [
        f"<tr><td>{_time(s['at'])}</td><td>{escape(s['model'])}</td>"
        f'<td>{escape(s["reason"])}</td><td class="num">{format_tokens(s["slashed_units"])}</td>'
        f'<td class="num">{format_tokens(s["refunded_units"])}</td>'
        f"<td>{_evidence(s['reference'])}</td></tr>"
        for s in slashes["recent"]
    ]
    head = ["when", "model", "reason", "stake taken", "refunded to consumers", "evidence"]
    return (
        f'<p><span data-k="slashes.count">{slashes["count"]}</span> slashes, '
        f"{format_tokens(slashes['slashed_units'])} tokens taken, "
        f"{format_tokens(slashes['refunded_units'])} refunded.</p>"
        + _table(head, rows, "never slashed", "slashes")
    )


def _per_day(days: list[dict[str, Any]]) -> str:
    rows = [
        f'<tr><td>{_time(d["day"])[:10]}</td><td class="num">{format_tokens(d["cost"])}</td>'
        f'<td class="num">{format_tokens(d["earned"])}</td></tr>'
        for d in reversed(days)
    ]
    head = ["day (UTC)", "paid by consumers (tokens)", "earned, after the protocol fee"]
    return _table(head, rows, "nothing paid yet", "per-day")


# ---------------------------------------------------------------- requests and receipts


def request_page(detail: dict[str, Any]) -> str:
    """One request: who served it, at what price, what it cost, its escrow entries, its
    audit, and a receipt check that runs in the visitor's browser."""
    row = detail["request"]
    rid = escape(row["request_id"])
    provider = row["provider_id"]
    who = (
        f'<a href="/explorer/providers/{escape(provider)}"><code>{escape(provider)}</code></a>'
        if provider
        else '<span class="na">none (no provider answered)</span>'
    )
    price = (
        "—"
        if row["price_input_per_mtok"] is None
        else f"{format_tokens(row['price_input_per_mtok'])} in / "
        f"{format_tokens(row['price_output_per_mtok'] or 0)} out per 1M tokens"
    )
    ttft = "—" if row["ttft_ms"] is None else f"{row['ttft_ms']:g} ms"
    facts = [
        ("request", f"<code>{rid}</code>", "request.request_id"),
        ("finished", _time(row["at"]), ""),
        ("model", escape(row["model"]), "request.model"),
        ("provider", who, ""),
        ("status", escape(row["status"]), "request.status"),
        ("tokens in / out", f"{row['prompt_tokens']} / {row['completion_tokens']}", ""),
        ("price (the provider's offer)", price, ""),
        ("cost", f"{format_tokens(row['cost'])} tokens", "request.cost"),
        ("latency", f"{row['latency_ms']:g} ms", ""),
        ("time to first token", ttft, ""),
        ("audit", _request_audit(detail["audit"]), ""),
        ("why this provider", _route_text(row.get("route")), "request.route"),
    ]
    rows = "".join(
        f"<tr><th>{escape(name)}</th><td"
        + (f' data-k="{key}"' if key else "")
        + f">{value}</td></tr>"
        for name, value, key in facts
    )
    return _page(
        f"Request {rid}",
        f'data-page="request" data-request="{rid}"',
        f'<a href="/explorer/api/v1/requests/{rid}">JSON</a>',
        f"<h1>Request <code>{rid}</code></h1>"
        f"<p>as of {_time(detail['as_of'])}. Never the prompt or the answer: only counts, "
        "prices, times and hashes.</p>"
        f'<div class="scroll"><table id="facts">{rows}</table></div>'
        f"<h2>Escrow entries</h2>{_entries(detail['entries'])}"
        + receipt_checker(detail["gateway"], row["request_id"]),
    )


def receipts_page(gateway: dict[str, str] | None) -> str:
    """The receipt check alone: for any receipt, however old."""
    return _page(
        "Check a receipt",
        'data-page="receipt"',
        '<a href="/v1/gateway">gateway key</a>',
        "<h1>Check a receipt</h1>" + receipt_checker(gateway, None),
    )


def receipt_checker(gateway: dict[str, str] | None, request_id: str | None) -> str:
    key = "" if gateway is None else escape(gateway["public_key"])
    expected = "" if request_id is None else escape(request_id)
    return f"""<h2>Check its receipt yourself</h2>
<p>Paste the receipt (the body of <code>GET /v1/receipts/REQUEST_ID</code>, which needs
the consumer's key). Your browser checks the provider's Ed25519 signature and this
gateway's countersignature itself, with nothing from this server but the key it prints:
<code id="gateway-key">{key or "unknown"}</code>.</p>
<form id="receipt-form" data-gateway-key="{key}" data-request="{expected}">
<textarea id="receipt" rows="8" style="width:100%;font:12px monospace" spellcheck="false"
 aria-label="receipt JSON" placeholder='{{"object": "receipt", "receipt": {{...}}, ...}}'></textarea>
<p><button type="submit">Verify in this browser</button>
<noscript>Verifying needs JavaScript; offline, run <code>tessera receipt verify FILE</code>.</noscript></p>
</form>
<div id="receipt-result" aria-live="polite"></div>
<script src="/explorer/static/receipt.js"></script>"""


def _route_text(route: str | None) -> str:
    if not route:
        return '<span class="na">not recorded (no provider was chosen)</span>'
    return "<br>".join(f"<code>{escape(part.strip())}</code>" for part in route.split(";"))


def _request_audit(audit: dict[str, Any] | None) -> str:
    if audit is None:
        return '<span class="na">no audit closed for it (requests are audited by sampling)</span>'
    cls = "bad" if audit["status"] == "upheld" else "ok"
    money = (
        f", {format_tokens(audit['slashed_units'])} slashed, "
        f"{format_tokens(audit['refunded_units'])} refunded"
        if audit["slashed_units"] or audit["refunded_units"]
        else ""
    )
    return (
        f'<span class="{cls}">{escape(audit["status"])}</span>{money}: '
        f'<a href="/v1/audit-cases/{escape(audit["request_id"])}">evidence</a>'
    )


def _entries(entries: list[dict[str, Any]] | None) -> str:
    if entries is None:
        return '<p class="na">this gateway keeps no journal (a replica): ask its owner</p>'
    rows = [
        f"<tr><td>{e['entry_id']}</td><td>{escape(e['kind'])}</td><td>{_time(e['at'])}</td>"
        "<td>"
        + "<br>".join(
            f"{escape(p['account'])} {'+' if p['amount'] > 0 else ''}{format_tokens(p['amount'])}"
            for p in e["postings"]
        )
        + "</td></tr>"
        for e in entries
    ]
    return _table(["entry", "kind", "at", "postings (tokens)"], rows, "no entries", "entries")


LIVE_MAIN = '<main id="main">'


def _page(title: str, body_attrs: str, links: str, main: str, live: bool = False) -> str:
    """A page in the explorer's frame; a ``live`` one has its <main> replaced by the
    stream at every snapshot (pages with a form are not live: typing would be lost)."""
    script = '<script src="/explorer/static/explorer.js"></script>' if live else ""
    opening = LIVE_MAIN if live else "<main>"
    live_attr = ' data-live="1"' if live else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title} · Tessera explorer</title><style>{CSS}</style></head>
<body {body_attrs}{live_attr}>
{NAV}
{links}</header>
{opening}{main}</main>
{script}
</body></html>"""


def main_part(page: str) -> str:
    """The inside of a live page's <main>: what its stream sends."""
    start = page.index(LIVE_MAIN) + len(LIVE_MAIN)
    return page[start : page.rindex("</main>")]


# ---------------------------------------------------------------- models


MODEL_ROWS = 100  # providers shown per model on the page (the JSON and CSV have all)


def models_page(snapshot: dict[str, Any], models: list[dict[str, Any]]) -> str:
    """Per model, every provider serving it: price, region, uptime over three windows,
    latency and throughput percentiles with sample sizes (measured apart from declared)."""
    sections = []
    for m in models:
        name = escape(m["model"])
        median = m["median_price_output_per_mtok"]
        rows = [_model_provider_tr(p) for p in m["providers"][:MODEL_ROWS]]
        more = len(m["providers"]) - MODEL_ROWS
        if more > 0:
            rows.append(
                f'<tr><td colspan="8" class="na">and {more} more (offline last, then by '
                "price): every one is in the JSON and the CSV</td></tr>"
            )
        head = ["provider", "status", "region", "price in/out per 1M (declared)",
                "uptime 5 min / 30 min / 24 h (seen)", "requests",
                "TTFT ms p50/p75/p90/p99", "decode tokens/s p50/p75/p90/p99"]  # fmt: skip
        sections.append(
            f'<section data-model="{name}"><h2 id="{name}">{name}</h2>'
            f"<p>{'audited: its weights are pinned in the catalog' if m['audited'] else 'not audited'}; "
            f'<span data-k="models.{name}.providers_online">{m["providers_online"]}</span> '
            f"providers online of {m['providers_seen']} seen; median output price "
            f"{'—' if median is None else format_tokens(median)} per 1M tokens.</p>"
            + _table(head, rows, "no provider", f"providers-{name}")
            + "</section>"
        )
    body = "".join(sections) or '<p class="na">no provider has announced a model yet</p>'
    return _page(
        "Models",
        'data-page="models"',
        '<a href="/explorer/api/v1/models">JSON</a> '
        '<a href="/explorer/api/v1/models?format=csv">CSV</a>',
        f"<h1>Models</h1><p>as of {_time(snapshot['as_of'])} (snapshot "
        f"{snapshot['version']}). Uptime is the share of this gateway's checks (one per "
        "snapshot) that found the provider connected.</p>" + body,
        live=True,
    )


def _share(window: dict[str, Any]) -> str:
    if window["uptime"] is None:
        return '<span class="na">no checks</span>'
    return f"{window['uptime'] * 100:.1f} %"


def _model_provider_tr(p: dict[str, Any]) -> str:
    measured = p["measured"]
    status_cls = {"routable": "ok", "offline": "bad"}.get(p["status"], "na")
    uptime = " / ".join(_share(p["uptime"][w]) for w in ("5m", "30m", "24h"))
    none = '<span class="na">no requests measured</span>'
    label = f" ({escape(p['label'])})" if p["label"] else ""
    return (
        f'<tr data-provider="{escape(p["provider_id"])}">'
        f'<td><a href="/explorer/providers/{escape(p["provider_id"])}">'
        f"{escape(p['provider_id'][:12])}</a>{label}</td>"
        f'<td class="{status_cls}">{escape(p["status"])}</td><td>{escape(p["region"])}</td>'
        f'<td class="num">{format_tokens(p["price_input_per_mtok"])} / '
        f"{format_tokens(p['price_output_per_mtok'])}</td>"
        f'<td class="num">{uptime}</td>'
        f'<td class="num" data-k="requests">{0 if measured is None else measured["requests"]}</td>'
        f'<td class="num">{none if measured is None else _pcts(measured["ttft_ms"])}</td>'
        f'<td class="num">{none if measured is None else _pcts(measured["tokens_per_s"])}</td>'
        "</tr>"
    )


# ---------------------------------------------------------------- economics and claims


def economics_page(eco: dict[str, Any]) -> str:
    """Supply, stake, fees, pools, escrow, the invariant, the policy and the price index."""
    ledger = eco["ledger"]
    stake = eco["stake"]
    paid = eco["paid_by_consumers"]
    cards = [
        _card("stake bonded", "stake.bonded", format_tokens(stake["bonded"]),
              f"{format_tokens(stake['bonded_online'])} by providers online"),
        _card("paid by consumers, 24 h", "paid_by_consumers.24h", format_tokens(paid["24h"]),
              f"30 d {format_tokens(paid['30d'])}"),
    ]  # fmt: skip
    if ledger is not None:
        cards += [
            _card("minted supply", "ledger.minted", format_tokens(ledger["minted"]), "tokens"),
            _card("protocol fees", "ledger.fees", format_tokens(ledger["fees"]), "tokens"),
            _card("verification pool", "ledger.verification_pool",
                  format_tokens(ledger["verification_pool"]), "pays auditors"),
            _card("insurance pool", "ledger.insurance_pool",
                  format_tokens(ledger["insurance_pool"]), "covers refunds"),
            _card("escrow open", "ledger.escrow_open", format_tokens(ledger["escrow_open"]),
                  "held for running requests"),
            _card("ledger invariant", "ledger.holds", "holds" if ledger["holds"] else "BROKEN",
                  "every entry balanced" if ledger["holds"]
                  else escape("; ".join(ledger["problems"])),
                  "ok" if ledger["holds"] else "bad"),
        ]  # fmt: skip
    policy = eco["policy"]
    policy_html = '<p class="na">a replica: its owner keeps the ledger and the policy</p>'
    if policy is not None:
        rules = [
            f"<tr><td>{escape(str(r['reason']))}</td>"
            f'<td class="num">{int(str(r["stake_bps"])) / 100:g} %</td>'
            f"<td>{'yes' if r['ban'] else 'no'}</td><td>{escape(str(r['description']))}</td>"
            "</tr>"
            for r in policy["slashing"]
        ]
        policy_html = (
            f"<p>Protocol fee {policy['fee_bps'] / 100:g} % of each request's cost, "
            f"{policy['verification_share_bps'] / 100:g} % of it to the verification pool; "
            f"stake unbonds after {policy['unbonding_delay_s'] / 86400:g} days and stays "
            "slashable until then.</p><h3>The slashing table</h3>"
            + _table(
                ["reason", "stake taken", "ban", "what triggers it"], rules, "no rules", "slashing"
            )
        )
    return _page(
        "Economics",
        'data-page="economics"',
        '<a href="/explorer/api/v1/economics">JSON</a>',
        f"<h1>Economics</h1><p>as of {_time(eco['as_of'])} (snapshot {eco['version']}); "
        "amounts in tokens.</p>"
        f'<section class="cards">{"".join(cards)}</section>'
        f"<h2>Fees and slashing</h2>{policy_html}"
        f"<h2>Price index</h2>{_price_index(eco['price_index'])}",
        live=True,
    )


def _price_index(index: dict[str, Any]) -> str:
    rate = (
        f"one token at {escape(index['token_usd'])} USD ({escape(index['rate'])})"
        if index["token_usd"]
        else "no exchange rate declared for the token, so prices stay in tokens and no "
        "comparison in dollars is made"
    )
    rows = []
    for row in index["data"]:
        for ref in row["references"] or [{}]:
            saving = ref.get("cheaper_by_percent")
            rows.append(
                f'<tr data-model="{escape(row["model"])}"><td>{escape(row["model"])}</td>'
                f'<td class="num">{format_tokens(row["median_price_input_per_mtok"])} / '
                f"{format_tokens(row['median_price_output_per_mtok'])}</td>"
                f'<td class="num">{escape(row["usd_per_mtok_blended"] or "—")}</td>'
                f"<td>{escape(ref.get('vendor', '—'))} {escape(ref.get('model', ''))}</td>"
                f'<td class="num">{escape(ref.get("usd_per_mtok_blended", "—"))}</td>'
                f'<td class="num">{"—" if saving is None else f"{saving:+.1f} %"}</td></tr>'
            )
    head = ["model", "network median in/out per 1M (tokens)", "USD per 1M (blended)",
            "reference", "its USD per 1M (blended)", "cheaper by"]  # fmt: skip
    return (
        f"<p>Reference list prices of {escape(index['references_as_of'])}; blend "
        f"{escape(index['blend'])}; {rate}.</p>"
        + _table(head, rows, "no model is served now", "price-index")
    )


def claims_page(claims: dict[str, Any]) -> str:
    rows = [
        f'<tr data-claim="{i}"><td>{escape(c["claim"])}</td>'
        f'<td class="{"na" if c["value"] is None else ""}" data-k="claims.{i}.shown">'
        f"{escape(c['shown'])}</td><td>{escape(c['window'])}</td>"
        f"<td>{'—' if c['samples'] is None else c['samples']}</td>"
        f"<td>{escape(c['source'])}</td><td>{escape(c['formula'])}</td>"
        f'<td><a href="{escape(c["data"])}">data</a></td></tr>'
        for i, c in enumerate(claims["data"])
    ]
    head = ["claim", "live value", "window", "n", "source", "formula", "data"]
    return _page(
        "Claims",
        'data-page="claims"',
        '<a href="/explorer/api/v1/claims">JSON</a>',
        f"<h1>Claims, checked live</h1><p>as of {_time(claims['as_of'])} (snapshot "
        f"{claims['version']}). Each claim the network makes, its value now, and how it is "
        "computed from the public data linked beside it.</p>"
        + _table(head, rows, "no claims", "claims"),
        live=True,
    )


# ---------------------------------------------------------------- audits and slashes


def _who(provider_id: str) -> str:
    if not provider_id:
        return '<span class="na">—</span>'
    return f'<a href="/explorer/providers/{escape(provider_id)}">{escape(provider_id[:12])}</a>'


def audits_page(snapshot: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    month = snapshot["windows"]["30d"]["kpis"]
    body = [
        f"<tr><td>{_time(a['at'])}</td><td>{_who(a['provider_id'])}</td>"
        f'<td><a href="/explorer/requests/{escape(a["request_id"])}">'
        f"{escape(a['request_id'])}</a></td><td>{escape(a['model'])}</td>"
        f'<td class="{"bad" if a["status"] == "upheld" else "ok"}">{escape(a["status"])}</td>'
        f'<td class="num">{format_tokens(a["slashed_units"])}</td>'
        f'<td class="num">{format_tokens(a["refunded_units"])}</td>'
        f'<td><a href="/v1/audit-cases/{escape(a["request_id"])}">evidence</a></td></tr>'
        for a in rows
    ]
    head = ["closed", "provider", "request", "model", "outcome", "slashed", "refunded",
            "evidence"]  # fmt: skip
    return _page(
        "Audits",
        'data-page="audits"',
        '<a href="/explorer/api/v1/audits">JSON</a> '
        '<a href="/explorer/api/v1/audits?format=csv">CSV</a>',
        f'<h1>Audits</h1><p>In 30 days: <span data-k="audits.passed">'
        f'{month["audits_passed"]}</span> passed, <span data-k="audits.failed">'
        f"{month['audits_failed']}</span> failed. The newest {len(rows)} closed cases since "
        "this gateway started; each links to its evidence (the audit case with every "
        "re-run and its numbers).</p>" + _table(head, body, "no audit closed yet", "audits"),
        live=True,
    )


def slashes_page(snapshot: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    month = snapshot["windows"]["30d"]["kpis"]
    body = [
        f"<tr><td>{_time(s['at'])}</td><td>{_who(s['provider_id'])}</td>"
        f"<td>{escape(s['model'])}</td><td>{escape(s['reason'])}</td>"
        f'<td class="num">{format_tokens(s["slashed_units"])}</td>'
        f'<td class="num">{format_tokens(s["refunded_units"])}</td>'
        f"<td>{_evidence(s['reference'])}</td></tr>"
        for s in rows
    ]
    head = ["when", "provider", "model", "reason", "stake taken", "refunded to consumers",
            "evidence"]  # fmt: skip
    return _page(
        "Slashes",
        'data-page="slashes"',
        '<a href="/explorer/api/v1/slashes">JSON</a> '
        '<a href="/explorer/api/v1/slashes?format=csv">CSV</a>',
        f'<h1>Slashes</h1><p>In 30 days: <span data-k="slashes.count">{month["slashes"]}'
        f"</span> slashes took {format_tokens(month['slashed_units'])} tokens of stake and "
        f"refunded {format_tokens(month['refunded_units'])} to consumers. The rules are on "
        '<a href="/explorer/economics">economics</a>.</p>'
        + _table(head, body, "nobody has been slashed", "slashes"),
        live=True,
    )


def _ratio(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.1f} %"


def epochs_page(snapshot: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    body = [
        f'<tr data-epoch="{e["epoch_start"]}"><td>{_time(e["epoch_start"])}</td>'
        f'<td class="num">{e["epoch_s"]}</td><td class="num">{e["providers"]}</td>'
        f'<td class="num ok">{e["met"]}</td>'
        f'<td class="num {"bad" if e["breached"] else ""}">{e["breached"]}</td>'
        f'<td class="num">{_ratio(e["met_share"])}</td><td class="num">{format_tokens(e["slashed_units"])}</td></tr>'
        for e in rows
    ]
    head = ["epoch start", "length s", "providers judged", "met SLA", "breached", "met",
            "stake taken"]  # fmt: skip
    return _page(
        "Uptime epochs",
        'data-page="epochs"',
        '<a href="/explorer/api/v1/epochs">JSON</a> '
        '<a href="/explorer/api/v1/epochs?format=csv">CSV</a>',
        f"<h1>Uptime epochs</h1><p>as of {_time(snapshot['as_of'])}. At the end of each "
        "epoch every provider seen in it is judged against the uptime it declared (its SLA); "
        "a breach takes the slashing table's downtime share of its stake. Each provider's "
        "epochs are on its page.</p>" + _table(head, body, "no epoch has closed yet", "epochs"),
        live=True,
    )
