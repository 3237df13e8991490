"""The explorer's overview and providers list, rendered on the server from a snapshot:
every number is in the page, so it reads with JavaScript off, and the live fragments
(KPIs, the tape, the charts) are the same functions the Server-Sent Events stream sends,
so a live page and a reloaded one agree.

Pure string building; everything user-visible is escaped. No prompt or output text exists
in a snapshot, so none can appear here.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import urlencode

from tessera.explorer.frame import card, framed, share, utc
from tessera.units import format_tokens

WINDOW_NAMES = {"1h": "1 hour", "24h": "24 hours", "7d": "7 days", "30d": "30 days", "all": "all"}


def overview(snapshot: dict[str, Any], window: str, fragments: dict[str, str] | None = None) -> str:
    fragments = fragments or live_fragments(snapshot, window)
    links = " ".join(
        f'<a href="/explorer?window={w}"{" aria-current=page" if w == window else ""}>'
        f"{escape(label)}</a>"
        for w, label in WINDOW_NAMES.items()
    )
    return framed(
        "Overview",
        f'data-window="{escape(window)}"',
        "<span>the network, measured by its gateway; updated live</span>\n"
        f'<a href="/explorer/api/v1/network/summary?window={escape(window)}">JSON</a>\n'
        '<a href="/explorer/api/v1/requests/recent?format=csv">tape CSV</a>',
        f"""
<nav class="windows">Window: {links}</nav>
<p id="asof">{fragments["asof"]}</p>
<section id="kpis" class="cards">{fragments["kpis"]}</section>
<h2>Over the window</h2>
<div id="spark">{fragments["spark"]}</div>
<h2>Latest requests</h2>
<div class="scroll"><table><thead><tr><th>request</th><th>model</th><th>provider</th>
<th>region</th><th>status</th><th>tokens in/out</th><th>cost (tokens)</th>
<th>latency ms</th><th>TTFT ms</th><th>audit</th></tr></thead><tbody id="tape">{fragments["tape"]}</tbody></table></div>
""",
        script=True,
    )


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
    return framed(
        "Providers",
        'data-page="providers"',
        f'<a href="{api}">JSON</a> <a href="{csv_link}">CSV</a>',
        f"""<form method="get" action="/explorer/providers" id="filters">{inputs}
<label>status <select name="status">{statuses}</select></label>
<input type="hidden" name="sort" value="{escape(sort)}">
<button type="submit">filter</button></form>
<p><span data-k="providers.total">{total}</span> of {len(snapshot["providers"])} providers
seen since this gateway started match (filters: {shown}); showing {offset + 1 if rows else 0}
to {offset + len(rows)}. {" ".join(pages)} Sort: {sorts}.
As of {utc(snapshot["as_of"])}. <em>Declared</em> is what a provider announced;
<em>measured</em> is what this gateway saw.</p>
<div class="scroll"><table><thead><tr><th>provider</th><th>status</th><th>region</th>
<th>GPUs (declared)</th><th>models and prices per 1M in/out (declared)</th>
<th>stake (tokens)</th><th>reputation</th><th>uptime 24 h (seen)</th>
<th>requests (measured)</th><th>success</th><th>TTFT p50 ms</th></tr></thead>
<tbody id="providers">{body}</tbody></table></div>
""",
    )


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
        f'<td class="num">{share(row["uptime_24h"]) if "uptime_24h" in row else "—"}</td>'
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
        drawn = sparkline(snapshot["requests_per_minute"])
    else:
        drawn = charts(series, window, CHARTS)
    return {
        "asof": f"as of {utc(snapshot['as_of'])} (snapshot {snapshot['version']})",
        "kpis": kpi_cards(snapshot, window),
        "spark": drawn,
        "tape": tape_rows(snapshot["tape"]),
    }


def charts(
    series: dict[str, dict[str, Any]], window: str, which: tuple[tuple[str, str, str], ...]
) -> str:
    """One drawn chart per (metric, title, number format) in ``which``."""
    return "".join(
        f'<figure data-metric="{metric}"><figcaption>{escape(title)}, '
        f"{escape(WINDOW_NAMES[window])}, per {_step(series[metric]['step_s'])}"
        f"</figcaption>{sparkline(series[metric]['points'], fmt=fmt)}</figure>"
        for metric, title, fmt in which
    )


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
        card("providers online", "network.providers_online", str(network["providers_online"]),
              f"{network['providers_routable']} routable"),
        card("GPUs (declared)", "network.declared.gpu_count", str(declared["gpu_count"]),
              ", ".join(f"{escape(k)} {v}" for k, v in declared["gpus"].items()) or "CPU only"),
        card("regions", "network.declared.regions", str(len(declared["regions"])),
              ", ".join(escape(k) for k in declared["regions"]) or "none"),
        *window_cards(now, before, f"windows.{window}.kpis"),
    ]  # fmt: skip
    if ledger is not None:  # a replica does not know the fee split: its owner does
        cards.append(
            card(
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


def window_cards(now: dict[str, Any], before: dict[str, Any] | None, path: str) -> list[str]:
    """A window's measured KPIs as cards, each against the previous window; ``path``:
    where its JSON twin keeps them."""
    return [
        _counted("requests", "requests", now, before),
        _counted("tokens", "tokens", now, before),
        _rate(now, before),
        _percentile("TTFT p50 (ms)", "ttft_p50_ms", now, "ttft_samples"),
        _percentile("TTFT p95 (ms)", "ttft_p95_ms", now, "ttft_samples"),
        _percentile("decode tokens/s p50", "tokens_per_s_p50", now, "tokens_per_s_samples"),
        _counted("audits passed", "audits_passed", now, before),
        _counted("audits failed", "audits_failed", now, before),
        _counted("slashes", "slashes", now, before),
        card("paid by consumers", f"{path}.cost", format_tokens(now["cost"]),
             "tokens, base units /1e9"),
    ]  # fmt: skip


def _counted(title: str, name: str, now: dict[str, Any], before: dict[str, Any] | None) -> str:
    prior = None if before is None else before[name]
    return card(title, f"kpis.{name}", str(now[name]), _delta(now[name], prior))


def _rate(now: dict[str, Any], before: dict[str, Any] | None) -> str:
    rate = now["success_rate"]
    if rate is None:
        return card("success rate", "kpis.success_rate", "—", "no settled requests", "na")
    shown = f"{rate * 100:.2f} %"
    prior = None if before is None else before["success_rate"]
    detail = "" if prior is None else f"previous window {prior * 100:.2f} %"
    return card("success rate", "kpis.success_rate", shown, detail)


def _percentile(title: str, name: str, now: dict[str, Any], samples: str) -> str:
    value, n = now[name], now[samples]
    if value is None:
        return card(title, f"kpis.{name}", "—", f"insufficient data: n={n}, needs 5", "na")
    return card(title, f"kpis.{name}", f"{value:g}", f"measured, n={n} (bucket upper edge)")


def _delta(now: int, before: int | None) -> str:
    if before is None:
        return "no previous window"
    diff = now - before
    if before == 0:
        return f"{diff:+d} vs previous window"
    return f"{diff:+d} ({diff / before * 100:+.1f} %) vs previous window"
