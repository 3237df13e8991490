"""Routing v0: power of two choices among live providers with a free slot.

Sampling two candidates and taking the less loaded one spreads load nearly as well as
scanning everyone, at constant cost, and avoids the herd effect of always picking the
single least-loaded provider.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from tessera.market.registry import LiveProvider


def choose_provider(
    candidates: Sequence[LiveProvider],
    rng: random.Random,
    exclude: Collection[str] = (),
) -> LiveProvider | None:
    """Pick a provider with a free slot, or None if every candidate is full or excluded."""
    open_ = [p for p in candidates if p.free_slots > 0 and p.provider_id not in exclude]
    if not open_:
        return None
    if len(open_) == 1:
        return open_[0]
    first, second = rng.sample(open_, 2)
    if first.load != second.load:
        return first if first.load < second.load else second
    return first if first.free_slots >= second.free_slots else second
