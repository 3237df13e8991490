"""Start a job on some provider, moving it elsewhere if the provider drops before output.

A provider that disconnects, times out, or says the job never started is excluded and the
next one is tried, up to max_attempts; the client never sees those attempts. Errors that
would repeat anywhere (a prompt too long for the model) are returned at once.
"""

from __future__ import annotations

from collections.abc import Callable

from tessera.config import GatewaySettings
from tessera.errors import InvalidRequest, NoCapacity, ProviderFailed, TesseraError
from tessera.gateway.hub import JobEvent, JobStream, ProviderGone, ProviderHub
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


class Dispatcher:
    def __init__(self, hub: ProviderHub, settings: GatewaySettings, metrics: GatewayMetrics):
        self.hub = hub
        self.settings = settings
        self.metrics = metrics

    async def start(
        self, make_job: Callable[[str], Job], request_id: str, param_hint: str | None = None
    ) -> tuple[JobStream, JobEvent]:
        """Return a running job and its first event (a Chunk or Done)."""
        exclude: set[str] = set()
        last_failure: str | None = None
        for attempt in range(self.settings.max_attempts):
            job = make_job(f"{request_id}.{attempt}")
            try:
                stream = await self.hub.open_job(job, exclude)
            except NoCapacity:
                if last_failure is None:
                    raise
                raise ProviderFailed(
                    f"no provider could complete the request (last: {last_failure}); retry later"
                ) from None
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
                last_failure = first.reason if isinstance(first, ProviderGone) else first.message
                exclude.add(stream.provider_id)
                await stream.close()
                self.metrics.retries.inc()
                continue
            if isinstance(first, JobError):
                await stream.close()
                raise job_error_to_exception(first, param_hint)
            return stream, first
        raise ProviderFailed(
            f"{self.settings.max_attempts} providers failed before answering "
            f"(last: {last_failure}); retry later"
        )
