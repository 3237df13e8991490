"""API key authentication with a small in-memory cache in front of the store.

Keys are looked up by their SHA-256 (an indexed read, never a scan); a hit or a miss is
cached for ``ttl_s`` so a burst of requests, or of guesses, costs one database read.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from tessera.errors import AuthenticationFailed

MAX_CACHED = 10_000

FindByHash = Callable[[str], Awaitable[Any]]
HashKey = Callable[[str], str]


class ApiKeyAuth:
    def __init__(self, find_by_hash: FindByHash, hash_key: HashKey, ttl_s: float) -> None:
        self._find = find_by_hash
        self._hash = hash_key
        self._ttl_s = ttl_s
        self._cache: OrderedDict[str, tuple[Any, float]] = OrderedDict()

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
            record = await self._find(digest)
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
        """Drop a cached entry (after a revoke) so it takes effect at once."""
        self._cache.pop(key_hash, None)
