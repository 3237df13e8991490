"""A small but real OpenAI-compatible HTTP server over Tessera backends.

It stands in for vLLM in tests and benchmarks, so it speaks the OpenAI wire format that
the official ``openai`` client expects: ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions`` (streaming and not, ``stream_options.include_usage``, logprobs),
``POST /v1/embeddings`` (float and base64). Chat logprob entries also carry the token
``id``, as llama.cpp's server does. ``GET /debug/streams`` counts streams that ended
normally and streams the client abandoned, so tests can see that a cancel reached us.

Run it::

    PYTHONPATH=src python tests/support/openai_server.py --model-dir DIR --port 0 [--embeddings]

It prints ``READY <port>`` once listening (``--port 0`` picks a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tessera.errors import InvalidRequest, ModelNotFound, TesseraError, openai_error_body
from tessera.protocol.wire import ChatMessage, SamplingParams
from tessera.provider.backends.base import (
    BackendError,
    CancelToken,
    Delta,
    EmbeddingBackend,
    Finish,
    Prompt,
    PromptTooLong,
    TextBackend,
    TokenLogprob,
)

DEFAULT_CHAT_MAX_TOKENS = 256  # vLLM defaults to "the rest of the context"; we keep it small
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send fields we do not know


class StreamOptions(_Open):
    include_usage: bool = False


class _Sampling(_Open):
    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatRequestMessage(_Open):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatRequestMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str | list[int]]
    logprobs: int | None = None
    echo: bool = False


class EmbeddingRequest(_Open):
    model: str
    input: str | list[int] | list[str | list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class _Counters:
    def __init__(self) -> None:
        self.finished = 0
        self.abandoned = 0


def create_app(
    text: TextBackend | None, embed: EmbeddingBackend | None, model_name: str
) -> FastAPI:
    """The app; requests must name ``model_name`` or the serving backend's own name."""
    app = FastAPI(title="tessera test OpenAI server")
    counters = _Counters()

    @app.exception_handler(TesseraError)
    async def _tessera_error(_: Request, exc: TesseraError) -> JSONResponse:
        return JSONResponse(openai_error_body(exc), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        err = InvalidRequest(f"invalid request: {first.get('msg', exc)}", param=loc)
        return JSONResponse(openai_error_body(err), status_code=400)

    def pick(backend: Any, model: str, kind: str) -> Any:
        if backend is None or model not in (model_name, backend.info.name):
            raise ModelNotFound(f"model {model!r} does not serve {kind} here", param="model")
        return backend

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = dict.fromkeys([model_name] + [b.info.name for b in (text, embed) if b])
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "tessera"} for n in names]
        return {"object": "list", "data": data}

    @app.get("/debug/streams")
    async def streams() -> dict[str, int]:
        return {"finished": counters.finished, "abandoned": counters.abandoned}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatCompletionRequest) -> JSONResponse | StreamingResponse:
        backend: TextBackend = pick(text, req.model, "chat completions")
        messages = _messages(req.messages)
        max_tokens = req.max_completion_tokens or req.max_tokens or DEFAULT_CHAT_MAX_TOKENS
        params = _params(req, max_tokens, req.logprobs, req.top_logprobs or 0)
        return await _serve(backend, [messages], params, req, chat=True, counters=counters)

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest) -> JSONResponse | StreamingResponse:
        backend: TextBackend = pick(text, req.model, "completions")
        if req.echo:
            raise InvalidRequest("echo is not supported", param="echo")
        prompts = _prompts(req.prompt)
        max_tokens = req.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS
        params = _params(req, max_tokens, req.logprobs is not None, req.logprobs or 0)
        return await _serve(backend, prompts, params, req, chat=False, counters=counters)

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> dict[str, Any]:
        backend: EmbeddingBackend = pick(embed, req.model, "embeddings")
        dims = backend.info.embedding_dimensions
        if req.dimensions is not None and req.dimensions != dims:
            raise InvalidRequest(f"this model only returns {dims} dimensions", param="dimensions")
        inputs = _prompts(req.input)
        try:
            result = await backend.embed(inputs)
        except BackendError as exc:
            raise _api_error(exc, "input") from exc
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(v, req.encoding_format)}
            for i, v in enumerate(result.vectors)
        ]
        usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
        return {"object": "list", "data": data, "model": req.model, "usage": usage}

    return app


# ---------------------------------------------------------------- request translation


