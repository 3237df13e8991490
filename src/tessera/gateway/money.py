"""Paying for requests: the plug point between serving and wherever money lives.

Serving speaks only this protocol. The first implementation is
:class:`~tessera.gateway.payments.Payments` over the in-memory book and its journal in
SQLite or PostgreSQL; a chain-backed ledger implements the same calls. Its shape follows
what the request path needs and no more:

- ``reserve`` holds a request's worst case before any work, deciding in memory at once so
  that two requests can never spend the same tokens; ``confirm`` waits until that hold is
  durable (the work overlaps the write) and must succeed before anything is answered;
- ``capture`` and ``release`` settle a charge exactly once, without waiting: the movement
  is decided now and written in order behind the hold; ``stored`` waits for it when a
  figure is about to be reported (a stream's final usage);
- ``balance`` is what an account has and has held, as the request path sees it now;
- ``admit``, ``stake_filter`` and ``bonded`` keep routing inside what was held and away
  from providers without enough stake at risk.
"""

from __future__ import annotations

from typing import Protocol

from tessera.gateway.payments import Charge, Payer
from tessera.ledger.book import ConsumerView
from tessera.market.policy import Filter
from tessera.market.routing import RouteRequest
from tessera.protocol.wire import Job, ModelOffer


class Money(Protocol):
    async def reserve(
        self, payer: Payer, request_id: str, job: Job, route: RouteRequest
    ) -> Charge: ...

    async def confirm(self, charge: Charge) -> None: ...

    def capture(
        self,
        charge: Charge,
        offer: ModelOffer,
        provider_id: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> int: ...

    def release(self, charge: Charge, reason: str) -> None: ...

    async def stored(self, charge: Charge) -> None: ...

    def cost_of(
        self, charge: Charge, offer: ModelOffer, prompt_tokens: int, completion_tokens: int
    ) -> int: ...

    def balance(self, account_id: str) -> ConsumerView: ...

    def admit(self, charge: Charge, job: Job) -> list[Filter]: ...

    def stake_filter(self, model: str) -> Filter: ...

    def bonded(self, provider_id: str) -> int: ...
