"""Paying for one request: price filter, worst-case hold, and exactly one settlement.

``Payments.reserve`` runs before any work: it narrows the model's providers to those that
are staked and within the request's ``provider.max_price``, holds the worst case of the
dearest one the consumer can afford (balance and key caps), and returns a ``Charge`` whose
``admit`` keeps dispatch inside what was held. The charge is then settled once:
``capture`` (the answer was delivered, or the client left mid-stream: pay what was
delivered) or ``release`` (the work failed or never reached the client: pay nothing).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from tessera.errors import InvalidRequest, NoCapacity, QuotaExceeded
from tessera.gateway.bookkeeper import Bookkeeper
from tessera.gateway.hub import Admit
from tessera.ledger.book import CapReached
from tessera.ledger.journal import InsufficientFunds
from tessera.ledger.spend_caps import SpendCaps
from tessera.market.quotes import (
    MaxPrice,
    offer_price,
    output_token_bound,
    prompt_token_bound,
    quote,
)
from tessera.market.registry import LiveProvider, ProviderRegistry
from tessera.market.stake_policy import StakePolicy
from tessera.protocol.wire import Job, ModelOffer
from tessera.units import format_tokens

log = logging.getLogger("tessera.gateway.payments")


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

    def staked(self, provider: LiveProvider, model: str) -> bool:
        required = self.stake.required(provider, model)
        return self.bookkeeper.book.bonded(provider.provider_id) >= required

    def routable(self, provider: LiveProvider, model: str, max_price: MaxPrice) -> bool:
        offer = provider.offers.get(model)
        return offer is not None and max_price.allows(offer) and self.staked(provider, model)

    async def reserve(self, payer: Payer, request_id: str, job: Job, max_price: MaxPrice) -> Charge:
        """Hold the worst case of ``job`` before work starts, or refuse with a clear error."""
        model = job.model
        serving = self.registry.serving(model)
        staked = [p for p in serving if self.staked(p, model)]
        if serving and not staked:
            least = min(self.stake.required(p, model) for p in serving)
            raise NoCapacity(
                f"no provider of '{model}' has the minimum stake bonded "
                f"({tokens(least)} or more), so none may take work; retry later"
            )
        within = [p for p in staked if max_price.allows(p.offers[model])]
        if staked and not within:
            cheapest = min(staked, key=lambda p: offer_price(p.offers[model]).output_per_mtok)
            offer = cheapest.offers[model]
            raise InvalidRequest(
                f"no provider of '{model}' is within provider.max_price; the cheapest asks "
                f"{offer.price_input_per_mtok} (prompt) and {offer.price_output_per_mtok} "
                "(completion) base units per million tokens",
                param="provider.max_price",
                code="no_provider_within_max_price",
            )
        output_bound = output_token_bound(job)
        worst = {
            p.provider_id: self._worst_case(p.offers[model], job, output_bound) for p in within
        }
        charge = Charge(request_id=request_id, model=model, held=0)
        if not within or max(worst.values()) == 0:
            return charge  # nobody to pay, or only free providers: nothing to hold
        book = self.bookkeeper.book
        now = self.bookkeeper.clock()
        spendable = book.spendable(payer.account_id, payer.key_id, payer.caps, now)
        chosen = quote(list(worst.values()), spendable)
        if chosen is None:
            raise self._short(payer, min(worst.values()))
        try:
            await self.bookkeeper.hold(
                payer.account_id,
                payer.key_id,
                payer.caps,
                charge.request_id,
                chosen.hold,
                {"model": model},
            )
        except (InsufficientFunds, CapReached):
            raise self._short(payer, min(worst.values())) from None
        charge.held = chosen.hold
        return charge

    def admit(self, charge: Charge, job: Job, max_price: MaxPrice) -> Admit:
        """The dispatch filter: routable providers whose worst case fits the hold."""
        output_bound = output_token_bound(job)

        def fits(provider: LiveProvider) -> bool:
            if not self.routable(provider, job.model, max_price):
                return False
            return self._worst_case(provider.offers[job.model], job, output_bound) <= charge.held

        return fits

    @staticmethod
    def _worst_case(offer: ModelOffer, job: Job, output_bound: int) -> int:
        prompt_bound = prompt_token_bound(job, offer.context_length)
        return offer_price(offer).worst_case(prompt_bound, output_bound)

    def _short(self, payer: Payer, needed: int) -> QuotaExceeded:
        book = self.bookkeeper.book
        balance = book.consumer(payer.account_id).balance
        room = book.spend.headroom(payer.key_id, payer.caps, self.bookkeeper.clock())
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
