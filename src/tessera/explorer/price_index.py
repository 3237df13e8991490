"""The price index: each model's network price against a dated list of hyperscaler and API
list prices kept in the repository (``reference_prices.json``).

Network prices are in tokens (base units per 1M tokens); a comparison in dollars needs an
exchange rate, which is *declared* by the operator (``explorer_token_usd``), never
invented: without one the index shows token prices and says it cannot compare.

Pure: the caller passes the models (as the explorer's models list has them), the reference
list and the rate. Dollar amounts are Decimals (display only: no money moves here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any

from tessera.ledger.accounts import TOKEN

# A model's kind -> the reference kind it is compared with.
KIND_OF = {"chat": "chat", "completion": "chat", "text": "chat", "embedding": "embedding"}


@dataclass(frozen=True, slots=True)
class Reference:
    vendor: str
    model: str
    kind: str  # chat | embedding
    input: Decimal  # USD per 1M tokens
    output: Decimal
    source: str


@dataclass(frozen=True, slots=True)
class ReferenceList:
    as_of: str
    entries: tuple[Reference, ...]


def load_references(text: str | None = None) -> ReferenceList:
    """The list shipped with the explorer (or ``text``, in the same shape)."""
    if text is None:
        text = resources.files("tessera.explorer").joinpath("reference_prices.json").read_text()
    data = json.loads(text)
    entries = tuple(
        Reference(
            vendor=e["vendor"],
            model=e["model"],
            kind=e["kind"],
            input=Decimal(e["input"]),
            output=Decimal(e["output"]),
            source=e["source"],
        )
        for e in data["entries"]
    )
    return ReferenceList(as_of=data["as_of"], entries=entries)


def blended(input_price: Decimal, output_price: Decimal, kind: str) -> Decimal:
    """One number per price: embeddings bill input only; text is weighted 3 input tokens
    to 1 output token, the usual blend for chat traffic."""
    if kind == "embedding":
        return input_price
    return (3 * input_price + output_price) / 4


def usd(base_units: int, token_usd: Decimal) -> Decimal:
    return Decimal(base_units) / TOKEN * token_usd


def price_index(
    models: list[dict[str, Any]], references: ReferenceList, token_usd: Decimal | None
) -> dict[str, Any]:
    """Per model: the median price of its online providers, in tokens and (with a declared
    rate) in dollars, against every reference of its kind, cheapest reference first."""
    rows = []
    for model in models:
        kind = KIND_OF.get(model.get("kind") or "chat", "chat")
        live = [p for p in model["providers"] if p["status"] != "offline"]
        if not live:
            continue
        ins = sorted(p["price_input_per_mtok"] for p in live)
        outs = sorted(p["price_output_per_mtok"] for p in live)
        median_in, median_out = ins[len(ins) // 2], outs[len(outs) // 2]
        ours = None
        if token_usd is not None:
            ours = blended(usd(median_in, token_usd), usd(median_out, token_usd), kind)
        comparisons = []
        for ref in sorted(
            (r for r in references.entries if r.kind == kind),
            key=lambda r: blended(r.input, r.output, kind),
        ):
            theirs = blended(ref.input, ref.output, kind)
            saving = None
            if ours is not None and theirs > 0:
                saving = float((1 - ours / theirs) * 100)
            comparisons.append(
                {
                    "vendor": ref.vendor,
                    "model": ref.model,
                    "usd_per_mtok_blended": str(theirs),
                    "source": ref.source,
                    "cheaper_by_percent": None if saving is None else round(saving, 2),
                }
            )
        rows.append(
            {
                "model": model["model"],
                "kind": kind,
                "providers_online": len(live),
                "median_price_input_per_mtok": median_in,
                "median_price_output_per_mtok": median_out,
                "usd_per_mtok_blended": None if ours is None else str(ours),
                "references": comparisons,
            }
        )
    return {
        "references_as_of": references.as_of,
        "token_usd": None if token_usd is None else str(token_usd),
        "rate": "declared by the operator" if token_usd is not None else "none declared",
        "blend": "3 input : 1 output tokens (embeddings: input only)",
        "data": rows,
    }
