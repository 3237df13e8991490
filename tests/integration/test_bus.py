"""The bus between gateway replicas: the in-process bus and NATS keep one contract.

Every case runs on :class:`LocalBus` and on :class:`NatsBus` against a private
nats-server; the last one restarts the server under a live client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tessera.errors import ConfigError
from tessera.gateway.bus import (
    Bus,
    BusError,
    BusMessage,
    BusTimeout,
    LocalBus,
    NoResponders,
    PayloadTooLarge,
    subject_matches,
)
from tessera.gateway.nats_bus import NatsBus

from support.nats_server import NatsServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture(params=["local", "nats"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    if request.param == "local":
        made: Bus = LocalBus()
    else:
        server: NatsServer = request.getfixturevalue("nats_server")
        made = await NatsBus.connect(server.url, "test")
    yield made
    await made.close()


class Inbox:
    def __init__(self) -> None:
        self.got: list[BusMessage] = []
        self.changed = asyncio.Event()

    async def __call__(self, message: BusMessage) -> None:
        self.got.append(message)
        self.changed.set()

    async def until(self, count: int, timeout_s: float = 5.0) -> list[BusMessage]:
        async with asyncio.timeout(timeout_s):
            while len(self.got) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.got


async def _settle(bus: Bus) -> None:
    """A request round trip: everything published before it has been routed."""

    async def echo(message: BusMessage) -> None:
        await bus.respond(message, message.data)

    sub = await bus.subscribe("test.settle", echo)
    await bus.request("test.settle", b"", 5)
    await sub.unsubscribe()


def test_subject_matching() -> None:
    assert subject_matches("a.b", "a.b")
    assert subject_matches("a.*", "a.b") and not subject_matches("a.*", "a.b.c")
    assert subject_matches("a.>", "a.b.c") and not subject_matches("a.>", "a")
    assert subject_matches("*.b.>", "x.b.y") and not subject_matches("*.b", "x.c")


async def test_publish_reaches_exact_and_wildcard_subscribers_in_order(bus: Bus) -> None:
    exact, star, tail, other = Inbox(), Inbox(), Inbox(), Inbox()
    await bus.subscribe("tsr.v1.evt.request", exact)
    await bus.subscribe("tsr.v1.evt.*", star)
    await bus.subscribe("tsr.v1.>", tail)
    await bus.subscribe("tsr.v1.evt.slash", other)
    await _settle(bus)
    for i in range(20):
        await bus.publish("tsr.v1.evt.request", str(i).encode(), {"Tsr-Seq": str(i)})
    for inbox in (exact, star, tail):
        got = await inbox.until(20)
        assert [m.data for m in got] == [str(i).encode() for i in range(20)]
        assert got[3].headers["Tsr-Seq"] == "3" and got[3].subject == "tsr.v1.evt.request"
    await _settle(bus)
    assert other.got == []


async def test_a_queue_group_shares_messages_and_others_see_all(bus: Bus) -> None:
    first, second, everyone = Inbox(), Inbox(), Inbox()
    await bus.subscribe("tsr.v1.audit", first, queue="auditors")
    await bus.subscribe("tsr.v1.audit", second, queue="auditors")
    await bus.subscribe("tsr.v1.audit", everyone)
    await _settle(bus)
    for i in range(40):
        await bus.publish("tsr.v1.audit", str(i).encode())
    await everyone.until(40)
    await _settle(bus)
    shared = sorted(int(m.data) for m in first.got + second.got)
    assert shared == list(range(40))  # each once, to one member


async def test_request_reply_and_its_failures(bus: Bus) -> None:
    async def doubler(message: BusMessage) -> None:
        await bus.respond(message, message.data * 2, {"Tsr-Kind": "answer"})

    async def silent(message: BusMessage) -> None:
        return None

    await bus.subscribe("tsr.v1.rep.a.job", doubler)
    await bus.subscribe("tsr.v1.rep.b.job", silent)
    answer = await bus.request("tsr.v1.rep.a.job", b"ab", 5, {"Tsr-Request-Id": "r1"})
    assert answer.data == b"abab" and answer.headers["Tsr-Kind"] == "answer"
    started = asyncio.get_running_loop().time()
    with pytest.raises(NoResponders):
        await bus.request("tsr.v1.rep.gone.job", b"", 5)
    assert asyncio.get_running_loop().time() - started < 2  # at once, not at the timeout
    with pytest.raises(BusTimeout):
        await bus.request("tsr.v1.rep.b.job", b"", 0.3)


async def test_unsubscribe_stops_delivery_and_bad_input_is_refused(bus: Bus) -> None:
    inbox = Inbox()
    sub = await bus.subscribe("tsr.v1.x", inbox)
    await _settle(bus)
    await bus.publish("tsr.v1.x", b"1")
    await inbox.until(1)
    await sub.unsubscribe()
    await bus.publish("tsr.v1.x", b"2")
    await _settle(bus)
    assert [m.data for m in inbox.got] == [b"1"]
    with pytest.raises(PayloadTooLarge):
        await bus.publish("tsr.v1.x", b"x" * (bus.max_payload + 1))
    for bad in ("", "a..b", "a b", "tsr.*"):
        with pytest.raises(BusError):
            await bus.publish(bad, b"")
    with pytest.raises(BusError):
        await bus.subscribe("a.>.b", inbox)


async def test_a_failing_handler_does_not_stop_its_subscription(bus: Bus) -> None:
    seen: list[bytes] = []
    done = asyncio.Event()

    async def flaky(message: BusMessage) -> None:
        seen.append(message.data)
        if message.data == b"boom":
            raise RuntimeError("handler bug")
        if message.data == b"after":
            done.set()

    await bus.subscribe("tsr.v1.flaky", flaky)
    await _settle(bus)
    await bus.publish("tsr.v1.flaky", b"boom")
    await bus.publish("tsr.v1.flaky", b"after")
    await asyncio.wait_for(done.wait(), 5)
    assert seen == [b"boom", b"after"]


async def test_nats_restart_under_a_live_client(tmp_path: Path) -> None:
    first = NatsServer(tmp_path / "nats").start()
    again = NatsServer(first.directory, first.port)
    bus = await NatsBus.connect(first.url, "test")
    try:
        inbox = Inbox()
        await bus.subscribe("tsr.v1.evt.>", inbox)
        await _settle(bus)
        await bus.publish("tsr.v1.evt.a", b"before")
        await inbox.until(1)
        first.stop()
        with pytest.raises(BusError):  # nobody to ask while the server is down
            await bus.request("tsr.v1.rep.x.job", b"", 0.5)
        again.start()
        # The client reconnects on its own, and its subscription comes back with it.
        async with asyncio.timeout(15):
            while True:
                try:
                    await _settle(bus)
                    break
                except BusError:
                    await asyncio.sleep(0.2)
        await bus.publish("tsr.v1.evt.b", b"after")
        got = await inbox.until(2)
        assert [m.data for m in got] == [b"before", b"after"]
    finally:
        await bus.close()
        first.stop()
        again.stop()


async def test_connecting_to_no_server_says_how_to_start_one() -> None:
    from tessera.demo import free_port

    with pytest.raises(ConfigError, match="nats-server"):
        await NatsBus.connect(f"nats://127.0.0.1:{free_port()}", "test", connect_timeout_s=1)
