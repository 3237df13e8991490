"""Whose job computes next on a provider: compute shared fairly between accounts.

The gateway bounds how many of a model's slots one account may hold (``fair_share``), but
the jobs it admits still share a provider's compute: a local model runs one decoding loop
per job, and on a CPU or a GPU without batching every running loop slows the others. With
a flood's sixteen jobs beside one honest job, the honest one got a seventeenth of the
provider and took six times as long. So each forward pass takes a turn, and turns go to
the *tenant* (an opaque tag the gateway gives each account's jobs) that has used the least
compute so far, in measured seconds: an account alone gets everything, two busy accounts
get half each however many jobs each runs (stride scheduling, like Linux's CFS).

Two things keep a short answer from an account that was idle nearly as quick beside a flood
as alone, as a desktop scheduler keeps a keypress quick beside a compile:

- *Bounded idle credit.* A tenant back from idle starts a few turns (``idle_credit_turns``
  times the recent mean turn) below the floor (the time of the tenant granted a turn
  last, about the least of the busy ones), never below its own. Idleness is banked only
  that far: a tenant that stayed busy is level with the floor and gains nothing, and one
  that bursts and pauses gets the credit back only after the others have used that much
  compute while it waited, so over time it still gets no more than its share.
- *A job keeps its turn between passes* (``again``) while nobody waiting has used less:
  a decoding loop is never queued when its pass ends (it samples, then asks again), so
  with a turn per pass a busy tenant's waiting job took every other turn whatever the
  order said.

Pure: the shell (``provider/turn_gate.py``) holds the lock, measures each turn and wakes
the waiter this returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

W = TypeVar("W")

# Idle tenants are forgotten once more than this many (or twice the busy ones) are known.
_PRUNE_AT = 256
# A tenant back from idle may run about this many turns ahead of the busy ones: a prefill
# and a few tokens, a short chat's whole answer.
IDLE_CREDIT_TURNS = 8.0
# Weight of the latest turn in the mean turn (which sizes the credit in seconds).
_MEAN_WEIGHT = 1 / 16


@dataclass(slots=True)
class _Tenant(Generic[W]):
    used_s: float  # compute used, in seconds, from the common origin
    waiting: deque[W] = field(default_factory=deque)
    arrived: int = 0  # when it last started waiting: ties go to the earlier
    running: int = 0


class ComputeTurns(Generic[W]):
    """``width`` turns may run at once; waiters queue per tenant.

    ``arrive`` returns True when the turn is granted at once; otherwise the waiter is
    queued and a later ``done`` returns it when its turn comes. Every granted turn ends
    with exactly one ``done``.
    """

    def __init__(self, width: int = 1, idle_credit_turns: float = IDLE_CREDIT_TURNS) -> None:
        if width < 1:
            raise ValueError("width must be at least 1")
        if idle_credit_turns < 0:
            raise ValueError("idle_credit_turns cannot be negative")
        self.width = width
        self.idle_credit_turns = idle_credit_turns
        self.mean_turn_s = 0.0
        self.running = 0
        self._tenants: dict[str, _Tenant[W]] = {}
        self._queued: dict[str, _Tenant[W]] = {}  # tenants with a waiter, in no order
        self._floor = 0.0  # the used time of the tenant granted a turn last (never falls)
        self._arrivals = 0
        self._prune_at = _PRUNE_AT

    @property
    def waiting(self) -> int:
        return sum(len(t.waiting) for t in self._queued.values())

    @property
    def idle_credit_s(self) -> float:
        """How far below the floor a tenant back from idle starts, in seconds of compute."""
        return self.idle_credit_turns * self.mean_turn_s

    def used_s(self, tenant: str) -> float:
        """Compute ``tenant`` used, from the common origin (what the order follows); for a
        tenant with nothing running or waiting, where it would start if it asked now."""
        known = self._tenants.get(tenant)
        if known is not None and (known.running or known.waiting):
            return known.used_s
        start = self._floor - self.idle_credit_s
        return start if known is None else max(known.used_s, start)

    def arrive(self, tenant: str, waiter: W) -> bool:
        """A job of ``tenant`` wants a turn: True if it may run now, else it waits."""
        known = self._tenants.get(tenant)
        if known is None:
            known = self._tenants[tenant] = _Tenant(self._floor - self.idle_credit_s)
        elif not known.waiting:
            # Back from idle: at most the credit below the floor; busy: never below it.
            credit = 0.0 if known.running else self.idle_credit_s
            known.used_s = max(known.used_s, self._floor - credit)
        if self.running < self.width and not self._queued:
            self._floor = max(self._floor, known.used_s)
            self.running += 1
            known.running += 1
            return True
        self._enqueue(tenant, known, waiter)
        return False

    def again(self, tenant: str, used_s: float, waiter: W) -> W | None:
        """A turn of ``tenant`` ended after ``used_s`` seconds and the same job wants the
        next one at once (a decoding loop between two passes).

        None: it keeps the turn, as nobody waiting has used less (a tie goes to the one
        waiting, so a tenant's own jobs still take turns). Otherwise ``waiter`` is queued
        and the waiter granted the freed turn is returned: wake it, then wait on ``waiter``.
        """
        known = self._tenants[tenant]  # it holds a turn, so it is known
        self._charge(known, used_s)
        if self._queued:
            name, best = self._next_in_line()
            if best.used_s <= known.used_s:
                known.running -= 1
                self.running -= 1
                self._enqueue(tenant, known, waiter)
                return self._grant(name, best)
        self._floor = max(self._floor, known.used_s)
        return None

    def done(self, tenant: str, used_s: float) -> W | None:
        """A turn of ``tenant`` ended after ``used_s`` seconds of compute; returns the
        waiter granted the freed turn, or None when nobody waits."""
        known = self._tenants.get(tenant)
        if known is not None:
            self._charge(known, used_s)
            known.running = max(known.running - 1, 0)
        self.running = max(self.running - 1, 0)
        if len(self._tenants) > self._prune_at:
            self._prune()
        if not self._queued:
            return None
        return self._grant(*self._next_in_line())

    def _next_in_line(self) -> tuple[str, _Tenant[W]]:
        """The queued tenant that has used least (ties: the one waiting longest)."""
        return min(self._queued.items(), key=lambda kv: (kv[1].used_s, kv[1].arrived))

    def _charge(self, known: _Tenant[W], used_s: float) -> None:
        used_s = max(used_s, 0.0)
        known.used_s += used_s
        self.mean_turn_s += (used_s - self.mean_turn_s) * _MEAN_WEIGHT

    def _enqueue(self, tenant: str, known: _Tenant[W], waiter: W) -> None:
        if not known.waiting:
            self._arrivals += 1
            known.arrived = self._arrivals
            self._queued[tenant] = known
        known.waiting.append(waiter)

    def _grant(self, name: str, chosen: _Tenant[W]) -> W:
        """Hand the freed turn to ``chosen``'s oldest waiter."""
        self._floor = max(self._floor, chosen.used_s)
        waiter = chosen.waiting.popleft()
        if not chosen.waiting:
            del self._queued[name]
        else:  # its other jobs wait their tenant's next turn, behind anyone older
            self._arrivals += 1
            chosen.arrived = self._arrivals
        self.running += 1
        chosen.running += 1
        return waiter

    def _prune(self) -> None:
        """Forget tenants with nothing running or waiting. One back soon starts as any
        tenant back from idle does: it loses at most the few turns it ran ahead."""
        idle = [n for n, t in self._tenants.items() if not t.running and not t.waiting]
        for name in idle:
            del self._tenants[name]
        self._prune_at = max(_PRUNE_AT, 2 * len(self._tenants))
