"""Paying for requests on a replica that does not own the ledger: the owner's book, asked
over the bus (gateway/ledger_service.py answers).

:class:`RemoteMoney` is the :class:`~tessera.gateway.money.Money` that ``Serving`` uses on
such a replica, and behaves as :class:`~tessera.gateway.payments.Payments` does, with two
differences the bus imposes:

- ``reserve`` cannot read the balance, so it sends every candidate worst case (the
  dearest provider's first) in ONE hold request and the owner takes the largest the payer
  can afford. The owner answers once the hold is durable, so ``confirm`` has nothing left
  to wait for. With no owner (a takeover) it retries for ``owner_wait_s``, then answers
  503; a hold the owner may have made for a request given up is released again.
- ``capture`` and ``release`` decide the cost here, exactly as the owner's book will (the
  price's cost, capped at the hold), and are sent in the background, retried by request
  id (the owner is idempotent) for ``settle_for_s``; ``stored`` waits for the owner's word.

Stake (for routing) is a copy of the owner's bonded stakes, refreshed every
``stake_refresh_s``; ``balance`` is the view last fetched with ``fetch_balance``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from tessera.errors import LedgerUnavailable, QuotaExceeded, TesseraError
from tessera.gateway import ledger_service as wire
from tessera.gateway.bus import Bus, BusError, BusTimeout, NoResponders
from tessera.gateway.payments import Charge, Payer, Payments, tokens
from tessera.gateway.routing import no_route_error
from tessera.ledger.book import ConsumerView
from tessera.market.policy import Filter
from tessera.market.quotes import offer_price, output_token_bound, prompt_token_bound
from tessera.market.registry import LiveProvider, ModelPool, ProviderRegistry
from tessera.market.routing import Router, RouteRequest
from tessera.market.stake_policy import StakePolicy
from tessera.protocol.wire import Job, ModelOffer

log = logging.getLogger("tessera.gateway.remote_money")

_MAX_STAKE_FILTERS = 4_096  # as in Payments
_MAX_BALANCES = 10_000  # account views kept from fetch_balance
_FIRST_BACKOFF_S = 0.05
# A charge's hold_stored while the owner has answered but not yet stored the hold: what
# Serving sees to call confirm(); never awaited.
_PENDING: Any = object()

W = TypeVar("W", bound=wire.Wire)


class RemoteMoney:
    """Money through the ledger owner on the bus (see the module docstring)."""

    def __init__(
        self,
        bus: Bus,
        registry: ProviderRegistry,
        stake: StakePolicy,
        *,
        replica_id: str,
        timeout_s: float = 2.0,
        owner_wait_s: float = 5.0,
        settle_for_s: float = 30.0,
        stake_refresh_s: float = 1.0,
        close_wait_s: float = 5.0,
    ) -> None:
        self.bus = bus
        self.registry = registry
        self.stake = stake
        self.replica_id = replica_id
        self.timeout_s = timeout_s
        self.owner_wait_s = owner_wait_s
        self.settle_for_s = settle_for_s
        self.stake_refresh_s = stake_refresh_s
        self.close_wait_s = close_wait_s
        # Only its eligibility scans (by price, every member) are used here: they draw
        # nothing from its random source.
        self._router = Router(random.Random(0))
        self._stake_filters: dict[str, Filter] = {}
        self._filters_policy = stake
        self._stakes: dict[str, int] = {}
        self._stakes_failing = False
        self._balances: dict[str, ConsumerView] = {}
        self._pending: set[asyncio.Task[None]] = set()  # settlements on their way
        self._refresher: asyncio.Task[None] | None = None
        self._closing = False
        self._giving_up = False  # close() waited long enough for settlements

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        """Fetch the stakes once, then keep them fresh in the background."""
        await self.refresh_stakes()
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def close(self) -> None:
        """Stop refreshing; settlements still on their way get ``close_wait_s`` to land."""
        self._closing = True  # a cancel can be swallowed inside a bus call: also a flag
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._pending:
            _, late = await asyncio.wait(set(self._pending), timeout=self.close_wait_s)
            self._giving_up = True
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            if late:
                log.error("%d settlement(s) not confirmed by the ledger owner", len(late))

    # ------------------------------------------------------------ stake

    async def refresh_stakes(self) -> bool:
        """Copy the owner's bonded stakes; on failure keep the last ones (logged once)."""
        try:
            reply = await self.bus.request(wire.STAKES, b"{}", self.timeout_s)
            stakes = _decode(wire.StakesResponse, reply.data).stakes
        except (BusError, TesseraError) as exc:
            if not self._stakes_failing:
                log.warning(
                    "cannot refresh stakes from the ledger owner (%s); keeping the last", exc
                )
                self._stakes_failing = True
            return False
        if self._stakes_failing:
            log.warning("stakes refreshed from the ledger owner again")
            self._stakes_failing = False
        self._stakes = dict(stakes)
        return True

    async def _refresh_forever(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.stake_refresh_s)
            if not self._closing:
                await self.refresh_stakes()

    def bonded(self, provider_id: str) -> int:
        return self._stakes.get(provider_id, 0)

    def staked(self, provider: LiveProvider, model: str) -> bool:
        return self.bonded(provider.provider_id) >= self.stake.required(provider, model)

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

    # ------------------------------------------------------------ balance

    def balance(self, account_id: str) -> ConsumerView:
        """The view last fetched for ``account_id`` (zeros if none): the owner has the truth."""
        return self._balances.get(account_id, ConsumerView(0, 0))

    async def fetch_balance(self, account_id: str) -> ConsumerView:
        """Ask the owner for ``account_id``'s balance and held amount now."""
        body = wire.encode({"account_id": account_id})
        reply = await self._ask(wire.BALANCE, body)
        got = _decode(wire.BalanceResponse, reply)
        view = ConsumerView(got.balance, got.held)
        self._balances.pop(account_id, None)
        self._balances[account_id] = view
        while len(self._balances) > _MAX_BALANCES:
            del self._balances[next(iter(self._balances))]
        return view

    # ------------------------------------------------------------ reserve

    async def reserve(self, payer: Payer, request_id: str, job: Job, route: RouteRequest) -> Charge:
        """Hold the worst case of ``job`` at the owner before work starts, as
        ``Payments.reserve`` does locally (same candidates, same refusals)."""
        model = job.model
        pool = self.registry.pool(model)
        route = replace(route, checks=[*route.checks, self.stake_filter(model)])
        cheapest = next(self._router.by_price(pool, route), None)
        if cheapest is None:
            raise no_route_error(self._router.explain(pool, route, now=0.0))
        charge = Charge(request_id=request_id, model=model, held=0)
        amounts = self._candidates(pool, route, job, cheapest)
        if amounts[0] == 0:
            return charge  # only free providers: nothing to hold
        charge.held, stored = await self._hold(payer, request_id, model, amounts)
        if not stored:
            # Decided, not yet stored: confirm() waits for it while the provider works.
            charge.hold_stored = _PENDING
        return charge

    def _candidates(
        self, pool: ModelPool, route: RouteRequest, job: Job, cheapest: LiveProvider
    ) -> list[int]:
        """Distinct worst cases, dearest first: the walk ``Payments.reserve`` makes, to
        its end (the owner picks). Past ``MAX_AMOUNTS`` the cheapest stays the last, so
        the owner's quota answer is the same as a local one."""
        model = job.model
        output_bound = output_token_bound(job)
        prompt_bounds: dict[int, int] = {}

        def worst(p: LiveProvider) -> int:
            offer = p.offers[model]
            bound = prompt_bounds.get(offer.context_length)
            if bound is None:
                bound = prompt_bounds[offer.context_length] = prompt_token_bound(
                    job, offer.context_length
                )
            return offer_price(offer).worst_case(bound, output_bound)

        seen: set[int] = set()
        for p in self._router.by_price(pool, route, descending=True):
            seen.add(worst(p))
            if len(seen) >= wire.MAX_AMOUNTS - 1:
                break
        seen.add(worst(cheapest))
        return sorted(seen, reverse=True)

    async def _hold(
        self, payer: Payer, request_id: str, model: str, amounts: list[int]
    ) -> tuple[int, bool]:
        """(held, stored): the owner answers as soon as it decided (``early``)."""
        body = wire.encode(
            {
                "request_id": request_id,
                "account_id": payer.account_id,
                "key_id": payer.key_id,
                "caps": {"total": payer.caps.total, "daily": payer.caps.daily},
                "amounts": amounts,
                "memo": {"model": model},
                "replica": self.replica_id,
                "early": True,
            }
        )
        try:
            reply = await self._ask(wire.HOLD, body)
            answer = _decode(wire.HoldResponse, reply)
            return answer.held, answer.stored
        except (QuotaExceeded, _NoOwner):
            raise  # refused, or nobody received it: nothing was held
        except BaseException:
            # Timed out, cut off, cancelled or unreadable: the owner may hold it.
            self._send_release(request_id, "abandoned")
            raise

    async def _ask(self, subject: str, body: bytes) -> bytes:
        """One request to the owner; while nobody answers (a takeover) retry for
        ``owner_wait_s``. LedgerUnavailable (saying to retry) when it does not answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.owner_wait_s
        delay = _FIRST_BACKOFF_S
        while True:
            try:
                return (await self.bus.request(subject, body, self.timeout_s)).data
            except NoResponders:
                left = deadline - loop.time()
                if left <= 0:
                    raise _NoOwner(
                        "No gateway owns the ledger right now (one is taking over); nothing "
                        "was charged. Retry in a few seconds."
                    ) from None
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 0.5)
            except BusTimeout:
                raise LedgerUnavailable(
                    "The ledger did not answer in time; nothing was charged. Retry the request."
                ) from None
            except BusError as exc:
                raise LedgerUnavailable(
                    f"The ledger cannot be reached ({exc}); nothing was charged. Retry later."
                ) from None

    async def confirm(self, charge: Charge) -> None:
        """Wait until the owner has stored the hold (it answered before: the commit ran
        while the provider worked); LedgerUnavailable, the hold released, if it was not."""
        pending, charge.hold_stored = charge.hold_stored, None
        if pending is None:
            return
        body = wire.encode({"request_id": charge.request_id})
        try:
            _decode(wire.ConfirmResponse, await self._ask(wire.CONFIRM, body))
        except BaseException:
            self.release(charge, "hold_not_stored")
            raise

    def admit(self, charge: Charge, job: Job) -> list[Filter]:
        """The dispatch checks: staked, and a worst case that fits what was held."""
        output_bound = output_token_bound(job)

        def fits(provider: LiveProvider, offer: ModelOffer) -> bool:
            return Payments._worst_case(offer, job, output_bound) <= charge.held

        return [
            self.stake_filter(job.model),
            Filter("hold", "network", "a worst-case cost within the amount held", fits),
        ]

    # ------------------------------------------------------------ settlement

    cost_of = staticmethod(Payments.cost_of)

    def capture(
        self,
        charge: Charge,
        offer: ModelOffer,
        provider_id: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> int:
        """Charge for what was delivered; returns the cost (0 when nothing was held). The
        owner is told in the background; ``stored`` waits for its word."""
        if charge.settled:
            return charge.cost or 0
        cost = self.cost_of(charge, offer, prompt_tokens, completion_tokens)
        charge.status, charge.cost = "captured", cost
        if charge.held == 0:
            return 0
        body = wire.encode(
            {
                "request_id": charge.request_id,
                "price_input_per_mtok": offer.price_input_per_mtok,
                "price_output_per_mtok": offer.price_output_per_mtok,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "provider_id": provider_id,
            }
        )
        charge.stored = self._settlement(self._captured(charge, body))
        return cost

    def release(self, charge: Charge, reason: str) -> None:
        """Give the hold back (failed or abandoned work), in the background."""
        if charge.settled:
            return
        charge.status, charge.cost = "released", 0
        if charge.held:
            charge.stored = self._send_release(charge.request_id, reason)

    async def stored(self, charge: Charge) -> None:
        """Wait until the owner has stored the settlement; LedgerUnavailable if it did not."""
        if charge.stored is not None:
            await asyncio.shield(charge.stored)

    def _send_release(self, request_id: str, reason: str) -> asyncio.Future[None]:
        body = wire.encode({"request_id": request_id, "reason": reason})
        return self._settlement(self._released(body))

    def _settlement(self, work: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        """Run ``work`` (settling with the owner) in a task kept until it is done; the
        returned future says how it ended (LedgerUnavailable when it did not land)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_observed)

        def finished(task: asyncio.Task[None]) -> None:
            self._pending.discard(task)
            if task.cancelled():
                done.set_exception(LedgerUnavailable("The settlement was not confirmed."))
                return
            exc = task.exception()
            if exc is None:
                done.set_result(None)
                return
            if not isinstance(exc, TesseraError):
                log.error("settlement with the ledger owner failed", exc_info=exc)
                exc = LedgerUnavailable("The settlement with the ledger owner failed.")
            done.set_exception(exc)

        task = asyncio.create_task(work)
        self._pending.add(task)
        task.add_done_callback(finished)
        return done

    async def _captured(self, charge: Charge, body: bytes) -> None:
        got = _decode(wire.CaptureResponse, await self._settle(wire.CAPTURE, body))
        if got.status == "released":
            charge.cost = 0
            raise LedgerUnavailable(
                "The ledger had already given this request's hold back, so nothing was charged.",
                code="hold_released",
            )
        if got.cost != charge.cost:
            log.error("%s: the owner charged %d, not %d", charge.request_id, got.cost, charge.cost)
            charge.cost = got.cost

    async def _released(self, body: bytes) -> None:
        _decode(wire.ReleaseResponse, await self._settle(wire.RELEASE, body))

    async def _settle(self, subject: str, body: bytes) -> bytes:
        """Send a settlement until the owner answers it for good (it is idempotent), for up
        to ``settle_for_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settle_for_s
        delay = _FIRST_BACKOFF_S
        while True:
            try:
                data = (await self.bus.request(subject, body, self.timeout_s)).data
                _raise_for_error(data, retryable_only=True)
                return data
            except (BusError, _Retry) as exc:
                left = deadline - loop.time()
                if left <= 0 or self._giving_up:
                    raise LedgerUnavailable(
                        f"The ledger owner did not confirm this settlement ({exc})."
                    ) from None
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 1.0)


class _NoOwner(LedgerUnavailable):
    """Nobody listened on the ledger subjects for ``owner_wait_s``: nothing was received."""


class _Retry(Exception):
    """The owner answered that it cannot record this now."""


def _raise_for_error(data: bytes, *, retryable_only: bool = False) -> None:
    """Raise what an error reply says: QuotaExceeded, LedgerUnavailable, or (with
    ``retryable_only``) _Retry for a passing failure worth asking again."""
    try:
        body = json.loads(data)
    except ValueError:
        raise LedgerUnavailable("The ledger owner's answer was unreadable.") from None
    if not isinstance(body, dict) or "error" not in body:
        return
    try:
        error = wire.WireError.model_validate(body["error"])
    except ValueError:
        raise LedgerUnavailable("The ledger owner's answer was unreadable.") from None
    if error.kind == "quota":
        raise QuotaExceeded(error.message)
    if retryable_only and error.kind in ("unavailable", "busy") and error.code != "journal_refused":
        raise _Retry(error.message)
    raise LedgerUnavailable(error.message, code=error.code or None)


def _decode(model: type[W], data: bytes) -> W:
    """An owner's reply as ``model``, its error raised as ours."""
    _raise_for_error(data)
    try:
        return model.model_validate_json(data)
    except ValueError:
        raise LedgerUnavailable("The ledger owner's answer was unreadable.") from None


def _observed(future: asyncio.Future[None]) -> None:
    """A settlement's failure may be awaited by nobody (a release): it was logged."""
    if not future.cancelled():
        future.exception()
