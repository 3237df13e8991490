"""What one request carries through the serving layer, and what serving hands back to HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tessera.gateway.payments import Charge, Payer
from tessera.ledger.request_life import PaidRequest
from tessera.market.policy import EffectivePolicy, Filter
from tessera.market.routing import RouteRequest
from tessera.protocol.wire import ModelOffer


@dataclass(slots=True)
class RequestContext:
    """Who asked, for what, and when; carried through one request."""

    request_id: str
    api_key_id: str
    endpoint: str
    model: str
    started: float  # time.perf_counter()
    payer: Payer
    ttft_ms: float | None = None
    policy: EffectivePolicy = field(default_factory=EffectivePolicy)
    charge: Charge | None = None
    life: PaidRequest = field(init=False)  # what the request costs, decided as it goes
    checks: list[Filter] = field(default_factory=list)  # stake and hold, for dispatch
    offer: ModelOffer | None = None  # the offer (price) of the provider that ran the job
    route: str | None = None  # why the provider was chosen (the x-tessera-route header)
    sticky: str | None = None  # the provider of this conversation's previous turn
    turns: list[tuple[str, str]] | None = None  # a chat's (role, text) turns so far
    routing: RouteRequest | None = None  # what the router is asked, once money is held

    def __post_init__(self) -> None:
        self.life = PaidRequest(self.request_id)


@dataclass(frozen=True, slots=True)
class Served:
    """A finished answer (body) or a stream of SSE bytes, and who served it.

    ``finish`` must run once a stream's response is over, however it ended: it settles a
    stream whose generator never ran (the client left before the first byte).
    ``settle`` must run exactly once for a body: True once it was sent whole, False if
    it could not be (it is charged only in the first case).
    """

    provider_id: str
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    cost: int | None = None
    held: int = 0
    finish: Callable[[], Awaitable[None]] | None = None
    route: str | None = None
    settle: Callable[[bool], None] | None = None
