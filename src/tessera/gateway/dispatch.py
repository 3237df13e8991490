"""Start a job on some provider, moving it elsewhere if the provider drops before output.

A provider that disconnects, times out, or says the job never started is excluded and the
next one is tried, up to max_attempts; the client never sees those attempts. Errors that
would repeat anywhere (a prompt too long for the model) are returned at once. Each
provider failure is also told to the provider's circuit breaker. Optional hedging sends a
slow job to a second provider too and keeps whichever answers first: never sooner than
``hedge_min_ms``, and only if ``may_hedge`` grants the request a second slot. At most
``max_waiting_requests`` requests wait for a provider slot at once; one more is refused
at once (Overloaded, 503 with Retry-After) instead of queueing into a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from tessera.config import GatewaySettings
from tessera.errors import InvalidRequest, NoCapacity, Overloaded, ProviderFailed, TesseraError
from tessera.gateway.metrics import GatewayMetrics
from tessera.gateway.transport import JobEvent, JobStream, JobTransport, ProviderGone
from tessera.market.admission import WaitingRoom
from tessera.market.refusals import CLIENT_CODES, out_of_vocabulary
from tessera.market.routing import RouteRequest
from tessera.protocol.wire import Chunk, Done, Job, JobError, ModelOffer

# Job errors that are the request's fault: every provider would refuse it the same way.
# They are a 400, never a provider failure, never retried elsewhere (market/refusals.py;
# the hub has already turned refusals its checks contradict into ``false_refusal``).
CLIENT_ERROR_CODES = CLIENT_CODES


def job_error_to_exception(error: JobError, param_hint: str | None = None) -> TesseraError:
    if error.code in CLIENT_ERROR_CODES:
        param = param_hint or CLIENT_ERROR_CODES[error.code]
        return InvalidRequest(error.message, param=param, code=error.code)
    return ProviderFailed(f"the provider failed: {error.message}", code=error.code)


def refuse_out_of_vocabulary(job: Job, network: ModelOffer | None, param: str | None) -> None:
    """A 400 for token ids the model's vocabulary does not have, before any provider."""
    vocab = network.vocab_size if network is not None else None
    bad = out_of_vocabulary(job, vocab)
    if bad is None:
        return
    index, token = bad
    which = f"{param}[{index}]" if job.prompts is not None and len(job.prompts) > 1 else param
    raise InvalidRequest(
        f"token id {token} in {which} is outside the vocabulary of model '{job.model}' "
        f"(ids 0 to {vocab - 1 if vocab else 0})",
        param=param,
        code="invalid_token_ids",
    )


@dataclass(slots=True)
class Attempts:
    """One request's tries across providers: who failed it, and why, so far."""

    request_id: str
    max_attempts: int
    tried: int = 0
    exclude: set[str] = field(default_factory=set)
    last_failure: str | None = None
    busy_refusals: int = 0  # "busy" answers: waited on, not counted as attempts
    busy_deadline: float | None = None

    def next_job_id(self) -> str:
        self.tried += 1
        return f"{self.request_id}.{self.tried - 1}"

    def failed(self, provider_id: str, reason: str) -> None:
        self.exclude.add(provider_id)
        self.last_failure = reason

    @property
    def exhausted(self) -> bool:
        return self.tried >= self.max_attempts

    def give_up(self) -> ProviderFailed:
        return ProviderFailed(
            f"{len(self.exclude)} provider(s) failed before answering (last: "
            f"{self.last_failure}); "
            "retry later"
        )


