"""An OpenAI-compatible upstream that answers in microseconds: the stand-in for vLLM in
bench/front_door.py and its tests (tests/integration/test_mock_upstream.py).

Serves, over HTTP/1.1 with keep-alive (and pipelining, answered in order):

- ``POST /v1/chat/completions`` and ``POST /v1/completions``: plain JSON with a
  Content-Length, or with ``stream: true`` Server-Sent Events in chunked transfer encoding,
  as vLLM behind uvicorn sends them;
- ``GET /v1/models`` and ``GET /health``.

Every answer is ``--tokens`` tokens (capped by ``max_tokens`` / ``max_completion_tokens``
unless ``--ignore-max-tokens``) taken in turn from :data:`WORDS`; token ``i`` has id
``FIRST_ID + i % len(WORDS)``. ``finish_reason`` is ``length`` when the answer reached
``max_tokens``, else ``stop``. Log-probs, when asked (chat: ``logprobs: true`` and
``top_logprobs``; completions: ``logprobs: K``, 0 included), name each token as vLLM does
with ``--return-tokens-as-token-ids`` (``"token_id:N"``), which is where the provider's
OpenAI upstream backend reads token ids from (``openai_wire._token_id``); values are
finite and below zero. Usage is exact for the output; ``prompt_tokens`` is the number of
ids for a token-id prompt, else about one per four characters.

A stream is a role chunk (chat only), one chunk per token (the last carrying
``finish_reason``), a ``choices: []`` usage chunk when ``stream_options.include_usage``,
then ``data: [DONE]`` and the end of the chunked body in the same write. With
``--chunk-delay-ms`` every chunk after the first waits that long.

Every response carries ``x-mock-connection``: the serial number of the TCP connection it
went out on, so tests can see keep-alive at work. Prints ``READY <port>`` on stdout once
listening. Run::

    python bench/mock_upstream.py --port 0 [--tokens N] [--chunk-delay-ms MS] [--ignore-max-tokens]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

try:
    import orjson

    def dumps(value: object) -> bytes:
        return orjson.dumps(value)

except ImportError:  # pragma: no cover - orjson comes with the project's dependencies

    def dumps(value: object) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()


WORDS = (" The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")
FIRST_ID = 100
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}
_REASONS |= {413: b"Payload Too Large", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True, slots=True)
class Options:
    tokens: int = 4
    chunk_delay_s: float = 0.0
    ignore_max_tokens: bool = False
    model: str = "mock"


@dataclass(frozen=True, slots=True)
class Answer:
    """What one completion request gets: its tokens and how they are described."""

    chat: bool
    model: str
    ids: tuple[int, ...]
    finish_reason: str
    prompt_tokens: int
    top: int | None  # log-probs asked for: None, or how many alternatives per token
    include_usage: bool

    @property
    def words(self) -> list[str]:
        return [WORDS[i - FIRST_ID] for i in self.ids]


class BadRequest(ValueError):
    pass


# ---------------------------------------------------------------- the answer, pure


def _prompt_tokens(body: dict[str, Any], chat: bool) -> int:
    if chat:
        chars = sum(len(m.get("content") or "") for m in body["messages"] if isinstance(m, dict))
        return max(1, chars // 4)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
        prompt = prompt[0]  # a batch: the mock answers its first prompt
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt and isinstance(prompt[0], str) else ""
    return max(1, len(prompt) // 4) if isinstance(prompt, str) else 1


def answer_for(body: object, chat: bool, options: Options) -> Answer:
    """The answer to one request body (raises BadRequest for a body no server would take)."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    if chat and not isinstance(body.get("messages"), list):
        raise BadRequest("'messages' must be a list")
    if not chat and "prompt" not in body:
        raise BadRequest("'prompt' is required")
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise BadRequest("'max_tokens' must be a positive integer")
    count = options.tokens
    if limit is not None and not options.ignore_max_tokens:
        count = min(count, limit)
    reason = "length" if limit is not None and count >= limit else "stop"
    if chat:
        top = (body.get("top_logprobs") or 0) if body.get("logprobs") else None
    else:
        top = body.get("logprobs")
    if top is not None and (not isinstance(top, int) or not 0 <= top <= 20):
        raise BadRequest("log-probs must ask for 0 to 20 alternatives")
    usage = body.get("stream_options")
    return Answer(
        chat=chat,
        model=str(body.get("model") or options.model),
        ids=tuple(FIRST_ID + i % len(WORDS) for i in range(count)),
        finish_reason=reason,
        prompt_tokens=_prompt_tokens(body, chat),
        top=top,
        include_usage=isinstance(usage, dict) and bool(usage.get("include_usage")),
    )


def _logprob(position: int) -> float:
    return -0.125 * (1 + position % 4)


