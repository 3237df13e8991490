"""Spending over the bus: RemoteMoney on a replica, LedgerService on the ledger owner.

All on the in-process bus and a real bookkeeper over SQLite. What must hold: a remote
replica moves exactly the money the owner's own Payments would; every call is idempotent
by request id; concurrent holds never overdraw; a request given up leaves no hold; a dead
replica's holds, and only its, are released; and no malformed message moves anything.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tessera.errors import LedgerUnavailable, QuotaExceeded
from tessera.gateway.bookkeeper import Bookkeeper
from tessera.gateway.bus import BusMessage, LocalBus
from tessera.gateway.ledger_service import (
    BALANCE,
    CAPTURE,
    HOLD,
    RELEASE,
    STAKES,
    LedgerService,
    encode,
)
from tessera.gateway.payments import Charge, Payer, Payments
from tessera.gateway.remote_money import RemoteMoney
from tessera.ledger.accounts import TOKEN, Account
from tessera.ledger.book import BookPolicy, ConsumerView
from tessera.ledger.spend_caps import SpendCaps
from tessera.market.policy import Filter
from tessera.market.registry import ProviderRegistry
from tessera.market.routing import RouteRequest
from tessera.market.stake_policy import StakePolicy
from tessera.protocol.wire import (
    Capabilities,
    ChatMessage,
    Hardware,
    Job,
    ModelOffer,
    SamplingParams,
)
from tessera.store.engine import create_engine, database_url_for
from tessera.store.ledger import LedgerStore

pytestmark = pytest.mark.integration

MODEL = "m"
DEAR = "d" * 64
CHEAP = "c" * 64
KEY = "key_0000000000000001"
PRICES = {
    DEAR: (3_000 * 1_000_000, 6_000 * 1_000_000),
    CHEAP: (1_000 * 1_000_000, 2_000 * 1_000_000),
}
FUNDS = 10 * TOKEN


def offer(price: tuple[int, int]) -> ModelOffer:
    return ModelOffer(
        name=MODEL,
        weights_sha256="ab" * 32,
        kind="text",
        context_length=1024,
        price_input_per_mtok=price[0],
        price_output_per_mtok=price[1],
    )


def registry(prices: dict[str, tuple[int, int]]) -> ProviderRegistry:
    made = ProviderRegistry()
    for provider_id, price in prices.items():
        caps = Capabilities(
            public_key=provider_id,
            agent_version="test",
            models=[offer(price)],
            hardware=Hardware(cpu="test", cpu_cores=1, ram_bytes=1),
            region="US",
            max_concurrent_jobs=4,
        )
        made.add(provider_id, caps, now=0.0)
    return made


def job(max_tokens: int = 8) -> Job:
    return Job(
        job_id="j1",
        model=MODEL,
        kind="chat",
        messages=[ChatMessage(role="user", content="hi")],
        params=SamplingParams(max_tokens=max_tokens),
    )


def route() -> RouteRequest:
    return RouteRequest(model=MODEL)


def passing(check: Filter, providers: ProviderRegistry) -> list[str]:
    """The providers of MODEL that ``check`` lets through, dearest first."""
    pool = providers.pool(MODEL)
    members = [pool.get(pid) for pid in (DEAR, CHEAP)]
    return [p.provider_id for p in members if p is not None and check.test(p, p.offers[MODEL])]


@dataclass
class Desk:
    """The owner (bookkeeper, its own Payments and its LedgerService) and the bus."""

    keeper: Bookkeeper
    bus: LocalBus
    service: LedgerService
    registry: ProviderRegistry
    payments: Payments
    remotes: list[RemoteMoney] = field(default_factory=list)
    accounts: int = 0

    async def remote(
        self, replica_id: str = "r1", providers: ProviderRegistry | None = None, **kw: Any
    ) -> RemoteMoney:
        money = RemoteMoney(
            self.bus, providers or self.registry, StakePolicy(), replica_id=replica_id, **kw
        )
        self.remotes.append(money)
        return money

    async def account(self, funds: int = FUNDS, caps: SpendCaps | None = None) -> Payer:
        self.accounts += 1
        account_id = f"acct_{self.accounts:016x}"
        if funds:
            await self.keeper.mint(account_id, funds, f"deposit-{account_id}")
        return Payer(account_id, f"key_{self.accounts:016x}", caps or SpendCaps())

    def view(self, payer: Payer) -> ConsumerView:
        return self.keeper.book.consumer(payer.account_id)

    async def ask(self, subject: str, body: bytes) -> dict[str, Any]:
        reply = await self.bus.request(subject, body, 2.0)
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    def state(self) -> tuple[dict[Account, int], list[str]]:
        book = self.keeper.book
        return dict(book.ledger.balances()), [h.request_id for h in book.open_holds()]


@pytest.fixture
async def desk(gateway_dir: Path) -> AsyncIterator[Desk]:
    engine = create_engine(database_url_for(gateway_dir))
    store = LedgerStore(engine)
    keeper, _ = await Bookkeeper.open(store, BookPolicy())
    bus = LocalBus()
    service = LedgerService(bus, keeper, "owner")
    await service.start()
    made = Desk(
        keeper, bus, service, registry(PRICES), Payments(keeper, registry(PRICES), StakePolicy())
    )
    try:
        yield made
    finally:
        for money in made.remotes:
            await money.close()
        await service.close()
        await bus.close()
        await keeper.flush()
        assert keeper.book.check() == []
        await keeper.close()
        assert await store.check() == []
        await engine.dispose()


def hold_body(payer: Payer, request_id: str, amounts: list[int], replica: str = "r1") -> bytes:
    return encode(
        {
            "request_id": request_id,
            "account_id": payer.account_id,
            "key_id": payer.key_id,
            "caps": {"total": payer.caps.total, "daily": payer.caps.daily},
            "amounts": amounts,
            "memo": {"model": MODEL},
            "replica": replica,
        }
    )


def capture_body(request_id: str, prompt: int = 3, completion: int = 1) -> bytes:
    price = PRICES[DEAR]
    return encode(
        {
            "request_id": request_id,
            "price_input_per_mtok": price[0],
            "price_output_per_mtok": price[1],
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "provider_id": DEAR,
        }
    )


# ------------------------------------------------------------ same money as Payments


async def test_remote_hold_capture_and_release_move_what_payments_would(desk: Desk) -> None:
    remote = await desk.remote()
    await remote.start()
    local_payer = await desk.account(caps=SpendCaps(total=5 * TOKEN))
    remote_payer = await desk.account(caps=SpendCaps(total=5 * TOKEN))
    dear_offer = offer(PRICES[DEAR])

    async def spend(money: Payments | RemoteMoney, payer: Payer, prefix: str) -> list[Any]:
        seen: list[Any] = []
        captured = await money.reserve(payer, f"{prefix}-1", job(), route())
        await money.confirm(captured)
        cost = money.capture(captured, dear_offer, DEAR, 30, 5)
        assert money.cost_of(captured, dear_offer, 1, 1) == cost  # settled: fixed
        await money.stored(captured)
        released = await money.reserve(payer, f"{prefix}-2", job(max_tokens=100), route())
        await money.confirm(released)
        money.release(released, "provider_failed")
        await money.stored(released)
        seen += [captured.held, cost, captured.status, released.held, released.status]
        return seen

    assert await spend(remote, remote_payer, "remote") == await spend(
        desk.payments, local_payer, "local"
    )
    await desk.keeper.flush()
    assert desk.view(remote_payer) == desk.view(local_payer)
    assert desk.view(remote_payer).held == 0 and desk.view(remote_payer).balance < FUNDS
    assert await remote.fetch_balance(remote_payer.account_id) == desk.view(remote_payer)
    assert remote.balance(remote_payer.account_id) == desk.view(remote_payer)
    assert remote.balance("acct_ffffffffffffffff") == ConsumerView(0, 0)
    assert desk.service.open_holds() == 0


async def test_the_hold_is_the_dearest_worst_case_the_payer_can_afford(desk: Desk) -> None:
    remote = await desk.remote()
    rich = await desk.account()
    dearest = (await desk.payments.reserve(rich, "probe", job(), route())).held
    desk.payments.release(Charge("probe", MODEL, dearest), "probe")
    poor = await desk.account(funds=dearest - 1)  # cannot afford the dear one
    charge = await remote.reserve(poor, "poor-1", job(), route())
    assert 0 < charge.held < dearest
    assert desk.view(poor) == ConsumerView(dearest - 1 - charge.held, charge.held)
    # Only the cheap provider fits what was held.
    assert passing(remote.admit(charge, job())[1], desk.registry) == [CHEAP]
    remote.release(charge, "done")
    await remote.stored(charge)


async def test_quota_errors_say_what_a_local_request_is_told(desk: Desk) -> None:
    remote = await desk.remote()
    for funds, caps in ((1_000, SpendCaps()), (FUNDS, SpendCaps(total=1_000))):
        local = await desk.account(funds, caps)
        there = await desk.account(funds, caps)
        with pytest.raises(QuotaExceeded) as told_locally:
            await desk.payments.reserve(local, "q-local", job(), route())
        with pytest.raises(QuotaExceeded) as told_remotely:
            await remote.reserve(there, "q-remote", job(), route())
        assert told_remotely.value.message == told_locally.value.message
        assert desk.view(there) == ConsumerView(funds, 0)
        assert ("spend cap" in told_remotely.value.message) == (caps.total is not None)


async def test_only_free_providers_hold_nothing_and_ask_nobody(desk: Desk) -> None:
    free = registry({CHEAP: (0, 0)})
    remote = RemoteMoney(LocalBus(), free, StakePolicy(), replica_id="r1")  # no owner there
    payer = Payer("acct_00000000000000f0", KEY)
    charge = await remote.reserve(payer, "free-1", job(), route())
    assert charge.held == 0
    assert remote.capture(charge, offer((0, 0)), CHEAP, 3, 1) == 0
    await remote.stored(charge)
    await remote.close()


# ------------------------------------------------------------ idempotent by request id


async def test_retried_holds_and_captures_move_money_once(desk: Desk) -> None:
    payer = await desk.account()
    first = await desk.ask(HOLD, hold_body(payer, "r-1", [5_000_000, 1_000]))
    again = await desk.ask(HOLD, hold_body(payer, "r-1", [9_000_000]))
    assert first == again == {"held": 5_000_000}
    assert desk.view(payer) == ConsumerView(FUNDS - 5_000_000, 5_000_000)
    captured = await desk.ask(CAPTURE, capture_body("r-1"))
    cost = captured["cost"]
    assert captured == {"cost": cost, "status": "captured"} and 0 < cost < 5_000_000
    assert await desk.ask(CAPTURE, capture_body("r-1", 900, 900)) == captured
    assert await desk.ask(RELEASE, encode({"request_id": "r-1", "reason": "x"})) == {
        "status": "captured"
    }
    late = await desk.ask(HOLD, hold_body(payer, "r-1", [1_000]))
    assert late["error"]["kind"] == "conflict"
    assert desk.view(payer) == ConsumerView(FUNDS - cost, 0)
    # A release is idempotent too, and a capture after it charges nothing.
    await desk.ask(HOLD, hold_body(payer, "r-2", [1_000]))
    for _ in range(2):
        assert await desk.ask(RELEASE, encode({"request_id": "r-2", "reason": "x"})) == {
            "status": "released"
        }
    assert await desk.ask(CAPTURE, capture_body("r-2")) == {"cost": 0, "status": "released"}
    assert await desk.ask(CAPTURE, capture_body("never-held")) == {"cost": 0, "status": "released"}
    assert desk.view(payer) == ConsumerView(FUNDS - cost, 0)


async def test_concurrent_retries_of_one_hold_hold_once(desk: Desk) -> None:
    payer = await desk.account()
    answers = await asyncio.gather(
        *(desk.ask(HOLD, hold_body(payer, "same", [7_000])) for _ in range(10))
    )
    assert answers == [{"held": 7_000}] * 10
    assert desk.view(payer).held == 7_000


async def test_the_owners_own_holds_are_not_the_bus_s_to_settle(desk: Desk) -> None:
    payer = await desk.account()
    charge = await desk.payments.reserve(payer, "own-1", job(), route())
    await desk.payments.confirm(charge)
    for subject, body in (
        (CAPTURE, capture_body("own-1")),
        (RELEASE, encode({"request_id": "own-1", "reason": "x"})),
        (HOLD, hold_body(payer, "own-1", [1_000])),
    ):
        assert (await desk.ask(subject, body))["error"]["kind"] == "conflict"
    assert desk.view(payer).held == charge.held
    desk.payments.release(charge, "done")


# ------------------------------------------------------------ concurrency and failures


async def test_concurrent_holds_from_two_replicas_never_overdraw(desk: Desk) -> None:
    only_dear = registry({DEAR: PRICES[DEAR]})  # one price: every hold is the same
    one, two = await desk.remote("r1", only_dear), await desk.remote("r2", only_dear)
    rich = await desk.account()
    hold = (await one.reserve(rich, "probe", job(), route())).held
    payer = await desk.account(funds=7 * hold + hold // 2)

    async def reserve(i: int) -> Charge | BaseException:
        money = one if i % 2 else two
        try:
            return await money.reserve(payer, f"c-{i}", job(), route())
        except QuotaExceeded as exc:
            return exc

    got = await asyncio.gather(*(reserve(i) for i in range(40)))
    charges = [c for c in got if isinstance(c, Charge)]
    assert len(charges) == 7 and all(c.held == hold for c in charges)
    assert all(isinstance(c, QuotaExceeded) for c in got if not isinstance(c, Charge))
    assert desk.view(payer) == ConsumerView(hold // 2, 7 * hold)


async def test_no_owner_is_ledger_unavailable_after_the_wait(desk: Desk) -> None:
    await desk.service.close()
    remote = await desk.remote(owner_wait_s=0.3)
    payer = await desk.account()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(LedgerUnavailable, match="Retry"):
        await remote.reserve(payer, "none-1", job(), route())
    assert 0.3 <= loop.time() - started < 2
    # A new owner appearing within the wait is used.
    patient = await desk.remote(owner_wait_s=5)
    waiting = asyncio.create_task(patient.reserve(payer, "none-2", job(), route()))
    await asyncio.sleep(0.2)
    takeover = LedgerService(desk.bus, desk.keeper, "owner-2")
    await takeover.start()
    assert (await waiting).held > 0
    assert desk.view(payer).held == (await waiting).held
    patient.release(waiting.result(), "done")
    await patient.stored(waiting.result())
    await takeover.close()


@pytest.mark.parametrize("lost", ["reply", "request"])
async def test_a_hold_given_up_on_is_released(desk: Desk, lost: str) -> None:
    """The owner's answer is lost (it held), or the hold reaches it too late (after the
    asker gave up and released): either way nothing stays held."""
    outer = LocalBus()
    remote = RemoteMoney(outer, desk.registry, StakePolicy(), replica_id="r1", timeout_s=0.2)

    async def forward(message: BusMessage) -> None:
        if message.subject == HOLD and lost == "request":
            await asyncio.sleep(0.5)  # the release overtakes it
        reply = await desk.bus.request(message.subject, message.data, 2.0)
        if not (message.subject == HOLD and lost == "reply"):
            await outer.respond(message, reply.data)

    await outer.subscribe("tsr.v1.ledger.>", forward)
    payer = await desk.account()
    with pytest.raises(LedgerUnavailable, match="in time"):
        await remote.reserve(payer, "gone-1", job(), route())
    await asyncio.sleep(0.8)
    await remote.close()
    assert desk.view(payer) == ConsumerView(FUNDS, 0)
    assert desk.service.open_holds() == 0 and desk.keeper.book.open_holds() == []
    await outer.close()


async def test_a_cancelled_reserve_releases_its_hold(desk: Desk) -> None:
    outer = LocalBus()
    remote = RemoteMoney(outer, desk.registry, StakePolicy(), replica_id="r1")
    answered = asyncio.Event()

    async def forward(message: BusMessage) -> None:
        reply = await desk.bus.request(message.subject, message.data, 2.0)
        if message.subject == HOLD:
            answered.set()
            await asyncio.sleep(10)  # the client leaves before the answer comes back
        await outer.respond(message, reply.data)

    await outer.subscribe("tsr.v1.ledger.>", forward, queue="x")
    await outer.subscribe(RELEASE, forward)
    payer = await desk.account()
    reserving = asyncio.create_task(remote.reserve(payer, "left-1", job(), route()))
    await answered.wait()
    assert desk.view(payer).held > 0
    reserving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reserving
    await remote.close()
    assert desk.view(payer) == ConsumerView(FUNDS, 0)
    await outer.close()


async def test_release_orphans_releases_only_that_replicas_holds(desk: Desk) -> None:
    one, two = await desk.remote("r1"), await desk.remote("r2")
    payer = await desk.account()
    mine = [await one.reserve(payer, f"one-{i}", job(), route()) for i in range(2)]
    theirs = await two.reserve(payer, "two-1", job(), route())
    own = await desk.payments.reserve(payer, "own-1", job(), route())
    await desk.payments.confirm(own)
    assert desk.service.open_holds("r1") == 2
    assert desk.service.release_orphans("r1") == 2
    assert desk.service.release_orphans("r1") == 0
    assert desk.view(payer).held == theirs.held + own.held
    # The dead replica's late capture charges nothing; the live one's goes through.
    dear = offer(PRICES[DEAR])
    one.capture(mine[0], dear, DEAR, 3, 1)
    with pytest.raises(LedgerUnavailable):
        await one.stored(mine[0])
    assert mine[0].cost == 0
    cost = two.capture(theirs, dear, DEAR, 3, 1)
    await two.stored(theirs)
    desk.payments.release(own, "done")
    await desk.keeper.flush()
    assert desk.view(payer) == ConsumerView(FUNDS - cost, 0)


async def test_a_new_owner_adopts_the_holds_made_over_the_bus(desk: Desk) -> None:
    remote = await desk.remote("r1")
    payer = await desk.account()
    charges = [await remote.reserve(payer, f"kept-{i}", job(), route()) for i in range(3)]
    own = await desk.payments.reserve(payer, "own-1", job(), route())
    await desk.payments.confirm(own)
    # A takeover: the next owner finds these open in the journal, its replicas alive.
    await desk.service.close()
    heir = LedgerService(desk.bus, desk.keeper, "owner-2")
    assert heir.adopt(desk.keeper.book.open_holds()) == 3  # not the old owner's own
    await heir.start()
    dear = offer(PRICES[DEAR])
    cost = remote.capture(charges[0], dear, DEAR, 3, 1)
    await remote.stored(charges[0])
    remote.release(charges[1], "failed")
    await remote.stored(charges[1])
    assert heir.release_orphans("r1") == 1
    desk.payments.release(own, "done")
    await desk.keeper.flush()
    assert desk.view(payer) == ConsumerView(FUNDS - cost, 0)
    await heir.close()


async def test_a_settlement_is_retried_until_the_owner_answers(desk: Desk) -> None:
    remote = await desk.remote()
    payer = await desk.account()
    charge = await remote.reserve(payer, "later-1", job(), route())
    await desk.service.close()  # the owner goes away between the hold and the capture
    dear = offer(PRICES[DEAR])
    cost = remote.capture(charge, dear, DEAR, 3, 1)
    await asyncio.sleep(0.3)
    assert charge.stored is not None and not charge.stored.done()
    await desk.service.start()  # back, with what it knew
    await remote.stored(charge)
    assert desk.view(payer) == ConsumerView(FUNDS - cost, 0)


# ------------------------------------------------------------ stake and reads


async def test_stakes_are_copied_and_kept_when_the_owner_is_away(desk: Desk) -> None:
    await desk.keeper.mint(DEAR, 5 * TOKEN, "deposit-dear")
    await desk.keeper.bond(DEAR, 3 * TOKEN, "bond-dear")
    remote = await desk.remote(stake_refresh_s=0.05)
    await remote.start()
    assert remote.bonded(DEAR) == 3 * TOKEN and remote.bonded(CHEAP) == 0
    assert await desk.ask(STAKES, b"{}") == {"stakes": {DEAR: 3 * TOKEN}}
    remote.stake = StakePolicy(default=TOKEN)
    assert passing(remote.stake_filter(MODEL), desk.registry) == [DEAR]
    await desk.keeper.unbond(DEAR, TOKEN, "unbond-dear")
    # The copy follows at the next refresh (every 0.05 s): waited for, not slept on.
    for _ in range(1000):  # 10 s
        if remote.bonded(DEAR) == 2 * TOKEN:
            break
        await asyncio.sleep(0.01)
    assert remote.bonded(DEAR) == 2 * TOKEN, "the unbond never reached the copied stakes"
    await desk.service.close()
    assert await remote.refresh_stakes() is False
    assert remote.bonded(DEAR) == 2 * TOKEN


async def test_balance_over_the_bus(desk: Desk) -> None:
    payer = await desk.account()
    assert await desk.ask(BALANCE, encode({"account_id": payer.account_id})) == {
        "balance": FUNDS,
        "held": 0,
    }


# ------------------------------------------------------------ hostile messages


def _bad_messages(payer: Payer) -> list[tuple[str, bytes]]:
    good: dict[str, Any] = json.loads(hold_body(payer, "bad-1", [1_000]))

    def hold(**change: Any) -> bytes:
        return encode({**good, **change})

    capture: dict[str, Any] = json.loads(capture_body("bad-1"))
    return [
        (HOLD, b"not json"),
        (HOLD, b"[]"),
        (HOLD, b'{"request_id": "bad-1"}'),
        (HOLD, hold(amounts=["1000"])),
        (HOLD, hold(amounts=[1000.0])),
        (HOLD, hold(amounts=[True])),
        (HOLD, hold(amounts=[-1_000])),
        (HOLD, hold(amounts=[2**63])),
        (HOLD, hold(amounts=list(range(65, 0, -1)))),
        (HOLD, hold(amounts=[1, 2])),  # not descending
        (HOLD, hold(account_id="balance:evil")),
        (HOLD, hold(account_id="")),
        (HOLD, hold(request_id="x" * 201)),
        (HOLD, hold(request_id="has space")),
        (HOLD, hold(caps={"total": -1})),
        (HOLD, hold(memo={"Key": "x"})),
        (HOLD, hold(memo={"model": "a\x00b"})),
        (HOLD, hold(replica=7)),
        (HOLD, b'{"x": "' + b"y" * 20_000 + b'"}'),
        (CAPTURE, encode({**capture, "prompt_tokens": -3})),
        (CAPTURE, encode({**capture, "price_input_per_mtok": "1"})),
        (CAPTURE, encode({**capture, "provider_id": "a:b"})),
        (CAPTURE, encode({**capture, "request_id": None})),
        (RELEASE, encode({"request_id": "bad-1"})),
        (RELEASE, encode({"request_id": "bad-1", "reason": "r" * 65})),
        (BALANCE, encode({"account_id": 5})),
        (BALANCE, b"\xff\xfe"),
        (STAKES, b"nope"),
    ]


async def test_malformed_messages_get_an_error_and_move_nothing(desk: Desk) -> None:
    payer = await desk.account()
    await desk.ask(HOLD, hold_body(payer, "bad-1", [1_000]))  # an open hold to tempt them
    before = desk.state()
    for subject, body in _bad_messages(payer):
        answer = await desk.ask(subject, body)
        assert answer["error"]["kind"] == "invalid", (subject, body[:80], answer)
        assert isinstance(answer["error"]["message"], str)
    assert desk.state() == before
    assert desk.service.open_holds() == 1


async def test_a_flood_past_the_in_flight_bound_is_told_to_retry(desk: Desk) -> None:
    desk.service.max_in_flight = 0
    answer = await desk.ask(BALANCE, encode({"account_id": "acct_0000000000000001"}))
    assert answer["error"]["kind"] == "busy"
    remote = await desk.remote(owner_wait_s=0.2)
    with pytest.raises(LedgerUnavailable, match="too many"):
        await remote.fetch_balance("acct_0000000000000001")


# ------------------------------------------------------------ early answers, confirmed


async def test_an_early_hold_is_answered_before_its_commit_and_confirmed_after(
    desk: Desk,
) -> None:
    remote = await desk.remote()
    payer = await desk.account()
    charge = await remote.reserve(payer, "early-1", job(), route())
    assert charge.held > 0 and charge.hold_stored is not None  # decided, not yet stored
    assert desk.view(payer).held == charge.held  # no one else can spend it meanwhile
    await remote.confirm(charge)
    assert charge.hold_stored is None
    stored = await desk.keeper.writer._store.entries_for("early-1")  # type: ignore[attr-defined]
    assert [e.kind for e in stored] == ["hold"]
    remote.capture(charge, offer(PRICES[DEAR]), DEAR, 3, 1)
    await remote.stored(charge)
    assert desk.view(payer).held == 0


async def test_a_hold_the_owner_never_stored_is_refused_at_confirm_and_charges_nothing(
    desk: Desk,
) -> None:
    remote = await desk.remote()
    payer = await desk.account()
    confirmed = await desk.ask("tsr.v1.ledger.confirm", encode({"request_id": "lost-1"}))
    assert confirmed["error"]["kind"] == "unavailable"  # a new owner never saw it
    charge = await remote.reserve(payer, "lost-2", job(), route())
    desk.service._open.pop("lost-2")  # as if the owner that answered had died
    desk.keeper.release("lost-2", "owner_gone")
    with pytest.raises(LedgerUnavailable):
        await remote.confirm(charge)
    assert charge.status == "released" and charge.cost == 0
    await asyncio.sleep(0.05)
    assert desk.view(payer).held == 0 and desk.view(payer).balance == FUNDS


async def test_a_payer_who_can_afford_only_a_free_provider_holds_nothing(desk: Desk) -> None:
    free = "f" * 64
    mixed = registry({**PRICES, free: (0, 0)})
    local = Payments(desk.keeper, mixed, StakePolicy())
    remote = await desk.remote(providers=mixed)
    broke = await desk.account(funds=0)
    for money, request_id in ((local, "free-1"), (remote, "free-2")):
        charge = await money.reserve(broke, request_id, job(), route())
        assert charge.held == 0
        await money.confirm(charge)
        (hold_check,) = [c for c in money.admit(charge, job()) if c.name == "hold"]
        assert passing(hold_check, mixed) == []  # neither priced provider fits nothing held
        assert hold_check.test(mixed.get(free), mixed.get(free).offers[MODEL])  # type: ignore[arg-type,union-attr]
    assert desk.view(broke).held == 0
