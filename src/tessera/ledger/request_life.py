"""What one paid request costs, decided in one place: events in, a settlement out.

A paid request holds its worst case before any work (the hold is the ledger's; this is
what happens after). Its life::

    reserved ──begin(provider)──▶ started ──answered──▶ captured  (pay that provider)
       │                            │ │
       │                            │ └─abandoned──▶ captured (what the client was sent)
       │                            │               or released (it was sent nothing)
       │                            └─begin(next provider, prefix)──▶ started (continued)
       └─failed──▶ released (from any open phase)

Rules, the whole of them:

- exactly one settlement: the first event that settles decides, and every later event
  returns None (a stream's cleanup may report what its error path already settled);
- the provider paid is the one whose output finished the answer; after a continuation,
  the tokens earlier providers wrote (``prefix``) are never paid: they were not proven by
  a receipt, and the provider that continued read them as its prompt, so its prompt
  count is reduced by them;
- a client that leaves mid-answer pays for what it was sent by the current provider
  (prompt included), nothing if it was sent nothing;
- an answer that did not reach the client, a refused receipt or a provider failure
  that could not be continued costs nothing (``failed``).

Pure: no clock, no I/O. The gateway turns a :class:`Capture` into a capture of the hold
(at the offer's price, capped by the hold) and a :class:`Release` into its release.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Phase = Literal["reserved", "started", "captured", "released"]


@dataclass(frozen=True, slots=True)
class Capture:
    """Charge the hold for these tokens, paid to ``provider_id``."""

    provider_id: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Release:
    """Give the hold back: the consumer pays nothing, the provider earns nothing."""

    reason: str


Settlement = Capture | Release


@dataclass(slots=True)
class PaidRequest:
    """One request's money from its hold to its settlement."""

    request_id: str
    phase: Phase = "reserved"
    provider_id: str | None = None  # whose output reaches the client now
    prefix: int = 0  # tokens earlier providers wrote (never paid)
    sent_tokens: int = 0  # tokens of the current provider handed to the client
    sent_prompt_tokens: int = 0  # the prompt count the current provider reported
    settlement: Settlement | None = None

    @property
    def settled(self) -> bool:
        return self.settlement is not None

    def begin(self, provider_id: str, prefix: int = 0) -> None:
        """``provider_id``'s output starts to reach the client; ``prefix`` tokens of the
        answer were written by earlier providers (a continuation). A no-op once settled."""
        if self.settled:
            return
        if prefix < 0:
            raise ValueError("a continuation's prefix cannot be negative")
        self.phase, self.provider_id, self.prefix = "started", provider_id, prefix
        self.sent_tokens = self.sent_prompt_tokens = 0

    def relayed(self, tokens: int, prompt_tokens: int | None = None) -> None:
        """A part of the current provider's output was handed to the client."""
        if self.settled:
            return
        if self.phase != "started":
            raise ValueError(f"request {self.request_id}: output relayed before it began")
        self.sent_tokens += tokens
        if prompt_tokens is not None and not self.sent_prompt_tokens:
            self.sent_prompt_tokens = prompt_tokens

    def answered(self, prompt_tokens: int, completion_tokens: int) -> Settlement | None:
        """The answer reached the client whole and its receipt checked out: pay the
        current provider its part (``completion_tokens`` it wrote; ``prompt_tokens`` as
        it reported them, the prefix taken off)."""
        if self.settled:
            return None
        if self.phase != "started" or self.provider_id is None:
            raise ValueError(f"request {self.request_id}: answered before any provider began")
        return self._settle(
            Capture(self.provider_id, max(prompt_tokens - self.prefix, 0), completion_tokens)
        )

    def abandoned(self) -> Settlement | None:
        """The client left before the end: it pays what the current provider sent it."""
        if self.settled:
            return None
        if self.phase == "started" and self.provider_id is not None:
            if self.sent_tokens or self.sent_prompt_tokens:
                prompt = max(self.sent_prompt_tokens - self.prefix, 0)
                return self._settle(Capture(self.provider_id, prompt, self.sent_tokens))
        return self._settle(Release("client_disconnected"))

    def failed(self, reason: str) -> Settlement | None:
        """Nothing (more) will reach the client, or what did is unproven: free."""
        if self.settled:
            return None
        return self._settle(Release(reason))

    def _settle(self, settlement: Settlement) -> Settlement:
        self.settlement = settlement
        self.phase = "captured" if isinstance(settlement, Capture) else "released"
        return settlement
