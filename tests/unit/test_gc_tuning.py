"""settle_heap: startup's survivors frozen out of collections, a wider young generation."""

from __future__ import annotations

import gc

from tessera.gc_tuning import YOUNG_THRESHOLD, settle_heap


def test_settle_heap_freezes_survivors_and_widens_the_young_generation() -> None:
    before = gc.get_threshold()
    kept = [[i] for i in range(1_000)]  # alive across the call: must be frozen
    try:
        gc.unfreeze()
        settle_heap()
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
        assert not any(o is kept for o in gc.get_objects())  # no longer walked
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
