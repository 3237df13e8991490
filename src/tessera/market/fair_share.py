"""How many of a model's provider slots one account may hold at once.

Per-key limits bound how much one account asks for; they cannot keep it from filling
every slot a model has, and then any other account's request waits behind its jobs (with
four slots and a flood, an honest one-at-a-time key waited about a second for a 20 ms
answer). So an account that already runs jobs on a model may not take the model's last
free slots: ``headroom_fraction`` of the model's slots (at least one) stay for other
accounts. An account alone on the network loses that headroom's throughput; any newcomer
finds a slot at once instead of queueing behind a flood. A model with fewer than
``MIN_CAPACITY`` slots keeps no headroom: there it would cost an account a third or more
of the model. Pure: the hub counts the jobs and asks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_CAPACITY = 4


@dataclass(frozen=True, slots=True)
class SharePolicy:
    headroom_fraction: float = 0.1

    def most(self, capacity: int) -> int:
        """The most jobs one account may run at once on a model with ``capacity`` slots."""
        if capacity < MIN_CAPACITY or self.headroom_fraction <= 0:
            return max(capacity, 1)
        reserved = max(1, math.ceil(capacity * self.headroom_fraction))
        return max(1, capacity - reserved)


class RunningJobs:
    """Jobs running now, per (account, model): what ``SharePolicy.most`` is checked against."""

    __slots__ = ("_running",)

    def __init__(self) -> None:
        self._running: dict[tuple[str, str], int] = {}

    def count(self, account: str, model: str) -> int:
        return self._running.get((account, model), 0)

    def started(self, account: str, model: str) -> None:
        key = (account, model)
        self._running[key] = self._running.get(key, 0) + 1

    def finished(self, account: str, model: str) -> None:
        """One job ended. Called once per ``started`` (more is a bug and is ignored)."""
        key = (account, model)
        left = self._running.get(key, 0) - 1
        if left > 0:
            self._running[key] = left
        else:
            self._running.pop(key, None)
