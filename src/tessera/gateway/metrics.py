"""Prometheus metrics for one gateway, on a registry of its own (no global state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tessera.gateway.events import (
    AuditClosed,
    EventBus,
    ProviderJoined,
    ProviderLeft,
    RequestFinished,
    Slashed,
)

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics"]


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tessera_requests_total",
            "API requests by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tessera_request_duration_seconds",
            "Time from request to last byte, by endpoint.",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.ttft = Histogram(
            "tessera_time_to_first_token_seconds",
            "Time from request to the provider's first output.",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.tokens = Counter(
            "tessera_tokens_total",
            "Tokens metered, by direction (prompt, completion).",
            ["direction"],
            registry=self.registry,
        )
        self.providers_connected = Gauge(
            "tessera_providers_connected", "Providers connected now.", registry=self.registry
        )
        self.frames_rejected = Counter(
            "tessera_provider_frames_rejected_total",
            "Provider frames refused, by reason.",
            ["code"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "tessera_provider_auth_failures_total",
            "Provider handshakes refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.retries = Counter(
            "tessera_job_retries_total",
            "Jobs moved to another provider before their first output.",
            registry=self.registry,
        )
        self.breaker_opened = Counter(
            "tessera_breaker_opened_total",
            "Times a provider's circuit breaker opened after repeated failures.",
            registry=self.registry,
        )
        self.continuations = Counter(
            "tessera_stream_continuations_total",
            "Streams moved to another provider mid-answer, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.hedges = Counter(
            "tessera_hedged_requests_total",
            "Requests sent to a second provider because the first was slow, by winner.",
            ["winner"],
            registry=self.registry,
        )

        self.shed = Counter(
            "tessera_requests_shed_total",
            "Inference requests refused at the door because the gateway was overloaded, "
            "by reason (loop_lag, in_flight).",
            ["reason"],
            registry=self.registry,
        )
        self.loop_lag = Gauge(
            "tessera_event_loop_lag_seconds",
            "How late the gateway's event loop runs a timer (least of recent samples); above "
            "overload_loop_lag_ms new inference requests are refused.",
            registry=self.registry,
        )

        self.provider_joins = Counter(
            "tessera_provider_joins_total",
            "Provider connections that passed the handshake.",
            registry=self.registry,
        )
        self.provider_leaves = Counter(
            "tessera_provider_disconnects_total",
            "Provider connections that ended.",
            registry=self.registry,
        )
        self.audits = Counter(
            "tessera_audit_cases_total",
            "Audit cases closed, by outcome (passed, cleared, upheld, inconclusive).",
            ["status"],
            registry=self.registry,
        )
        self.slashes = Counter(
            "tessera_slashes_total",
            "Stake slashes, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.slashed_units = Counter(
            "tessera_slashed_units_total",
            "Base units of stake slashed.",
            registry=self.registry,
        )
        # Per model and provider: counters, and latency as sum and count (a mean per
        # provider) rather than histograms, which would multiply series by buckets across
        # thousands of providers; the by-model histograms carry the distribution.
        self.model_requests = Counter(
            "tessera_model_requests_total",
            "Finished requests by model, provider and outcome (ok, error, cancelled).",
            ["model", "provider", "status"],
            registry=self.registry,
        )
        self.model_latency = Histogram(
            "tessera_model_request_duration_seconds",
            "Time from request to last byte, by model.",
            ["model"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
        )
        self.model_ttft = Histogram(
            "tessera_model_time_to_first_token_seconds",
            "Time to first token, by model.",
            ["model"],
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 30),
        )
        self.provider_latency = Summary(
            "tessera_provider_request_duration_seconds",
            "Time from request to last byte, by model and provider (sum and count).",
            ["model", "provider"],
            registry=self.registry,
        )
        self.provider_ttft = Summary(
            "tessera_provider_time_to_first_token_seconds",
            "Time to first token, by model and provider (sum and count).",
            ["model", "provider"],
            registry=self.registry,
        )
        self.paid_units = Counter(
            "tessera_paid_units_total",
            "Base units consumers were charged (captured from escrow), by model.",
            ["model"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, str], tuple[Any, ...]] = {}

    def subscribe_to(self, events: EventBus) -> None:
        """Count what the gateway publishes (see events.py)."""
        events.subscribe(RequestFinished, self._request_finished)
        events.subscribe(ProviderJoined, lambda e: self.provider_joins.inc())
        events.subscribe(ProviderLeft, lambda e: self.provider_leaves.inc())
        events.subscribe(AuditClosed, lambda e: self.audits.labels(status=e.status).inc())
        events.subscribe(Slashed, self._slashed)

    def _request_finished(self, event: RequestFinished) -> None:
        self.latency.labels(endpoint=event.endpoint).observe(event.latency_s)
        self.tokens.labels(direction="prompt").inc(event.prompt_tokens)
        self.tokens.labels(direction="completion").inc(event.completion_tokens)
        # A model name is a label only once a provider served it: names consumers make up
        # (unknown models) would otherwise grow the registry without bound.
        served = event.provider_id is not None
        key = (event.model if served else "none", event.provider_id or "none", event.status)
        children = self._children.get(key)
        if children is None:  # label lookups once per (model, provider, status), not per request
            model, provider, status = key
            children = self._children[key] = (
                self.model_requests.labels(model=model, provider=provider, status=status),
                self.model_latency.labels(model=model),
                self.provider_latency.labels(model=model, provider=provider),
                self.model_ttft.labels(model=model),
                self.provider_ttft.labels(model=model, provider=provider),
                self.paid_units.labels(model=model),
            )
        requests, latency, provider_latency, ttft, provider_ttft, paid = children
        requests.inc()
        latency.observe(event.latency_s)
        provider_latency.observe(event.latency_s)
        if event.ttft_ms is not None:
            ttft.observe(event.ttft_ms / 1000)
            provider_ttft.observe(event.ttft_ms / 1000)
        if event.cost:
            paid.inc(event.cost)

    def _slashed(self, event: Slashed) -> None:
        self.slashes.labels(reason=event.reason).inc()
        self.slashed_units.inc(event.slashed_units)

    def render(self) -> bytes:
        return generate_latest(self.registry)