def _messages(raw: list[ChatRequestMessage]) -> list[ChatMessage]:
    out = []
    for m in raw:
        content = m.content
        if isinstance(content, list):
            content = "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        try:
            out.append(ChatMessage(role=m.role, content=content or ""))  # type: ignore[arg-type]
        except ValidationError as exc:
            raise InvalidRequest(
                f"bad message: {exc.errors()[0]['msg']}", param="messages"
            ) from exc
    return out


def _prompts(raw: str | list[int] | list[str | list[int]]) -> list[str | list[int]]:
    if isinstance(raw, str):
        return [raw]
    if not raw:
        raise InvalidRequest("the prompt or input list is empty", param="prompt")
    if all(isinstance(x, int) for x in raw):
        return [[int(x) for x in raw]]  # type: ignore[arg-type]
    return list(raw)  # type: ignore[arg-type]


def _params(req: _Sampling, max_tokens: int, logprobs: bool, top: int) -> SamplingParams:
    if req.n != 1:
        raise InvalidRequest("only n=1 is supported", param="n")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            stop=stop,
            logprobs=logprobs,
            top_logprobs=top,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"invalid {param}: {first['msg']}", param=param) from exc


def _api_error(exc: BackendError, param: str) -> TesseraError:
    if isinstance(exc, PromptTooLong):
        return InvalidRequest(str(exc), param=param, code=exc.code)
    if exc.code.startswith("invalid"):
        return InvalidRequest(str(exc), param=param, code=exc.code)
    return TesseraError(str(exc), code=exc.code)


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


# ---------------------------------------------------------------- responses


async def _serve(
    backend: TextBackend,
    prompts: list[Prompt],
    params: SamplingParams,
    req: _Sampling,
    *,
    chat: bool,
    counters: _Counters,
) -> JSONResponse | StreamingResponse:
    shape = _Shape(chat=chat, model=req.model, logprobs=params.logprobs)
    runs = [_Run(backend, p, params) for p in prompts]
    try:
        if not req.stream:
            return JSONResponse(await shape.whole(runs))
        await runs[0].start()  # errors before the first token become an HTTP error
    except BackendError as exc:
        for run in runs:
            await run.close()
        raise _api_error(exc, "messages" if chat else "prompt") from exc
    usage = bool(req.stream_options and req.stream_options.include_usage)
    body = shape.sse(runs, usage, counters)
    return StreamingResponse(body, media_type="text/event-stream")


class _Run:
    """One prompt's generation: pulls the first event early so errors surface as HTTP."""

    def __init__(self, backend: TextBackend, prompt: Prompt, params: SamplingParams) -> None:
        self.cancel = CancelToken()
        self._events = backend.stream(prompt, params, self.cancel)
        self._first: Delta | Finish | None = None

    async def start(self) -> None:
        if self._first is None:
            self._first = await anext(self._events)

    async def events(self) -> AsyncIterator[Delta | Finish]:
        await self.start()
        if self._first is not None:
            yield self._first
        async for event in self._events:
            yield event

    async def close(self) -> None:
        self.cancel.cancel()
        await self._events.aclose()  # type: ignore[attr-defined]


