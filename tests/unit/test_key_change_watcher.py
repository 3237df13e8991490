"""The auth cache and its key-change watcher against an in-memory store: what is evicted,
what stays cached, late commits, a flood of changes, and a lookup racing an eviction."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tessera.gateway import auth as auth_module
from tessera.gateway.auth import ApiKeyAuth, KeyChangeWatcher
from tessera.store.api_keys import KeyChange

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Record:
    id: str
    version: int


class FakeStore:
    """Keys by hash, and the (hash, changed_at) rows a database would hold."""

    def __init__(self) -> None:
        self.records: dict[str, Record | None] = {}
        self.changed: dict[str, datetime] = {}
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def find(self, digest: str) -> Record | None:
        self.reads += 1
        record = self.records.get(digest)
        if self.gate is not None:
            await self.gate.wait()
        return record

    def change(self, digest: str, at: datetime, record: Record | None) -> None:
        self.records[digest] = record
        self.changed[digest] = at

    async def last_change(self) -> datetime | None:
        return max(self.changed.values(), default=None)  # creations too, in the real one

    async def changes_since(self, since: datetime, limit: int) -> list[KeyChange]:
        rows = sorted(
            (KeyChange(h, at) for h, at in self.changed.items() if at >= since),
            key=lambda c: c.changed_at,
        )
        return rows[:limit]


def bearer(digest: str) -> str:
    return f"Bearer {digest}"


async def setup() -> tuple[FakeStore, ApiKeyAuth, KeyChangeWatcher]:
    store = FakeStore()
    for name in ("a", "b", "c"):
        store.records[name] = Record(name, 1)  # created: not a change
    store.changed["older"] = T0  # a change from before the gateway started
    auth = ApiKeyAuth(store.find, lambda token: token, ttl_s=3600)
    watcher = KeyChangeWatcher(store, auth, poll_s=3600)
    await watcher.start()
    await watcher.close()  # the test polls by hand
    for name in ("a", "b", "c"):
        await auth.authenticate(bearer(name))
    store.reads = 0
    return store, auth, watcher


async def test_only_changed_keys_are_evicted_and_each_change_once() -> None:
    store, auth, watcher = await setup()
    assert await watcher.poll() == 0
    store.change("b", T0 + timedelta(seconds=1), None)  # revoked
    assert await watcher.poll() == 1
    assert await watcher.poll() == 0  # seen: not evicted again
    for name in ("a", "c"):
        assert (await auth.authenticate(bearer(name))).version == 1
    assert store.reads == 0  # unchanged keys stayed cached
    try:
        await auth.authenticate(bearer("b"))
        raise AssertionError("a revoked key authenticated")
    except auth_module.AuthenticationFailed:
        pass
    assert store.reads == 1
    # The same key changed again later is evicted again.
    store.change("a", T0 + timedelta(seconds=2), Record("a", 2))
    assert await watcher.poll() == 1
    assert (await auth.authenticate(bearer("a"))).version == 2


async def test_a_change_committed_late_with_an_earlier_stamp_is_still_seen() -> None:
    store, auth, watcher = await setup()
    store.change("a", T0 + timedelta(seconds=10), Record("a", 2))
    assert await watcher.poll() == 1
    # Stamped before the newest change seen, committed after that poll.
    store.change("c", T0 + timedelta(seconds=8), Record("c", 2))
    assert await watcher.poll() == 1
    assert (await auth.authenticate(bearer("c"))).version == 2


async def test_a_flood_of_changes_drops_the_whole_cache() -> None:
    store, auth, watcher = await setup()
    for i in range(auth_module.PAGE + 5):
        store.change(f"new{i}", T0 + timedelta(seconds=1, microseconds=i), Record("x", 1))
    assert await watcher.poll() >= auth_module.PAGE
    await auth.authenticate(bearer("a"))
    assert store.reads == 1  # the cache was cleared


async def test_a_lookup_racing_an_eviction_is_not_cached() -> None:
    store, auth, watcher = await setup()
    store.gate = asyncio.Event()
    store.records["d"] = Record("d", 1)
    lookup = asyncio.create_task(auth.authenticate(bearer("d")))
    await asyncio.sleep(0)  # the lookup has read the old record and waits
    store.change("d", T0 + timedelta(seconds=1), None)  # revoked meanwhile
    await watcher.poll()
    store.gate.set()
    assert (await lookup).version == 1  # the request that raced the revoke may pass...
    try:
        await auth.authenticate(bearer("d"))  # ...but the stale record was not cached
        raise AssertionError("a stale record outlived its eviction")
    except auth_module.AuthenticationFailed:
        pass
