"""What happened in the network, as facts: published once, read by whoever cares.

The request path, the hub and the verifier publish domain events through one
:class:`EventSink` and know nothing of who listens. Today the subscribers are in this
process (the Prometheus metrics, the request log, the reputation book); the explorer and
other gateway replicas subscribe to the same events through a sink that forwards them
(NATS), without a change to the code that publishes.

Publishing never blocks and never fails the publisher: a subscriber is a plain function
that must return quickly (queue its own slow work), and one that raises is logged and
skipped. Events are immutable and carry only plain values.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

log = logging.getLogger("tessera.gateway.events")


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """A consumer request ended: answered (``status`` ok), failed, or abandoned."""

    request_id: str
    account_id: str
    api_key_id: str
    endpoint: str
    model: str
    provider_id: str | None
    status: str  # ok | error | cancelled
    error_code: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: int  # base units charged
    price_input_per_mtok: int | None
    price_output_per_mtok: int | None
    latency_s: float
    ttft_ms: float | None
    at: datetime
    # Why this provider: the router's reason, score and its parts, candidates considered,
    # and any fallback or failover on the way (the x-tessera-route header's text).
    route: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderJoined:
    """A provider proved its identity and offered models."""

    provider_id: str
    label: str
    region: str
    models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProviderLeft:
    """A provider's connection ended."""

    provider_id: str


@dataclass(frozen=True, slots=True)
class AuditClosed:
    """An audit case reached its outcome: passed, cleared, upheld or inconclusive."""

    request_id: str
    provider_id: str
    model: str
    status: str
    slashed_units: int
    refunded_units: int


@dataclass(frozen=True, slots=True)
class Slashed:
    """Stake taken from a provider for a proven fault."""

    provider_id: str
    model: str
    reason: str
    slashed_units: int
    refunded_units: int
    # What it answers: "audit:<request id>" (evidence at /v1/audit-cases/<request id>) or
    # "receipt:<job id>"; empty where the slash has no single request behind it.
    reference: str = ""


@dataclass(frozen=True, slots=True)
class EpochClosed:
    """An uptime epoch ended: how many providers it judged, how many met their SLA, and
    the stake taken for downtime."""

    epoch_start: int  # Unix seconds
    epoch_s: int
    providers: int
    met: int
    breached: int
    slashed_units: int


Event = RequestFinished | ProviderJoined | ProviderLeft | AuditClosed | Slashed | EpochClosed
E = TypeVar("E", RequestFinished, ProviderJoined, ProviderLeft, AuditClosed, Slashed, EpochClosed)


class EventSink(Protocol):
    def publish(self, event: Event) -> None:
        """Hand ``event`` to every subscriber; never blocks, never raises."""
        ...


class EventBus:
    """The in-process sink: subscribers by event type, called in subscription order."""

    def __init__(self) -> None:
        self._subscribers: defaultdict[type, list[Callable[[Event], None]]] = defaultdict(list)

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> None:
        self._subscribers[kind].append(handler)  # type: ignore[arg-type]

    def publish(self, event: Event) -> None:
        for handler in self._subscribers.get(type(event), ()):
            try:
                handler(event)
            except Exception:
                log.exception("a subscriber to %s failed", type(event).__name__)
