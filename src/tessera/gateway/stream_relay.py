"""One streamed answer's state across the providers that wrote it, and what a job event
that is not output means for the request (why it ended, which error the client sees)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tessera.errors import ProviderFailed, TesseraError
from tessera.gateway.dispatch import Attempts, job_error_to_exception
from tessera.gateway.transport import JobEvent, JobStream, ProviderGone
from tessera.protocol.wire import Chunk, Job, JobError


@dataclass(slots=True)
class Relay:
    """One streamed answer across the providers that wrote it (more than one after a
    continuation): the current job, and what this provider has sent so far."""

    stream: JobStream
    make_job: Callable[[str], Job]
    attempts: Attempts
    param: str
    token_ids: list[int] = field(default_factory=list)  # sent by the current provider
    prefix: int = 0  # tokens sent by earlier providers (the current job's continue_from)
    continuations: int = 0
    text: str = ""  # the whole answer's text so far (for sticky conversations)
    finished: bool = False  # a finish_reason was sent: nothing is left to continue

    def add(self, chunk: Chunk) -> None:
        self.token_ids.extend(chunk.token_ids)
        self.text += chunk.text
        self.finished = self.finished or chunk.finish_reason is not None

    def resume(self, stream: JobStream, prefix: int) -> None:
        self.stream = stream
        self.prefix = prefix
        self.token_ids = []
        self.continuations += 1


class ProviderVanished(Exception):
    """The provider's connection ended mid-answer (internal: triggers a retry)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def event_reason(event: JobEvent) -> str:
    if isinstance(event, ProviderGone):
        return event.reason
    if isinstance(event, JobError):
        return f"{event.code}: {event.message}"
    return "unexpected frame"


def event_failure(event: JobEvent) -> TesseraError:
    if isinstance(event, JobError):
        return job_error_to_exception(event)
    if isinstance(event, ProviderGone):
        return ProviderFailed(f"the provider stopped mid-response: {event.reason}")
    return ProviderFailed("the provider sent an unexpected frame")
