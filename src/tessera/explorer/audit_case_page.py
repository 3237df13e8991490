"""One audit case as evidence a stranger can read: what was checked, by whom, which rules
failed and by how much, and what it cost the provider (stake taken, consumers refunded).

The same numbers are in its JSON twin, which is also the evidence bundle to keep."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from tessera.explorer.frame import framed, slash_table, table, who
from tessera.explorer.network_pages import model_href
from tessera.units import format_tokens

# What each case status means, in the words a visitor needs.
STATUS_MEANING = {
    "passed": "the audit re-ran the request and the provider's answer matched",
    "upheld": "auditors found the answer did not come from the announced model; the "
    "provider was slashed and the consumer refunded",
    "cleared": "one auditor disagreed, more auditors were asked, and they cleared the provider",
    "inconclusive": "no auditor could give a verdict (none answered, or their answers did "
    "not fit the audit); nothing was decided against anyone",
    "open": "auditors are still being asked",
}
OUTCOME_CLASS = {"passed": "ok", "failed": "bad"}


def audit_case_page(detail: dict[str, Any]) -> str:
    case = detail["case"]
    rid = escape(case["request_id"])
    status = case["status"]
    request = detail["request"]
    request_link = (
        f'<a href="/explorer/requests/{rid}"><code>{rid}</code></a>'
        if request is not None
        else f'<code>{rid}</code> <span class="na">(no longer on this gateway\'s request '
        "pages)</span>"
    )
    facts = [
        ("outcome", f'<span class="{_status_class(status)}">{escape(status)}</span>: '
                    f"{escape(STATUS_MEANING.get(status, ''))}", "case.status"),
        ("reason", escape(case["reason"] or "—"), "case.reason"),
        ("request", request_link, ""),
        ("provider", who(case["provider_id"]), ""),
        ("model", f'<a href="{escape(model_href(case["model"]))}">{escape(case["model"])}</a>',
         ""),
        ("opened", escape(case["opened_at"]), "case.opened_at"),
        ("closed", escape(case["closed_at"] or "not yet"), "case.closed_at"),
        ("stake taken", f"{format_tokens(case['slashed'])} tokens", "case.slashed"),
        ("refunded to the consumer", f"{format_tokens(case['refunded'])} tokens",
         "case.refunded"),
    ]  # fmt: skip
    rows = "".join(
        f"<tr><th>{escape(name)}</th><td"
        + (f' data-k="{key}"' if key else "")
        + f">{value}</td></tr>"
        for name, value, key in facts
    )
    audits = "".join(_audit(a) for a in case["audits"]) or (
        '<p class="na">no auditor has answered yet</p>'
    )
    return framed(
        f"Audit case {rid}",
        f'data-page="audit-case" data-request="{rid}"',
        f'<a href="/explorer/api/v1/audits/{rid}">JSON (evidence bundle)</a>',
        f"<h1>Audit case <code>{rid}</code></h1>"
        "<p>An audit sends the same request to other providers serving the same pinned "
        "weights and compares their answers with the provider's, token by token (log-"
        "probabilities, ranks, lengths, token counts), within the tolerances the catalog "
        "pins for the model. Two of three auditors failing it upholds the case. Never the "
        "prompt or the answer: only numbers and hashes.</p>"
        f'<div class="scroll"><table id="facts">{rows}</table></div>'
        f"<h2>Audits</h2>{audits}"
        f"<h2>Slashes citing this case</h2>{slash_table(detail['slashes'], False)}",
    )


def _status_class(status: str) -> str:
    return {"passed": "ok", "cleared": "ok", "upheld": "bad"}.get(status, "na")


def _audit(audit: dict[str, Any]) -> str:
    """One auditor's answer: its outcome, the rules that failed, the numbers, the raw JSON."""
    evidence = audit["evidence"]
    verdict = evidence.get("verdict") or {}
    findings = [
        f'<tr><td>{escape(str(f.get("check")))}</td><td class="num">{escape(str(f.get("choice")))}'
        f'</td><td class="num">{escape(str(f.get("position", "—")))}</td>'
        f"<td>{escape(str(f.get('detail')))}</td></tr>"
        for f in verdict.get("findings", [])
    ]
    stats = [
        f'<tr><td>{escape(str(k))}</td><td class="num">{escape(_number(v))}</td></tr>'
        for k, v in sorted((verdict.get("stats") or {}).items())
    ]
    problem = evidence.get("problem")
    outcome = audit["outcome"]
    return (
        f'<section class="audit" data-round="{audit["round"]}">'
        f"<h3>Round {audit['round']}: auditor {who(audit['auditor_id'])}, "
        f'<span class="{OUTCOME_CLASS.get(outcome, "na")}">{escape(outcome)}</span>'
        + (f" ({escape(audit['reason'])})" if audit["reason"] else "")
        + f" at {escape(audit['created_at'])}</h3>"
        + (f'<p class="na">no verdict: {escape(str(problem))}</p>' if problem else "")
        + (table(["check", "choice", "token position", "what differed"], findings,
                 "no rule failed", "") if verdict else "")
        + (table(["measure", "value"], stats, "", "") if stats else "")
        + "<details><summary>the auditor's answer, as stored</summary><pre>"
        + escape(json.dumps(evidence, indent=1, sort_keys=True)[:20_000])
        + "</pre></details></section>"
    )  # fmt: skip


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
