"""The explorer's lists as CSV: nested parts of a row joined into one line, columns in
the first row's order (every list answers ``?format=csv`` with these)."""

from __future__ import annotations

import csv
import io
from typing import Any


def flat_provider(row: dict[str, Any]) -> dict[str, Any]:
    """A providers-list row as one CSV line (nested parts joined)."""
    measured = row["measured"] or {}
    return {
        "provider_id": row["provider_id"],
        "label": row["label"],
        "status": row["status"],
        "region": row["region"],
        "gpus": ";".join(row["declared"]["gpus"]),
        "models": ";".join(m["model"] for m in row["declared"]["models"]),
        "bonded": row["bonded"],
        "reputation": row["reputation"],
        "uptime_24h": (row.get("uptime_24h") or {}).get("uptime"),
        "requests": measured.get("requests", 0),
        "success_rate": measured.get("success_rate"),
        "ttft_p50_ms": measured.get("ttft_p50_ms"),
        "cost": measured.get("cost", 0),
    }


def flat_model(model: dict[str, Any]) -> list[dict[str, Any]]:
    """A model's providers as CSV lines: one per (model, provider)."""
    lines = []
    for p in model["providers"]:
        measured = p["measured"] or {}
        ttft = measured.get("ttft_ms") or {}
        tps = measured.get("tokens_per_s") or {}
        lines.append(
            {
                "model": model["model"],
                "audited": model["audited"],
                "provider_id": p["provider_id"],
                "status": p["status"],
                "region": p["region"],
                "price_input_per_mtok": p["price_input_per_mtok"],
                "price_output_per_mtok": p["price_output_per_mtok"],
                **{f"uptime_{w}": p["uptime"][w]["uptime"] for w in ("5m", "30m", "24h")},
                "uptime_checks_24h": p["uptime"]["24h"]["checks"],
                "requests": measured.get("requests", 0),
                **{f"ttft_{q}_ms": ttft.get(q) for q in ("p50", "p75", "p90", "p99")},
                "ttft_samples": ttft.get("samples", 0),
                **{f"tokens_per_s_{q}": tps.get(q) for q in ("p50", "p75", "p90", "p99")},
                "tokens_per_s_samples": tps.get("samples", 0),
            }
        )
    return lines


def to_csv(rows: list[dict[str, Any]]) -> str:
    """A list of flat dicts as CSV, columns in the first row's order."""
    out = io.StringIO()
    if not rows:
        return ""
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()
