"""The ledger owner's desk on the bus: how replicas that do not own the ledger spend money.

Only one replica per database owns the ledger (gateway/ledger_ownership.py), so only it
runs a :class:`LedgerService`. The others (gateway/remote_money.py) ask it over the bus,
in the queue group ``ledger``, on these subjects; bodies are compact JSON, replies are
either the fields below or ``{"error": {"kind", "message", "code"}}``:

    tsr.v1.ledger.hold     {request_id, account_id, key_id, caps: {total, daily}, amounts,
                            memo, replica, early}                  -> {held, stored}
    tsr.v1.ledger.confirm  {request_id}                            -> {stored}
    tsr.v1.ledger.capture  {request_id, price_input_per_mtok, price_output_per_mtok,
                            prompt_tokens, completion_tokens, provider_id}
                                                                   -> {cost, status}
    tsr.v1.ledger.release  {request_id, reason}                    -> {status}
    tsr.v1.ledger.balance  {account_id}                            -> {balance, held}
    tsr.v1.ledger.stakes   {}                                      -> {stakes: {provider: units}}

Error kinds: ``invalid`` (the message is malformed: nothing moved), ``quota`` (the
consumer cannot afford the cheapest amount; the message is the one a local request gets),
``unavailable`` (the journal cannot record it now: retry), ``conflict`` (the request id is
settled already, or held by the owner's own requests), ``busy`` (too many requests at once).

A hold is answered once it is durable, so an owner crash loses no acknowledged hold; with
``early`` it is answered as soon as it is decided (``stored: false``) and the asker must
get ``confirm`` through before it reports anything the hold paid for, so the commit runs
while the provider works. A hold an owner crash lost is never confirmed: the request
fails unpaid.
Every call is idempotent by request id: a retried hold answers the amount held the first
time, a retried capture the cost recorded the first time, and a settled request id is
remembered (the last ``remember`` of them) so that a late or repeated hold can never open it
again; the in-memory book, which keeps no journal, could not tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tessera.errors import LedgerUnavailable, QuotaExceeded
from tessera.gateway.bookkeeper import Bookkeeper
from tessera.gateway.bus import Bus, BusError, BusMessage, Subscription
from tessera.gateway.payments import Payer, shortfall
from tessera.ledger.accounts import MAX_UNITS, AccountKind
from tessera.ledger.book import CapReached
from tessera.ledger.escrow import OpenHold
from tessera.ledger.journal import Entry, InsufficientFunds, LedgerError
from tessera.ledger.pricing import Price
from tessera.ledger.spend_caps import SpendCaps

log = logging.getLogger("tessera.gateway.ledger_service")

HOLD = "tsr.v1.ledger.hold"
CAPTURE = "tsr.v1.ledger.capture"
RELEASE = "tsr.v1.ledger.release"
BALANCE = "tsr.v1.ledger.balance"
STAKES = "tsr.v1.ledger.stakes"
CONFIRM = "tsr.v1.ledger.confirm"
QUEUE = "ledger"

MAX_AMOUNTS = 64  # candidate amounts in one hold request
MAX_MESSAGE_BYTES = 16 * 1024  # a hold with every field at its limit is under 8 KiB
REMEMBERED = 100_000  # settled request ids kept for idempotent retries
MAX_IN_FLIGHT = 10_000  # requests being answered at once (each waits for a commit)
ORPHANED = "replica_gone"

# Ids are printable ASCII without spaces; those that name an account also without ':'.
RequestId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[!-~]+$")]
OwnerId = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[!-9;-~]+$")]
Units = Annotated[int, Field(ge=0, le=MAX_UNITS)]
Reason = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[!-~]+$")]
MemoKey = Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]
MemoValue = Annotated[str, Field(max_length=200, pattern=r"^[^\x00]*$")]


class Wire(BaseModel):
    """A ledger message: strict JSON types (no "1" for 1, no 1.0), unknown fields ignored
    so that a newer replica's extra field does not stop money during a rolling upgrade."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class WireCaps(Wire):
    total: Units | None = None
    daily: Units | None = None


class HoldRequest(Wire):
    request_id: RequestId
    account_id: OwnerId
    key_id: RequestId
    caps: WireCaps = WireCaps()
    amounts: Annotated[list[Units], Field(max_length=MAX_AMOUNTS)]
    memo: Annotated[dict[MemoKey, MemoValue], Field(max_length=4)] = {}
    replica: OwnerId
    # Answer once the hold is decided, before it is stored; the asker overlaps the
    # commit with the provider's work and confirms it (CONFIRM) before answering.
    early: bool = False

    @model_validator(mode="after")
    def _descending(self) -> HoldRequest:
        if any(a < b for a, b in zip(self.amounts, self.amounts[1:], strict=False)):
            raise ValueError("amounts must be in descending order")
        return self


