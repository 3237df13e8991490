"""The network-wide lists: models, economics with the price index, claims, audits,
slashes and uptime epochs.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

from tessera.explorer.frame import (
    audit_table,
    card,
    framed,
    pcts,
    ratio,
    share,
    slash_table,
    table,
    utc,
)
from tessera.units import format_tokens


def model_href(name: str) -> str:
    """A model's page (names may hold '/', as Hugging Face names do)."""
    return "/explorer/models/" + quote(name, safe="/")


MODEL_ROWS = 100  # providers shown per model on the page (the JSON and CSV have all)


def models_page(snapshot: dict[str, Any], models: list[dict[str, Any]]) -> str:
    """Per model, every provider serving it: price, region, uptime over three windows,
    latency and throughput percentiles with sample sizes (measured apart from declared)."""
    sections = []
    for m in models:
        name = escape(m["model"])
        median = m["median_price_output_per_mtok"]
        rows = [model_provider_tr(p) for p in m["providers"][:MODEL_ROWS]]
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
            f'<section data-model="{name}"><h2 id="{name}">'
            f'<a href="{escape(model_href(m["model"]))}">{name}</a></h2>'
            f"<p>{'audited: its weights are pinned in the catalog' if m['audited'] else 'not audited'}; "
            f'<span data-k="models.{name}.providers_online">{m["providers_online"]}</span> '
            f"providers online of {m['providers_seen']} seen; median output price "
            f"{'—' if median is None else format_tokens(median)} per 1M tokens.</p>"
            + table(head, rows, "no provider", f"providers-{name}")
            + "</section>"
        )
    body = "".join(sections) or '<p class="na">no provider has announced a model yet</p>'
    return framed(
        "Models",
        'data-page="models"',
        '<a href="/explorer/api/v1/models">JSON</a> '
        '<a href="/explorer/api/v1/models?format=csv">CSV</a>',
        f"<h1>Models</h1><p>as of {utc(snapshot['as_of'])} (snapshot "
        f"{snapshot['version']}). Uptime is the share of this gateway's checks (one per "
        "snapshot) that found the provider connected.</p>" + body,
        live=True,
    )


def model_provider_tr(p: dict[str, Any]) -> str:
    measured = p["measured"]
    status_cls = {"routable": "ok", "offline": "bad"}.get(p["status"], "na")
    uptime = " / ".join(share(p["uptime"][w]) for w in ("5m", "30m", "24h"))
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
        f'<td class="num">{none if measured is None else pcts(measured["ttft_ms"])}</td>'
        f'<td class="num">{none if measured is None else pcts(measured["tokens_per_s"])}</td>'
        "</tr>"
    )


