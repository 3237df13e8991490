"""One model's page: who serves it at what price, and how it has done over a window
(KPIs against the previous window, charts), measured apart from declared."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

from tessera.explorer.frame import framed, table, utc
from tessera.explorer.network_pages import MODEL_ROWS, model_href, model_provider_tr
from tessera.explorer.pages import WINDOW_NAMES, charts, window_cards
from tessera.units import format_tokens

MODEL_CHARTS = (
    ("requests", "requests", "{:g}"),
    ("success_rate", "success rate", "{:.1%}"),
    ("ttft_p50_ms", "TTFT p50 (ms)", "{:g}"),
    ("tokens_per_s_p50", "decode tokens/s p50", "{:g}"),
)


def model_page(detail: dict[str, Any]) -> str:
    model = detail["model"]
    name = escape(model["model"])
    window = detail["window"]
    href = escape(model_href(model["model"]))
    api = escape("/explorer/api/v1/models/" + quote(model["model"], safe="/"))
    windows = " ".join(
        f'<a href="{href}?window={w}"{" aria-current=page" if w == window else ""}>{w}</a>'
        for w in WINDOW_NAMES
    )
    median = model["median_price_output_per_mtok"]
    audited = (
        "audited: its weights are pinned in the catalog, so answers are re-run and compared"
        if model["audited"]
        else "not audited: no weights are pinned for it, so nobody checks its answers"
    )
    summary = detail["summary"]
    if summary is None:
        measured = '<p class="na">no request for this model has been measured yet</p>'
    else:
        measured = (
            f'<div class="cards" id="kpis">'
            f"{''.join(window_cards(summary['kpis'], summary['previous'], 'summary.kpis'))}"
            f"</div>{charts(detail['series'], window, MODEL_CHARTS)}"
        )
    rows = [model_provider_tr(p) for p in model["providers"][:MODEL_ROWS]]
    more = len(model["providers"]) - MODEL_ROWS
    if more > 0:
        rows.append(
            f'<tr><td colspan="8" class="na">and {more} more: every one is in the JSON</td></tr>'
        )
    head = ["provider", "status", "region", "price in/out per 1M (declared)",
            "uptime 5 min / 30 min / 24 h (seen)", "requests",
            "TTFT ms p50/p75/p90/p99", "decode tokens/s p50/p75/p90/p99"]  # fmt: skip
    kind = escape(model["kind"] or "unknown kind")
    return framed(
        f"Model {name}",
        f'data-page="model" data-model="{escape(model["model"])}" data-window="{window}"',
        f'<a href="{api}?window={window}">JSON</a>',
        f"<h1>{name}</h1>"
        f"<p>{kind}; {audited}.</p>"
        f"<p>as of {utc(detail['as_of'])} (snapshot {detail['version']}); "
        f'<span data-k="model.providers_online">{model["providers_online"]}</span> providers '
        f"online of {model['providers_seen']} seen; median output price "
        f"{'—' if median is None else format_tokens(median)} tokens per 1M (declared).</p>"
        f'<nav class="windows">window: {windows}</nav>'
        f"<h2>Measured by this gateway, {escape(WINDOW_NAMES[window])}</h2>{measured}"
        f"<h2>Providers serving it</h2>"
        + table(head, rows, "no provider serves it now", "providers"),
        live=True,
    )
