"""One request's page and the receipt check that runs in the visitor's browser."""

from __future__ import annotations

from html import escape
from typing import Any

from tessera.explorer.frame import framed, table, utc
from tessera.units import format_tokens


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
        ("finished", utc(row["at"]), ""),
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
    return framed(
        f"Request {rid}",
        f'data-page="request" data-request="{rid}"',
        f'<a href="/explorer/api/v1/requests/{rid}">JSON</a>',
        f"<h1>Request <code>{rid}</code></h1>"
        f"<p>as of {utc(detail['as_of'])}. Never the prompt or the answer: only counts, "
        "prices, times and hashes.</p>"
        f'<div class="scroll"><table id="facts">{rows}</table></div>'
        f"<h2>Escrow entries</h2>{_entries(detail['entries'])}"
        + receipt_checker(detail["gateway"], row["request_id"]),
    )


def receipts_page(gateway: dict[str, str] | None) -> str:
    """The receipt check alone: for any receipt, however old."""
    return framed(
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
        f'<a href="/explorer/audits/{escape(audit["request_id"])}">evidence</a>'
    )


def _entries(entries: list[dict[str, Any]] | None) -> str:
    if entries is None:
        return '<p class="na">this gateway keeps no journal (a replica): ask its owner</p>'
    rows = [
        f"<tr><td>{e['entry_id']}</td><td>{escape(e['kind'])}</td><td>{utc(e['at'])}</td>"
        "<td>"
        + "<br>".join(
            f"{escape(p['account'])} {'+' if p['amount'] > 0 else ''}{format_tokens(p['amount'])}"
            for p in e["postings"]
        )
        + "</td></tr>"
        for e in entries
    ]
    return table(["entry", "kind", "at", "postings (tokens)"], rows, "no entries", "entries")
