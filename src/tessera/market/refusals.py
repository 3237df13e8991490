"""Whose fault a failed job is: the request's (a 400) or the provider's (its breaker).

A provider answers a job it will not run with a ``job_error`` code. Some codes say the
*request* is wrong, and every provider would refuse it the same way (``CLIENT_CODES``):
those are the client's 400 and never count against a provider, never open its breaker,
and are never retried on another provider. Everything else is the provider's failure.

Consumers must not be able to open breakers with bad requests, and providers must not be
able to dodge work by calling good requests bad. So the gateway checks what it can before
dispatch (``out_of_vocabulary``: token ids against the vocabulary the model's providers
announce) and, when a provider still calls a request the client's fault, checks the claim
(``refusal_disproved``): a refusal contradicted by what the gateway knows is the
provider's failure, and the request moves on to another provider.

What the gateway can check:

- ``invalid_token_ids`` / ``invalid_prompt`` on a completion or embedding: every prompt
  is a string (any string tokenizes) or a non-empty list of ids below the vocabulary the
  provider announced (or, if it announced none, the model's majority vocabulary);
- ``context_length_exceeded``: the gateway's upper bound on the longest sequence's prompt
  tokens (UTF-8 bytes + template allowance, exact for ids) is below the context length the
  provider itself announced;
- ``invalid_request``: the gateway sent sampling parameters (an agent says
  ``invalid_request`` only when a text job has none).

What it cannot: a chat's template refusing the messages (``invalid_prompt`` on a chat,
``chat_template_missing``), ids when no provider of the model announces a vocabulary, and
a text prompt whose loose bound reaches the context. Those refusals stand as the client's
400 without a check.

Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from tessera.market.quotes import TEMPLATE_TOKENS_PER_MESSAGE, TEMPLATE_TOKENS_PER_PROMPT
from tessera.protocol.wire import Job, ModelOffer

# Job error codes that blame the request, with the request field they are about (None:
# the field the endpoint's prompt lives in).
CLIENT_CODES: dict[str, str | None] = {
    "context_length_exceeded": None,
    "invalid_token_ids": None,
    "invalid_prompt": None,
    "chat_template_missing": "model",
    "invalid_request": None,
}
BUSY = "busy"  # full with other work: neither side's fault
FALSE_REFUSAL = "false_refusal"  # a refusal the gateway's own checks contradict
# Failed requests whose provider did its work: the answer was lost on the client's side
# (``not_delivered``), the gateway could not store the hold, or the provider was full.
NOT_THE_PROVIDERS = frozenset({BUSY, "not_delivered", "ledger_unavailable"})


def blames_client(code: str) -> bool:
    return code in CLIENT_CODES


def job_event(status: str, error_code: str | None) -> Literal["job_completed", "job_failed"] | None:
    """What a finished request does to its provider's completion record (the event name
    ``verify.reputation`` counts): an answer completes, a failure fails, and a request the
    client got wrong, one abandoned, and one lost on the gateway's or the client's side
    (NOT_THE_PROVIDERS) count for nothing.
    The gateway's own and its replicas' records use this one rule."""
    if status == "ok":
        return "job_completed"
    if status != "error":
        return None
    if error_code is not None and (blames_client(error_code) or error_code in NOT_THE_PROVIDERS):
        return None
    return "job_failed"


def _sequences(job: Job) -> Sequence[str | Sequence[int]]:
    if job.prompts is not None:
        return job.prompts
    return job.inputs or []


def out_of_vocabulary(job: Job, vocab_size: int | None) -> tuple[int, int] | None:
    """The first (sequence index, token id) of ``job`` at or above ``vocab_size``, if any.

    Continuations are the gateway's own (ids a provider delivered) and are not checked.
    """
    if vocab_size is None:
        return None
    for index, item in enumerate(_sequences(job)):
        if isinstance(item, str) or not item:
            continue
        top = max(item)
        if top >= vocab_size:
            return index, top
    return None


def longest_prompt_bound(job: Job) -> int:
    """At least the prompt tokens of ``job``'s longest sequence under any tokenizer we
    route to (see quotes.py), continuation included."""
    continued = len(job.continue_from or [])
    if job.messages is not None:
        return (
            TEMPLATE_TOKENS_PER_PROMPT
            + sum(TEMPLATE_TOKENS_PER_MESSAGE + len(m.content.encode()) for m in job.messages)
            + continued
        )
    longest = 0
    for item in _sequences(job):
        size = len(item.encode()) if isinstance(item, str) else len(item)
        longest = max(longest, size)
    return TEMPLATE_TOKENS_PER_PROMPT + longest + continued


def refusal_disproved(
    job: Job, code: str, own: ModelOffer, network: ModelOffer | None
) -> str | None:
    """Why the provider's client-fault ``code`` for ``job`` is false, or None if it may be
    true. ``own`` is the offer the job was sent under, ``network`` the model's public one."""
    if code in ("invalid_token_ids", "invalid_prompt"):
        if job.kind == "chat":
            return None  # a chat template may refuse messages: only the provider knows
        vocab = own.vocab_size or (network.vocab_size if network is not None else None)
        if vocab is None:
            return None
        if any(not isinstance(item, str) and not item for item in _sequences(job)):
            return None  # an empty id list is a bad prompt (the API refuses it first)
        if out_of_vocabulary(job, vocab) is not None:
            return None
        return f"every token id is below the vocabulary size {vocab}"
    if code == "context_length_exceeded":
        bound = longest_prompt_bound(job)
        if bound < own.context_length:
            return (
                f"the prompt is at most {bound} tokens and the provider announced a context "
                f"of {own.context_length}"
            )
        return None
    if code == "invalid_request" and (job.params is not None or job.kind == "embedding"):
        return "the job is complete (text jobs carry sampling parameters)"
    return None