def _alternatives(position: int, top: int) -> list[tuple[str, float]]:
    """The sampled token first, then ``top - 1`` made-up ones, by falling log-prob."""
    sampled = FIRST_ID + position % len(WORDS)
    lp = _logprob(position)
    others = [(f"token_id:{5000 + sampled * 20 + j}", lp - 1.0 - j) for j in range(top - 1)]
    return [(f"token_id:{sampled}", lp), *others][:top]


def _chat_logprobs(answer: Answer, positions: range) -> dict[str, Any] | None:
    if answer.top is None:
        return None
    content = []
    for i in positions:
        tops = _alternatives(i, answer.top)
        content.append(
            {
                "token": f"token_id:{answer.ids[i]}",
                "logprob": _logprob(i),
                "bytes": list(WORDS[answer.ids[i] - FIRST_ID].encode()),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in tops],
            }
        )
    return {"content": content}


def _completion_logprobs(answer: Answer, positions: range, offset: int) -> dict[str, Any] | None:
    if answer.top is None:
        return None
    words = answer.words
    offsets, at = [], offset
    for i in positions:
        offsets.append(at)
        at += len(words[i])
    return {
        "tokens": [f"token_id:{answer.ids[i]}" for i in positions],
        "token_logprobs": [_logprob(i) for i in positions],
        "top_logprobs": [dict(_alternatives(i, max(1, answer.top))) for i in positions],
        "text_offset": offsets,
    }


def _usage(answer: Answer) -> dict[str, int]:
    completion = len(answer.ids)
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": answer.prompt_tokens + completion,
    }


def whole_body(answer: Answer, request_id: str) -> bytes:
    """The JSON body of a non-streamed answer."""
    text = "".join(answer.words)
    everything = range(len(answer.ids))
    if answer.chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": _chat_logprobs(answer, everything),
            "finish_reason": answer.finish_reason,
        }
        kind = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": _completion_logprobs(answer, everything, 0),
            "finish_reason": answer.finish_reason,
        }
        kind = "text_completion"
    return dumps(
        {
            "id": request_id,
            "object": kind,
            "created": int(time.time()),
            "model": answer.model,
            "choices": [choice],
            "usage": _usage(answer),
        }
    )


def stream_events(answer: Answer, request_id: str) -> list[bytes]:
    """The data of every SSE event of a streamed answer, ``[DONE]`` last."""
    head = {
        "id": request_id,
        "object": "chat.completion.chunk" if answer.chat else "text_completion",
        "created": int(time.time()),
        "model": answer.model,
    }
    events = []
    if answer.chat:
        role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        events.append(dumps({**head, "choices": [{**role, "finish_reason": None}]}))
    last = len(answer.ids) - 1
    offset = 0
    for i, word in enumerate(answer.words):
        reason = answer.finish_reason if i == last else None
        if answer.chat:
            choice = {
                "index": 0,
                "delta": {"content": word},
                "logprobs": _chat_logprobs(answer, range(i, i + 1)),
                "finish_reason": reason,
            }
        else:
            choice = {
                "index": 0,
                "text": word,
                "logprobs": _completion_logprobs(answer, range(i, i + 1), offset),
                "finish_reason": reason,
            }
            offset += len(word)
        events.append(dumps({**head, "choices": [choice]}))
    if not answer.ids:  # max_tokens can't be 0, but --tokens 0 may: still say how it ended
        choice = {"index": 0, "finish_reason": answer.finish_reason, "logprobs": None}
        choice |= {"delta": {}} if answer.chat else {"text": ""}
        events.append(dumps({**head, "choices": [choice]}))
    if answer.include_usage:
        events.append(dumps({**head, "choices": [], "usage": _usage(answer)}))
    events.append(b"[DONE]")
    return events


def models_body(options: Options) -> bytes:
    model = {"id": options.model, "object": "model", "created": 0, "owned_by": "mock"}
    return dumps({"object": "list", "data": [model]})


def error_body(status: int, message: str) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return dumps({"error": {"message": message, "type": kind, "param": None, "code": status}})


# ---------------------------------------------------------------- HTTP/1.1