def economics_page(eco: dict[str, Any]) -> str:
    """Supply, stake, fees, pools, escrow, the invariant, the policy and the price index."""
    ledger = eco["ledger"]
    stake = eco["stake"]
    paid = eco["paid_by_consumers"]
    cards = [
        card("stake bonded", "stake.bonded", format_tokens(stake["bonded"]),
              f"{format_tokens(stake['bonded_online'])} by providers online"),
        card("paid by consumers, 24 h", "paid_by_consumers.24h", format_tokens(paid["24h"]),
              f"30 d {format_tokens(paid['30d'])}"),
    ]  # fmt: skip
    if ledger is not None:
        cards += [
            card("minted supply", "ledger.minted", format_tokens(ledger["minted"]), "tokens"),
            card("protocol fees", "ledger.fees", format_tokens(ledger["fees"]), "tokens"),
            card("verification pool", "ledger.verification_pool",
                  format_tokens(ledger["verification_pool"]), "pays auditors"),
            card("insurance pool", "ledger.insurance_pool",
                  format_tokens(ledger["insurance_pool"]), "covers refunds"),
            card("escrow open", "ledger.escrow_open", format_tokens(ledger["escrow_open"]),
                  "held for running requests"),
            card("ledger invariant", "ledger.holds", "holds" if ledger["holds"] else "BROKEN",
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
            + table(
                ["reason", "stake taken", "ban", "what triggers it"], rules, "no rules", "slashing"
            )
        )
    return framed(
        "Economics",
        'data-page="economics"',
        '<a href="/explorer/api/v1/economics">JSON</a>',
        f"<h1>Economics</h1><p>as of {utc(eco['as_of'])} (snapshot {eco['version']}); "
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
        + table(head, rows, "no model is served now", "price-index")
    )


def claims_page(claims: dict[str, Any]) -> str:
    rows = [
        f'<tr data-claim="{i}"><td>{escape(c["claim"])}</td>'
        f'<td class="{"na" if c["value"] is None else ""}" data-k="claims.{i}.shown">'
        f"{escape(c['shown'])}</td><td>{escape(c['window'])}</td>"
        f"<td>{'—' if c['samples'] is None else c['samples']}</td>"
        f"<td>{escape(c['source'])}</td><td>{escape(c['formula'])}</td>"
        f'<td><a href="{escape(c["data"])}">data</a></td>'
        f"<td><code>{escape(c['simulation']['command'])}</code></td></tr>"
        for i, c in enumerate(claims["data"])
    ]
    head = ["claim", "live value", "window", "n", "source", "formula", "data",
            "at a million providers"]  # fmt: skip
    return framed(
        "Claims",
        'data-page="claims"',
        '<a href="/explorer/api/v1/claims">JSON</a>',
        f"<h1>Claims, checked live</h1><p>as of {utc(claims['as_of'])} (snapshot "
        f"{claims['version']}). Each claim the network makes, its value now, and how it is "
        "computed from the public data linked beside it, and the simulator scenario that "
        "tests it at a million providers (the gateway's own routing, audit and ledger "
        "code over a modelled fleet: <code>tessera sim NAME</code>).</p>"
        + table(head, rows, "no claims", "claims"),
        live=True,
    )


def audits_page(snapshot: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    month = snapshot["windows"]["30d"]["kpis"]
    return framed(
        "Audits",
        'data-page="audits"',
        '<a href="/explorer/api/v1/audits">JSON</a> '
        '<a href="/explorer/api/v1/audits?format=csv">CSV</a>',
        f'<h1>Audits</h1><p>In 30 days: <span data-k="audits.passed">'
        f'{month["audits_passed"]}</span> passed, <span data-k="audits.failed">'
        f"{month['audits_failed']}</span> failed. The newest {len(rows)} closed cases since "
        "this gateway started; each links to its evidence (the audit case with every "
        "re-run and its numbers).</p>" + audit_table(rows, with_provider=True),
        live=True,
    )


def slashes_page(snapshot: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    month = snapshot["windows"]["30d"]["kpis"]
    return framed(
        "Slashes",
        'data-page="slashes"',
        '<a href="/explorer/api/v1/slashes">JSON</a> '
        '<a href="/explorer/api/v1/slashes?format=csv">CSV</a>',
        f'<h1>Slashes</h1><p>In 30 days: <span data-k="slashes.count">{month["slashes"]}'
        f"</span> slashes took {format_tokens(month['slashed_units'])} tokens of stake and "
        f"refunded {format_tokens(month['refunded_units'])} to consumers. The rules are on "
        '<a href="/explorer/economics">economics</a>.</p>' + slash_table(rows, with_provider=True),
        live=True,
    )


def epochs_page(snapshot: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    body = [
        f'<tr data-epoch="{e["epoch_start"]}"><td>{utc(e["epoch_start"])}</td>'
        f'<td class="num">{e["epoch_s"]}</td><td class="num">{e["providers"]}</td>'
        f'<td class="num ok">{e["met"]}</td>'
        f'<td class="num {"bad" if e["breached"] else ""}">{e["breached"]}</td>'
        f'<td class="num">{ratio(e["met_share"])}</td><td class="num">{format_tokens(e["slashed_units"])}</td></tr>'
        for e in rows
    ]
    head = ["epoch start", "length s", "providers judged", "met SLA", "breached", "met",
            "stake taken"]  # fmt: skip
    return framed(
        "Uptime epochs",
        'data-page="epochs"',
        '<a href="/explorer/api/v1/epochs">JSON</a> '
        '<a href="/explorer/api/v1/epochs?format=csv">CSV</a>',
        f"<h1>Uptime epochs</h1><p>as of {utc(snapshot['as_of'])}. At the end of each "
        "epoch every provider seen in it is judged against the uptime it declared (its SLA); "
        "a breach takes the slashing table's downtime share of its stake. Each provider's "
        "epochs are on its page.</p>" + table(head, body, "no epoch has closed yet", "epochs"),
        live=True,
    )
