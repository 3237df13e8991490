"""The gateway's shell around market/admission: limits per key and account, and hedges.

``admit`` runs once per OpenAI request after authentication, before its body is read
(so a request refused as malformed still spends its key's rate), and ``take_tokens``
counts the body's token bound once parsed; a refusal is :class:`RateLimited` (429 with Retry-After). The ticket
it returns must be released exactly once when the response is really over (for a stream,
after its last byte or the client's departure): ``release`` is idempotent, so a caller
may release on every path without counting. While a request runs, its ticket is found by
request id, so dispatch can ask for a hedge's second slot (:meth:`hedge_slot`).

A refusal's wait is spread: the policy's ``retry_after_s`` plus up to as long again, at
most :data:`RETRY_SPREAD_S` more, drawn from the gateway's random source and sent to the
millisecond in ``retry-after-ms`` (the official SDKs wait exactly that). Clients refused
together (a full concurrency limit answers every one of them "1 s") would otherwise all
come back in the same millisecond: a flood's 48 refused requests returning at once every
second made an honest key's slowest answers beside it (p99 2.0–3.3× its unloaded value;
1.86–2.56× spread over a second, 2.3–2.4× over half a second; bench/hostile_load.py).

A key's own limits (columns of ``api_keys``) override the gateway's defaults field by
field. The state lives in this process: with several gateway replicas, each enforces the
limits on the requests it takes. Everything here is in memory and O(1) per request.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from tessera.config import GatewaySettings
from tessera.errors import RateLimited
from tessera.market.admission import Admission, Limits, Refusal, Ticket

RETRY_SPREAD_S = 1.0  # the most a refusal's wait is lengthened to spread clients out


class RequestAdmission:
    def __init__(
        self,
        settings: GatewaySettings,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._core = Admission()
        self._running: dict[str, tuple[Ticket, Limits, Limits]] = {}
        self._account_limits = Limits(
            settings.account_max_concurrent_requests,
            settings.account_requests_per_minute,
            settings.account_tokens_per_minute,
        )

    def limits_of(self, key: Any) -> Limits:
        """The key's limits: its own where it has them, the gateway's defaults elsewhere."""
        s = self._settings

        def own(field: str, default: int | None) -> int | None:
            value = getattr(key, field, None)
            return default if value is None else int(value)

        return Limits(
            own("max_concurrent_requests", s.key_max_concurrent_requests),
            own("requests_per_minute", s.key_requests_per_minute),
            own("tokens_per_minute", s.key_tokens_per_minute),
        )

    def admit(self, request_id: str, key: Any, tokens: int) -> Ticket:
        """A slot for this request of ``key`` (bounded by ``tokens``), or RateLimited."""
        key_limits = self.limits_of(key)
        decision = self._core.admit(
            key.id,
            key_limits,
            key.account_id,
            self._account_limits,
            tokens=tokens,
            now_s=self._clock(),
        )
        if isinstance(decision, Refusal):
            raise self._refused(decision)
        self._running[request_id] = (decision, key_limits, self._account_limits)
        return decision

    def take_tokens(self, request_id: str, ticket: Ticket, tokens: int) -> None:
        """Count the tokens of a request admitted before its body was read, or release it
        and raise RateLimited."""
        running = self._running.get(request_id)
        if running is None or running[0] is not ticket:
            return
        _, key_limits, account_limits = running
        refusal = self._core.take_tokens(
            ticket, key_limits, account_limits, tokens, now_s=self._clock()
        )
        if refusal is not None:
            self.release(request_id, ticket)
            raise self._refused(refusal)

    def _refused(self, refusal: Refusal) -> RateLimited:
        spread = min(refusal.retry_after_s, RETRY_SPREAD_S) * self._rng.random()
        wait = refusal.retry_after_s + spread
        return RateLimited(refusal.message(), retry_after_s=wait, code=refusal.code)

    def release(self, request_id: str, ticket: Ticket) -> None:
        """Free the request's slots (all of them, hedge included). Safe to call again."""
        self._core.release(ticket)
        running = self._running.get(request_id)
        if running is not None and running[0] is ticket:
            del self._running[request_id]

    def hedge_slot(self, request_id: str) -> bool:
        """Whether the running request may hedge: it takes one more slot of key and account."""
        running = self._running.get(request_id)
        if running is None:
            return True  # not an admitted consumer request (an audit, a challenge)
        ticket, key_limits, account_limits = running
        return self._core.add_slot(ticket, key_limits, account_limits)

    def in_flight(self, key_id: str) -> int:
        return self._core.in_flight(key_id)


def token_bound(body: Any, default_max_tokens: int) -> int:
    """What a request counts against tokens per minute: its output bound (0 for embeddings)."""
    if not hasattr(body, "max_tokens"):
        return 0
    bound = getattr(body, "max_completion_tokens", None) or body.max_tokens
    return int(bound or default_max_tokens)
