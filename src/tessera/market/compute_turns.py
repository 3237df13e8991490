"""Whose job computes next on a provider: compute shared fairly between accounts.

The gateway bounds how many of a model's slots one account may hold (``fair_share``), but
the jobs it admits still share a provider's compute: a local model runs one decoding loop
per job, and on a CPU or a GPU without batching every running loop slows the others. With
a flood's sixteen jobs beside one honest job, the honest one got a seventeenth of the
provider and took six times as long. So each forward pass takes a turn, and turns go to
the *tenant* (an opaque tag the gateway gives each account's jobs) that has used the least
compute so far, in measured seconds: an account alone gets everything, two busy accounts
get half each however many jobs each runs (stride scheduling, like Linux's CFS).

A tenant that was idle starts at the least time of the tenants now busy, so idleness is
never banked into a burst. Pure: the shell (``provider/turn_gate.py``) holds the lock,
measures each turn and wakes the waiter this returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

W = TypeVar("W")

# Idle tenants are forgotten once more than this many (or twice the busy ones) are known.
_PRUNE_AT = 256


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

    def __init__(self, width: int = 1) -> None:
        if width < 1:
            raise ValueError("width must be at least 1")
        self.width = width
        self.running = 0
        self._tenants: dict[str, _Tenant[W]] = {}
        self._queued: dict[str, _Tenant[W]] = {}  # tenants with a waiter, in no order
        self._floor = 0.0  # the used time of the tenant granted a turn last (never falls)
        self._arrivals = 0
        self._prune_at = _PRUNE_AT

    @property
    def waiting(self) -> int:
        return sum(len(t.waiting) for t in self._queued.values())

    def used_s(self, tenant: str) -> float:
        """Compute ``tenant`` used, from the common origin (what the order follows)."""
        known = self._tenants.get(tenant)
        return self._floor if known is None else max(known.used_s, self._floor)

    def arrive(self, tenant: str, waiter: W) -> bool:
        """A job of ``tenant`` wants a turn: True if it may run now, else it waits."""
        known = self._tenants.get(tenant)
        if known is None:
            known = self._tenants[tenant] = _Tenant(self._floor)
        elif not known.waiting:
            known.used_s = max(known.used_s, self._floor)  # idleness is not credit
        if self.running < self.width and not self._queued:
            self._floor = max(self._floor, known.used_s)
            self.running += 1
            known.running += 1
            return True
        if not known.waiting:
            self._arrivals += 1
            known.arrived = self._arrivals
            self._queued[tenant] = known
        known.waiting.append(waiter)
        return False

    def done(self, tenant: str, used_s: float) -> W | None:
        """A turn of ``tenant`` ended after ``used_s`` seconds of compute; returns the
        waiter granted the freed turn, or None when nobody waits."""
        known = self._tenants.get(tenant)
        if known is not None:
            known.used_s += max(used_s, 0.0)
            known.running = max(known.running - 1, 0)
        self.running = max(self.running - 1, 0)
        if len(self._tenants) > self._prune_at:
            self._prune()
        if not self._queued:
            return None
        name, chosen = min(self._queued.items(), key=lambda kv: (kv[1].used_s, kv[1].arrived))
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
        """Forget tenants with nothing running or waiting. One back soon starts at the
        floor again: it loses at most the few turns it ran ahead of it."""
        idle = [n for n, t in self._tenants.items() if not t.running and not t.waiting]
        for name in idle:
            del self._tenants[name]
        self._prune_at = max(_PRUNE_AT, 2 * len(self._tenants))
