"""The interfaces every backend implements, and the events they produce.

A backend owns one model. Text backends stream :class:`Delta` events and end with one
:class:`Finish`; they must never block the event loop (heavy work runs in a thread) and
must stop promptly once ``cancel`` is set. Text backends also ``score`` given outputs with
one teacher-forced forward pass (what an audit of another provider asks for). Embedding
backends return all vectors at once.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from tessera.protocol.wire import ChatMessage, SamplingParams


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a backend serves: announced to the gateway inside a ModelOffer."""

    name: str
    weights_sha256: str
    kind: Literal["text", "embedding"]
    context_length: int
    supports_tools: bool = False
    embedding_dimensions: int | None = None
    vocab_size: int | None = None  # token ids accepted: 0 .. vocab_size - 1


@dataclass(frozen=True, slots=True)
class TopToken:
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """Log-probability of a produced token under the model's raw distribution."""

    token: str
    token_id: int
    logprob: float
    top: tuple[TopToken, ...] = ()


@dataclass(frozen=True, slots=True)
class Delta:
    """New text; ``logprobs`` has one entry per token that produced this text.

    ``tokens`` counts the output tokens behind the text (0: count the logprobs, or one
    token for non-empty text); ``prompt_tokens`` is set on a stream's first delta when the
    backend knows it, so a stream cancelled midway can still be billed for its prompt.
    """

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_tokens: int | None = None
    tokens: int = 0

    @property
    def token_count(self) -> int:
        return self.tokens or len(self.logprobs) or (1 if self.text else 0)


@dataclass(frozen=True, slots=True)
class Finish:
    """Always the last event of a stream.

    ``completion_tokens`` counts every sampled token, an end-of-sequence token included;
    ``eos`` says the model sampled its end-of-sequence token (it has no text and no
    logprob entry, so it is counted here and nowhere else).
    """

    reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    eos: bool = False


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


# A prompt is chat messages (rendered with the model's template), text, or token ids.
Prompt = Sequence[ChatMessage] | str | Sequence[int]


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """An output to re-score: ``token_ids`` teacher-forced after ``prompt``.

    For a continuation job, ``continue_from`` is the output it was handed: read after the
    prompt (and counted in the result's ``prompt_tokens``) before ``token_ids``. ``stop``
    is the job's stop strings; with ``continue_from`` they decide which text the handed
    output still held back, which the scored text starts with (see ``ScoreResult``).
    """

    prompt: Prompt
    token_ids: Sequence[int]
    continue_from: Sequence[int] = ()
    stop: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class TokenRank:
    """One position under the scoring model.

    ``rank`` is 1 + the number of vocabulary entries with a strictly greater log-probability
    (1 = the most likely token); ``logprob`` is the raw log_softmax of the scored token and
    ``top_logprob`` the position's highest, both clamped to [-9999, 0].
    """

    rank: int
    logprob: float
    top_logprob: float


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """The scores of one request: each token in order, then the best end-of-sequence token
    at the position after the last one; ``text`` is the tokens decoded as a stream would,
    before any cut at a stop string. ``prompt_tokens`` counts everything read before the
    tokens: the prompt and ``continue_from``.

    A continuation's text is what its stream delivers before a stop-string cut: the text
    ``continue_from`` still held back (the start of an unfinished character or of a stop
    string), then the tokens' own.
    """

    prompt_tokens: int
    tokens: tuple[TokenRank, ...]
    end: TokenRank
    text: str


class BackendError(Exception):
    """The backend could not do the work; ``code`` is sent to the gateway."""

    def __init__(self, message: str, code: str = "backend_error") -> None:
        super().__init__(message)
        self.code = code


class PromptTooLong(BackendError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="context_length_exceeded")


@dataclass(slots=True)
class CancelToken:
    """Set by the agent when the client went away; checked by the backend every token.

    ``tenant`` is whose job it is (the gateway's opaque tag for the paying account, "" when
    none came): a backend that shares one device between jobs shares it by tenant.
    """

    tenant: str = ""
    _event: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@runtime_checkable
class TextBackend(Protocol):
    info: ModelInfo

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: CancelToken,
        continue_from: Sequence[int] = (),
    ) -> AsyncIterator[Delta | Finish]:
        """Yield Deltas as tokens are produced, then exactly one Finish.

        ``continue_from`` (failover) is output another provider already delivered: the
        stream goes on after it as if it had produced it, its text starting where that
        output's delivered text ended; ``params.max_tokens`` and the counts of Delta and
        Finish cover new tokens only, and ``prompt_tokens`` counts the prompt plus
        ``continue_from``. jobs.py passes it only for continuation jobs.

        Raises BackendError (PromptTooLong for an over-long prompt;
        ``continuation_unsupported`` when the backend cannot continue token-exactly)
        before the first event when the work cannot start.
        """
        ...

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score every request (one result each, in order) in one teacher-forced pass.

        Raises BackendError for the whole call when any request cannot be scored
        (PromptTooLong when prompt + tokens exceed the context; ``audit_unsupported`` when
        the backend cannot teacher-force at all).
        """
        ...

    async def close(self) -> None: ...


@runtime_checkable
class EmbeddingBackend(Protocol):
    info: ModelInfo

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> EmbeddingResult: ...

    async def close(self) -> None: ...
