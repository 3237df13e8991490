"""Start a job on some provider, moving it elsewhere if the provider drops before output.

A provider that disconnects, times out, or says the job never started is excluded and the
next one is tried, up to max_attempts; the client never sees those attempts. Errors that
would repeat anywhere (a prompt too long for the model) are returned at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tessera.config import GatewaySettings
from tessera.errors import InvalidRequest, NoCapacity, ProviderFailed, TesseraError
from tessera.gateway.hub import Admit, JobEvent, JobStream, ProviderGone, ProviderHub
from tessera.gateway.metrics import GatewayMetrics
from tessera.protocol.wire import Job, JobError

# Job errors that are the request's fault: every provider would refuse it the same way.
CLIENT_ERROR_CODES = {
    "context_length_exceeded": "messages",
    "invalid_token_ids": "prompt",
    "chat_template_missing": "model",
    "invalid_request": None,
}


def job_error_to_exception(error: JobError, param_hint: str | None = None) -> TesseraError:
    if error.code in CLIENT_ERROR_CODES:
        param = param_hint or CLIENT_ERROR_CODES[error.code]
        return InvalidRequest(error.message, param=param, code=error.code)
    return ProviderFailed(f"the provider failed: {error.message}", code=error.code)


@dataclass(slots=True)
class Attempts:
    """One request's tries across providers: who failed it, and why, so far."""

    request_id: str
    max_attempts: int
    tried: int = 0
    exclude: set[str] = field(default_factory=set)
    last_failure: str | None = None

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
            f"{self.tried} provider(s) failed before answering (last: {self.last_failure}); "
            "retry later"
        )


class Dispatcher:
    def __init__(self, hub: ProviderHub, settings: GatewaySettings, metrics: GatewayMetrics):
        self.hub = hub
        self.settings = settings
        self.metrics = metrics

    def attempts(self, request_id: str) -> Attempts:
        return Attempts(request_id, self.settings.max_attempts)

    async def start(
        self,
        make_job: Callable[[str], Job],
        attempts: Attempts,
        param_hint: str | None = None,
        admit: Admit | None = None,
    ) -> tuple[JobStream, JobEvent]:
        """Return a running job and its first event (a Chunk or Done)."""
        while not attempts.exhausted:
            job = make_job(attempts.next_job_id())
            try:
                stream = await self.hub.open_job(job, attempts.exclude, admit)
            except NoCapacity:
                if attempts.last_failure is None:
                    raise
                raise attempts.give_up() from None
            try:
                first = await stream.next_event(self.settings.first_token_timeout_s)
            except BaseException:
                # The client went away while we waited: free the slot, stop the provider.
                await stream.close()
                raise
            retry = isinstance(first, ProviderGone) or (
                isinstance(first, JobError) and first.retryable
            )
            if retry:
                reason = first.reason if isinstance(first, ProviderGone) else first.message
                attempts.failed(stream.provider_id, reason)
                await stream.close()
                self.metrics.retries.inc()
                continue
            if isinstance(first, JobError):
                await stream.close()
                raise job_error_to_exception(first, param_hint)
            return stream, first
        raise attempts.give_up()
