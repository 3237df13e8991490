"""The gate every forward pass of a local model goes through, one turn at a time.

Decoding threads (one per job) call ``with gate.turn(tenant):`` around each step; the
order comes from :class:`tessera.market.compute_turns.ComputeTurns`, the time each turn
took from ``time.perf_counter`` here. A turn nobody contends for costs one lock round
trip; a contended one parks its thread on an Event until the turn before it ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tessera.market.compute_turns import ComputeTurns


class TurnGate:
    """Thread-safe turns over one compute device (``width`` passes at once)."""

    def __init__(self, width: int = 1) -> None:
        self._lock = threading.Lock()
        self._turns: ComputeTurns[threading.Event] = ComputeTurns(width)

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._turns.waiting

    @contextmanager
    def turn(self, tenant: str) -> Iterator[None]:
        """Hold a turn for ``tenant`` while the block runs (its measured time is charged)."""
        parked = threading.Event()
        with self._lock:
            granted = self._turns.arrive(tenant, parked)
        if not granted:
            parked.wait()
        started = time.perf_counter()
        try:
            yield
        finally:
            used = time.perf_counter() - started
            with self._lock:
                following = self._turns.done(tenant, used)
            if following is not None:
                following.set()
