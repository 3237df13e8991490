"""API key authentication with an in-memory cache in front of the store, kept fresh.

Keys are looked up by their SHA-256 (an indexed read, never a scan); a hit or a miss is
cached for ``ttl_s`` so a burst of requests, or of guesses, costs one database read.

A change to a key (revoke, spend caps, routing policy, limits) may be written by any
process: the CLI writes the database directly while gateways run elsewhere.
:class:`KeyChangeWatcher` polls the store every ``poll_s`` for keys whose ``changed_at``
moved (one indexed range read, a handful of rows at most) and evicts them, so the next
request reads the key afresh: a revoke takes effect within about ``poll_s`` everywhere,
with no database read per request. A change made inside this process calls
:meth:`ApiKeyAuth.forget` at once.

The poll reads from a little before the newest change it has seen (``OVERLAP_S``): a
transaction that stamped its row earlier but committed later, or a writer whose clock
runs a little behind, is still seen. Rows already seen at the same ``changed_at`` are not
evicted twice. If one poll returns a full page the whole cache is dropped instead
(cheap, and always correct). A lookup racing with an eviction is used for its request
but not cached, so a stale record can never outlive the change that evicted it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from tessera.errors import AuthenticationFailed

MAX_CACHED = 10_000
OVERLAP_S = 5.0
PAGE = 1_000

FindByHash = Callable[[str], Awaitable[Any]]
HashKey = Callable[[str], str]

log = logging.getLogger("tessera.gateway.auth")


class ApiKeyAuth:
    def __init__(self, find_by_hash: FindByHash, hash_key: HashKey, ttl_s: float) -> None:
        self._find = find_by_hash
        self._hash = hash_key
        self._ttl_s = ttl_s
        self._cache: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self._evictions = 0  # bumped by every forget/clear: a lookup that spans one is stale

    async def authenticate(self, authorization: str | None) -> Any:
        """The key record for an ``Authorization: Bearer`` header, or AuthenticationFailed."""
        if not authorization:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'; "
                "create one with `tessera keys create`."
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 200:
            raise AuthenticationFailed(
                "Malformed Authorization header: expected 'Bearer YOUR_KEY'."
            )
        digest = self._hash(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            record = cached[0]
        else:
            evictions = self._evictions
            record = await self._find(digest)
            if evictions == self._evictions:
                self._cache[digest] = (record, now + self._ttl_s)
                self._cache.move_to_end(digest)
                while len(self._cache) > MAX_CACHED:
                    self._cache.popitem(last=False)
        if record is None:
            raise AuthenticationFailed(
                f"Incorrect API key provided: {token[:8]}…. Check the key, or create one with "
                "`tessera keys create`."
            )
        return record

    def forget(self, key_hash: str) -> None:
        """Drop a cached entry (after a change to the key) so it takes effect at once."""
        self._evictions += 1
        self._cache.pop(key_hash, None)

    def clear(self) -> None:
        """Drop every cached entry."""
        self._evictions += 1
        self._cache.clear()


class KeyChanges(Protocol):
    """What the watcher reads: ApiKeyStore's change signal."""

    async def last_change(self) -> datetime | None: ...

    async def changes_since(self, since: datetime, limit: int) -> list[Any]: ...


class KeyChangeWatcher:
    """Evicts changed keys from ``auth`` every ``poll_s`` (see the module docstring)."""

    def __init__(self, changes: KeyChanges, auth: ApiKeyAuth, poll_s: float) -> None:
        self._changes = changes
        self._auth = auth
        self._poll_s = poll_s
        self._newest: datetime | None = None
        self._seen: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take the newest change as the starting point, then poll in the background.

        The cache is empty now, so the changes already within the overlap are only
        remembered as seen, not evicted by the first poll.
        """
        self._newest = await self._changes.last_change()
        if self._newest is not None:
            since = self._newest - timedelta(seconds=OVERLAP_S)
            for row in await self._changes.changes_since(since, PAGE):
                self._seen[row.key_hash] = row.changed_at
        self._task = asyncio.create_task(self._run(), name="key-change-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def poll(self) -> int:
        """One poll: evict what changed since the last; how many keys were evicted."""
        if self._newest is None:
            self._newest = await self._changes.last_change()
            if self._newest is None:
                return 0
            since = datetime.min.replace(tzinfo=self._newest.tzinfo)
        else:
            since = self._newest - timedelta(seconds=OVERLAP_S)
        rows = await self._changes.changes_since(since, PAGE)
        if len(rows) >= PAGE:
            # More changes than a page: forget everything, start again from the newest.
            self._auth.clear()
            self._seen.clear()
            self._newest = await self._changes.last_change() or rows[-1].changed_at
            return len(rows)
        evicted = 0
        for row in rows:
            if self._seen.get(row.key_hash) != row.changed_at:
                self._seen[row.key_hash] = row.changed_at
                self._auth.forget(row.key_hash)
                evicted += 1
            self._newest = max(self._newest, row.changed_at)
        horizon = self._newest - timedelta(seconds=OVERLAP_S)
        for key_hash in [h for h, at in self._seen.items() if at < horizon]:
            del self._seen[key_hash]
        return evicted

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            try:
                await self.poll()
            except Exception:  # the watcher must outlive a database hiccup
                log.exception("key-change poll failed; retrying in %.2fs", self._poll_s)
