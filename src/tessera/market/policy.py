"""Routing policy: which providers a request may reach, and how to rank them.

A policy has OpenRouter's ``provider`` object shape, extended for this network
(regions, minimum reputation, hedging). An API key may carry a default policy and a
request may carry its own; both apply, each as a *layer* of filters, so a request can
narrow what its key allows but never widen it: an EU-only key stays EU-only whatever the
request says. Ranking fields (sort, order, hedging) come from the request when it sets
them, else from the key; ``allow_fallbacks: false`` in either layer holds.

Filters are compiled once per request into named predicates, so the router can say
which one emptied the pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from tessera.market.quotes import MaxPrice
from tessera.market.regions import CONTRADICTED, countries, country_of, normalise
from tessera.market.registry import LiveProvider
from tessera.protocol.wire import ModelOffer

_T = TypeVar("_T")

Sort = Literal["price", "latency", "throughput"]
SORTS: tuple[str, ...] = ("price", "latency", "throughput")
# A provider may be named by this many leading hex characters of its id (64 bits): fewer
# could be ground out by a stranger making keys until one shares a popular prefix.
MIN_ID_PREFIX = 16
HEX = frozenset("0123456789abcdef")


class PolicyError(ValueError):
    """A policy that cannot be applied; ``param`` names the offending field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class Policy:
    """One layer: what an API key or a request allows, as given."""

    source: str = "request"  # "request" or "API key": named in errors
    order: tuple[str, ...] = ()
    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    sort: Sort | None = None
    max_price: MaxPrice = field(default_factory=MaxPrice)
    data_collection: Literal["allow", "deny"] = "allow"
    regions_allow: frozenset[str] | None = None
    regions_deny: frozenset[str] = frozenset()
    min_reputation: float = 0.0
    hedge_after_ms: int | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any], source: str = "request") -> Policy:
        """A layer from a ``provider`` object (already type-checked); PolicyError if unusable."""

        def ids(name: str) -> tuple[str, ...]:
            values = tuple(str(v).strip().lower() for v in raw.get(name) or ())
            for value in values:
                problem = (
                    "is too short"
                    if len(value) < MIN_ID_PREFIX
                    else "is not a provider id (ids are hex)"
                    if not set(value) <= HEX
                    else None
                )
                if problem is not None:
                    raise PolicyError(
                        f"provider.{name}: {value[:80]!r} {problem}; name a provider by its id "
                        f"(64 hex characters) or at least its first {MIN_ID_PREFIX} characters",
                        f"provider.{name}",
                    )
            return values

        def regions(name: str) -> frozenset[str]:
            try:
                return frozenset(normalise(str(v)) for v in raw.get(name) or ())
            except ValueError as exc:
                raise PolicyError(f"provider.{name}: {exc}", f"provider.{name}") from None

        sort = raw.get("sort")
        if sort is not None and sort not in SORTS:
            raise PolicyError(f"provider.sort must be one of {', '.join(SORTS)}", "provider.sort")
        max_price = raw.get("max_price") or {}
        only = raw.get("only")
        allow = raw.get("regions_allow")
        min_rep = float(raw.get("min_reputation") or 0.0)
        if not 0.0 <= min_rep <= 1.0:
            raise PolicyError("provider.min_reputation must lie in 0..1", "provider.min_reputation")
        return cls(
            source=source,
            order=ids("order"),
            only=None if only is None else frozenset(ids("only")),
            ignore=frozenset(ids("ignore")),
            allow_fallbacks=bool(raw.get("allow_fallbacks", True)),
            sort=sort,
            max_price=MaxPrice(max_price.get("prompt"), max_price.get("completion")),
            data_collection="deny" if raw.get("data_collection") == "deny" else "allow",
            regions_allow=None if allow is None else regions("regions_allow"),
            regions_deny=regions("regions_deny"),
            min_reputation=min_rep,
            hedge_after_ms=raw.get("hedge_after_ms"),
        )

    def filters(self) -> list[Filter]:
        """This layer's constraints as named predicates, cheapest first."""
        out: list[Filter] = []
        src = self.source
        if self.only is not None:
            only = self.only
            out.append(Filter("only", src, f"only {_names(only)}", lambda p, o: named(p, only)))
        if not self.allow_fallbacks and self.order:
            listed = frozenset(self.order)
            out.append(
                Filter(
                    "order",
                    src,
                    f"order {_names(listed)} without fallbacks",
                    lambda p, o: named(p, listed),
                )
            )
        if self.ignore:
            ignore = self.ignore
            out.append(
                Filter("ignore", src, f"ignore {_names(ignore)}", lambda p, o: not named(p, ignore))
            )
        # A declared country that the provider's round trip contradicts says nothing about
        # where it is: it satisfies neither an allow list nor a deny list (regions.py).
        if self.regions_allow is not None:
            allowed = countries(self.regions_allow)
            out.append(
                Filter(
                    "regions_allow",
                    src,
                    f"regions_allow {_names(self.regions_allow)}",
                    lambda p, o: (
                        country_of(p.capabilities.region) in allowed
                        and p.region_check != CONTRADICTED
                    ),
                )
            )
        if self.regions_deny:
            denied = countries(self.regions_deny)
            out.append(
                Filter(
                    "regions_deny",
                    src,
                    f"regions_deny {_names(self.regions_deny)}",
                    lambda p, o: (
                        country_of(p.capabilities.region) not in denied
                        and p.region_check != CONTRADICTED
                    ),
                )
            )
        if self.data_collection == "deny":
            out.append(
                Filter(
                    "data_collection",
                    src,
                    'data_collection "deny" (providers that declare no retention)',
                    lambda p, o: p.capabilities.no_retention,
                )
            )
        if self.min_reputation > 0:
            floor = self.min_reputation
            out.append(
                Filter(
                    "min_reputation",
                    src,
                    f"min_reputation {floor:g}",
                    lambda p, o: p.reputation >= floor,
                )
            )
        if self.max_price.prompt is not None or self.max_price.completion is not None:
            price = self.max_price
            out.append(
                Filter(
                    "max_price",
                    src,
                    f"max_price (prompt {price.prompt}, completion {price.completion} base "
                    "units per million tokens)",
                    lambda p, o: price.allows(o),
                )
            )
        return out


