"""Backends that forward to an OpenAI-compatible server the provider already runs
(vLLM, SGLang, llama.cpp, ...), so its GPU can serve through the Tessera agent.

Text: chat messages go to ``POST {base_url}/chat/completions``, text or token ids to
``POST {base_url}/completions``, always with ``stream=true`` and
``stream_options.include_usage``. Upstream SSE chunks become :class:`Delta` events and
the stream ends with exactly one :class:`Finish` (chunk parsing lives in openai_wire.py).
``base_url`` includes the version prefix (``http://host:8000/v1``); ``uds`` is an optional
Unix socket to reach it through, and ``client`` an optional :class:`UpstreamClient` in
place of the default :class:`UpstreamHTTP` (http_client.py).

What the upstream cannot tell us, and what we do instead:

- Token ids of produced tokens: taken from an ``id`` / ``token_id`` field (llama.cpp) or
  from a ``token_id:N`` token string (vLLM ``--return-tokens-as-token-ids``); otherwise
  ``TokenLogprob.token_id`` is 0, which here means "unknown" (the wire forbids negatives).
- Usage: when the upstream sends none, ``completion_tokens`` counts logprob entries if
  logprobs were asked for, else content chunks (one token each in vLLM, SGLang and
  llama.cpp streams); ``prompt_tokens`` is the number of ids for a token-id prompt and
  0 (unknown) for text and chat prompts.
- The sampled tokens themselves: every request asks for the sampled tokens' logprobs
  (``top_logprobs`` 0 unless the client wanted more), since each chunk must list its tokens.
- Whether the model ended with its end-of-sequence token: the OpenAI stream does not say
  (``finish_reason: stop`` also covers stop strings). When the upstream's usage counts
  exactly one token more than it listed and the reason is ``stop``, that token was the end
  of sequence (``Finish.eos``). ``completion_tokens`` is then the listed tokens plus that
  one, so it agrees with the signed output; tokens the upstream counted but never listed
  are not billed. An upstream that sends text without logprob entries keeps its own count.
- Log-probs: non-finite values become -9999.0 (as vLLM does) and tiny positive rounding
  noise becomes 0.0, so every value fits the wire's ``logprob <= 0``.

Error codes (``BackendError.code``): ``upstream_unavailable`` (cannot connect, timeout,
5xx, 408/429, broken stream, error event mid-stream), ``context_length_exceeded``
(PromptTooLong: a 4xx whose message is about the context length; note that vLLM also
says this when prompt + max_tokens exceeds the context), ``upstream_rejected`` (any other
4xx, with the upstream's message), ``upstream_invalid`` (a response we cannot parse),
``invalid_prompt`` (an empty prompt), ``continuation_unsupported`` (a failover job with
``continue_from``: an OpenAI-compatible server cannot be made to go on after given output
ids token-exactly, since it renders chat templates and re-tokenizes text itself and its
seeded sampling cannot resume mid-answer; the job is refused before anything is sent, and
``retryable`` so the gateway tries another provider).

Audits: an OpenAI-compatible server cannot teacher-force a given output, so ``score``
raises ``audit_unsupported``.

Cancel: a background task reads the upstream; the generator polls ``cancel`` at least
every ``CANCEL_POLL_S`` and, when it is set or the consumer closes the generator, cancels
that task, which closes the HTTP stream (the upstream sees the disconnect and stops).
A cancelled stream ends without a Finish.

Connections: each backend holds one HTTP client, and its jobs share that client's pool.
A stream is read to the end of its HTTP body even after ``data: [DONE]``, so that its
keep-alive connection goes back to the pool for the next job; only a cancelled (or broken)
stream closes its connection. Any failure of the HTTP client itself (connect, timeout,
connection lost, malformed response) is ``upstream_unavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from typing import Any

from pydantic import ValidationError

from tessera.errors import ConfigError
from tessera.protocol.wire import ChatMessage, SamplingParams
from tessera.provider.backends.base import (
    BackendError,
    CancelToken,
    Delta,
    EmbeddingResult,
    Finish,
    ModelInfo,
    Prompt,
    ScoreRequest,
    ScoreResult,
)
from tessera.provider.backends.http_client import HTTPClientError, UpstreamClient, UpstreamHTTP
from tessera.provider.backends.openai_wire import (
    ChunkFolder,
    EmbeddingResponse,
    short,
    status_error,
)
from tessera.provider.backends.sse import SSEDecoder, SSEError

CANCEL_POLL_S = 0.05
CONNECT_TIMEOUT_S = 15.0
DONE_DRAIN_TIMEOUT_S = 1.0  # how long the body may stay open after [DONE]
DONE_DRAIN_MAX_BYTES = 64 * 1024  # what may follow [DONE] before the connection is dropped
# One pool per backend, for all its jobs: at most MAX_CONNECTIONS streams at once (more
# wait for a connection, within the timeout), of which MAX_KEEPALIVE_CONNECTIONS stay open
# between jobs for KEEPALIVE_EXPIRY_S, under the 5 s after which uvicorn (vLLM, SGLang)
# and llama.cpp close an idle one, so a job is never sent on a connection being closed.
MAX_CONNECTIONS = 1024
MAX_KEEPALIVE_CONNECTIONS = 64
KEEPALIVE_EXPIRY_S = 4.0
_QUEUE_SIZE = 64


class _Upstream:
    """One HTTP client per backend, built with it and shared by all its jobs, so their
    requests reuse pooled keep-alive connections; closed by close(). ``timeout_s`` is the
    read timeout (between two pieces of an answer); connecting takes at most
    ``CONNECT_TIMEOUT_S`` of it. A malformed ``base_url`` is a ConfigError here."""

    def __init__(
        self,
        info: ModelInfo,
        base_url: str,
        upstream_model: str,
        api_key: str | None = None,
        timeout_s: float = 600,
        *,
        uds: str | None = None,
        client: UpstreamClient | None = None,
    ) -> None:
        self.info = info
        self._model = upstream_model
        if client is not None:
            self._client = client
            return
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            self._client = UpstreamHTTP(
                base_url,
                headers=headers,
                connect_timeout_s=min(timeout_s, CONNECT_TIMEOUT_S),
                read_timeout_s=timeout_s,
                max_connections=MAX_CONNECTIONS,
                max_idle_connections=MAX_KEEPALIVE_CONNECTIONS,
                idle_expiry_s=KEEPALIVE_EXPIRY_S,
                uds=uds,
            )
        except ValueError as exc:
            raise ConfigError(f"upstream {base_url}: {exc}") from exc

    async def close(self) -> None:
        await self._client.aclose()


def _json(body: dict[str, Any]) -> bytes:
    """A request body as httpx encoded ``json=`` (compact UTF-8, no NaN)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _transport_error(exc: HTTPClientError) -> BackendError:
    detail = str(exc) or type(exc).__name__
    return BackendError(f"upstream unreachable: {short(detail)}", "upstream_unavailable")


