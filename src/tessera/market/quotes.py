"""What a request may cost before it runs, and which providers it can afford.

The gateway does not tokenize; it bounds the prompt instead. Every tokenizer we route to
(byte-level BPE, SentencePiece with byte fallback) spends at most one token per UTF-8
byte of text, and a chat template adds a bounded number of tokens per message. The bound
is also capped by the model's context, since a longer prompt is refused for free. Holding
this bound means the hold always covers the real cost, so a capture never exceeds it.

A continuation job (failover) also makes the provider read ``continue_from``, the output
already delivered, after its prompt, and the provider counts those ids as prompt tokens:
the bound adds them, exactly, inside the same context cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tessera.ledger.pricing import Price
from tessera.protocol.wire import Job, ModelOffer

TEMPLATE_TOKENS_PER_MESSAGE = 32  # role markers and separators a chat template adds
TEMPLATE_TOKENS_PER_PROMPT = 16  # BOS and the assistant header


def _text_bound(item: str | Sequence[int]) -> int:
    if isinstance(item, str):
        return len(item.encode("utf-8"))
    return len(item)


def prompt_token_bound(job: Job, context_length: int) -> int:
    """At least as many prompt tokens as any honest provider will count for ``job``."""
    continued = len(job.continue_from or [])
    if job.messages is not None:
        raw = TEMPLATE_TOKENS_PER_PROMPT + sum(
            TEMPLATE_TOKENS_PER_MESSAGE + _text_bound(m.content) for m in job.messages
        )
        return min(raw + continued, context_length)
    items = job.prompts if job.prompts is not None else job.inputs or []
    # Each prompt of a completion (each input of an embedding) is its own sequence; a
    # continuation has one, and its handed output is read after it.
    return sum(
        min(TEMPLATE_TOKENS_PER_PROMPT + _text_bound(i) + continued, context_length) for i in items
    )


def chat_prompt_bound(message_bytes: int) -> int:
    """:func:`prompt_token_bound` of a one-message chat whose message is ``message_bytes``
    of UTF-8 (before the context cap): what a model of chats can bound without the text."""
    return TEMPLATE_TOKENS_PER_PROMPT + TEMPLATE_TOKENS_PER_MESSAGE + message_bytes


def prompt_token_floor(job: Job, max_bytes_per_token: int) -> int:
    """At most as many tokens as the longest sequence of ``job`` takes in any tokenizer
    whose tokens cover at most ``max_bytes_per_token`` bytes each: a lower bound on the
    prompt a provider would have to read, so a request above the context can be refused
    before any provider tokenizes it. Token-id prompts count exactly."""

    def floor(item: str | Sequence[int]) -> int:
        if isinstance(item, str):
            return -(-len(item.encode("utf-8", errors="replace")) // max_bytes_per_token)
        return len(item)

    if job.messages is not None:
        return sum(floor(m.content) for m in job.messages)
    items = job.prompts if job.prompts is not None else job.inputs or []
    return max((floor(i) for i in items), default=0)


def output_token_bound(job: Job) -> int:
    if job.params is None:
        return 0
    choices = len(job.prompts) if job.prompts is not None else 1
    return choices * job.params.max_tokens


def offer_price(offer: ModelOffer) -> Price:
    return Price(offer.price_input_per_mtok, offer.price_output_per_mtok)


@dataclass(frozen=True, slots=True)
class MaxPrice:
    """A request's price ceiling, base units per million tokens (None: no ceiling)."""

    prompt: int | None = None
    completion: int | None = None

    def allows(self, offer: ModelOffer) -> bool:
        return (self.prompt is None or offer.price_input_per_mtok <= self.prompt) and (
            self.completion is None or offer.price_output_per_mtok <= self.completion
        )


@dataclass(frozen=True, slots=True)
class Quote:
    """The amount to hold and the most any provider routed to may cost."""

    hold: int
    cheapest: int


def quote(worst_cases: Sequence[int], spendable: int) -> Quote | None:
    """Hold enough for the dearest provider the consumer can afford; None if none.

    Holding the dearest affordable worst case lets the request move to any of those
    providers on a retry without a second hold.
    """
    if not worst_cases:
        return None
    affordable = [cost for cost in worst_cases if cost <= spendable]
    if not affordable:
        return None
    return Quote(hold=max(affordable), cheapest=min(worst_cases))
