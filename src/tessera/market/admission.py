"""Who may start a request now: per-key and per-account concurrency and rate limits.

Pure policy: no clock, no lock, no I/O. The gateway passes ``now_s`` (any monotonic
seconds) and each subject's limits with every call, so a limit changed on a key applies
to its very next request.

Every request is checked against two subjects, its API key and the key's account, each
with three limits (``None`` in a field: no limit there):

- ``max_concurrent``: requests admitted and not yet released. A hedged request holds
  two slots (:meth:`Admission.add_slot`); releasing its ticket frees both.
- ``requests_per_minute``: a token bucket of that size refilling at ``limit / 60`` a
  second, so a quiet key may burst a whole minute's worth and a busy one gets a steady
  rate. A refused request costs nothing.
- ``tokens_per_minute``: the same bucket in tokens; a request costs its bound (the caller
  says what: its ``max_tokens``), at most the bucket's size, so an oversized request
  waits for a full bucket instead of being refused for ever.

Invariants: a refusal changes no state; a ticket is released at most once (a second
release is a no-op), so ``in_flight`` always equals the slots of unreleased tickets;
``retry_after_s`` is the longest wait among the limits that refused (1 s for a full
concurrency limit, whose end no one can predict; 60 s for a zero limit). Subjects idle
for a minute with nothing in flight are forgotten, which changes no decision: their
buckets would be full again.

:class:`WaitingRoom` is the gateway-wide bound on requests waiting for a provider slot;
:func:`room_left` its batch form for the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Scope = Literal["key", "account"]

CONCURRENCY_RETRY_S = 1.0
SUSPENDED_RETRY_S = 60.0
IDLE_FORGET_S = 60.0  # a bucket refills completely in a minute

CODES = {
    "concurrency": "too_many_concurrent_requests",
    "requests": "rate_limit_exceeded",
    "tokens": "tokens_per_minute_exceeded",
}


@dataclass(frozen=True, slots=True)
class Limits:
    """One subject's limits; None in a field means no limit of that kind."""

    max_concurrent: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Not now: which limit of which subject refused, and when to try again."""

    code: str  # too_many_concurrent_requests, rate_limit_exceeded, tokens_per_minute_exceeded
    scope: Scope
    limit: int
    retry_after_s: float

    def message(self) -> str:
        wait = f"retry after {self.retry_after_s:.0f} s"
        if self.code == CODES["concurrency"]:
            return (
                f"This API {self.scope} already has {self.limit} concurrent requests running, "
                f"its limit; {wait} or when one of them finishes."
            )
        if self.code == CODES["requests"]:
            return f"This API {self.scope} may send {self.limit} requests per minute; {wait}."
        return (
            f"This API {self.scope} may use {self.limit} tokens per minute (each request "
            f"counts its max_tokens); {wait}."
        )


@dataclass(slots=True, eq=False)
class Ticket:
    """One admitted request: the slots it holds until :meth:`Admission.release`."""

    key_id: str
    account_id: str
    slots: int = 1
    released: bool = False


@dataclass(slots=True)
class _Bucket:
    level: float
    at_s: float

    def available(self, size: int, now_s: float) -> float:
        return min(float(size), self.level + max(now_s - self.at_s, 0.0) * size / 60.0)


@dataclass(slots=True)
class _Subject:
    in_flight: int = 0
    touched_s: float = 0.0
    requests: _Bucket | None = None  # None: full
    tokens: _Bucket | None = None


def _available(bucket: _Bucket | None, size: int, now_s: float) -> float:
    return float(size) if bucket is None else bucket.available(size, now_s)


def _take(bucket: _Bucket | None, size: int, cost: float, now_s: float) -> _Bucket:
    return _Bucket(_available(bucket, size, now_s) - cost, now_s)


class Admission:
    """Concurrency and rate state of every active key and account (see the module doc)."""

    def __init__(self) -> None:
        self._subjects: dict[tuple[Scope, str], _Subject] = {}
        self._swept_s: float | None = None

    def admit(
        self,
        key_id: str,
        key_limits: Limits,
        account_id: str,
        account_limits: Limits,
        *,
        tokens: int,
        now_s: float,
    ) -> Ticket | Refusal:
        """A ticket holding one slot of the key and of the account, or why not."""
        pairs: tuple[tuple[Scope, str, Limits], ...] = (
            ("key", key_id, key_limits),
            ("account", account_id, account_limits),
        )
        worst: Refusal | None = None
        for scope, subject_id, limits in pairs:
            subject = self._subjects.get((scope, subject_id)) or _Subject()
            for refusal in self._refusals(scope, subject, limits, tokens, now_s):
                if worst is None or refusal.retry_after_s > worst.retry_after_s:
                    worst = refusal
        if worst is not None:
            return worst
        for scope, subject_id, limits in pairs:
            subject = self._subjects.setdefault((scope, subject_id), _Subject())
            subject.in_flight += 1
            subject.touched_s = now_s
            if limits.requests_per_minute is not None:
                size = limits.requests_per_minute
                subject.requests = _take(subject.requests, size, 1, now_s)
            if limits.tokens_per_minute is not None:
                size = limits.tokens_per_minute
                subject.tokens = _take(subject.tokens, size, min(tokens, size), now_s)
        self._sweep(now_s)
        return Ticket(key_id, account_id)

    def take_tokens(
        self,
        ticket: Ticket,
        key_limits: Limits,
        account_limits: Limits,
        tokens: int,
        now_s: float,
    ) -> Refusal | None:
        """Count an admitted request's tokens once its body says how many (None: taken).

        ``admit`` runs before the body is read, so a request the gateway must refuse
        still spends its key's requests and a slot while it is parsed; its tokens are
        known only after. A refusal takes nothing; the caller releases the ticket.
        """
        pairs: tuple[tuple[_Subject, Limits, Scope], ...] = (
            (self._subjects[("key", ticket.key_id)], key_limits, "key"),
            (self._subjects[("account", ticket.account_id)], account_limits, "account"),
        )
        worst: Refusal | None = None
        for subject, limits, scope in pairs:
            size = limits.tokens_per_minute
            if size is None:
                continue
            need = min(tokens, size)
            have = _available(subject.tokens, size, now_s)
            if size == 0:
                refusal = Refusal(CODES["tokens"], scope, 0, SUSPENDED_RETRY_S)
            elif have < need:
                refusal = Refusal(CODES["tokens"], scope, size, (need - have) * 60.0 / size)
            else:
                continue
            if worst is None or refusal.retry_after_s > worst.retry_after_s:
                worst = refusal
        if worst is not None:
            return worst
        for subject, limits, _ in pairs:
            size = limits.tokens_per_minute
            if size is not None:
                subject.tokens = _take(subject.tokens, size, min(tokens, size), now_s)
        return None

    def add_slot(self, ticket: Ticket, key_limits: Limits, account_limits: Limits) -> bool:
        """One more slot for a running request (a hedge) if both subjects have one spare."""
        if ticket.released:
            return False
        subjects = (
            (self._subjects[("key", ticket.key_id)], key_limits),
            (self._subjects[("account", ticket.account_id)], account_limits),
        )
        for subject, limits in subjects:
            most = limits.max_concurrent
            if most is not None and subject.in_flight + 1 > most:
                return False
        for subject, _ in subjects:
            subject.in_flight += 1
        ticket.slots += 1
        return True

    def release(self, ticket: Ticket) -> None:
        """Free the ticket's slots. Exactly once: later calls do nothing."""
        if ticket.released:
            return
        ticket.released = True
        keys: tuple[tuple[Scope, str], ...] = (
            ("key", ticket.key_id),
            ("account", ticket.account_id),
        )
        for key in keys:
            subject = self._subjects.get(key)
            if subject is not None:
                subject.in_flight = max(subject.in_flight - ticket.slots, 0)

    def in_flight(self, subject_id: str, scope: Scope = "key") -> int:
        subject = self._subjects.get((scope, subject_id))
        return 0 if subject is None else subject.in_flight

    def tracked(self) -> int:
        """How many keys and accounts have state (for tests and metrics)."""
        return len(self._subjects)

    def _refusals(
        self, scope: Scope, subject: _Subject, limits: Limits, tokens: int, now_s: float
    ) -> list[Refusal]:
        out: list[Refusal] = []
        most = limits.max_concurrent
        if most is not None and subject.in_flight + 1 > most:
            wait = SUSPENDED_RETRY_S if most == 0 else CONCURRENCY_RETRY_S
            out.append(Refusal(CODES["concurrency"], scope, most, wait))
        checks: tuple[tuple[str, int | None, _Bucket | None, int], ...] = (
            ("requests", limits.requests_per_minute, subject.requests, 1),
            ("tokens", limits.tokens_per_minute, subject.tokens, tokens),
        )
        for kind, size, bucket, cost in checks:
            if size is None:
                continue
            if size == 0:
                out.append(Refusal(CODES[kind], scope, 0, SUSPENDED_RETRY_S))
                continue
            need = min(cost, size)
            have = _available(bucket, size, now_s)
            if have < need:
                out.append(Refusal(CODES[kind], scope, size, (need - have) * 60.0 / size))
        return out

    def _sweep(self, now_s: float) -> None:
        """Forget subjects idle for a minute with nothing in flight, once a minute."""
        if self._swept_s is None:
            self._swept_s = now_s
            return
        if now_s - self._swept_s < IDLE_FORGET_S:
            return
        self._swept_s = now_s
        idle = [
            key
            for key, subject in self._subjects.items()
            if subject.in_flight == 0 and now_s - subject.touched_s >= IDLE_FORGET_S
        ]
        for key in idle:
            del self._subjects[key]


class WaitingRoom:
    """Gateway-wide bound on requests waiting for a provider slot (None: unbounded).

    ``enter`` says whether one more may wait; each True must be paired with one ``leave``.
    """

    def __init__(self, max_waiting: int | None) -> None:
        self.max_waiting = max_waiting
        self.waiting = 0

    def enter(self) -> bool:
        if self.max_waiting is not None and self.waiting >= self.max_waiting:
            return False
        self.waiting += 1
        return True

    def leave(self) -> None:
        self.waiting = max(self.waiting - 1, 0)


def room_left(room: WaitingRoom, waiting: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """:meth:`WaitingRoom.enter` for many rooms at once (the simulator's form): element for
    element, how many more requests enter a room like ``room`` holding ``waiting`` before
    the first is turned away (``inf``: unbounded). A test holds it to the single form."""
    waits = np.asarray(waiting, dtype=np.float64)
    if room.max_waiting is None:
        return np.full(waits.shape, np.inf)
    return np.maximum(room.max_waiting - waits, 0.0)
