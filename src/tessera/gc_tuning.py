"""Keep the cyclic garbage collector's pauses short in a long-running server process.

Measured under load, the gateway ran a full (generation 2) collection every two or three
seconds, each pausing the event loop for 80 to 110 ms (16 in a 40 s run, 1.3 s in all): every request and stream chunk in flight
waited, which set the 99th percentile latency and every stream stall over 100 ms. A full
collection walks every tracked object, and most of them are the modules, schemas and
tables built at startup, which never become garbage. :func:`settle_heap` runs once the
process has started: it collects what startup left, then moves everything still alive
into the permanent generation (``gc.freeze``), which collections no longer walk; and it
raises the youngest generation's threshold, so that fewer short-lived request objects
are promoted by collections that happen to run while they are alive.

Only cycles pay for this: reference counting still frees everything else at once. Objects
frozen at startup that later become garbage in a cycle are never freed, which is why it
runs after startup only, once.
"""

from __future__ import annotations

import gc

# Allocations between generation-0 collections (CPython's default is 700). Each young
# collection then scans more objects, but a request's objects are mostly freed by
# reference counting before one runs, so fewer of them survive into the old generations.
YOUNG_THRESHOLD = 50_000


def settle_heap() -> None:
    """Collect, freeze what survived startup, and widen the young generation."""
    _, middle, old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