# ---------------------------------------------------------------- text


_Item = Delta | Finish | BackendError


class OpenAIUpstreamTextBackend(_Upstream):
    """TextBackend over an OpenAI-compatible server; ``info`` is what we announce."""

    async def stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: CancelToken,
        continue_from: Sequence[int] = (),
    ) -> AsyncIterator[Delta | Finish]:
        if continue_from:
            raise BackendError(
                f"{self.info.name} is served through an OpenAI-compatible upstream, which "
                "cannot continue given output token-exactly",
                "continuation_unsupported",
            )
        path, body, state = self._request(prompt, params)
        queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=_QUEUE_SIZE)
        reader = asyncio.create_task(self._read(path, body, state, queue))
        listed, unlisted = 0, False  # tokens with a logprob entry; text without any
        try:
            while True:
                item = await _next_item(queue, cancel)
                if item is None:
                    return  # cancelled: the finally below closes the upstream stream
                if isinstance(item, BackendError):
                    raise item
                if isinstance(item, Delta):
                    listed += len(item.logprobs)
                    unlisted = unlisted or (bool(item.text) and not item.logprobs)
                if isinstance(item, Finish):
                    if not unlisted:
                        item = _agreeing_finish(item, listed)
                    yield _within(item, params.max_tokens)
                    return
                yield item
        finally:
            reader.cancel()
            await asyncio.wait([reader])

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Never possible here: the OpenAI API has no teacher-forced scoring."""
        raise BackendError(
            f"{self.info.name} is served through an OpenAI-compatible upstream, which cannot "
            "score a given output",
            "audit_unsupported",
        )

    def _request(
        self, prompt: Prompt, params: SamplingParams
    ) -> tuple[str, dict[str, Any], ChunkFolder]:
        body: dict[str, Any] = {
            "model": self._model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        known_prompt_tokens = 0
        items: list[object] = [] if isinstance(prompt, str) else list(prompt)
        if isinstance(prompt, str):
            chat, body["prompt"] = False, prompt
        elif items and all(isinstance(m, ChatMessage) for m in items):
            chat = True
            body["messages"] = [
                {"role": m.role, "content": m.content} for m in items if isinstance(m, ChatMessage)
            ]
        elif items and all(isinstance(t, int) and not isinstance(t, bool) for t in items):
            chat, body["prompt"] = False, items
            known_prompt_tokens = len(items)
        else:
            raise BackendError("prompt must be text, token ids or chat messages", "invalid_prompt")
        top = params.top_logprobs if params.logprobs else 0
        if chat:
            body["logprobs"] = True
            body["top_logprobs"] = top
        else:
            body["logprobs"] = top
        state = ChunkFolder(chat, params.top_logprobs, known_prompt_tokens)
        return ("chat/completions" if chat else "completions"), body, state

    async def _read(
        self, path: str, body: dict[str, Any], state: ChunkFolder, queue: asyncio.Queue[_Item]
    ) -> None:
        """Runs as a task: request, then chunks into the queue; ends with Finish or an error."""
        try:
            async with self._client.stream("POST", path, _json(body)) as response:
                if response.status >= 400:
                    raise status_error(response.status, await response.read())
                async with contextlib.aclosing(_until_done(response)) as events:
                    async for data in events:
                        delta = state.feed(data)
                        if delta is not None:
                            await queue.put(delta)
                await _drain(response)
            await queue.put(state.finish())
        except BackendError as exc:
            await queue.put(exc)
        except HTTPClientError as exc:
            await queue.put(_transport_error(exc))
        except SSEError as exc:
            await queue.put(BackendError(str(exc), "upstream_invalid"))
        except Exception as exc:  # anything else must still reach the consumer, never hang it
            await queue.put(BackendError(f"upstream stream failed: {exc!r}", "upstream_invalid"))


async def _until_done(pieces: AsyncIterable[bytes]) -> AsyncGenerator[str, None]:
    """The data of each event up to ``[DONE]`` (or the end of the body), leaving the rest
    of ``pieces`` unread and open for :func:`_drain`."""
    decoder = SSEDecoder()
    async for piece in pieces:
        for event in decoder.feed(piece):
            if event.data.strip() == "[DONE]":
                return
            yield event.data
    for event in decoder.flush():
        if event.data.strip() == "[DONE]":
            return
        yield event.data


async def _drain(pieces: AsyncIterable[bytes]) -> None:
    """Read the body to its end after ``[DONE]`` (normally just the chunked terminator),
    so that the client sees it complete and returns the connection to the pool; stopping
    at ``[DONE]`` would close the connection, one new TCP connection per job.

    The answer is complete at ``[DONE]``: an upstream that sends more than
    ``DONE_DRAIN_MAX_BYTES`` after it, keeps the body open past ``DONE_DRAIN_TIMEOUT_S``
    or breaks it is cut off instead (only that connection is lost, never the answer).
    """
    left = DONE_DRAIN_MAX_BYTES
    with contextlib.suppress(TimeoutError, HTTPClientError):
        async with asyncio.timeout(DONE_DRAIN_TIMEOUT_S):
            async for piece in pieces:
                left -= len(piece)
                if left < 0:
                    return


def _agreeing_finish(finish: Finish, listed: int) -> Finish:
    """The upstream's Finish with counts that agree with the ``listed`` tokens."""
    eos = finish.reason == "stop" and finish.completion_tokens == listed + 1
    return Finish(finish.reason, finish.prompt_tokens, listed + (1 if eos else 0), eos)


