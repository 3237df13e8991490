"""Builders for OpenAI response bodies and stream chunks. Pure functions over our frames."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from tessera.protocol.wire import Chunk, TokenLogprob, Usage


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data`` as compact JSON (or a literal such as [DONE])."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


@dataclass(slots=True)
class ChoiceText:
    """Everything produced for one choice, gathered from its chunks."""

    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None

    def add(self, chunk: Chunk) -> None:
        if chunk.text:
            self.parts.append(chunk.text)
        self.logprobs.extend(chunk.logprobs)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason

    @property
    def text(self) -> str:
        return "".join(self.parts)


def usage_body(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def chat_logprobs(entries: list[TokenLogprob], top_n: int) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": list(e.token.encode("utf-8")),
                "top_logprobs": [
                    {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode("utf-8"))}
                    for t in e.top_logprobs[:top_n]
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: list[TokenLogprob], top_n: int, offset: int = 0) -> dict[str, Any]:
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t.token: t.logprob for t in e.top_logprobs[:top_n]} for e in entries],
        "text_offset": offsets,
    }


def _completion(
    id_: str, object_name: str, model: str, choices: list[dict[str, Any]], usage: Usage
) -> dict[str, Any]:
    return {
        "id": id_,
        "object": object_name,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage_body(usage),
    }


def chat_completion(
    request_id: str,
    model: str,
    choices: dict[int, ChoiceText],
    usage: Usage,
    logprobs_top_n: int | None,
) -> dict[str, Any]:
    bodies = [
        {
            "index": index,
            "message": {"role": "assistant", "content": choice.text, "refusal": None},
            "logprobs": (
                None if logprobs_top_n is None else chat_logprobs(choice.logprobs, logprobs_top_n)
            ),
            "finish_reason": choice.finish_reason or "stop",
        }
        for index, choice in sorted(choices.items())
    ]
    return _completion(f"chatcmpl-{request_id}", "chat.completion", model, bodies, usage)


def text_completion(
    request_id: str,
    model: str,
    choices: dict[int, ChoiceText],
    usage: Usage,
    logprobs_top_n: int | None,
) -> dict[str, Any]:
    bodies = [
        {
            "index": index,
            "text": choice.text,
            "logprobs": (
                None
                if logprobs_top_n is None
                else completion_logprobs(choice.logprobs, logprobs_top_n)
            ),
            "finish_reason": choice.finish_reason or "stop",
        }
        for index, choice in sorted(choices.items())
    ]
    return _completion(f"cmpl-{request_id}", "text_completion", model, bodies, usage)


class _StreamChunks:
    """Shared envelope of one stream's chunks; subclasses fill the choices."""

    object_name = ""
    id_prefix = ""

    def __init__(self, request_id: str, model: str, include_usage: bool, top_n: int | None):
        self.id = f"{self.id_prefix}-{request_id}"
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self.top_n = top_n
        self._envelopes: dict[int, tuple[bytes, bytes]] = {}

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": self.object_name,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            # OpenAI sends usage: null on every chunk but the last when usage was asked for.
            body["usage"] = None
        return body

    def head(self) -> list[dict[str, Any]]:
        """Chunks sent before the first token (none for text completions)."""
        return []

    def content(self, chunk: Chunk) -> dict[str, Any]:
        raise NotImplementedError

    def event(self, chunk: Chunk) -> bytes:
        """``chunk`` as one SSE event, byte for byte what ``sse(self.content(chunk))``
        gives. The common chunk (text, no log-probs, not the last) is spliced into an
        envelope rendered once per stream instead of encoding a fresh dict per token,
        which was a tenth of the gateway's work per streamed token."""
        if chunk.finish_reason is not None or self.top_n is not None or not chunk.text:
            return sse(self.content(chunk))
        self._advance(chunk)
        envelope = self._envelopes.get(chunk.index)
        if envelope is None:
            envelope = self._envelopes[chunk.index] = self._envelope(chunk.index)
        before, after = envelope
        return before + json.dumps(chunk.text).encode() + after

    def _advance(self, chunk: Chunk) -> None:
        """Keep any per-choice state ``content`` would have kept for ``chunk``."""

    def _envelope(self, index: int) -> tuple[bytes, bytes]:
        """The SSE bytes before and after the text of a plain chunk of choice ``index``."""
        marker = "\x00tessera-text\x00"
        probe = {"index": index, **self._plain_choice(marker)}
        text = sse(self._chunk([probe])).decode()
        before, after = text.split(json.dumps(marker), 1)
        return before.encode(), after.encode()

    def _plain_choice(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def usage(self, usage: Usage) -> dict[str, Any]:
        body = self._chunk([])
        body["usage"] = usage_body(usage)
        return body


class ChatChunks(_StreamChunks):
    """Stream chunks for one chat completion, in the order OpenAI sends them."""

    object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def head(self) -> list[dict[str, Any]]:
        opening = {"role": "assistant", "content": ""}
        return [
            self._chunk([{"index": 0, "delta": opening, "logprobs": None, "finish_reason": None}])
        ]

    def content(self, chunk: Chunk) -> dict[str, Any]:
        delta: dict[str, Any] = {"content": chunk.text} if chunk.text else {}
        logprobs = chat_logprobs(chunk.logprobs, self.top_n) if self.top_n is not None else None
        choice = {
            "index": chunk.index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": chunk.finish_reason,
        }
        return self._chunk([choice])

    def _plain_choice(self, text: str) -> dict[str, Any]:
        return {"delta": {"content": text}, "logprobs": None, "finish_reason": None}


class CompletionChunks(_StreamChunks):
    object_name = "text_completion"
    id_prefix = "cmpl"

    def __init__(self, request_id: str, model: str, include_usage: bool, top_n: int | None):
        super().__init__(request_id, model, include_usage, top_n)
        self._offsets: dict[int, int] = {}

    def content(self, chunk: Chunk) -> dict[str, Any]:
        logprobs = None
        start = self._offsets.get(chunk.index, 0)
        if self.top_n is not None:
            logprobs = completion_logprobs(chunk.logprobs, self.top_n, start)
        self._offsets[chunk.index] = start + len(chunk.text)
        choice = {
            "index": chunk.index,
            "text": chunk.text,
            "logprobs": logprobs,
            "finish_reason": chunk.finish_reason,
        }
        return self._chunk([choice])

    def _advance(self, chunk: Chunk) -> None:
        self._offsets[chunk.index] = self._offsets.get(chunk.index, 0) + len(chunk.text)

    def _plain_choice(self, text: str) -> dict[str, Any]:
        return {"text": text, "logprobs": None, "finish_reason": None}
