"""The gateway's one clock and one random source, made once and handed to every part.

The policy cores (market, ledger, verify) never read a clock or draw a random number
themselves: the shells pass them ``now`` and a random source. This is where the shells
get theirs, so that a simulator or a test drives a whole gateway on its own time (a
manual clock) and its own seed (a routing choice, a sampled audit, a provider's place in
a scan are then reproducible), by passing a :class:`Runtime` to ``create_app``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Runtime:
    """Wall-clock seconds (for records and the ledger), monotonic seconds (for timeouts
    and rates), and the random source for routing and sampling."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def seeded(cls, seed: int) -> Runtime:
        """The real clocks, with a reproducible random source."""
        return cls(rng=random.Random(seed))
