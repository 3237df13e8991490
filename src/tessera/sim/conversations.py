"""Chats in the simulator: a conversation's next turn goes back to the provider that served
the last one, by the gateway's own sticky table and router.

A sampled request may open a conversation (``demand.conversation_turns_mean`` turns on
average, geometric). When a turn is answered, the gateway remembers the conversation's
digest (``market.sticky.conversation_digest``) and its provider in a real
``StickyTable`` with the gateway's TTL; the next turn arrives a think time later
(exponential, ``demand.think_time_s``) with the whole conversation as its prompt. It goes
back to that provider when the table still has it, the real router keeps it there (the
step's ``sticky_keeps``: its score at least ``STICKY_MIN_SHARE`` of the best), and the
provider is still in the same session, not banned, not shut out by its breaker and has a
free slot. Then the provider still holds the conversation's prefix in its KV cache and
prefills only the new message; anywhere else, the whole prompt.

What the fluid background does not see: a conversation's longer prompts (it keeps the
scenario's prompt law), so a chat scenario's queueing is the single-request one.
"""

from __future__ import annotations

import numpy as np

from tessera.market.sticky import StickyTable, conversation_digest
from tessera.sim.money import KEY
from tessera.sim.routing import MODEL
from tessera.sim.step import Step
from tessera.sim.world import Floats, Ints, World


def digest(conversation: int, turn: int) -> str:
    """The conversation after ``turn`` was answered, as the gateway hashes it."""
    return conversation_digest(
        KEY, MODEL, [("conversation", str(conversation)), ("turn", str(turn))]
    )


class Conversations:
    """The gateway's sticky table over the sampled conversations, and each remembered
    provider's session (its ``flip_at`` then: a session that ended since lost the cache)."""

    def __init__(self, ttl_s: float) -> None:
        self.table = StickyTable(ttl_s)
        self.session: dict[str, float] = {}
        self.opened = 0

    def open(self, count: int) -> Ints:
        """Ids for ``count`` new conversations."""
        ids = np.arange(self.opened, self.opened + count, dtype=np.int64)
        self.opened += count
        return ids

    def remember(
        self, world: World, conversation: Ints, turn: Ints, provider: Ints, done: Floats
    ) -> None:
        """Answered turns: their provider, as of when each answer ended."""
        for c, t, p, at in zip(conversation, turn, provider, done, strict=True):
            key = digest(int(c), int(t))
            self.table.remember(key, str(int(p)), float(at))
            self.session[key] = float(world.flip_at[int(p)])

    def targets(
        self, world: World, state: Step, conversation: Ints, turn: Ints, at: Floats
    ) -> Ints:
        """For each arriving turn, the provider it goes back to with its cache, or -1."""
        out = np.full(len(conversation), -1, dtype=np.int64)
        for k in np.flatnonzero(turn > 0):
            key = digest(int(conversation[k]), int(turn[k]) - 1)
            found = self.table.lookup(key, float(at[k]))
            session = self.session.pop(key, None)
            if found is None or session is None:
                continue
            p = int(found)
            same_session = world.online[p] and world.flip_at[p] == session > at[k]
            free = world.queue[p] <= 0 and not world.banned[p] and not world.broken[p]
            if same_session and free and state.sticky_keeps[state.group[p]]:
                out[k] = p
        return out
