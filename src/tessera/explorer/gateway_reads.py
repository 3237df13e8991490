"""What the explorer reads of the running gateway: a connected provider's public view,
its offers and live record (reputation, ledger account, routing, uptime), a request's
escrow entries with consumers masked, the gateway's identity and the ledger's totals.

Every function takes the gateway object and reads it; none keeps state."""

from __future__ import annotations

from typing import Any

from tessera.explorer.snapshot import LedgerView, ProviderView
from tessera.gateway.liveness_routes import current_view, epoch_view
from tessera.gateway.status_routes import status_view
from tessera.verify.reputation import FORMULA as REPUTATION_FORMULA

EPOCHS_SHOWN = 48  # uptime epochs on a provider's page
# Accounts a request's entries may name that belong to a consumer: shown as "consumer".
CONSUMER_KINDS = frozenset({"balance", "hold", "withdrawing"})


def same_key(old: tuple[Any, ...], new: tuple[Any, ...]) -> bool:
    """The card and status by identity (both are replaced, never changed in place), the
    numbers by value."""
    return (
        old[0] is new[0]
        and old[1] is new[1]
        and old[2] == new[2]
        and old[3] == new[3]
        and old[4] == new[4]
    )


def provider_view(live: Any, bonded: int) -> ProviderView:
    card = live.capabilities
    return ProviderView(
        provider_id=live.provider_id,
        label=card.label,
        region=card.region,
        gpus=tuple(g.name for g in card.hardware.gpus),
        models=tuple(m.name for m in card.models),
        routable=any(status == "routable" for status in live.status.values())
        or (not live.status and bool(card.models)),
        active_jobs=live.active_jobs,
        max_concurrent_jobs=card.max_concurrent_jobs,
        statuses=tuple(sorted(live.status.items())),
        prices=tuple(
            (m.name, m.price_input_per_mtok, m.price_output_per_mtok) for m in card.models
        ),
        weights=tuple((m.name, m.kind, m.weights_sha256) for m in card.models),
        bonded=bonded,
        reputation=round(float(live.reputation), 4),
        agent_version=card.agent_version,
        connected_at=live.connected_at,
    )


def offers_of(view: ProviderView, gateway: Any) -> list[dict[str, Any]]:
    """The models a provider announced, with weight hashes, prices and whether the
    network audits them (pinned in the catalog with the same weights)."""
    catalog = None if gateway is None else gateway.verifier.catalog
    prices = {model: (pin, pout) for model, pin, pout in view.prices}
    offers = []
    for model, kind, weights in view.weights:
        pinned = None if catalog is None else catalog.get(model)
        pin, pout = prices.get(model, (0, 0))
        offers.append(
            {
                "model": model,
                "kind": kind,
                "weights_sha256": weights,
                "price_input_per_mtok": pin,
                "price_output_per_mtok": pout,
                "audited": pinned is not None and pinned.weights_sha256 == weights,
                "status": dict(view.statuses).get(model),
            }
        )
    return offers


async def live_parts(gateway: Any, provider_id: str) -> dict[str, Any]:
    """What the gateway knows of a provider now: reputation with its formula, ledger
    account, why it is (not) routed, and uptime per epoch against its SLA."""
    reputation = gateway.verifier.reputation.get(provider_id).public()
    keeper = gateway.bookkeeper
    ledger = None
    if keeper is not None:
        account = keeper.book.provider(provider_id)
        ledger = {
            "earnings": account.earnings,
            "balance": account.balance,
            "bonded": account.bonded,
            "unbonding": sum(t.amount for t in account.unbonding),
        }
    routing = await status_view(gateway, provider_id, uptime_epochs=EPOCHS_SHOWN)
    summary = None if routing is None else routing.pop("uptime", None)
    uptime = None
    if summary is not None:
        uptime = {
            "epoch_s": summary.epoch_s,
            "current": current_view(summary.current),
            "epochs": [epoch_view(row) for row in summary.epochs],
        }
    return {
        "reputation": {**reputation, "formula": list(REPUTATION_FORMULA)},
        "ledger": ledger,
        "routing": routing,
        "uptime": uptime,
    }


def public_entry(entry: Any, provider_id: str | None) -> dict[str, Any]:
    """A journal entry as anyone may see it: amounts and the provider's and system
    accounts by name, a consumer's accounts only as ``consumer`` (a request id must not
    reveal whose it was)."""
    postings = []
    for posting in entry.postings:
        kind = posting.account.kind.value
        owner = posting.account.owner
        if kind in CONSUMER_KINDS and owner != provider_id:
            owner = "consumer"
        postings.append({"account": f"{kind}:{owner}" if owner else kind, "amount": posting.amount})
    return {"entry_id": entry.entry_id, "kind": entry.kind, "at": entry.at, "postings": postings}


def gateway_identity_of(gateway: Any) -> dict[str, str]:
    return {"id": gateway.settings.gateway_id, "public_key": gateway.verifier.public_key}


def ledger_view(gateway: Any) -> LedgerView | None:
    keeper = gateway.bookkeeper
    if keeper is None:  # a replica: the owner's explorer shows the ledger
        return None
    book = keeper.book
    system = book.system()
    return LedgerView(
        minted=system["minted"],
        fees=system["fees"],
        verification_pool=system["verification_pool"],
        insurance_pool=system["insurance_pool"],
        escrow_open=sum(h.amount for h in book.open_holds()),
        problems=tuple(book.check()),
    )
