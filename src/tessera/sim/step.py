"""The state one step leaves behind for the sampled requests and the fluid queue.

Its own module because both sides read it: the run loop (sim/engine.py) fills one per
step, the fluid queue (sim/overload.py) and the sampled requests (sim/foreground.py) read
it, and neither of those may import the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.sim.world import Bools, Floats, Ints


@dataclass(frozen=True)
class Step:
    """What the background decided in one step, as the sampled requests see it."""

    now: float
    lam: Floats  # requests/s routed to each provider (refused ones included)
    routed_per_s: float  # their sum
    streams: Floats
    service: Floats
    queue_before: Floats  # waiting for each provider's slot when the step began
    refused_share: float  # of the step's tries, refused at the gateway
    lost_share: float  # of attempts landing on a dead gateway replica
    group: Ints  # each provider's (GPU class, region) group
    sticky_keeps: Bools  # per group: the router keeps a conversation there (sim/routing.py)
