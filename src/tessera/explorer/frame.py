"""The frame every explorer page shares: style, navigation, the page shell, and the small
renderers (cards, tables, times, shares, evidence links) the pages are built from.

Pure string building; everything user-visible is escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

from tessera.units import format_tokens

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


LIVE_MAIN = '<main id="main">'


def framed(
    title: str, body_attrs: str, links: str, main: str, live: bool = False, script: bool = False
) -> str:
    """A page in the explorer's frame; a ``live`` one has its <main> replaced by the
    stream at every snapshot (pages with a form are not live: typing would be lost); one
    with ``script`` runs the stream too but names the parts it replaces itself."""
    script_tag = '<script src="/explorer/static/explorer.js"></script>' if live or script else ""
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
{script_tag}
</body></html>"""


def main_part(page: str) -> str:
    """The inside of a live page's <main>: what its stream sends."""
    start = page.index(LIVE_MAIN) + len(LIVE_MAIN)
    return page[start : page.rindex("</main>")]


def card(title: str, key: str, value: str, detail: str, cls: str = "") -> str:
    return (
        f'<div class="card"><div class="k">{escape(title)}</div>'
        f'<div class="v {cls}" data-k="{escape(key)}">{value}</div>'
        f'<div class="d">{detail}</div></div>'
    )


def table(head: list[str], rows: list[str], empty: str, table_id: str = "") -> str:
    if not rows:
        return f'<p class="na">{escape(empty)}</p>'
    ident = f' id="{table_id}"' if table_id else ""
    cols = "".join(f"<th>{escape(h)}</th>" for h in head)
    return (
        f'<div class="scroll"><table{ident}><thead><tr>{cols}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def utc(unix_s: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def share(window: dict[str, Any]) -> str:
    if window["uptime"] is None:
        return '<span class="na">no checks</span>'
    return f"{window['uptime'] * 100:.1f} %"


def pcts(p: dict[str, Any]) -> str:
    if p["p50"] is None:
        return f'<span class="na">insufficient data (n={p["samples"]})</span>'
    return (
        f"{p['p50']:g} / {p['p75']:g} / {p['p90']:g} / {p['p99']:g}"
        f' <span class="na">(n={p["samples"]})</span>'
    )


def bps(value: int | None) -> str:
    return "—" if value is None else f"{value / 100:.2f} %"


def ratio(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.1f} %"


def who(provider_id: str) -> str:
    if not provider_id:
        return '<span class="na">—</span>'
    return f'<a href="/explorer/providers/{escape(provider_id)}">{escape(provider_id[:12])}</a>'


def evidence(reference: str) -> str:
    kind, _, ident = reference.partition(":")
    if kind == "audit" and ident:
        return f'<a href="/explorer/audits/{escape(ident)}">audit case {escape(ident)}</a>'
    return escape(reference) or "—"


def audit_table(rows: list[dict[str, Any]], with_provider: bool) -> str:
    """Closed audit cases, newest first: each links to its request and its evidence."""
    body = [
        f"<tr><td>{utc(a['at'])}</td>"
        + (f"<td>{who(a['provider_id'])}</td>" if with_provider else "")
        + f'<td><a href="/explorer/requests/{escape(a["request_id"])}">'
        f"{escape(a['request_id'])}</a></td><td>{escape(a['model'])}</td>"
        f'<td class="{"bad" if a["status"] == "upheld" else "ok"}">{escape(a["status"])}</td>'
        f'<td class="num">{format_tokens(a["slashed_units"])}</td>'
        f'<td class="num">{format_tokens(a["refunded_units"])}</td>'
        f'<td><a href="/explorer/audits/{escape(a["request_id"])}">evidence</a></td></tr>'
        for a in rows
    ]
    head = ["closed", *(["provider"] if with_provider else []), "request", "model", "outcome",
            "slashed", "refunded", "evidence"]  # fmt: skip
    return table(head, body, "no audit closed yet", "audits")


def slash_table(rows: list[dict[str, Any]], with_provider: bool) -> str:
    """Slashes, newest first: reason, stake taken, refunds, and the evidence."""
    body = [
        f"<tr><td>{utc(s['at'])}</td>"
        + (f"<td>{who(s['provider_id'])}</td>" if with_provider else "")
        + f"<td>{escape(s['model'])}</td><td>{escape(s['reason'])}</td>"
        f'<td class="num">{format_tokens(s["slashed_units"])}</td>'
        f'<td class="num">{format_tokens(s["refunded_units"])}</td>'
        f"<td>{evidence(s['reference'])}</td></tr>"
        for s in rows
    ]
    head = ["when", *(["provider"] if with_provider else []), "model", "reason",
            "stake taken", "refunded to consumers", "evidence"]  # fmt: skip
    return table(head, body, "nobody has been slashed", "slashes")