class CaptureRequest(Wire):
    request_id: RequestId
    price_input_per_mtok: Units
    price_output_per_mtok: Units
    prompt_tokens: Units
    completion_tokens: Units
    provider_id: OwnerId


class ReleaseRequest(Wire):
    request_id: RequestId
    reason: Reason


class BalanceRequest(Wire):
    account_id: OwnerId


class StakesRequest(Wire):
    pass


class HoldResponse(Wire):
    held: Units
    stored: bool = True  # False: confirm it on CONFIRM before reporting what it paid for


class ConfirmRequest(Wire):
    request_id: RequestId


class ConfirmResponse(Wire):
    stored: bool


class CaptureResponse(Wire):
    cost: Units
    status: Annotated[str, Field(pattern=r"^(captured|released)$")]


class ReleaseResponse(Wire):
    status: Annotated[str, Field(pattern=r"^(captured|released)$")]


class BalanceResponse(Wire):
    balance: Units
    held: Units


class StakesResponse(Wire):
    stakes: dict[OwnerId, Units]


class WireError(Wire):
    kind: Annotated[str, Field(max_length=32)]
    message: Annotated[str, Field(max_length=2_000)]
    code: Annotated[str, Field(max_length=64)] | None = None


class Refusal(Exception):
    """A request answered with an error reply; nothing moved for it."""

    def __init__(self, kind: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.code = kind, message, code

    def body(self) -> dict[str, Any]:
        return {"error": {"kind": self.kind, "message": self.message, "code": self.code}}


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


W = TypeVar("W", bound=Wire)


def parse(model: type[W], data: bytes) -> W:
    """``data`` as ``model``; Refusal("invalid") saying the first problem if it is not."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise Refusal("invalid", f"a {len(data)}-byte ledger message is over {MAX_MESSAGE_BYTES}")
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise Refusal("invalid", f"{where}: {first['msg']}"[:500]) from None


@dataclass(slots=True)
class _OpenHold:
    """A hold made over the bus, open: who asked, how much, and when it is durable."""

    replica: str
    amount: int
    ready: asyncio.Future[None]


@dataclass(slots=True)
class _Settled:
    """How a request id ended; ``stored`` until its capture is known durable."""

    status: str  # captured | released
    cost: int
    stored: asyncio.Future[Entry] | None = None


Handler = Callable[[bytes], Awaitable[dict[str, Any]]]


class LedgerService:
    """Answers the ledger subjects from the owner's bookkeeper (see the module docstring)."""

    def __init__(
        self,
        bus: Bus,
        bookkeeper: Bookkeeper,
        replica_id: str,
        *,
        remember: int = REMEMBERED,
        max_in_flight: int = MAX_IN_FLIGHT,
        close_wait_s: float = 5.0,
    ) -> None:
        self.bus = bus
        self.bookkeeper = bookkeeper
        self.replica_id = replica_id
        self.remember = remember
        self.max_in_flight = max_in_flight
        self.close_wait_s = close_wait_s
        self._open: dict[str, _OpenHold] = {}
        self._settled: OrderedDict[str, _Settled] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._subs: list[Subscription] = []
        self._staked: set[str] = set()  # providers that ever had a stake account
        self._handlers: dict[str, Handler] = {
            HOLD: self._hold,
            CAPTURE: self._capture,
            RELEASE: self._release,
            BALANCE: self._balance,
            STAKES: self._stakes,
            CONFIRM: self._confirm,
        }

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        """Follow the stakes and answer every ledger subject (queue group ``ledger``)."""
        book = self.bookkeeper.book
        self._staked = {a.owner for a in book.ledger.balances() if a.kind is AccountKind.STAKE}
        book.listeners.append(self._saw)
        for subject in self._handlers:
            self._subs.append(await self.bus.subscribe(subject, self._receive, queue=QUEUE))

    async def close(self) -> None:
        """Stop answering; requests being answered get a few seconds to finish."""
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.unsubscribe()
        with contextlib.suppress(ValueError):
            self.bookkeeper.book.listeners.remove(self._saw)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.close_wait_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _saw(self, entry: Entry) -> None:
        for posting in entry.postings:
            if posting.account.kind is AccountKind.STAKE:
                self._staked.add(posting.account.owner)

    # ------------------------------------------------------------ dispatch

    async def _receive(self, message: BusMessage) -> None:
        """Answer each request in its own task: a hold waits for a commit, and the next
        one must not wait behind it (the bus calls a handler one message at a time)."""
        if len(self._tasks) >= self.max_in_flight:
            busy = Refusal("busy", "The ledger owner is answering too many requests; retry.")
            await self._answer(message, busy.body())
            return
        task = asyncio.create_task(self._serve(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, message: BusMessage) -> None:
        handler = self._handlers.get(message.subject)
        try:
            if handler is None:
                raise Refusal("invalid", f"no ledger call on {message.subject}")
            body = await handler(message.data)
        except Refusal as exc:
            body = exc.body()
        except QuotaExceeded as exc:
            body = Refusal("quota", exc.message, exc.code).body()
        except LedgerUnavailable as exc:
            body = Refusal("unavailable", exc.message, exc.code).body()
        except Exception:
            log.exception("ledger call on %s failed", message.subject)
            body = Refusal("unavailable", "The ledger owner failed on this call; retry.").body()
        await self._answer(message, body)

    async def _answer(self, message: BusMessage, body: dict[str, Any]) -> None:
        try:
            await self.bus.respond(message, encode(body))
        except BusError as exc:  # the asker retries by request id
            log.warning("could not answer a ledger call on %s: %s", message.subject, exc)

    def _settle(self, request_id: str, settled: _Settled) -> _Settled:
        """Remember how ``request_id`` ended (bounded: the oldest are forgotten)."""
        self._open.pop(request_id, None)
        self._settled[request_id] = settled
        self._settled.move_to_end(request_id)
        while len(self._settled) > self.remember:
            self._settled.popitem(last=False)
        return settled

    def _foreign(self, request_id: str) -> Refusal:
        return Refusal("conflict", f"{request_id} is held by the ledger owner's own request")

    # ------------------------------------------------------------ hold

    async def _hold(self, data: bytes) -> dict[str, Any]:
        request = parse(HoldRequest, data)
        rid = request.request_id
        known = self._open.get(rid)
        if known is not None:  # a retry: answer what the first one held
            await self._ready(known)
            return {"held": known.amount}
        if rid in self._settled:
            raise Refusal("conflict", f"{rid} is settled already; a new request needs a new id")
        if self.bookkeeper.book.escrow.held(rid) is not None:
            raise self._foreign(rid)
        amount = self._affordable(request)
        if amount == 0:
            return {"held": 0}
        stored = self._post(request, amount)
        record = _OpenHold(request.replica, amount, asyncio.get_running_loop().create_future())
        record.ready.add_done_callback(_observed)
        self._open[rid] = record
        if request.early:
            task = asyncio.create_task(self._store_quietly(rid, record, stored))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return {"held": amount, "stored": False}
        await self._store(rid, record, stored)
        return {"held": amount}

    async def _store_quietly(
        self, rid: str, record: _OpenHold, stored: asyncio.Future[Entry]
    ) -> None:
        """``_store`` for an early answer: a failure is told on CONFIRM, not raised here."""
        with contextlib.suppress(Exception):
            await self._store(rid, record, stored)

    async def _store(self, rid: str, record: _OpenHold, stored: asyncio.Future[Entry]) -> None:
        """Wait until a posted hold is stored; release it (and say why) if it cannot be."""
        try:
            await self.bookkeeper.confirm_hold(rid, stored)
        except BaseException as exc:  # confirm_hold released it
            if self._open.get(rid) is record:
                self._settle(rid, _Settled("released", 0))
            failure = (
                exc
                if isinstance(exc, LedgerUnavailable)
                else LedgerUnavailable(
                    "The ledger owner stopped before this hold was stored; nothing was held."
                )
            )
            record.ready.set_exception(failure)
            raise
        record.ready.set_result(None)

    async def _confirm(self, data: bytes) -> dict[str, Any]:
        """Answer once an early-answered hold is stored; ``unavailable`` if it never will
        be (the journal refused it, or this owner never saw it: a takeover lost it)."""
        request = parse(ConfirmRequest, data)
        record = self._open.get(request.request_id)
        if record is not None:
            await self._ready(record)
            return {"stored": True}
        settled = self._settled.get(request.request_id)
        if settled is not None and settled.status == "captured":
            return {"stored": True}  # captured already: its hold was stored before it
        raise LedgerUnavailable(
            "The hold for this request was not stored (the ledger's owner changed or its "
            "journal refused it); nothing was charged. Retry the request.",
            code="hold_not_stored",
        )

    @staticmethod
    async def _ready(record: _OpenHold) -> None:
        await asyncio.shield(record.ready)

    def _payer(self, request: HoldRequest) -> Payer:
        caps = SpendCaps(request.caps.total, request.caps.daily)
        return Payer(request.account_id, request.key_id, caps)

    def _affordable(self, request: HoldRequest) -> int:
        """The largest candidate the payer may hold now (0: nothing to hold); QuotaExceeded,
        worded as for a local request, when not even the smallest is."""
        if not request.amounts or request.amounts[0] == 0:
            return 0
        payer = self._payer(request)
        book, now = self.bookkeeper.book, self.bookkeeper.clock()
        spendable = book.spendable(payer.account_id, payer.key_id, payer.caps, now)
        for amount in request.amounts:
            if amount <= spendable:
                return amount
        raise shortfall(self.bookkeeper, payer, request.amounts[-1])

    def _post(self, request: HoldRequest, amount: int) -> asyncio.Future[Entry]:
        payer = self._payer(request)
        memo = {**request.memo, "replica": request.replica}
        try:
            return self.bookkeeper.post_hold(
                payer.account_id, payer.key_id, payer.caps, request.request_id, amount, memo
            )
        except (InsufficientFunds, CapReached):
            raise shortfall(self.bookkeeper, payer, request.amounts[-1]) from None
        except (LedgerError, ValueError) as exc:
            raise Refusal("invalid", f"the hold was refused: {exc}"[:500]) from None

    # ------------------------------------------------------------ settle

    async def _capture(self, data: bytes) -> dict[str, Any]:
        request = parse(CaptureRequest, data)
        rid = request.request_id
        settled = self._settled.get(rid)
        if settled is None:
            settled = self._capture_now(request)
        if settled.stored is not None:
            try:
                await self.bookkeeper.durable(settled.stored)
            except LedgerUnavailable as exc:
                if exc.code == "journal_refused":  # the book took it back and released
                    settled.status, settled.cost, settled.stored = "released", 0, None
                raise
            settled.stored = None
        return {"cost": settled.cost, "status": settled.status}

    def _capture_now(self, request: CaptureRequest) -> _Settled:
        rid = request.request_id
        if rid not in self._open:
            if self.bookkeeper.book.escrow.held(rid) is not None:
                raise self._foreign(rid)
            return self._settle(rid, _Settled("released", 0))  # released, or never held
        price = Price(request.price_input_per_mtok, request.price_output_per_mtok)
        try:
            cost, stored = self.bookkeeper.capture(
                rid,
                price,
                request.prompt_tokens,
                request.completion_tokens,
                request.provider_id,
            )
        except (LedgerError, ValueError) as exc:
            raise Refusal("invalid", f"the capture was refused: {exc}"[:500]) from None
        return self._settle(rid, _Settled("captured", cost, stored))

    async def _release(self, data: bytes) -> dict[str, Any]:
        request = parse(ReleaseRequest, data)
        rid = request.request_id
        settled = self._settled.get(rid)
        if settled is not None:
            return {"status": settled.status}
        if rid in self._open:
            self.bookkeeper.release(rid, request.reason)
        elif self.bookkeeper.book.escrow.held(rid) is not None:
            raise self._foreign(rid)
        # Unknown ids are remembered too: a hold that arrives after its release stays shut.
        self._settle(rid, _Settled("released", 0))
        return {"status": "released"}

    def adopt(self, holds: Iterable[OpenHold]) -> int:
        """Take over holds another owner made for live replicas (found open in the journal
        at a takeover): their captures and releases, retried, now come here. Returns how
        many; holds that name no replica are not the bus's and are left alone."""
        adopted = 0
        for hold in holds:
            replica = hold.memo.get("replica")
            if not replica or hold.request_id in self._open:
                continue
            if self.bookkeeper.book.escrow.held(hold.request_id) is None:
                continue  # settled since it was found
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            ready.set_result(None)  # replayed from the journal: durable already
            self._open[hold.request_id] = _OpenHold(replica, hold.amount, ready)
            adopted += 1
        return adopted

    def release_orphans(self, replica_id: str) -> int:
        """Release every open hold ``replica_id`` made over the bus (it died: its requests
        will never be captured); returns how many. The owner's own holds are untouched."""
        orphans = [rid for rid, hold in self._open.items() if hold.replica == replica_id]
        for rid in orphans:
            self.bookkeeper.release(rid, ORPHANED)
            self._settle(rid, _Settled("released", 0))
        if orphans:
            log.warning("released %d hold(s) of replica %s, gone", len(orphans), replica_id)
        return len(orphans)

    def open_holds(self, replica_id: str | None = None) -> int:
        """How many holds made over the bus are open (by ``replica_id``, or by anyone)."""
        return sum(1 for h in self._open.values() if replica_id in (None, h.replica))

    # ------------------------------------------------------------ reads

    async def _balance(self, data: bytes) -> dict[str, Any]:
        request = parse(BalanceRequest, data)
        view = self.bookkeeper.book.consumer(request.account_id)
        return {"balance": view.balance, "held": view.held}

    async def _stakes(self, data: bytes) -> dict[str, Any]:
        parse(StakesRequest, data)
        book = self.bookkeeper.book
        staked = self._staked if book.chain_stake is None else book.staked_providers()
        bonded = {p: book.bonded(p) for p in staked}
        return {"stakes": {p: units for p, units in bonded.items() if units > 0}}


def _observed(future: asyncio.Future[None]) -> None:
    """A hold's failure was answered to its first asker; retries may never come."""
    if not future.cancelled():
        future.exception()
