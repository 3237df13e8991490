"""Paying for one request: price filter, worst-case hold, and exactly one settlement.

``Payments.reserve`` runs before any work: it narrows the model's providers to those that
are staked and allowed by the request's routing policy, holds the worst case of the
dearest one the consumer can afford (balance and key caps), and returns a ``Charge``;
``admit`` gives the dispatch checks that keep the router inside what was held. The charge is then settled once:
``capture`` (the answer was delivered, or the client left mid-stream: pay what was
delivered) or ``release`` (the work failed or never reached the client: pay nothing).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field, replace

from tessera.errors import QuotaExceeded
from tessera.gateway.bookkeeper import Bookkeeper
from tessera.gateway.routing import no_route_error
from tessera.ledger.book import CapReached, ConsumerView
from tessera.ledger.journal import Entry, InsufficientFunds
from tessera.ledger.spend_caps import SpendCaps
from tessera.market.policy import Filter
from tessera.market.quotes import (
    offer_price,
    output_token_bound,
    prompt_token_bound,
)
from tessera.market.registry import LiveProvider, ProviderRegistry
from tessera.market.routing import Router, RouteRequest
from tessera.market.stake_policy import StakePolicy
from tessera.protocol.wire import Job, ModelOffer
from tessera.units import format_tokens

log = logging.getLogger("tessera.gateway.payments")


_MAX_STAKE_FILTERS = 4_096  # models with a filter kept at once


@dataclass(frozen=True, slots=True)
class Payer:
    """Who pays for a request: the key's account, and the key's own caps."""

    account_id: str
    key_id: str
    caps: SpendCaps = field(default_factory=SpendCaps)


@dataclass(slots=True)
class Charge:
    request_id: str
    model: str
    held: int
    cost: int | None = None
    status: str = "open"  # open | captured | released
    stored: asyncio.Future[None] | None = field(default=None, repr=False)
    # The hold, posted but perhaps not yet stored: confirm() before reporting what it paid.
    hold_stored: asyncio.Future[Entry] | None = field(default=None, repr=False)
    # Held through the ledger's owner over the bus (a replica without the ledger): it is
    # settled there too, even after this replica has taken the ledger over.
    via_bus: bool = False

    @property
    def settled(self) -> bool:
        return self.status != "open"


def tokens(units: int) -> str:
    return f"{format_tokens(units)} tokens"


class Payments:
    def __init__(
        self, bookkeeper: Bookkeeper, registry: ProviderRegistry, stake: StakePolicy
    ) -> None:
        self.bookkeeper = bookkeeper
        self.registry = registry
        self.stake = stake
        # Only its eligibility scans (by price, every member) are used here: they draw
        # nothing from its random source.
        self._router = Router(random.Random(0))
        # One stake filter per model, made once (two per request were built, each
        # formatting its description); dropped whenever the stake policy is replaced.
        self._stake_filters: dict[str, Filter] = {}
        self._filters_policy = stake

    def staked(self, provider: LiveProvider, model: str) -> bool:
        required = self.stake.required(provider, model)
        return self.bookkeeper.book.bonded(provider.provider_id) >= required

    def bonded(self, provider_id: str) -> int:
        return self.bookkeeper.book.bonded(provider_id)

    def balance(self, account_id: str) -> ConsumerView:
        """The account's balance and what its running requests hold, in memory now."""
        return self.bookkeeper.book.consumer(account_id)

    def stake_filter(self, model: str) -> Filter:
        """The network's own constraint: enough stake bonded to be routed ``model``."""
        filters = self._stake_filters
        if self._filters_policy is not self.stake or len(filters) >= _MAX_STAKE_FILTERS:
            filters.clear()
            self._filters_policy = self.stake
        found = filters.get(model)
        if found is None:
            found = filters[model] = Filter(
                "stake",
                "network",
                f"the minimum stake bonded ({tokens(self.stake.default)} or more by default)",
                lambda p, o: self.staked(p, model),
            )
        return found

    async def reserve(self, payer: Payer, request_id: str, job: Job, route: RouteRequest) -> Charge:
        """Hold the worst case of ``job`` before work starts, or refuse with a clear error.

        The hold is taken in memory at once (no one can spend the same tokens) and stored
        while the work runs: :meth:`confirm` waits for it before anything is answered.

        The hold is the worst case of the dearest provider the request may use and the
        consumer can afford, found by walking the model's price index from the top (no
        full scan): a retry may then land on any provider up to that price. ``route``
        carries the request's policy; its ``checks`` get the stake filter here.
        """
        model = job.model
        pool = self.registry.pool(model)
        route = replace(route, checks=[*route.checks, self.stake_filter(model)])
        cheapest = next(self._router.by_price(pool, route), None)
        if cheapest is None:
            raise no_route_error(self._router.explain(pool, route, now=0.0))
        output_bound = output_token_bound(job)
        prompt_bounds: dict[int, int] = {}  # by context length: most offers share one

        def worst(p: LiveProvider) -> int:
            offer = p.offers[model]
            bound = prompt_bounds.get(offer.context_length)
            if bound is None:
                bound = prompt_bounds[offer.context_length] = prompt_token_bound(
                    job, offer.context_length
                )
            return offer_price(offer).worst_case(bound, output_bound)

        charge = Charge(request_id=request_id, model=model, held=0)
        least = worst(cheapest)
        # One walk down from the dearest: it says whether anything is priced at all, and
        # the first the consumer can afford is the hold.
        book = self.bookkeeper.book
        spendable: int | None = None
        hold: int | None = None
        for number, p in enumerate(self._router.by_price(pool, route, descending=True)):
            cost = worst(p)
            if number == 0 and cost == 0 and least == 0:
                return charge  # only free providers: nothing to hold
            if spendable is None:
                now = self.bookkeeper.clock()
                spendable = book.spendable(payer.account_id, payer.key_id, payer.caps, now)
            if cost <= spendable:
                hold = cost
                break
        if hold is None:
            raise self._short(payer, least)
        if hold == 0:
            # The payer can afford only a free provider: nothing to hold, and admit()
            # keeps the dispatch on free ones.
            return charge
        try:
            charge.hold_stored = self.bookkeeper.post_hold(
                payer.account_id,
                payer.key_id,
                payer.caps,
                charge.request_id,
                hold,
                {"model": model},
            )
        except (InsufficientFunds, CapReached):
            raise self._short(payer, least) from None
        charge.held = hold
        return charge

    async def confirm(self, charge: Charge) -> None:
        """Wait until the charge's hold is stored (usually long done: it was written while
        the provider worked); LedgerUnavailable, and the hold released, if it cannot be."""
        stored, charge.hold_stored = charge.hold_stored, None
        if stored is not None:
            await self.bookkeeper.confirm_hold(charge.request_id, stored)

    def admit(self, charge: Charge, job: Job) -> list[Filter]:
        """The dispatch checks: staked, and a worst case that fits what was held."""
        output_bound = output_token_bound(job)
        model = job.model

        def fits(provider: LiveProvider, offer: ModelOffer) -> bool:
            return self._worst_case(offer, job, output_bound) <= charge.held

        return [
            self.stake_filter(model),
            Filter("hold", "network", "a worst-case cost within the amount held", fits),
        ]

    @staticmethod
    def _worst_case(offer: ModelOffer, job: Job, output_bound: int) -> int:
        prompt_bound = prompt_token_bound(job, offer.context_length)
        return offer_price(offer).worst_case(prompt_bound, output_bound)

    def _short(self, payer: Payer, needed: int) -> QuotaExceeded:
        return shortfall(self.bookkeeper, payer, needed)

    # ------------------------------------------------------------ settlement

    def capture(
        self,
        charge: Charge,
        offer: ModelOffer,
        provider_id: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> int:
        """Charge for what was delivered; returns the cost (0 when nothing was held)."""
        if charge.settled:
            return charge.cost or 0
        charge.status = "captured"
        if charge.held == 0:
            charge.cost = 0
            return 0
        cost, stored = self.bookkeeper.capture(
            charge.request_id, offer_price(offer), prompt_tokens, completion_tokens, provider_id
        )
        charge.cost, charge.stored = cost, stored
        return cost

    @staticmethod
    def cost_of(
        charge: Charge, offer: ModelOffer, prompt_tokens: int, completion_tokens: int
    ) -> int:
        """What ``capture`` with these counts will charge, before it does (the book caps a
        capture at its hold; nothing held, nothing charged)."""
        if charge.held == 0 or charge.settled:
            return charge.cost or 0
        return min(offer_price(offer).cost(prompt_tokens, completion_tokens), charge.held)

    def release(self, charge: Charge, reason: str) -> None:
        if charge.settled:
            return
        charge.status = "released"
        charge.cost = 0
        if charge.held:
            self.bookkeeper.release(charge.request_id, reason)

    async def stored(self, charge: Charge) -> None:
        """Wait until the settlement is durable (before reporting the cost)."""
        if charge.stored is not None:
            await self.bookkeeper.durable(charge.stored)


def shortfall(bookkeeper: Bookkeeper, payer: Payer, needed: int) -> QuotaExceeded:
    """Why ``payer`` cannot hold ``needed``: the key's spend cap, or the balance.

    A module function so the ledger owner can say the same to a request held over the bus
    (gateway/ledger_service.py)."""
    book = bookkeeper.book
    balance = book.consumer(payer.account_id).balance
    room = book.spend.headroom(payer.key_id, payer.caps, bookkeeper.clock())
    if room is not None and room < needed and balance >= needed:
        return QuotaExceeded(
            f"This API key's spend cap leaves {tokens(room)}, and this request may cost up "
            f"to {tokens(needed)}. Raise the key's cap, wait for the daily cap to reset, "
            "or lower max_tokens."
        )
    return QuotaExceeded(
        f"Your balance is {tokens(balance)}, and this request may cost up to "
        f"{tokens(needed)} (its prompt and max_tokens at the cheapest provider's price). "
        "Add funds to your account or lower max_tokens."
    )
