"""The gate every forward pass of a local model goes through, one turn at a time.

A decoding thread (one per job) holds ``with gate.steps(tenant) as turns:`` around its
loop and calls ``turns.next()`` before each pass: the job keeps the device from one pass
to the next until a waiting tenant has used less, then hands it over and waits. A single
pass (an audit's scoring) takes ``with gate.turn(tenant):``. The order comes from
:class:`tessera.market.compute_turns.ComputeTurns`, the time each turn took from
``time.perf_counter`` here. A turn nobody contends for costs one lock round trip; a
contended one parks its thread on an Event until the turn before it ends.
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
    def steps(self, tenant: str) -> Iterator[Steps]:
        """One job's run of passes for ``tenant``; whatever turn it holds is given back
        when the block ends, however it ends."""
        steps = Steps(self, tenant)
        try:
            yield steps
        finally:
            steps.release()

    @contextmanager
    def turn(self, tenant: str) -> Iterator[None]:
        """Hold a turn for ``tenant`` while the block runs (its measured time is charged)."""
        with self.steps(tenant) as turns:
            turns.next()
            yield


class Steps:
    """A job's hold on its gate between passes (see ``TurnGate.steps``)."""

    def __init__(self, gate: TurnGate, tenant: str) -> None:
        self._gate = gate
        self._tenant = tenant
        self._holding = False
        self._since = 0.0  # when the time charged next began

    def next(self) -> None:
        """Before each pass: wait for a turn (the first), or keep the one held (the time
        since the last is charged) unless a waiting tenant has used less, then wait."""
        gate = self._gate
        parked = threading.Event()
        if not self._holding:
            with gate._lock:
                granted = gate._turns.arrive(self._tenant, parked)
            if not granted:
                parked.wait()
        else:
            now = time.perf_counter()
            with gate._lock:
                following = gate._turns.again(self._tenant, now - self._since, parked)
            if following is None:
                self._since = now
                return
            following.set()
            parked.wait()
        self._holding = True
        self._since = time.perf_counter()

    def release(self) -> None:
        """Give back the turn held, if any, charging the time since the last ``next``."""
        if not self._holding:
            return
        self._holding = False
        used = time.perf_counter() - self._since
        with self._gate._lock:
            following = self._gate._turns.done(self._tenant, used)
        if following is not None:
            following.set()
