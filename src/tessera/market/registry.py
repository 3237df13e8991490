"""The live provider registry: who is connected, what they serve, how busy they are.

Lives in memory so the hot path never reads a table. The gateway's hub feeds it events
(connect, disconnect, job started, job ended); the router reads it. Invariant: for every
provider, ``0 <= active_jobs <= max_concurrent_jobs``.

A provider is routed for a model only while that model's status is ``routable``: a model
pinned by the catalog starts at ``challenge`` (until the join challenge passes) or
``weights_mismatch``; a ban makes it ``banned``. Only routable models count as served.

Offers are the providers' own words and may disagree: one provider may announce under a
name as text what the others serve as 768-dimension embeddings. Each offer is kept per
provider; a model's *shape* (its kind and, for embeddings, its dimensions) is the one most
of its routed providers announce (ties go to the shape that was there first), and only
providers whose offer has that shape are routed for it, so a minority offer never poisons
the others' requests. The model's public description (``offer``, ``summaries``) is drawn
from the providers of that shape only: its context length is their lower median, its
vocabulary size the most announced among them. A catalog model's providers all hold the
pinned weights and passed its join challenge, so the catalog's pin stands behind it.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from pydantic import BaseModel

from tessera.market.health import ProviderHealth
from tessera.market.regions import UNCHECKED
from tessera.protocol.wire import Capabilities, Hardware, ModelKind, ModelOffer


@dataclass(frozen=True, slots=True)
class ProviderCard:
    """What a provider announced, as the registry keeps it: the fields of its
    ``Capabilities``, with offers and hardware shared among all providers that announced
    the same ones (a fleet has few distinct ones). The parsed message costs about 4 KB a
    provider; this, a few hundred bytes."""

    public_key: str
    agent_version: str
    models: tuple[ModelOffer, ...]
    hardware: Hardware
    region: str
    max_concurrent_jobs: int
    label: str = ""
    no_retention: bool = False
    sla_uptime_bps: int = 0


_Frozen = TypeVar("_Frozen", bound=BaseModel)


class _Shared:
    """One object per distinct value: equal offers and hardware of many providers are
    kept once, for as long as any provider holds them."""

    def __init__(self) -> None:
        self._by_json: weakref.WeakValueDictionary[str, BaseModel] = weakref.WeakValueDictionary()
        self._strings: dict[str, str] = {}
        self._offer_maps: dict[tuple[int, ...], Mapping[str, ModelOffer]] = {}

    def one(self, value: _Frozen) -> _Frozen:
        key = f"{type(value).__name__}:{value.model_dump_json()}"
        kept = self._by_json.get(key)
        if isinstance(kept, type(value)):
            return kept
        self._by_json[key] = value
        return value

    def text(self, value: str) -> str:
        """Short strings many providers repeat (regions, agent versions); never grows
        past a few thousand."""
        kept = self._strings.get(value)
        if kept is not None:
            return kept
        if len(self._strings) < 4096:
            self._strings[value] = value
        return value

    def offers(self, models: tuple[ModelOffer, ...]) -> Mapping[str, ModelOffer]:
        """Model name -> offer, one read-only mapping per set of shared offers."""
        key = tuple(id(offer) for offer in models)  # they stay alive while it is kept
        kept = self._offer_maps.get(key)
        if kept is not None:
            return kept
        made = MappingProxyType({offer.name: offer for offer in models})
        if len(self._offer_maps) < 4096:
            self._offer_maps[key] = made
        return made

    def card(self, caps: Capabilities) -> ProviderCard:
        return ProviderCard(
            public_key=caps.public_key,
            agent_version=self.text(caps.agent_version),
            models=tuple(self.one(offer) for offer in caps.models),
            hardware=self.one(caps.hardware),
            region=self.text(caps.region),
            max_concurrent_jobs=caps.max_concurrent_jobs,
            label=caps.label,
            no_retention=caps.no_retention,
            sla_uptime_bps=caps.sla_uptime_bps,
        )


@dataclass(slots=True)
class LiveProvider:
    """A connected provider; mutable only through the registry."""

    provider_id: str
    capabilities: ProviderCard
    connected_at: float
    active_jobs: int = 0
    # Read-only, and shared by the providers that announced the very same offers.
    offers: Mapping[str, ModelOffer] = field(default_factory=dict)
    # Model name -> routable | challenge | challenge_failed | weights_mismatch | banned.
    # Read-only: the registry replaces it (most providers share one all-routable mapping).
    status: Mapping[str, str] = field(default_factory=dict)
    reputation: float = 0.5  # the verification record's score in [0, 1], for the router
    health: ProviderHealth = field(default_factory=ProviderHealth)  # speed and breaker
    # The handshake's round trip, and whether the declared country fits it (regions.py).
    rtt_ms: float | None = None
    region_check: str = UNCHECKED

    @property
    def max_concurrent_jobs(self) -> int:
        return self.capabilities.max_concurrent_jobs

    @property
    def free_slots(self) -> int:
        return self.max_concurrent_jobs - self.active_jobs

    @property
    def load(self) -> float:
        """Fraction of its declared concurrency in use."""
        return self.active_jobs / self.max_concurrent_jobs


@dataclass(frozen=True, slots=True)
class ModelSummary:
    """What /v1/models shows for one model."""

    name: str
    kind: ModelKind
    providers: int
    context_length: int
    price_input_min: int
    price_input_max: int
    price_output_min: int
    price_output_max: int
    supports_tools: bool
    embedding_dimensions: int | None
    disagreeing: int = 0  # providers announcing the name with another shape (not routed)


_K = TypeVar("_K")

Shape = tuple[ModelKind, int | None]  # (kind, embedding dimensions; None for text)


def shape_of(offer: ModelOffer) -> Shape:
    """What must agree between two offers of one name for them to be the same model."""
    return (offer.kind, offer.embedding_dimensions if offer.kind == "embedding" else None)


@dataclass(slots=True)
class _ShapeStats:
    """The offers of one shape in a pool: how many, and what they say (kept sorted)."""

    count: int = 0
    contexts: list[int] = field(default_factory=list)
    vocabs: dict[int, int] = field(default_factory=dict)  # vocab size -> offers saying it
    without_tools: int = 0
    weights: dict[str, int] = field(default_factory=dict)  # weights hash -> offers


class ModelPool:
    """The providers routed for one model: a list for O(1) random sampling, an index by
    price for ``sort: price``, and per-shape counts that say which offers agree with the
    model's majority shape. Removal swaps the last member into the hole."""

    __slots__ = ("_leader", "_public", "by_price", "index", "members", "name", "shapes", "slots")

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.members: list[LiveProvider] = []
        self.slots = 0  # the members' declared concurrency, summed
        self.index: dict[str, int] = {}
        self.by_price: list[tuple[int, int, str]] = []  # (output, input, provider id)
        self.shapes: dict[Shape, _ShapeStats] = {}  # insertion order breaks count ties
        self._leader: Shape | None = None
        self._public: ModelOffer | None = None  # cached; rebuilt after a change

    def __len__(self) -> int:
        return len(self.members)

    def get(self, provider_id: str) -> LiveProvider | None:
        at = self.index.get(provider_id)
        return None if at is None else self.members[at]

    @property
    def shape(self) -> Shape | None:
        """The shape most members announce (None for an empty pool)."""
        return self._leader

    def fits(self, offer: ModelOffer) -> bool:
        """Whether ``offer`` has the model's majority shape (O(1): the router asks per pick)."""
        return shape_of(offer) == self._leader

    def add(self, live: LiveProvider, offer: ModelOffer) -> None:
        if live.provider_id in self.index:
            return
        self.name = self.name or offer.name
        self.index[live.provider_id] = len(self.members)
        self.members.append(live)
        self.slots += live.max_concurrent_jobs
        bisect.insort(self.by_price, _price_key(live.provider_id, offer))
        stats = self.shapes.get(shape_of(offer))
        if stats is None:
            stats = self.shapes[shape_of(offer)] = _ShapeStats()
        stats.count += 1
        bisect.insort(stats.contexts, offer.context_length)
        if offer.vocab_size is not None:
            stats.vocabs[offer.vocab_size] = stats.vocabs.get(offer.vocab_size, 0) + 1
        stats.without_tools += not offer.supports_tools
        stats.weights[offer.weights_sha256] = stats.weights.get(offer.weights_sha256, 0) + 1
        self._changed()

    def remove(self, provider_id: str, offer: ModelOffer) -> None:
        at = self.index.pop(provider_id, None)
        if at is None:
            return
        self.slots -= self.members[at].max_concurrent_jobs
        last = self.members.pop()
        if last.provider_id != provider_id:
            self.members[at] = last
            self.index[last.provider_id] = at
        key = _price_key(provider_id, offer)
        spot = bisect.bisect_left(self.by_price, key)
        if spot < len(self.by_price) and self.by_price[spot] == key:
            del self.by_price[spot]
        shape = shape_of(offer)
        stats = self.shapes[shape]
        stats.count -= 1
        del stats.contexts[bisect.bisect_left(stats.contexts, offer.context_length)]
        if offer.vocab_size is not None:
            _decrement(stats.vocabs, offer.vocab_size)
        stats.without_tools -= not offer.supports_tools
        _decrement(stats.weights, offer.weights_sha256)
        if stats.count == 0:
            del self.shapes[shape]
        self._changed()

    def _changed(self) -> None:
        # O(distinct shapes), on connects and disconnects only, never per request.
        self._leader = max(self.shapes, key=lambda s: self.shapes[s].count, default=None)
        self._public = None

    def disagreeing(self) -> int:
        """Members whose offer has another shape than the majority's (not routed)."""
        leader = self.shapes.get(self._leader) if self._leader is not None else None
        return len(self.members) - (leader.count if leader is not None else 0)

    def public_offer(self) -> ModelOffer | None:
        """The model as the network describes it: the majority shape's offers summed up.

        Context: the lower median of their context lengths (one provider announcing a
        tiny or huge context moves it by at most one place); vocabulary and weights: the
        value most of them announce; tools: only if all of them support tools. Prices are
        per provider and are 0 here.
        """
        if self._public is not None or self._leader is None:
            return self._public
        kind, dims = self._leader
        stats = self.shapes[self._leader]
        vocab = max(stats.vocabs, key=lambda v: stats.vocabs[v], default=None)
        self._public = ModelOffer(
            name=self.name,
            weights_sha256=max(stats.weights, key=lambda w: stats.weights[w]),
            kind=kind,
            context_length=stats.contexts[(len(stats.contexts) - 1) // 2],
            supports_tools=stats.without_tools == 0,
            embedding_dimensions=dims,
            vocab_size=vocab,
        )
        return self._public


def _decrement(counts: dict[_K, int], key: _K) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def _price_key(provider_id: str, offer: ModelOffer) -> tuple[int, int, str]:
    return (offer.price_output_per_mtok, offer.price_input_per_mtok, provider_id)


class SlotError(RuntimeError):
    """A caller broke the acquire/release contract (a bug, not bad input)."""


ROUTABLE = "routable"


class ProviderRegistry:
    """Connected providers indexed by id and by the models they are routed for."""

    def __init__(self) -> None:
        self._providers: dict[str, LiveProvider] = {}
        self._by_model: dict[str, ModelPool] = {}
        self._known_models: set[str] = set()
        self._awaited: set[str] = set()  # remembered, not yet announced by anyone here
        # Label (case-folded) -> the connected id announcing it, or the set of them when
        # several do (most labels are one provider's: a set each would cost 200 bytes).
        self._labels: dict[str, str | set[str]] = {}
        self._all_routable: dict[tuple[str, ...], Mapping[str, str]] = {}
        # Speed and breaker records outlive connections: reconnecting resets nothing.
        self._health: dict[str, ProviderHealth] = {}
        self._shared = _Shared()

    def __len__(self) -> int:
        return len(self._providers)

    def add(
        self,
        provider_id: str,
        capabilities: Capabilities,
        now: float,
        status: dict[str, str] | None = None,
        rtt_ms: float | None = None,
        region_check: str = UNCHECKED,
    ) -> LiveProvider:
        """Register a provider; replaces an earlier entry with the same id.

        ``status`` gives each model's starting status (default: all routable).
        """
        self.remove(provider_id)
        card = self._shared.card(capabilities)
        offers = self._shared.offers(card.models)
        live = LiveProvider(
            provider_id=provider_id,
            capabilities=card,
            connected_at=now,
            offers=offers,
            status=self._statuses(tuple(offers), status or {}),
            health=self.health(provider_id),
            rtt_ms=rtt_ms,
            region_check=region_check,
        )
        self._providers[provider_id] = live
        label = _label_key(card.label)
        if label:
            holders = self._labels.get(label)
            if holders is None or holders == provider_id:
                self._labels[label] = provider_id
            elif isinstance(holders, set):
                holders.add(provider_id)
            else:
                self._labels[label] = {holders, provider_id}
        for name in live.offers:
            self._known_models.add(name)
            self._awaited.discard(name)
            if live.status[name] == ROUTABLE:
                self._index(name, live)
        return live

    def _statuses(self, names: tuple[str, ...], given: Mapping[str, str]) -> Mapping[str, str]:
        """Each model's starting status; all routable (the usual case) is one shared,
        read-only mapping per set of model names."""
        if any(given.get(name, ROUTABLE) != ROUTABLE for name in names):
            return {name: given.get(name, ROUTABLE) for name in names}
        shared = self._all_routable.get(names)
        if shared is None:
            shared = MappingProxyType(dict.fromkeys(names, ROUTABLE))
            if len(self._all_routable) < 1024:
                self._all_routable[names] = shared
        return shared

    def has_seen(self, provider_id: str) -> bool:
        """Whether this provider ever connected since the gateway started."""
        return provider_id in self._health

    def health(self, provider_id: str) -> ProviderHealth:
        """The provider's speed and breaker record (kept across reconnects)."""
        record = self._health.get(provider_id)
        if record is None:
            record = self._health[provider_id] = ProviderHealth()
        return record

    def remove(self, provider_id: str) -> LiveProvider | None:
        live = self._providers.pop(provider_id, None)
        if live is None:
            return None
        for name in live.offers:
            self._unindex(name, provider_id)
        label = _label_key(live.capabilities.label)
        holders = self._labels.get(label)
        if holders == provider_id:
            del self._labels[label]
        elif isinstance(holders, set):
            holders.discard(provider_id)
            if len(holders) == 1:
                self._labels[label] = holders.pop()
        return live

    def label_shared_with(self, provider_id: str) -> int:
        """How many other connected providers announce the same label (case-insensitive).

        A label is the provider's word: anyone may copy it, so a shared one is flagged.
        """
        live = self._providers.get(provider_id)
        if live is None:
            return 0
        label = _label_key(live.capabilities.label)
        holders = self._labels.get(label) if label else None
        return len(holders) - 1 if isinstance(holders, set) else 0

    def set_status(self, provider_id: str, model: str, status: str) -> None:
        """Route (``routable``) or stop routing a connected provider for one model."""
        live = self._providers.get(provider_id)
        if live is None or model not in live.offers:
            return
        live.status = {**live.status, model: status}
        if status == ROUTABLE:
            self._index(model, live)
        else:
            self._unindex(model, provider_id)

    def _index(self, model: str, live: LiveProvider) -> None:
        pool = self._by_model.get(model)
        if pool is None:
            pool = self._by_model[model] = ModelPool(model)
        pool.add(live, live.offers[model])

    def _unindex(self, model: str, provider_id: str) -> None:
        pool = self._by_model.get(model)
        if pool is None:
            return
        live = pool.get(provider_id)
        if live is not None:
            pool.remove(provider_id, live.offers[model])
        if not pool:
            del self._by_model[model]

    def get(self, provider_id: str) -> LiveProvider | None:
        return self._providers.get(provider_id)

    def all(self) -> list[LiveProvider]:
        return list(self._providers.values())

    def remember_models(self, names: Iterable[str]) -> None:
        """Mark models as known (served before this start) so a request for them is 503,
        not 404, and as awaited until some provider announces them again."""
        names = set(names) - self._known_models
        self._known_models.update(names)
        self._awaited.update(names)

    def is_known(self, model: str) -> bool:
        return model in self._known_models

    def is_awaited(self, model: str) -> bool:
        """Served before this start, and no provider has announced it since."""
        return model in self._awaited

    def serving(self, model: str) -> list[LiveProvider]:
        """Live providers routed for ``model`` (a copy)."""
        pool = self._by_model.get(model)
        return [] if pool is None else list(pool.members)

    def pool(self, model: str) -> ModelPool:
        """The routed providers of ``model``, for the router to read (empty if none)."""
        return self._by_model.get(model) or ModelPool()

    def offer(self, model: str) -> ModelOffer | None:
        """``model`` as the network describes it (its majority shape); None if unserved.

        Never one provider's word: see ``ModelPool.public_offer``.
        """
        pool = self._by_model.get(model)
        if not pool:
            return None
        return pool.public_offer()

    def fits(self, provider_id: str, model: str) -> bool:
        """Whether the provider's offer of ``model`` agrees with the model's shape."""
        live = self._providers.get(provider_id)
        pool = self._by_model.get(model)
        if live is None or pool is None or model not in live.offers:
            return False
        return pool.fits(live.offers[model])

    def acquire(self, provider_id: str) -> None:
        live = self._providers.get(provider_id)
        if live is None or live.free_slots <= 0:
            raise SlotError(f"provider {provider_id} has no free slot")
        live.active_jobs += 1

    def release(self, provider_id: str) -> None:
        """Free a slot; a no-op for a provider that has disconnected since."""
        live = self._providers.get(provider_id)
        if live is not None and live.active_jobs > 0:
            live.active_jobs -= 1

    def set_load(self, provider_id: str, active_jobs: int) -> None:
        """Take another replica's count of a provider's running jobs (it holds the
        socket, so it knows); clamped to the provider's declared concurrency."""
        live = self._providers.get(provider_id)
        if live is not None:
            live.active_jobs = max(0, min(active_jobs, live.max_concurrent_jobs))

    def summaries(self) -> list[ModelSummary]:
        """Each served model as the network describes it (see ``ModelPool.public_offer``):
        only providers whose offer has the model's majority shape are counted and priced."""
        out = []
        for name in sorted(self._by_model):
            pool = self._by_model[name]
            public = pool.public_offer()
            if public is None:
                continue
            offers = [p.offers[name] for p in pool.members if pool.fits(p.offers[name])]
            out.append(
                ModelSummary(
                    name=name,
                    kind=public.kind,
                    providers=len(offers),
                    context_length=public.context_length,
                    price_input_min=min(o.price_input_per_mtok for o in offers),
                    price_input_max=max(o.price_input_per_mtok for o in offers),
                    price_output_min=min(o.price_output_per_mtok for o in offers),
                    price_output_max=max(o.price_output_per_mtok for o in offers),
                    supports_tools=public.supports_tools,
                    embedding_dimensions=public.embedding_dimensions,
                    disagreeing=pool.disagreeing(),
                )
            )
        return out


def _label_key(label: str) -> str:
    key = " ".join(label.split()).casefold()
    return label if key == label else key  # one string, not two, for most labels
