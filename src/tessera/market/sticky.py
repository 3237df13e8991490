"""Sticky conversations: send a chat's next turn to the provider that served the last one.

That provider may still hold the conversation's prefix in its KV cache, so the next turn
starts faster. After a turn is served, the gateway remembers the digest of the whole
conversation so far (the request's messages plus the answer) under the API key; the next
turn's messages minus its newest one hash to the same digest, and find the provider.
Entries expire after ``ttl_s`` and the table is bounded (least recently used goes first).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence

MAX_ENTRIES = 100_000


def conversation_digest(key_id: str, model: str, turns: Sequence[tuple[str, str]]) -> str:
    """A digest of (role, text) turns, private to one API key and model."""
    blob = json.dumps([key_id, model, list(turns)], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class StickyTable:
    def __init__(self, ttl_s: float, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, digest: str, provider_id: str, now: float) -> None:
        if self.ttl_s <= 0:
            return
        self._entries[digest] = (provider_id, now + self.ttl_s)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def lookup(self, digest: str, now: float) -> str | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        provider_id, expires = entry
        if now >= expires:
            del self._entries[digest]
            return None
        return provider_id
