"""When the gateway itself is the bottleneck: refuse new work at once instead of queueing it.

Pure policy: the gateway's shell measures how late its event loop runs a timer (the lag)
and counts the requests it is running; this decides. An event loop with more work than
CPU does not refuse anything by itself: it reads every request it is sent, starts a task
for each, and shares itself among all of them, so under an offered load above capacity
every request slows down together until they all time out. The lag is the signal: it is
the time any new request waits before its next step runs, and it grows as soon as the
loop is saturated, whatever the work is (a flood of small requests, many streams, a slow
handler). A saturated loop that merely keeps up (a closed loop of clients at capacity)
lags by about one turn of its work; a loop that falls behind lags more with every turn.

Rules, in order:

- ``max_in_flight`` requests running at once (None: no bound): one more is refused.
- a queue longer than the gateway drains in ``queue_s``: requests admitted and not yet
  answered (for a stream: its first byte) beyond ``queue_s`` times the rate at which
  answers began over the last ``rate_window_s``, and at least ``min_queue``. The
  bottleneck may be past the gateway (a provider slower than it says, an agent short of
  CPU): the gateway's loop is then idle while its queue grows into timeouts, and only
  this rule sees it. A stream counts as answered at its first token, so long streams
  never fill the queue.
- a standing lag above ``target_s``: the least of the last ``window`` samples. One late
  turn (a garbage collection, a slow callback) is not overload and refuses nothing; a loop
  late on every turn is, and every new request is refused until one sample comes back
  under the target. Refusing costs a small fraction of serving, so the loop drains.

A refusal changes no state and says how long to wait (``retry_after_s``).

:func:`starts` is the batch form of :meth:`LoadGauge.refusal` for the simulator: how many
requests many gateway states admit, one after another, before the first refusal.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Reason = Literal["loop_lag", "in_flight", "queue"]


@dataclass(frozen=True, slots=True)
class Shed:
    """Refused for overload: why, and when to try again."""

    reason: Reason
    retry_after_s: int

    def message(self, *, lag_s: float, limit: int | None) -> str:
        wait = f"retry in {self.retry_after_s} s"
        if self.reason == "in_flight":
            return f"The gateway is running {limit} requests, its limit; {wait}."
        if self.reason == "queue":
            return (
                f"The gateway has {limit} requests waiting for an answer, more than it "
                f"answers in the next moments; {wait}."
            )
        return (
            f"The gateway is overloaded (its event loop runs {lag_s * 1000:.0f} ms behind); {wait}."
        )


class LoadGauge:
    """The gateway's load, from lag samples, and whether a new request may start."""

    def __init__(
        self,
        target_s: float | None,
        max_in_flight: int | None = None,
        *,
        window: int = 5,
        retry_after_s: int = 1,
        queue_s: float | None = None,
        min_queue: int = 256,
        rate_window_s: float = 2.0,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least one sample")
        if rate_window_s <= 0:
            raise ValueError("the rate window must be positive")
        self.target_s = target_s
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self.queue_s = queue_s
        self.min_queue = min_queue
        self._samples: deque[float] = deque([0.0], maxlen=window)
        # Answers begun, by bucket of a quarter of the rate window: (bucket, count).
        self._bucket_s = rate_window_s / 4
        self._rate_window_s = rate_window_s
        self._answers: deque[list[int]] = deque()

    def observe(self, lag_s: float) -> None:
        """One sample: how late the loop ran a timer (negative values count as 0)."""
        self._samples.append(max(lag_s, 0.0))

    @property
    def lag_s(self) -> float:
        """The standing lag: the least of the recent samples."""
        return min(self._samples)

    @property
    def overloaded(self) -> bool:
        return self.target_s is not None and self.lag_s > self.target_s

    def answered(self, now_s: float) -> None:
        """A request's answer began (its first byte) at ``now_s``."""
        bucket = int(now_s // self._bucket_s)
        answers = self._answers
        if answers and answers[-1][0] == bucket:
            answers[-1][1] += 1
        else:
            answers.append([bucket, 1])
            self._forget(bucket)

    def _forget(self, bucket: int) -> None:
        oldest = bucket - round(self._rate_window_s / self._bucket_s) + 1
        while self._answers and self._answers[0][0] < oldest:
            self._answers.popleft()

    def answer_rate(self, now_s: float) -> float:
        """Answers begun per second over the last rate window."""
        self._forget(int(now_s // self._bucket_s))
        return sum(count for _, count in self._answers) / self._rate_window_s

    def queue_limit(self, now_s: float) -> int | None:
        """How many requests may wait for their answer now (None: no bound)."""
        if self.queue_s is None:
            return None
        return max(self.min_queue, math.ceil(self.answer_rate(now_s) * self.queue_s))

    def refusal(self, in_flight: int, waiting: int = 0, now_s: float = 0.0) -> Shed | None:
        """None if one more request may start now, with ``in_flight`` already running, of
        which ``waiting`` have no answer yet."""
        if self.max_in_flight is not None and in_flight >= self.max_in_flight:
            return Shed("in_flight", self.retry_after_s)
        if self.overloaded:
            return Shed("loop_lag", self.retry_after_s)
        if self.queue_s is not None and waiting >= self.min_queue:
            limit = self.queue_limit(now_s)
            if limit is not None and waiting >= limit:
                return Shed("queue", self.retry_after_s)
        return None


def starts(
    gauge: LoadGauge,
    in_flight: npt.ArrayLike,
    waiting: npt.ArrayLike,
    answer_rate_per_s: npt.ArrayLike,
) -> npt.NDArray[np.float64]:
    """:meth:`LoadGauge.refusal` for many gateway states at once (the simulator's form).

    Element for element: how many requests, arriving one after another at a gateway that
    runs ``in_flight`` requests of which ``waiting`` have no answer yet, start before the
    first is refused, each one started adding one to both counts (``inf``: no bound). The
    answer rate is given, where the gauge measures it: with ``answer_rate(now_s)`` equal
    to it, calling ``refusal`` in that loop counts the same (a test holds them together).
    The lag rule reads the gauge's own samples, as the single form does.
    """
    flights = np.asarray(in_flight, dtype=np.float64)
    waits = np.asarray(waiting, dtype=np.float64)
    rates = np.asarray(answer_rate_per_s, dtype=np.float64)
    shape = np.broadcast_shapes(flights.shape, waits.shape, rates.shape)
    if gauge.overloaded:
        return np.zeros(shape)
    out = np.full(shape, np.inf)
    if gauge.max_in_flight is not None:
        out = np.minimum(out, np.maximum(gauge.max_in_flight - flights, 0.0))
    if gauge.queue_s is not None:
        limit = np.maximum(gauge.min_queue, np.ceil(rates * gauge.queue_s))
        out = np.minimum(out, np.maximum(limit - waits, 0.0))
    return out