class _Shape:
    """Chat or text-completion JSON shapes, for whole responses and SSE chunks."""

    def __init__(self, *, chat: bool, model: str, logprobs: bool) -> None:
        self.chat = chat
        self.logprobs = logprobs
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.object = "chat.completion" if chat else "text_completion"
        self.model = model
        self.created = int(time.time())

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _choice(
        self,
        index: int,
        text: str | None,
        lps: list[TokenLogprob],
        offset: int,
        reason: str | None,
        *,
        role: bool = False,
    ) -> dict[str, Any]:
        # vLLM sends null logprobs on the role opener and the finish chunk.
        logprobs = (
            _logprobs(lps, self.chat, offset)
            if self.logprobs and text is not None and not role
            else None
        )
        if not self.chat:
            return {
                "index": index,
                "text": text or "",
                "logprobs": logprobs,
                "finish_reason": reason,
            }
        body: dict[str, Any] = {} if text is None else {"content": text}
        if role:
            body = {"role": "assistant", **body}
        return {"index": index, "delta": body, "logprobs": logprobs, "finish_reason": reason}

    async def whole(self, runs: list[_Run]) -> dict[str, Any]:
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, run in enumerate(runs):
            texts: list[str] = []
            lps: list[TokenLogprob] = []
            reason = "stop"
            try:
                async for event in run.events():
                    if isinstance(event, Delta):
                        texts.append(event.text)
                        lps.extend(event.logprobs)
                    else:
                        reason = event.reason
                        prompt_tokens += event.prompt_tokens
                        completion_tokens += event.completion_tokens
            finally:
                await run.close()
            logprobs = _logprobs(lps, self.chat, 0) if self.logprobs else None
            joined = "".join(texts)
            key, value = (
                ("message", {"role": "assistant", "content": joined})
                if self.chat
                else ("text", joined)
            )
            choices.append(
                {"index": index, key: value, "logprobs": logprobs, "finish_reason": reason}
            )
        out = self._envelope(self.object, choices)
        out["usage"] = _usage(prompt_tokens, completion_tokens)
        return out

    async def sse(
        self, runs: list[_Run], include_usage: bool, counters: _Counters
    ) -> AsyncIterator[bytes]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        extra: dict[str, Any] = {"usage": None} if include_usage else {}
        prompt_tokens = completion_tokens = 0
        done = False

        def frame(choices: list[dict[str, Any]], **more: Any) -> bytes:
            return _sse({**self._envelope(obj, choices), **extra, **more})

        try:
            for index, run in enumerate(runs):
                offset = 0
                if self.chat:
                    yield frame([self._choice(index, "", [], 0, None, role=True)])
                try:
                    async for event in run.events():
                        if isinstance(event, Delta):
                            choice = self._choice(
                                index, event.text, list(event.logprobs), offset, None
                            )
                            offset += len(event.text)
                            yield frame([choice])
                        else:
                            prompt_tokens += event.prompt_tokens
                            completion_tokens += event.completion_tokens
                            yield frame([self._choice(index, None, [], 0, event.reason)])
                except BackendError as exc:
                    yield _sse({"error": openai_error_body(_api_error(exc, "prompt"))["error"]})
                    return
                finally:
                    await run.close()
            if include_usage:
                yield frame([], usage=_usage(prompt_tokens, completion_tokens))
            yield b"data: [DONE]\n\n"
            done = True
        finally:
            if done:
                counters.finished += 1
            else:
                counters.abandoned += 1
                for run in runs:
                    await run.close()


def _logprobs(lps: list[TokenLogprob], chat: bool, offset: int) -> dict[str, Any]:
    if chat:
        return {"content": [_chat_logprob(lp) for lp in lps], "refusal": None}
    offsets = []
    for lp in lps:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in lps],
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [{t.token: t.logprob for t in lp.top} for lp in lps],
        "text_offset": offsets,
    }


def _chat_logprob(lp: TokenLogprob) -> dict[str, Any]:
    tops = [
        {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode())} for t in lp.top
    ]
    return {
        "id": lp.token_id,
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": list(lp.token.encode()),
        "top_logprobs": tops,
    }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


# ---------------------------------------------------------------- command line


def _load(args: argparse.Namespace) -> tuple[TextBackend | None, EmbeddingBackend | None]:
    text: TextBackend | None = None
    embed: EmbeddingBackend | None = None
    if args.model_dir is not None:
        from tessera.provider.backends.transformers_text import TransformersTextBackend

        name = args.model_name or Path(args.model_dir).name
        text = TransformersTextBackend.load(
            Path(args.model_dir), name=name, device="cpu", threads=args.threads
        )
    if args.embeddings:
        from tessera.provider.backends.sentence_embed import SentenceEmbeddingBackend

        embed = SentenceEmbeddingBackend.load(
            args.embedding_model_dir, device="cpu", threads=args.threads
        )
    return text, embed


class _AnnouncingServer(uvicorn.Server):
    """Prints ``READY <port>`` once the socket listens, so a parent process can wait on it."""

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"READY {self.servers[0].sockets[0].getsockname()[1]}", flush=True)


async def _main(args: argparse.Namespace) -> None:
    text, embed = await asyncio.to_thread(_load, args)
    served = text or embed
    if served is None:
        raise SystemExit("nothing to serve: pass --model-dir and/or --embeddings")
    app = create_app(text, embed, args.model_name or served.info.name)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)
    try:
        await _AnnouncingServer(config).serve()
    finally:
        for backend in (text, embed):
            if backend is not None:
                await backend.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, help="text model directory (transformers)")
    parser.add_argument("--model-name", help="name clients use (default: the directory name)")
    parser.add_argument("--embeddings", action="store_true", help="also serve all-MiniLM-L6-v2")
    parser.add_argument("--embedding-model-dir", type=Path, help="another embedding model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_main(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
