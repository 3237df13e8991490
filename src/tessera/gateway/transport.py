"""Moving a job to a provider and its output back: the plug point between serving and wire.

Serving and dispatch speak only these protocols. The first implementation is the
in-process :class:`~tessera.gateway.hub.ProviderHub`, where providers hold a WebSocket to
this gateway; a transport that reaches providers connected to another replica (over NATS)
implements the same two protocols, so nothing above it changes. The shape follows httpx's
transports: one call opens a job on a provider chosen by the router (taking a slot there),
and the returned stream yields the provider's events until it is closed, which gives the
slot back exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tessera.market.registry import ProviderRegistry
from tessera.market.routing import Decision, Router, RouteRequest
from tessera.protocol.receipts import OutputDigest
from tessera.protocol.wire import Chunk, Done, Job, JobError, ModelOffer


@dataclass(frozen=True, slots=True)
class ProviderGone:
    """The provider's connection ended (or it went silent) before the job finished."""

    reason: str


JobEvent = Chunk | Done | JobError | ProviderGone


class JobStream(Protocol):
    """One job running on one provider: its events, and the slot it holds until closed."""

    job: Job
    offer: ModelOffer  # the offer (and price) the job was sent under
    digest: OutputDigest | None  # what was relayed, as the receipt must describe it
    decision: Decision | None  # why the router chose this provider
    opened_at: float  # time.monotonic() when the job was sent
    first_event_at: float | None  # when its first chunk (or done) came

    @property
    def provider_id(self) -> str: ...

    async def next_event(self, timeout_s: float | None = None) -> JobEvent:
        """The next event; ProviderGone if none came within ``timeout_s``."""
        ...

    async def poll(self, timeout_s: float | None) -> JobEvent | None:
        """The next event, or None if none came within ``timeout_s`` (nothing is lost)."""
        ...

    async def close(self) -> None:
        """Give the slot back; tell the provider to stop if the job is still running.
        Safe to call again."""
        ...


class JobTransport(Protocol):
    """Providers reachable from this gateway, and jobs sent to them."""

    registry: ProviderRegistry  # the live providers and their offers
    router: Router

    async def open_job(self, job: Job, route: RouteRequest, exclude: set[str]) -> JobStream:
        """Send ``job`` to the provider the router picks (never one in ``exclude``),
        waiting for a free slot within the queue timeout; NoCapacity if none frees."""
        ...

    async def open_job_on(self, provider_id: str, job: Job) -> JobStream:
        """Send ``job`` to one given provider; NoCapacity if it is gone or full."""
        ...

    def job_succeeded(self, stream: JobStream, completion_tokens: int) -> None:
        """Fold a finished job's speed into its provider's record."""
        ...

    def job_failed(self, provider_id: str, reason: str) -> None:
        """A job failed by the provider's fault (its circuit breaker counts it)."""
        ...
