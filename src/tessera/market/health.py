"""How well each provider has been doing: speed averages and a circuit breaker.

Time to first token and output tokens per second are exponential moving averages, so
the router reacts to a provider slowing down within a few requests. The circuit breaker
stops routing to a provider after ``failures`` errors in a row: it stays *open* for a
backoff that doubles each time it reopens (capped), then lets one trial request through
(*half-open*); a success closes it and resets the backoff. State is kept per provider id,
not per connection, so reconnecting does not reset a breaker.
"""

from __future__ import annotations

from dataclasses import dataclass

EMA_WEIGHT = 0.2  # weight of the newest sample


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 3
    backoff_s: float = 5.0
    backoff_max_s: float = 300.0


@dataclass(slots=True)
class ProviderHealth:
    """One provider's record; mutated only through HealthBook."""

    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    samples: int = 0
    failures_in_row: int = 0
    open_until: float = 0.0  # monotonic time; breaker open while now < open_until
    backoff_s: float = 0.0  # the last open period (0: never opened, or reset)
    trial_in_flight: bool = False
    opened: int = 0  # times the breaker has opened
    last_failure: str | None = None

    def state(self, now: float) -> str:
        if self.backoff_s == 0.0:
            return "closed"
        return "open" if now < self.open_until else "half_open"

    def admits(self, now: float) -> bool:
        """Whether the router may send this provider a request now."""
        state = self.state(now)
        if state == "closed":
            return True
        return state == "half_open" and not self.trial_in_flight

    def started(self, now: float) -> None:
        """A request was sent: a half-open breaker lets only this one through."""
        if self.state(now) == "half_open":
            self.trial_in_flight = True

    def succeeded(self, ttft_ms: float | None, tokens: int, generation_s: float) -> None:
        """A job finished well: close the breaker and fold in its speed."""
        self.failures_in_row = 0
        self.backoff_s = 0.0
        self.open_until = 0.0
        self.trial_in_flight = False
        if ttft_ms is not None:
            self.ttft_ms = _ema(self.ttft_ms, ttft_ms)
        if tokens > 1 and generation_s > 0:
            self.tokens_per_s = _ema(self.tokens_per_s, (tokens - 1) / generation_s)
        self.samples += 1

    def failed(self, policy: BreakerPolicy, reason: str, now: float) -> bool:
        """A job failed through the provider's fault; True if this opened the breaker."""
        self.failures_in_row += 1
        self.last_failure = reason
        trial = self.trial_in_flight
        self.trial_in_flight = False
        if not trial and self.failures_in_row < policy.failures:
            return False
        if self.state(now) == "open":
            return False  # already open: failures of jobs sent before it opened
        self.backoff_s = min(max(self.backoff_s * 2, policy.backoff_s), policy.backoff_max_s)
        self.open_until = now + self.backoff_s
        self.opened += 1
        return True

    def abandoned(self) -> None:
        """A trial request ended without a verdict (the client left): allow another."""
        self.trial_in_flight = False

    def public(self, now: float) -> dict[str, object]:
        return {
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 1),
            "tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 1),
            "samples": self.samples,
            "breaker": self.state(now),
            "breaker_open_for_s": max(0.0, round(self.open_until - now, 1)),
            "failures_in_row": self.failures_in_row,
            "last_failure": self.last_failure,
        }


def _ema(old: float | None, sample: float) -> float:
    return sample if old is None else old + EMA_WEIGHT * (sample - old)