def _within(finish: Finish, max_tokens: int) -> Finish:
    """``finish`` counting at most ``max_tokens``: an upstream that ignored it and ended
    after more (its end of sequence after ``max_tokens`` tokens, or a count of its own
    beyond them) finished, for us, with ``length`` at ``max_tokens``. jobs.py cuts the
    tokens themselves at ``max_tokens``."""
    if finish.completion_tokens <= max_tokens:
        return finish
    return Finish("length", finish.prompt_tokens, max_tokens)


async def _next_item(queue: asyncio.Queue[_Item], cancel: CancelToken) -> _Item | None:
    """The next item, or None once ``cancel`` is set (checked at least every poll)."""
    while not cancel.cancelled:
        if not queue.empty():
            return queue.get_nowait()
        try:
            return await asyncio.wait_for(queue.get(), CANCEL_POLL_S)
        except TimeoutError:
            continue
    return None


# ---------------------------------------------------------------- embeddings


class OpenAIUpstreamEmbeddingBackend(_Upstream):
    """EmbeddingBackend over ``POST {base_url}/embeddings``.

    Strings and token-id lists may be mixed: they go upstream as two requests (the OpenAI
    schema takes one kind per request) and come back in input order. Without upstream
    usage, ``prompt_tokens`` counts token-id inputs only.
    """

    async def embed(self, inputs: Sequence[str | Sequence[int]]) -> EmbeddingResult:
        texts = [i for i, x in enumerate(inputs) if isinstance(x, str)]
        ids = [i for i, x in enumerate(inputs) if not isinstance(x, str)]
        vectors: list[list[float]] = [[] for _ in inputs]
        prompt_tokens = 0
        for group in (texts, ids):
            if not group:
                continue
            payload = [
                x if isinstance(x, str) else [int(t) for t in x] for x in (inputs[i] for i in group)
            ]
            got, tokens = await self._post(payload)
            for index, vector in zip(group, got, strict=True):
                vectors[index] = vector
            prompt_tokens += tokens
        return EmbeddingResult(vectors=vectors, prompt_tokens=prompt_tokens)

    async def _post(self, payload: list[str | list[int]]) -> tuple[list[list[float]], int]:
        body = _json({"model": self._model, "input": payload, "encoding_format": "float"})
        try:
            status, content = await self._client.request("POST", "embeddings", body)
        except HTTPClientError as exc:
            raise _transport_error(exc) from exc
        if status >= 400:
            raise status_error(status, content)
        try:
            parsed = EmbeddingResponse.model_validate_json(content)
        except ValidationError as exc:
            raise BackendError(
                "upstream sent an unreadable embeddings body", "upstream_invalid"
            ) from exc
        by_index = {item.index: item.embedding for item in parsed.data}
        if sorted(by_index) != list(range(len(payload))):
            raise BackendError(
                f"upstream returned {len(parsed.data)} embeddings for {len(payload)} inputs",
                "upstream_invalid",
            )
        dims = self.info.embedding_dimensions
        if dims is not None and any(len(v) != dims for v in by_index.values()):
            raise BackendError(f"upstream vectors are not {dims}-dimensional", "upstream_invalid")
        if parsed.usage is not None:
            tokens = parsed.usage.prompt_tokens
        else:
            tokens = sum(len(x) for x in payload if not isinstance(x, str))
        return [by_index[i] for i in range(len(payload))], tokens
