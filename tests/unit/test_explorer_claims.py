"""The price index and the claims page: comparisons only at a declared exchange rate,
cheapest reference first, and a claim without enough data says so instead of a number."""

from __future__ import annotations

from decimal import Decimal

from tessera.explorer.claims import claims
from tessera.explorer.price_index import load_references, price_index
from tessera.explorer.rollups import Rollups, TapeRow
from tessera.sim.scenario import load

REFERENCES = load_references(
    """{"as_of": "2025-01-15", "entries": [
    {"vendor": "A", "model": "big", "kind": "chat", "input": "2", "output": "10", "source": "x"},
    {"vendor": "B", "model": "small", "kind": "chat", "input": "0.2", "output": "0.6",
     "source": "y"},
    {"vendor": "C", "model": "emb", "kind": "embedding", "input": "0.02", "output": "0",
     "source": "z"}]}"""
)


def provider(status: str, pin: int, pout: int) -> dict[str, object]:
    return {"status": status, "price_input_per_mtok": pin, "price_output_per_mtok": pout}


MODELS = [
    {
        "model": "tessera-tiny",
        "kind": "chat",
        "providers": [
            provider("routable", 100_000_000, 300_000_000),  # 0.1 / 0.3 tokens per 1M
            provider("routable", 200_000_000, 400_000_000),
            provider("offline", 1, 1),  # offline: not in the median
        ],
    },
    {"model": "gone", "kind": "chat", "providers": [provider("offline", 1, 1)]},
]


def test_the_index_compares_only_at_a_declared_rate() -> None:
    index = price_index(MODELS, REFERENCES, None)
    (row,) = index["data"]  # a model nobody serves now has no price
    assert row["median_price_input_per_mtok"] == 200_000_000
    assert row["usd_per_mtok_blended"] is None
    assert [r["cheaper_by_percent"] for r in row["references"]] == [None, None]
    assert index["rate"] == "none declared"
    priced = price_index(MODELS, REFERENCES, Decimal("1"))
    (row,) = priced["data"]
    # Blended 3:1 — ours (3 * 0.2 + 0.4) / 4 = 0.25 USD; B's (0.6 + 0.6) / 4 = 0.3 USD.
    assert Decimal(row["usd_per_mtok_blended"]) == Decimal("0.25")
    cheapest = row["references"][0]
    assert cheapest["vendor"] == "B"
    assert cheapest["cheaper_by_percent"] == round((1 - 0.25 / 0.3) * 100, 2)
    assert priced["references_as_of"] == "2025-01-15"


def test_claims_say_insufficient_data_rather_than_a_number() -> None:
    rollups = Rollups()
    now = 1_780_000_000.0
    snapshot = {
        "windows": {w: rollups.summary(now, w) for w in ("24h", "30d")},
        "network": {
            "providers_routable": 0,
            "providers_online": 0,
            "declared": {"gpu_count": 0},
        },
        "ledger": {"holds": True, "problems": []},
    }
    out = {
        c["claim"]: c for c in claims(snapshot, (None, 0), price_index(MODELS, REFERENCES, None))
    }
    rate = out["Requests that succeed"]
    assert rate["value"] is None and rate["shown"] == "insufficient data (n=0)"
    assert out["Provider uptime"]["value"] is None
    assert out["Every token is accounted for"]["value"] is True
    assert out["Cheaters are caught within N requests"]["shown"] == "no cheater caught yet"
    cheaper = out["tessera-tiny is cheaper than the hyperscalers"]
    assert cheaper["value"] is None and "no exchange rate" in cheaper["shown"]
    for i in range(6):
        rollups.request(
            TapeRow(f"r{i}", now - i, "m", "p", "ok" if i else "error", 1, 1, 1, 10.0, 5.0)
        )
    snapshot["windows"] = {w: rollups.summary(now, w) for w in ("24h", "30d")}
    index = price_index(MODELS, REFERENCES, Decimal("1"))
    out = {c["claim"]: c for c in claims(snapshot, (0.9, 300), index, [12, 3, 40])}
    caught = out["Cheaters are caught within N requests"]
    assert caught["value"] == 40 and "median 12" in caught["shown"]
    assert out["Requests that succeed"]["value"] == round(5 / 6, 4)
    assert out["Provider uptime"]["shown"] == "90.00 %"
    assert "cheaper than B small" in out["tessera-tiny is cheaper than the hyperscalers"]["shown"]


def test_each_claim_names_a_simulator_scenario_that_exists() -> None:
    rollups = Rollups()
    now = 1_780_000_000.0
    snapshot = {
        "windows": {w: rollups.summary(now, w) for w in ("24h", "30d")},
        "network": {"providers_routable": 0, "providers_online": 0, "declared": {"gpu_count": 0}},
        "ledger": {"holds": True, "problems": []},
    }
    out = claims(snapshot, (None, 0), price_index(MODELS, REFERENCES, None))
    for claim in out:
        scenario = claim["simulation"]["scenario"]
        assert load(scenario).name == scenario  # the file ships and parses
        assert claim["simulation"]["command"].startswith(f"tessera sim {scenario}")
    by_claim = {c["claim"]: c["simulation"]["scenario"] for c in out}
    assert by_claim["Cheaters are caught within N requests"] == "cheaters"
    assert by_claim["Requests that succeed"] == "churn"