def _sse_frame(data: bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    payload = b"data: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _chunked_body(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """A chunked request body starting at ``start``: (body, end), or None while incomplete."""
    parts, at = [], start
    while True:
        line_end = buf.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buf[at:line_end]).split(b";")[0].strip() or b"0", 16)
        at = line_end + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", at - 2)
            return (b"".join(parts), trailer_end + 4) if trailer_end >= 0 else None
        if len(buf) < at + size + 2:
            return None
        parts.append(bytes(buf[at : at + size]))
        at += size + 2


class MockProtocol(asyncio.Protocol):
    """One client connection: requests parsed in order, answered in order."""

    serials = itertools.count(1)
    requests = itertools.count(1)

    def __init__(self, options: Options) -> None:
        self.options = options
        self.serial = next(self.serials)
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a delayed stream is going out; later requests wait
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.drain()

    def drain(self) -> None:
        """Answer every complete request in the buffer, stopping at a delayed stream."""
        while self.transport is not None and not self.busy:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                if len(self.buf) > MAX_HEAD_BYTES:
                    self.reply(431, error_body(431, "request head too large"), False)
                return
            lines = bytes(self.buf[:head_end]).split(b"\r\n")
            method, _, rest = lines[0].partition(b" ")
            target, _, version = rest.partition(b" ")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip().lower()
            start = head_end + 4
            if b"chunked" in headers.get(b"transfer-encoding", b""):
                got = _chunked_body(self.buf, start)
                if got is None:
                    return
                body, end = got
            else:
                length = int(headers.get(b"content-length", b"0") or 0)
                if length > MAX_BODY_BYTES:
                    self.reply(413, error_body(413, "body too large"), False)
                    return
                end = start + length
                if len(self.buf) < end:
                    return
                body = bytes(self.buf[start:end])
            del self.buf[:end]
            connection = headers.get(b"connection", b"")
            if version == b"HTTP/1.1":
                keep = b"close" not in connection
            else:
                keep = b"keep-alive" in connection
            self.handle(method, target.split(b"?")[0], body, keep)

    def handle(self, method: bytes, path: bytes, body: bytes, keep: bool) -> None:
        if path in (b"/v1/chat/completions", b"/v1/completions"):
            if method != b"POST":
                self.reply(405, error_body(405, "use POST"), keep)
                return
            try:
                parsed = json.loads(body)
                answer = answer_for(parsed, path == b"/v1/chat/completions", self.options)
            except ValueError as exc:  # BadRequest and JSONDecodeError both are
                self.reply(400, error_body(400, str(exc)), keep)
                return
            request_id = f"{'chatcmpl' if answer.chat else 'cmpl'}-mock{next(self.requests)}"
            if parsed.get("stream"):
                self.stream(stream_events(answer, request_id), keep)
            else:
                self.reply(200, whole_body(answer, request_id), keep)
        elif path == b"/health" and method == b"GET":
            self.reply(200, b'{"status":"ok"}', keep)
        elif path == b"/v1/models" and method == b"GET":
            self.reply(200, models_body(self.options), keep)
        else:
            self.reply(404, error_body(404, f"no route {path.decode(errors='replace')}"), keep)

    def _head(self, status: int, fields: bytes, keep: bool) -> bytes:
        closing = b"" if keep else b"connection: close\r\n"
        return b"HTTP/1.1 %d %s\r\n%sx-mock-connection: %d\r\n%s\r\n" % (
            status,
            _REASONS.get(status, b"Error"),
            fields,
            self.serial,
            closing,
        )

    def reply(self, status: int, body: bytes, keep: bool) -> None:
        if self.transport is None:
            return
        fields = b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        self.transport.write(self._head(status, fields, keep) + body)
        if not keep:
            self.transport.close()
            self.transport = None

    def stream(self, events: list[bytes], keep: bool) -> None:
        if self.transport is None:
            return
        fields = (
            b"content-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n"
        )
        frames = [_sse_frame(e) for e in events]
        frames[-1] += b"0\r\n\r\n"  # the [DONE] event and the end of the body go together
        head = self._head(200, fields, keep)
        if self.options.chunk_delay_s <= 0:
            self.transport.write(head + b"".join(frames))
            self._streamed(keep)
            return
        self.busy = True
        self.transport.write(head + frames[0])
        self._later(frames, 1, keep)

    def _later(self, frames: list[bytes], index: int, keep: bool) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.options.chunk_delay_s, self._send, frames, index, keep)

    def _send(self, frames: list[bytes], index: int, keep: bool) -> None:
        self.timer = None
        if self.transport is None:
            return
        self.transport.write(frames[index])
        if index + 1 < len(frames):
            self._later(frames, index + 1, keep)
            return
        self.busy = False
        self._streamed(keep)
        if self.buf:
            self.drain()

    def _streamed(self, keep: bool) -> None:
        if not keep and self.transport is not None:
            self.transport.close()
            self.transport = None


# ---------------------------------------------------------------- process


async def serve(host: str, port: int, options: Options, ready: Callable[[int], None]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: MockProtocol(options), host, port, backlog=4096, reuse_address=True
    )
    ready(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A fast OpenAI-compatible mock upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port")
    parser.add_argument("--tokens", type=int, default=4, help="tokens per answer")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="between stream chunks")
    parser.add_argument(
        "--ignore-max-tokens", action="store_true", help="send --tokens even past max_tokens"
    )
    parser.add_argument("--model", default="mock", help="the model /v1/models lists")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    options = Options(
        tokens=max(0, args.tokens),
        chunk_delay_s=max(0.0, args.chunk_delay_ms) / 1000,
        ignore_max_tokens=args.ignore_max_tokens,
        model=args.model,
    )

    def ready(port: int) -> None:
        print(f"READY {port}", flush=True)

    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.host, args.port, options, ready))


if __name__ == "__main__":
    sys.exit(main())