Predicate = Callable[[LiveProvider, ModelOffer], bool]


@dataclass(frozen=True, slots=True)
class Filter:
    """One named constraint; ``source`` says whose it is (the request's or the key's)."""

    name: str
    source: str
    describe: str
    test: Predicate


def named(provider: LiveProvider, names: Iterable[str]) -> bool:
    """Whether a provider is one of ``names`` (full ids or id prefixes, lower case)."""
    pid = provider.provider_id
    return any(pid.startswith(n) for n in names)


def _names(values: Iterable[str]) -> str:
    items = sorted(values)
    shown = ", ".join(v[:16] for v in items[:5])
    return f"[{shown}{', ...' if len(items) > 5 else ''}]"


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """The layers that apply to one request (key first), and the ranking they settle on."""

    layers: tuple[Policy, ...] = ()
    # Every layer's filters, compiled once per request (the router reads them per pick).
    filters: tuple[Filter, ...] = ()

    def _last(self, read: Callable[[Policy], _T | None]) -> _T | None:
        """The value ``read`` takes from the last layer where it is set (truthy)."""
        for layer in reversed(self.layers):
            value = read(layer)
            if value:
                return value
        return None

    @property
    def sort(self) -> Sort | None:
        return self._last(lambda layer: layer.sort)

    @property
    def order(self) -> tuple[str, ...]:
        return self._last(lambda layer: layer.order) or ()

    @property
    def hedge_after_ms(self) -> int | None:
        return self._last(lambda layer: layer.hedge_after_ms)

    @property
    def allow_fallbacks(self) -> bool:
        return all(layer.allow_fallbacks for layer in self.layers)

    @property
    def max_price(self) -> MaxPrice:
        """The tightest ceiling any layer sets (what the hold is computed under)."""
        prompts = [p.max_price.prompt for p in self.layers if p.max_price.prompt is not None]
        completions = [
            p.max_price.completion for p in self.layers if p.max_price.completion is not None
        ]
        return MaxPrice(min(prompts, default=None), min(completions, default=None))

    def describe(self) -> str:
        """A short summary for the route header and status API."""
        parts = [
            f.describe + ("" if f.source == "request" else f" [{f.source}]") for f in self.filters
        ]
        if self.sort:
            parts.append(f"sort {self.sort}")
        if self.order:
            parts.append(f"order {_names(self.order)}")
        return "; ".join(parts) or "default"


def effective(layers: Sequence[Policy | None]) -> EffectivePolicy:
    kept = tuple(layer for layer in layers if layer is not None)
    return EffectivePolicy(kept, tuple(f for layer in kept for f in layer.filters()))
