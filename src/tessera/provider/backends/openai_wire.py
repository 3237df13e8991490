"""The upstream side of the OpenAI wire: lenient shapes for what vLLM, SGLang and
llama.cpp send, the fold from stream chunks to Delta / Finish, and error-body mapping.

Everything here is pure (no I/O), so it is tested on recorded chunks.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tessera.provider.backends.base import (
    BackendError,
    Delta,
    Finish,
    PromptTooLong,
    TokenLogprob,
    TopToken,
)

MIN_LOGPROB = -9999.0
_MAX_MESSAGE_CHARS = 500
_CONTEXT_RE = re.compile(
    r"context[ _](length|size|window)|maximum context|exceed_context_size|too many tokens",
    re.IGNORECASE,
)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Top(_Lenient):
    token: str
    logprob: float


class _ChatLogprob(_Lenient):
    token: str
    logprob: float
    id: int | None = None
    token_id: int | None = None
    top_logprobs: list[_Top] = []


class _ChatLogprobs(_Lenient):
    content: list[_ChatLogprob] | None = None


class _CompletionLogprobs(_Lenient):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] | None = None


class _ChatDelta(_Lenient):
    content: str | None = None


class _Choice(_Lenient):
    index: int = 0
    text: str | None = None
    delta: _ChatDelta | None = None
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class Usage(_Lenient):
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)


class _Chunk(_Lenient):
    choices: list[_Choice] = []
    usage: Usage | None = None
    error: dict[str, Any] | str | None = None


class _EmbeddingItem(_Lenient):
    index: int = Field(ge=0)
    embedding: list[float]


class EmbeddingResponse(_Lenient):
    data: list[_EmbeddingItem]
    usage: Usage | None = None


def short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[:_MAX_MESSAGE_CHARS] + "..."


def error_message(body: bytes) -> str:
    """The human message from an OpenAI, vLLM or FastAPI error body, else the raw text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return short(text) or "(empty body)"
    if isinstance(parsed, dict):
        inner = parsed.get("error")
        for candidate in (
            inner.get("message") if isinstance(inner, dict) else inner,
            parsed.get("message"),
            parsed.get("detail"),
        ):
            if isinstance(candidate, str) and candidate:
                return short(candidate)
    return short(text)


def status_error(status: int, body: bytes) -> BackendError:
    message = error_message(body)
    if status >= 500 or status in (408, 429):
        return BackendError(
            f"upstream failed with HTTP {status}: {message}", "upstream_unavailable"
        )
    if _CONTEXT_RE.search(message) or _CONTEXT_RE.search(body.decode("utf-8", "replace")):
        return PromptTooLong(f"upstream rejected the prompt: {message}")
    return BackendError(
        f"upstream rejected the request (HTTP {status}): {message}", "upstream_rejected"
    )


def _logprob(value: float | None) -> float:
    if value is None or not math.isfinite(value):
        return MIN_LOGPROB
    return min(value, 0.0)


def _token_id(token: str, *candidates: int | None) -> int:
    for candidate in candidates:
        if candidate is not None and candidate >= 0:
            return candidate
    if token.startswith("token_id:") and token[9:].isdigit():
        return int(token[9:])
    return 0


def _tops(pairs: list[tuple[str, float]], limit: int) -> tuple[TopToken, ...]:
    ranked = sorted(pairs, key=lambda pair: pair[1], reverse=True)[:limit]
    return tuple(TopToken(token=t, logprob=_logprob(lp)) for t, lp in ranked)


@dataclass(slots=True)
class ChunkFolder:
    """Folds upstream chunks into Deltas and, at the end, the one Finish."""

    chat: bool
    top_limit: int
    known_prompt_tokens: int
    finish_reason: str | None = None
    usage: Usage | None = None
    counted_tokens: int = 0

    def feed(self, data: str) -> Delta | None:
        try:
            chunk = _Chunk.model_validate_json(data)
        except ValidationError as exc:
            raise BackendError(
                f"upstream sent an unreadable chunk: {short(data)}", "upstream_invalid"
            ) from exc
        if chunk.error is not None:
            message = chunk.error.get("message") if isinstance(chunk.error, dict) else chunk.error
            raise BackendError(
                f"upstream failed mid-stream: {short(str(message))}", "upstream_unavailable"
            )
        if chunk.usage is not None:
            self.usage = chunk.usage
        choice = next((c for c in chunk.choices if c.index == 0), None)
        if choice is None:
            return None
        if choice.finish_reason is not None:
            self.finish_reason = choice.finish_reason
        text = (choice.delta.content if choice.delta else None) if self.chat else choice.text
        logprobs = self._logprobs(choice.logprobs) if choice.logprobs else ()
        self.counted_tokens += len(logprobs) if logprobs else (1 if text else 0)
        if not text and not logprobs:
            return None
        return Delta(text=text or "", logprobs=logprobs)

    def _logprobs(self, raw: dict[str, Any]) -> tuple[TokenLogprob, ...]:
        try:
            if self.chat:
                return tuple(
                    TokenLogprob(
                        token=e.token,
                        token_id=_token_id(e.token, e.id, e.token_id),
                        logprob=_logprob(e.logprob),
                        top=_tops([(t.token, t.logprob) for t in e.top_logprobs], self.top_limit),
                    )
                    for e in _ChatLogprobs.model_validate(raw).content or []
                )
            parsed = _CompletionLogprobs.model_validate(raw)
            tops = parsed.top_logprobs or []
            return tuple(
                TokenLogprob(
                    token=token,
                    token_id=_token_id(token),
                    logprob=_logprob(lp),
                    top=_tops(list((tops[i] or {}).items()), self.top_limit)
                    if i < len(tops)
                    else (),
                )
                for i, (token, lp) in enumerate(
                    zip(parsed.tokens, parsed.token_logprobs, strict=False)
                )
            )
        except ValidationError as exc:
            raise BackendError("upstream sent unreadable logprobs", "upstream_invalid") from exc

    def finish(self) -> Finish:
        if self.finish_reason is None:
            raise BackendError("upstream stream ended before it finished", "upstream_unavailable")
        reason: Literal["stop", "length"] = "length" if self.finish_reason == "length" else "stop"
        if self.usage is not None:
            return Finish(reason, self.usage.prompt_tokens, self.usage.completion_tokens)
        return Finish(reason, self.known_prompt_tokens, self.counted_tokens)
