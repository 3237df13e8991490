"""Why a provider gets no work: its own state, and what recent requests asked for.

A provider cannot see the requests it lost. The gateway keeps the routing requests of the
last few hundred consumer requests per model (their policies, never their prompts) and
replays them against one provider: each that would have excluded it is counted under the
first constraint it failed. Together with the provider's own state (connected, staked,
model status, breaker, load) that answers "why am I idle?" in plain words.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

from tessera.market.registry import ROUTABLE, LiveProvider, shape_of
from tessera.market.routing import RouteRequest
from tessera.protocol.wire import ModelOffer

RECENT_PER_MODEL = 200
STATUS_WORDS = {
    "challenge": "waiting for the join challenge to finish",
    "challenge_failed": "failed the join challenge: its outputs do not match the model",
    "weights_mismatch": "its weights hash differs from the one the catalog pins",
    "banned": "banned from this model after upheld audit failures",
    "leaving": "said goodbye (shutting down): gets no new work",
}


class RecentRequests:
    """The last routing requests per model (bounded; policies only)."""

    def __init__(self, per_model: int = RECENT_PER_MODEL) -> None:
        self.per_model = per_model
        self._by_model: dict[str, deque[RouteRequest]] = {}

    def add(self, request: RouteRequest) -> None:
        queue = self._by_model.get(request.model)
        if queue is None:
            queue = self._by_model[request.model] = deque(maxlen=self.per_model)
        queue.append(request)

    def of(self, model: str) -> list[RouteRequest]:
        return list(self._by_model.get(model, ()))


@dataclass(frozen=True, slots=True)
class ModelDiagnosis:
    model: str
    status: str
    reasons: list[str]
    excluded_by: dict[str, int]  # constraint -> recent requests it excluded this provider
    eligible_for: int  # recent requests this provider passed every constraint of
    recent: int

    def public(self) -> dict[str, object]:
        return {
            "model": self.model,
            "status": self.status,
            "reasons": self.reasons,
            "recent_requests": self.recent,
            "eligible_for": self.eligible_for,
            "excluded_by": self.excluded_by,
        }


def diagnose(
    provider: LiveProvider,
    model: str,
    recent: Iterable[RouteRequest],
    bonded: int,
    required: int,
    now: float,
    network_offer: ModelOffer | None = None,
) -> ModelDiagnosis:
    """Why ``provider`` does (or does not) get ``model`` requests, in words and counts.

    ``network_offer`` is the model as most of its providers announce it
    (``ProviderRegistry.offer``); an offer of another shape is not routed.
    """
    reasons: list[str] = []
    status = provider.status.get(model, ROUTABLE)
    if status != ROUTABLE:
        reasons.append(f"not routed: {STATUS_WORDS.get(status, status)}")
    own = provider.offers[model]
    if network_offer is not None and shape_of(own) != shape_of(network_offer):
        reasons.append(
            f"not routed: it announces '{model}' as {_shape_words(own)}, but most providers "
            f"of '{model}' serve it as {_shape_words(network_offer)}"
        )
    if bonded < required:
        reasons.append(f"not staked: {bonded} base units bonded, {required} required to get work")
    health = provider.health
    if not health.admits(now):
        reasons.append(
            f"circuit breaker open for {max(health.open_until - now, 0):.0f}s after "
            f"{health.failures_in_row} failure(s) in a row (last: {health.last_failure})"
        )
    if provider.free_slots <= 0:
        reasons.append(f"at capacity: {provider.active_jobs} of {provider.max_concurrent_jobs}")
    offer = provider.offers[model]
    excluded: Counter[str] = Counter()
    eligible = 0
    requests = list(recent)
    for request in requests:
        failing = next((f for f in request.policy.filters if not f.test(provider, offer)), None)
        if failing is None:
            eligible += 1
        else:
            excluded[failing.name] += 1
    words = {
        "max_price": "its price is above what {n} recent request(s) allowed (provider.max_price)",
        "regions_allow": "its region {region} is outside what {n} recent request(s) allowed",
        "regions_deny": "its region {region} is denied by {n} recent request(s)",
        "data_collection": "{n} recent request(s) wanted providers that declare no retention",
        "min_reputation": "its reputation {rep:.2f} is below what {n} recent request(s) required",
        "only": "{n} recent request(s) named only other providers",
        "order": "{n} recent request(s) named other providers, without fallbacks",
        "ignore": "{n} recent request(s) ignored it by name",
    }
    for name, count in excluded.most_common():
        template = words.get(name, "{n} recent request(s) excluded it by " + name)
        reasons.append(
            template.format(n=count, region=provider.capabilities.region, rep=provider.reputation)
        )
    return ModelDiagnosis(model, status, reasons, dict(excluded), eligible, len(requests))


def _shape_words(offer: ModelOffer) -> str:
    if offer.kind == "embedding":
        return f"an embedding model of {offer.embedding_dimensions} dimensions"
    return "a text model"
