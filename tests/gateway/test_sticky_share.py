"""Sticky conversations shared between replicas: what one remembers, the others find;
their own echoes and hostile messages change nothing."""

from __future__ import annotations

import asyncio

from tessera.gateway.bus import LocalBus
from tessera.gateway.sticky_share import SUBJECT, StickyShare
from tessera.market.sticky import StickyTable, conversation_digest

PROVIDER = "ab" * 32


async def settle(seconds: float = 0.1) -> None:
    await asyncio.sleep(seconds)


async def test_a_turn_remembered_on_one_replica_is_found_on_the_other() -> None:
    bus = LocalBus()
    tables = {name: StickyTable(ttl_s=60) for name in ("a", "b")}
    shares = {n: StickyShare(bus, n, t, every_s=0.01) for n, t in tables.items()}
    for share in shares.values():
        await share.start()
    digest = conversation_digest("key_1", "m", [("user", "hi"), ("assistant", "hello")])
    tables["a"].remember(digest, PROVIDER, 0.0)
    shares["a"].remembered(digest, PROVIDER)
    await settle()
    assert tables["b"].lookup(digest, 1.0) == PROVIDER
    assert shares["a"].heard == 0 and shares["b"].heard == 1  # a ignores its own echo
    for share in shares.values():
        await share.close()
    await bus.close()


async def test_hostile_sticky_messages_are_refused() -> None:
    bus = LocalBus()
    table = StickyTable(ttl_s=60)
    share = StickyShare(bus, "b", table)
    await share.start()
    for body in (
        b"not json",
        b'{"entries": 5}',
        b'{"entries": [["short", "x"], [1, 2], ["' + b"g" * 64 + b'", "' + b"a" * 64 + b'"]]}',
    ):
        await bus.publish(SUBJECT, body, {"Tsr-Replica": "a"})
    await settle(0.05)
    assert len(table) == 0 and share.refused == 5
    await share.close()
    await bus.close()
