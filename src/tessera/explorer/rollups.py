"""The network's numbers over time, kept as events happen, so no page ever scans a table.

Every request that ends, audit that closes and slash adds to a bucket of its minute, its
hour and its day; a window's figures are sums of buckets, and its percentiles come from
fixed log-spaced histograms (each bucket keeps counts, not samples), so memory is bounded
by the buckets kept, not by traffic: minutes for two days, hours for 32 days, days for ever.

Pure: no clock and no I/O. Callers pass the time of each event and of each question
(seconds since the epoch), so a simulator can drive it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from typing import Any

MINUTE, HOUR, DAY = 60, 3600, 86_400
KEEP_MINUTES = 2 * DAY
KEEP_HOURS = 32 * DAY
# Window name -> seconds (None: since the first event).
WINDOWS: dict[str, int | None] = {
    "1h": HOUR,
    "24h": DAY,
    "7d": 7 * DAY,
    "30d": 30 * DAY,
    "all": None,
}
MAX_POINTS = 300  # a series has at most this many points: buckets are merged to fit
MIN_SAMPLES = 5  # a percentile needs this many samples; fewer says "insufficient data"

# Histogram edges: 1.25x apart, from 1 ms to ~20 min (latency) and 0.1 to ~40k tokens/s.
_RATIO = 1.25
_BINS = 64
_MS_FLOOR = 1.0
_TPS_FLOOR = 0.1

SERIES_METRICS = (
    "requests",
    "ok",
    "errors",
    "tokens",
    "cost",
    "success_rate",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "tokens_per_s_p50",
    "audits_passed",
    "audits_failed",
    "slashes",
)


def _bin(value: float, floor: float) -> int:
    if value <= floor:
        return 0
    return min(_BINS - 1, int(math.log(value / floor, _RATIO)) + 1)


def _edge(index: int, floor: float) -> float:
    """The upper edge of a bin: a percentile read from it is at most this."""
    return floor * _RATIO**index


@dataclass
class Bucket:
    """What happened in one minute, hour or day."""

    start: int
    requests: int = 0
    ok: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: int = 0
    earned: int = 0  # the providers' share of ``cost`` (after the protocol fee)
    audits_passed: int = 0
    audits_failed: int = 0
    slashes: int = 0
    slashed_units: int = 0
    refunded_units: int = 0
    ttft: list[int] = field(default_factory=lambda: [0] * _BINS)
    tps: list[int] = field(default_factory=lambda: [0] * _BINS)

    def add(self, other: Bucket) -> None:
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for i in range(_BINS):
            self.ttft[i] += other.ttft[i]
            self.tps[i] += other.tps[i]


_COUNTS = (
    "requests", "ok", "errors", "prompt_tokens", "completion_tokens", "cost", "earned",
    "audits_passed", "audits_failed", "slashes", "slashed_units", "refunded_units",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TapeRow:
    """One finished request as the public sees it: ids, counts and times, never content."""

    request_id: str
    at: float
    model: str
    provider_id: str | None
    status: str
    prompt_tokens: int
    completion_tokens: int
    cost: int
    latency_ms: float
    ttft_ms: float | None
    price_input_per_mtok: int | None = None  # the offer it was served at
    price_output_per_mtok: int | None = None
    route: str | None = None  # why this provider (the router's explanation)


def percentile(histogram: list[int], q: float, floor: float) -> tuple[float | None, int]:
    """(the q-quantile's upper bin edge, samples); None below MIN_SAMPLES."""
    n = sum(histogram)
    if n < MIN_SAMPLES:
        return None, n
    rank = max(1, math.ceil(q * n))
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return round(_edge(index, floor), 3), n
    return round(_edge(_BINS - 1, floor), 3), n


def percentiles(histogram: list[int], floor: float) -> dict[str, Any]:
    """p50, p75, p90 and p99 of a histogram with its sample count (None each when short):
    one cumulative pass, then a binary search per quantile."""
    cumulative = list(accumulate(histogram))
    n = cumulative[-1] if cumulative else 0
    out: dict[str, Any] = {}
    for name, q in (("p50", 0.50), ("p75", 0.75), ("p90", 0.90), ("p99", 0.99)):
        if n < MIN_SAMPLES:
            out[name] = None
            continue
        index = min(bisect_left(cumulative, max(1, math.ceil(q * n))), _BINS - 1)
        out[name] = round(_edge(index, floor), 3)
    out["samples"] = n
    return out


@dataclass
class ModelStats:
    """One provider's requests for one model: what the models page and the provider page
    show per model (latency and throughput percentiles with their sample sizes)."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    ttft: list[int] = field(default_factory=lambda: [0] * _BINS)
    tps: list[int] = field(default_factory=lambda: [0] * _BINS)

    _cached: tuple[int, dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """Recomputed only after a new request (snapshots ask for every provider's)."""
        if self._cached is not None and self._cached[0] == self.requests:
            return self._cached[1]
        settled = self.ok + self.errors
        out = {
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "success_rate": None if settled == 0 else round(self.ok / settled, 4),
            "ttft_ms": percentiles(self.ttft, _MS_FLOOR),
            "tokens_per_s": percentiles(self.tps, _TPS_FLOOR),
        }
        self._cached = (self.requests, out)
        return out


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One closed audit case against a provider, as the public sees it."""

    at: float
    request_id: str
    model: str
    status: str  # passed | cleared | upheld | inconclusive
    slashed_units: int
    refunded_units: int
    provider_id: str = ""


@dataclass(frozen=True, slots=True)
class SlashRow:
    """Stake taken from a provider: why, how much, who was refunded, and the evidence."""

    at: float
    model: str
    reason: str
    slashed_units: int
    refunded_units: int
    reference: str  # "audit:<request id>": its evidence is that request's audit case
    provider_id: str = ""


@dataclass
class EpochRow:
    """One uptime epoch across the network: providers judged against their SLA."""

    epoch_start: int
    epoch_s: int
    providers: int = 0
    met: int = 0
    breached: int = 0
    slashed_units: int = 0


PASSED_AUDITS = frozenset({"passed", "cleared"})  # audit outcomes that count as passed
RECENT = 20  # audits and slashes kept per provider
KEEP_EPOCHS = 1_000  # uptime epochs kept (42 days of hourly epochs)
KEEP_REQUESTS = 10_000  # requests a request page can show (the newest)
LOG_SIZE = 500  # audits and slashes kept network-wide, newest first
EARNING_DAYS = 30  # days of per-provider earnings kept
MAX_MODELS = 200  # models with their own timeline (a model page's charts)
UNSERVED = "(unknown model)"  # the public name of a model no provider serves


@dataclass
class ProviderTotals:
    """One provider's record since this gateway started: bounded by providers, models
    and the days kept, not by traffic."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    tokens: int = 0
    earned_cost: int = 0  # what consumers paid for its answers (before fees)
    last_at: float | None = None
    models: dict[str, ModelStats] = field(default_factory=dict)
    # Day start -> [paid by consumers, its share after the protocol fee].
    by_day: dict[int, list[int]] = field(default_factory=dict)
    audits_passed: int = 0
    audits_failed: int = 0
    audits: deque[AuditRow] = field(default_factory=lambda: deque(maxlen=RECENT))
    slashed_units: int = 0
    refunded_units: int = 0
    slashes: deque[SlashRow] = field(default_factory=lambda: deque(maxlen=RECENT))
    slash_count: int = 0
    caught_after: int | None = None  # its requests when its first audit was upheld

    _cached: tuple[int, dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """Recomputed only after a new request (every snapshot asks for every provider's)."""
        if self._cached is not None and self._cached[0] == self.requests:
            return self._cached[1]
        settled = self.ok + self.errors
        ttft = [sum(column) for column in zip(*(m.ttft for m in self.models.values()), strict=True)]
        p50, n = percentile(ttft or [0] * _BINS, 0.50, _MS_FLOOR)
        out = {
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "success_rate": None if settled == 0 else round(self.ok / settled, 4),
            "tokens": self.tokens,
            "cost": self.earned_cost,
            "ttft_p50_ms": p50,
            "ttft_samples": n,
            "last_request_at": self.last_at,
        }
        self._cached = (self.requests, out)
        return out

    def detail(self, now: float | None = None) -> dict[str, Any]:
        """Everything the provider page shows of its record, newest first; paid per day
        over the EARNING_DAYS before ``now`` (all kept days without it)."""
        horizon = -math.inf if now is None else now - EARNING_DAYS * DAY
        return {
            **self.as_dict(),
            "models": {name: stats.as_dict() for name, stats in sorted(self.models.items())},
            "paid_by_day": [
                {"day": day, "cost": cost, "earned": earned}
                for day, (cost, earned) in sorted(self.by_day.items())
                if day > horizon
            ],
            "audits": {
                "passed": self.audits_passed,
                "failed": self.audits_failed,
                "recent": [asdict(row) for row in self.audits],
            },
            "slashes": {
                "count": self.slash_count,
                "slashed_units": self.slashed_units,
                "refunded_units": self.refunded_units,
                "recent": [asdict(row) for row in self.slashes],
            },
        }


class Timeline:
    """The buckets of one stream of events (the whole network, or one model's requests):
    minutes for two days, hours for 32 days, days for ever."""

    def __init__(self) -> None:
        self.minutes: dict[int, Bucket] = {}
        self.hours: dict[int, Bucket] = {}
        self.days: dict[int, Bucket] = {}
        self.first_at: float | None = None

    def buckets(self, at: float) -> Iterable[Bucket]:
        """The minute, hour and day buckets of ``at`` (made when missing)."""
        if self.first_at is None or at < self.first_at:
            self.first_at = at
        second = int(at)
        for size, store in ((MINUTE, self.minutes), (HOUR, self.hours), (DAY, self.days)):
            start = second - second % size
            bucket = store.get(start)
            if bucket is None:
                bucket = store[start] = Bucket(start)
            yield bucket

    def forget_before(self, now: float) -> None:
        """Drop minute buckets older than two days and hour buckets older than 32 days."""
        for store, keep in ((self.minutes, KEEP_MINUTES), (self.hours, KEEP_HOURS)):
            horizon = now - keep
            for start in [s for s in store if s < horizon]:
                del store[start]

    def window(self, now: float, name: str) -> Bucket:
        """Everything in the window ending at ``now``."""
        length = _window_length(name)
        return self._sum(now - length if length is not None else None, now + 1)

    def summary(self, now: float, name: str) -> dict[str, Any]:
        """The window's KPIs, each with the previous window's value to compare with."""
        length = _window_length(name)
        current = self.window(now, name)  # [now - length, now]; previous: the one before
        out = {"window": name, "as_of": now, "kpis": _kpis(current)}
        if length is not None:
            previous = self._sum(now - 2 * length, now - length)
            out["previous"] = _kpis(previous)
        else:
            out["previous"] = None
        return out

    def series(self, now: float, name: str, metric: str) -> dict[str, Any]:
        """``metric`` over the window, at most MAX_POINTS points, oldest first; a point
        whose percentile lacks samples is None (no data), not 0."""
        if metric not in SERIES_METRICS:
            raise ValueError(f"unknown metric {metric!r}; one of {', '.join(SERIES_METRICS)}")
        length = _window_length(name)
        start = now - length if length is not None else (self.first_at or now)
        span = max(1.0, now - start)
        store, size = self._store_for(span)
        step = size * max(1, math.ceil(span / size / MAX_POINTS))
        if length is None:  # since the first event: its bucket included
            first = int(start) - int(start) % size
        else:  # buckets that start in the window, as in _sum
            first = math.ceil(start / size) * size
        points = []
        t = first
        while t <= now:
            merged = Bucket(t)
            for s in range(t, t + step, size):
                bucket = store.get(s)
                if bucket is not None:
                    merged.add(bucket)
            points.append({"t": t, "value": _metric(merged, metric)})
            t += step
        return {"window": name, "metric": metric, "step_s": step, "points": points}

    def _store_for(self, span: float) -> tuple[dict[int, Bucket], int]:
        if span <= KEEP_MINUTES / 2:
            return self.minutes, MINUTE
        if span <= KEEP_HOURS - DAY:
            return self.hours, HOUR
        return self.days, DAY

    def _sum(self, start: float | None, end: float) -> Bucket:
        """Sum the buckets that start in [start, end), from the finest store that keeps
        the span (a window's edge is as sharp as that store's bucket)."""
        total = Bucket(int(start or 0))
        span = end - (start if start is not None else (self.first_at or end))
        store, _ = self._store_for(span)
        low = -math.inf if start is None else start
        for bucket_start, bucket in store.items():
            if low <= bucket_start < end:
                total.add(bucket)
        return total


class Rollups:
    def __init__(self, tape_size: int = 50) -> None:
        self.network = Timeline()
        self.by_model: dict[str, Timeline] = {}  # models some provider serves
        self.tape: deque[TapeRow] = deque(maxlen=tape_size)
        self.version = 0  # bumped by every event: a snapshot is stale when it differs
        self.providers: dict[str, ProviderTotals] = {}
        # The newest requests by id, for their pages, and the audit each one had.
        self.requests: OrderedDict[str, TapeRow] = OrderedDict()
        self.request_audits: dict[str, AuditRow] = {}
        self.audit_log: deque[AuditRow] = deque(maxlen=LOG_SIZE)
        self.slash_log: deque[SlashRow] = deque(maxlen=LOG_SIZE)
        self.epochs: OrderedDict[int, EpochRow] = OrderedDict()

    # ------------------------------------------------------------ events

    def request(self, row: TapeRow, tokens_per_s: float | None = None, earned: int = 0) -> None:
        """A request finished; ``earned`` is its provider's share of the cost (the caller
        knows the fee policy)."""
        ok = row.status == "ok"
        error = row.status == "error"
        ttft_bin = _bin(row.ttft_ms, _MS_FLOOR) if ok and row.ttft_ms is not None else -1
        tps_bin = _bin(tokens_per_s, _TPS_FLOOR) if ok and tokens_per_s is not None else -1
        for bucket in self._buckets(row.at, row.model):
            bucket.requests += 1
            bucket.ok += ok
            bucket.errors += error
            bucket.prompt_tokens += row.prompt_tokens
            bucket.completion_tokens += row.completion_tokens
            bucket.cost += row.cost
            bucket.earned += earned
            if ttft_bin >= 0:
                bucket.ttft[ttft_bin] += 1
            if tps_bin >= 0:
                bucket.tps[tps_bin] += 1
        if row.provider_id is not None:
            totals = self._provider(row.provider_id)
            totals.requests += 1
            totals.ok += ok
            totals.errors += error
            totals.tokens += row.prompt_tokens + row.completion_tokens
            totals.earned_cost += row.cost
            totals.last_at = max(totals.last_at or row.at, row.at)
            stats = totals.models.get(row.model)
            if stats is None:
                stats = totals.models[row.model] = ModelStats()
            stats.requests += 1
            stats.ok += ok
            stats.errors += error
            if ttft_bin >= 0:
                stats.ttft[ttft_bin] += 1
            if tps_bin >= 0:
                stats.tps[tps_bin] += 1
            if row.cost:
                day = int(row.at) - int(row.at) % DAY
                paid = totals.by_day.get(day)
                if paid is None:  # a new day: the ones past EARNING_DAYS go
                    for old in [d for d in totals.by_day if d <= day - EARNING_DAYS * DAY]:
                        del totals.by_day[old]
                    paid = totals.by_day[day] = [0, 0]
                paid[0] += row.cost
                paid[1] += earned
        self.tape.appendleft(row)
        self.requests[row.request_id] = row
        if len(self.requests) > KEEP_REQUESTS:
            gone, _ = self.requests.popitem(last=False)
            self.request_audits.pop(gone, None)
        self.version += 1

    def audit(self, row: AuditRow) -> None:
        """An audit case closed: counted in its windows when it reached a verdict (passed
        or cleared; upheld), kept on its provider's record and its request's either way."""
        verdict = True if row.status in PASSED_AUDITS else False if row.status == "upheld" else None
        totals = self._provider(row.provider_id)
        if verdict is not None:
            for bucket in self._buckets(row.at, row.model):
                bucket.audits_passed += verdict
                bucket.audits_failed += not verdict
            totals.audits_passed += verdict
            totals.audits_failed += not verdict
            if not verdict and totals.caught_after is None:
                totals.caught_after = totals.requests
        totals.audits.appendleft(row)
        self.audit_log.appendleft(row)
        if row.request_id in self.requests:
            self.request_audits[row.request_id] = row
        self.version += 1

    def slash(self, row: SlashRow) -> None:
        for bucket in self._buckets(row.at, row.model):
            bucket.slashes += 1
            bucket.slashed_units += row.slashed_units
            bucket.refunded_units += row.refunded_units
        totals = self._provider(row.provider_id)
        totals.slash_count += 1
        totals.slashed_units += row.slashed_units
        totals.refunded_units += row.refunded_units
        totals.slashes.appendleft(row)
        self.slash_log.appendleft(row)
        self.version += 1

    def epoch(self, start: int, epoch_s: int, met: int, breached: int, slashed: int) -> None:
        """An uptime epoch closed (a gateway may report one epoch in parts)."""
        row = self.epochs.get(start)
        if row is None:
            row = self.epochs[start] = EpochRow(start, epoch_s)
            while len(self.epochs) > KEEP_EPOCHS:
                self.epochs.popitem(last=False)
        row.providers += met + breached
        row.met += met
        row.breached += breached
        row.slashed_units += slashed
        self.version += 1

    def caught_after(self) -> list[int]:
        """For every provider caught cheating: the requests it had served when its first
        audit was upheld (how long a cheat lasted here)."""
        totals = list(self.providers.values())  # a copy: may run in a worker thread
        return [t.caught_after for t in totals if t.caught_after is not None]

    def _provider(self, provider_id: str) -> ProviderTotals:
        totals = self.providers.get(provider_id)
        if totals is None:
            totals = self.providers[provider_id] = ProviderTotals()
        return totals

    def _buckets(self, at: float, model: str) -> Iterable[Bucket]:
        """The network's buckets of ``at`` and, for a model some provider serves (up to
        MAX_MODELS of them: names are announced by anyone), the model's."""
        yield from self.network.buckets(at)
        if not model or model == UNSERVED:
            return
        timeline = self.by_model.get(model)
        if timeline is None:
            if len(self.by_model) >= MAX_MODELS:
                return
            timeline = self.by_model[model] = Timeline()
        yield from timeline.buckets(at)

    def forget_before(self, now: float) -> None:
        """Drop minute buckets older than two days and hour buckets older than 32 days.
        (A provider's earnings drop their days past EARNING_DAYS as it opens a new day:
        touching 10,000 providers here would hold the loop.)"""
        self.network.forget_before(now)
        for timeline in self.by_model.values():
            timeline.forget_before(now)

    # ------------------------------------------------------------ questions

    def timeline(self, model: str | None = None) -> Timeline | None:
        """The network's timeline, or a model's (None for a model never served)."""
        return self.network if model is None else self.by_model.get(model)

    def window(self, now: float, name: str) -> Bucket:
        return self.network.window(now, name)

    def summary(self, now: float, name: str) -> dict[str, Any]:
        return self.network.summary(now, name)

    def series(self, now: float, name: str, metric: str) -> dict[str, Any]:
        return self.network.series(now, name, metric)


def _window_length(name: str) -> int | None:
    if name not in WINDOWS:
        raise ValueError(f"unknown window {name!r}; one of {', '.join(WINDOWS)}")
    return WINDOWS[name]


def _kpis(bucket: Bucket) -> dict[str, Any]:
    ttft50, n_ttft = percentile(bucket.ttft, 0.50, _MS_FLOOR)
    ttft95, _ = percentile(bucket.ttft, 0.95, _MS_FLOOR)
    tps50, n_tps = percentile(bucket.tps, 0.50, _TPS_FLOOR)
    settled = bucket.ok + bucket.errors
    return {
        "requests": bucket.requests,
        "ok": bucket.ok,
        "errors": bucket.errors,
        "success_rate": None if settled == 0 else round(bucket.ok / settled, 4),
        "prompt_tokens": bucket.prompt_tokens,
        "completion_tokens": bucket.completion_tokens,
        "tokens": bucket.prompt_tokens + bucket.completion_tokens,
        "cost": bucket.cost,
        "earned": bucket.earned,
        "ttft_p50_ms": ttft50,
        "ttft_p95_ms": ttft95,
        "ttft_samples": n_ttft,
        "tokens_per_s_p50": tps50,
        "tokens_per_s_samples": n_tps,
        "audits_passed": bucket.audits_passed,
        "audits_failed": bucket.audits_failed,
        "slashes": bucket.slashes,
        "slashed_units": bucket.slashed_units,
        "refunded_units": bucket.refunded_units,
    }


def _metric(bucket: Bucket, metric: str) -> float | int | None:
    if metric == "tokens":
        return bucket.prompt_tokens + bucket.completion_tokens
    if metric == "success_rate":
        settled = bucket.ok + bucket.errors
        return None if settled == 0 else round(bucket.ok / settled, 4)
    if metric == "ttft_p50_ms":
        return percentile(bucket.ttft, 0.50, _MS_FLOOR)[0]
    if metric == "ttft_p95_ms":
        return percentile(bucket.ttft, 0.95, _MS_FLOOR)[0]
    if metric == "tokens_per_s_p50":
        return percentile(bucket.tps, 0.50, _TPS_FLOOR)[0]
    value: int = getattr(bucket, metric)
    return value


PRESENCE_MINUTES = DAY // MINUTE  # a day of minutes per provider
UPTIME_WINDOWS = {"5m": 5, "30m": 30, "24h": PRESENCE_MINUTES}  # name -> minutes


class Presence:
    """Whether each provider was online, minute by minute over the last day, as seen by
    every snapshot: two 1,440-byte rings per provider (checks and online checks in each
    minute), so 10,000 providers cost about 29 MB and a question reads no history."""

    def __init__(self) -> None:
        self._checks: dict[str, bytearray] = {}
        self._online: dict[str, bytearray] = {}
        self._minute: dict[str, int] = {}  # the last minute written, per provider
        self._day: dict[str, list[int]] = {}  # [online, checks] over the whole ring

    def observe(self, provider_id: str, online: bool, now: float) -> None:
        minute = int(now) // MINUTE
        checks = self._checks.get(provider_id)
        if checks is None:
            checks = self._checks[provider_id] = bytearray(PRESENCE_MINUTES)
            self._online[provider_id] = bytearray(PRESENCE_MINUTES)
            self._minute[provider_id] = minute
            self._day[provider_id] = [0, 0]
        ups = self._online[provider_id]
        day = self._day[provider_id]
        last = self._minute[provider_id]
        if minute > last:  # clear the minutes skipped since (nobody looked: unknown)
            if minute - last >= PRESENCE_MINUTES:
                checks[:] = bytes(PRESENCE_MINUTES)
                ups[:] = bytes(PRESENCE_MINUTES)
                day[0] = day[1] = 0
            else:
                for m in range(last + 1, minute + 1):
                    slot = m % PRESENCE_MINUTES
                    day[0] -= ups[slot]
                    day[1] -= checks[slot]
                    checks[slot] = 0
                    ups[slot] = 0
            self._minute[provider_id] = minute
        elif minute < last:
            return  # a clock step back: the ring keeps what it has
        slot = minute % PRESENCE_MINUTES
        if checks[slot] < 255:
            checks[slot] += 1
            ups[slot] += online
            day[0] += online
            day[1] += 1

    def counts(self, provider_id: str, now: float, minutes: int) -> tuple[int, int]:
        """(checks that found it online, checks) in the last ``minutes``: sums over at most
        two slices of the rings (C loops, microseconds even for a day)."""
        checks = self._checks.get(provider_id)
        if checks is None:
            return 0, 0
        last = self._minute[provider_id]
        if minutes >= PRESENCE_MINUTES and int(now) // MINUTE == last:
            online, seen = self._day[provider_id]  # the whole ring: kept as it is written
            return online, seen
        # Minutes in the window that the ring still holds: (low, high], high <= last.
        high = min(int(now) // MINUTE, last)
        low = max(int(now) // MINUTE - minutes, last - PRESENCE_MINUTES)
        if high <= low:
            return 0, 0
        ups = self._online[provider_id]
        start, end = (low + 1) % PRESENCE_MINUTES, high % PRESENCE_MINUTES + 1
        if start < end:
            return sum(ups[start:end]), sum(checks[start:end])
        return (
            sum(ups[start:]) + sum(ups[:end]),
            sum(checks[start:]) + sum(checks[:end]),
        )

    def uptime(self, provider_id: str, now: float, minutes: int) -> tuple[float | None, int]:
        """(the share of checks that found it online in the last ``minutes``, checks);
        None when no check fell in the window."""
        online, seen = self.counts(provider_id, now, minutes)
        return (None if seen == 0 else round(online / seen, 4)), seen

    def network(self, now: float, minutes: int) -> tuple[float | None, int]:
        """The same share over every provider: all their online checks / all checks."""
        online = seen = 0
        for provider_id in list(self._checks):  # a copy: may run in a worker thread
            up, n = self.counts(provider_id, now, minutes)
            online += up
            seen += n
        return (None if seen == 0 else round(online / seen, 4)), seen

    def windows(self, provider_id: str, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, minutes in UPTIME_WINDOWS.items():
            share, checks = self.uptime(provider_id, now, minutes)
            out[name] = {"uptime": share, "checks": checks}
        return out