class Dispatcher:
    def __init__(
        self,
        hub: JobTransport,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        may_hedge: Callable[[str], bool] | None = None,
    ):
        self.hub = hub
        self.settings = settings
        self.metrics = metrics
        self.may_hedge = may_hedge or (lambda request_id: True)
        self.waiting = WaitingRoom(settings.max_waiting_requests)

    async def _open(self, job: Job, route: RouteRequest, exclude: set[str]) -> JobStream:
        """hub.open_job, counted in the waiting room; Overloaded if the room is full."""
        if not self.waiting.enter():
            raise Overloaded(
                f"the gateway has {self.waiting.waiting} requests waiting for a provider; "
                f"retry in {self.settings.overload_retry_after_s} s",
                retry_after_s=self.settings.overload_retry_after_s,
            )
        try:
            return await self.hub.open_job(job, route, exclude)
        finally:
            self.waiting.leave()

    def attempts(self, request_id: str) -> Attempts:
        return Attempts(request_id, self.settings.max_attempts)

    def failed(self, attempts: Attempts, provider_id: str, reason: str) -> None:
        """A provider failed this request: never again for it, and tell its breaker."""
        attempts.failed(provider_id, reason)
        self.hub.job_failed(provider_id, reason)

    async def start(
        self,
        make_job: Callable[[str], Job],
        attempts: Attempts,
        route: RouteRequest,
        param_hint: str | None = None,
        hedge_after_ms: int | None = None,
    ) -> tuple[JobStream, JobEvent]:
        """Return a running job and its first event (a Chunk or Done)."""
        if attempts.tried == 0:
            refuse_out_of_vocabulary(
                make_job(attempts.request_id), self.hub.registry.offer(route.model), param_hint
            )
        while not attempts.exhausted:
            job = make_job(attempts.next_job_id())
            try:
                stream = await self._open(job, route, attempts.exclude)
            except NoCapacity:
                if attempts.last_failure is None:
                    raise
                raise attempts.give_up() from None
            try:
                stream, first = await self._first(stream, make_job, attempts, route, hedge_after_ms)
            except BaseException:
                # The client went away while we waited: free the slot, stop the provider.
                await stream.close()
                raise
            retry = isinstance(first, ProviderGone) or (
                isinstance(first, JobError) and first.retryable
            )
            if retry:
                reason = first.reason if isinstance(first, ProviderGone) else first.message
                await stream.close()
                if isinstance(first, JobError) and first.code == "busy":
                    # Full with another gateway's work (a provider serves several): not a
                    # failure. Wait a little and ask the router again, within queue time.
                    attempts.tried -= 1
                    attempts.busy_refusals += 1
                    loop = asyncio.get_running_loop()
                    if attempts.busy_deadline is None:
                        attempts.busy_deadline = loop.time() + self.settings.queue_timeout_s
                    if loop.time() >= attempts.busy_deadline:
                        raise NoCapacity(
                            "every provider that may take this request is at capacity; "
                            "retry in a few seconds"
                        )
                    await asyncio.sleep(min(0.05 * attempts.busy_refusals, 0.5))
                    continue
                self.failed(attempts, stream.provider_id, reason)
                self.metrics.retries.inc()
                continue
            if isinstance(first, JobError):
                if first.code not in CLIENT_ERROR_CODES:
                    self.hub.job_failed(stream.provider_id, f"{first.code}: {first.message}")
                await stream.close()
                raise job_error_to_exception(first, param_hint)
            return stream, first
        raise attempts.give_up()

    async def _first(
        self,
        stream: JobStream,
        make_job: Callable[[str], Job],
        attempts: Attempts,
        route: RouteRequest,
        hedge_after_ms: int | None,
    ) -> tuple[JobStream, JobEvent]:
        """The first event of ``stream`` or, if it is slow, of a hedge sent elsewhere.

        With hedging, a provider that has produced nothing after ``hedge_after_ms`` gets
        company: the same job goes to a second provider, the first to answer wins, the
        other is cancelled (its slot freed, its work unpaid). Only one is ever paid.
        """
        timeout = self.settings.first_token_timeout_s
        if hedge_after_ms is None or attempts.exhausted:
            return stream, await stream.next_event(timeout)
        hedge_s = max(hedge_after_ms, self.settings.hedge_min_ms) / 1000
        event = await stream.poll(min(hedge_s, timeout))
        if event is not None:
            return stream, event
        if not self.may_hedge(attempts.request_id):  # no spare slot of the key or account
            return stream, await stream.next_event(max(timeout - hedge_s, 0.001))
        try:
            second = await self._open(
                make_job(attempts.next_job_id()), route, {*attempts.exclude, stream.provider_id}
            )
        except TesseraError:
            return stream, await stream.next_event(max(timeout - hedge_s, 0.001))
        return await self._race([stream, second], max(timeout - hedge_s, 0.001), attempts)

    async def _race(
        self, streams: list[JobStream], wait_s: float, attempts: Attempts
    ) -> tuple[JobStream, JobEvent]:
        polls = {asyncio.ensure_future(s.poll(wait_s)): s for s in streams}
        try:
            while True:
                done, _ = await asyncio.wait(polls, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    stream = polls.pop(task)
                    event = task.result()
                    decisive = isinstance(event, Chunk | Done) or (
                        isinstance(event, JobError) and not event.retryable
                    )
                    if decisive or not polls:
                        assert event is not None or not polls
                        winner = "first" if stream is streams[0] else "second"
                        self.metrics.hedges.labels(winner=winner).inc()
                        for other in polls.values():
                            await other.close()
                        if event is None:
                            event = ProviderGone(
                                f"no output from the provider within {wait_s:.0f}s"
                            )
                        return stream, event
                    # This one failed; the other may still answer.
                    reason = "no output" if event is None else _reason(event)
                    self.failed(attempts, stream.provider_id, reason)
                    await stream.close()
        finally:
            for task in polls:
                task.cancel()


def _reason(event: JobEvent) -> str:
    if isinstance(event, ProviderGone):
        return event.reason
    if isinstance(event, JobError):
        return event.message
    return "unexpected event"
