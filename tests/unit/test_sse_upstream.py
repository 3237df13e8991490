"""The upstream backends on SSE streams shaped like vLLM's and llama.cpp's, replayed by a
local HTTP/1.1 server through the real upstream client: request shapes, chunk folding,
usage fallbacks and error mapping.

The live round trip against a real server is in tests/integration/test_openai_upstream.py;
these cover upstream dialects that server does not speak. The client itself (keep-alive,
timeouts, broken connections) is tested in tests/provider/test_http_client.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tessera.errors import ConfigError
from tessera.protocol.wire import ChatMessage, SamplingParams
from tessera.provider.backends.base import (
    BackendError,
    CancelToken,
    Delta,
    EmbeddingBackend,
    Finish,
    ModelInfo,
    PromptTooLong,
    TextBackend,
)
from tessera.provider.backends.openai_upstream import (
    OpenAIUpstreamEmbeddingBackend,
    OpenAIUpstreamTextBackend,
)

TEXT_INFO = ModelInfo("served", "a" * 64, "text", 2048)
EMBED_INFO = ModelInfo("emb", "b" * 64, "embedding", 256, embedding_dimensions=3)
USER = [ChatMessage(role="user", content="hi")]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    content: bytes


@dataclass(frozen=True)
class Reply:
    """An answer: an SSE body goes out chunked, one event per chunk (as uvicorn sends
    vLLM's), any other body with a Content-Length."""

    status: int
    body: bytes
    content_type: str = "text/event-stream"


Handler = Callable[[Request], Reply]


@dataclass
class Replay:
    """A keep-alive HTTP/1.1 server on a free local port, answering with ``handler``."""

    handler: Handler = field(default=lambda request: Reply(404, b"{}", "application/json"))
    requests: list[Request] = field(default_factory=list)
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = {k.lower(): v for k, _, v in (x.partition(": ") for x in lines[1:] if x)}
                content = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(method, path, headers, content)
                self.requests.append(request)
                writer.write(_encode(self.handler(request)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _encode(reply: Reply) -> bytes:
    head = b"HTTP/1.1 %d X\r\ncontent-type: %s\r\n" % (reply.status, reply.content_type.encode())
    if reply.content_type != "text/event-stream" or reply.status != 200:
        return head + b"content-length: %d\r\n\r\n%s" % (len(reply.body), reply.body)
    events = [e + b"\n\n" for e in reply.body.split(b"\n\n") if e]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
    return head + b"transfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


@pytest.fixture
async def up() -> AsyncIterator[Replay]:
    replay = Replay()
    server = await asyncio.start_server(replay.serve, "127.0.0.1", 0)
    replay.port = server.sockets[0].getsockname()[1]
    async with server:
        yield replay
        server.close()


def sse(*payloads: dict[str, Any] | str) -> bytes:
    parts = [p if isinstance(p, str) else json.dumps(p) for p in payloads]
    return b"".join(f"data: {p}\n\n".encode() for p in parts)


def chat_chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> dict:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish, **extra}
    return {"object": "chat.completion.chunk", "choices": [choice]}


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}


class Recorder:
    """Replays a body and remembers the requests it saw."""

    def __init__(self, up: Replay, body: bytes, status: int = 200) -> None:
        self.body = body
        self.status = status
        self.up = up
        self.requests = up.requests
        up.handler = self

    def __call__(self, request: Request) -> Reply:
        if self.status == 200:
            return Reply(200, self.body)
        return Reply(self.status, self.body, "application/json")

    @property
    def sent(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)


def text_backend(rec: Recorder, api_key: str | None = None) -> OpenAIUpstreamTextBackend:
    return OpenAIUpstreamTextBackend(TEXT_INFO, rec.up.base_url, "up-model", api_key=api_key)


async def collect(
    backend: OpenAIUpstreamTextBackend, prompt: Any, params: SamplingParams
) -> list[Delta | Finish]:
    try:
        return [e async for e in backend.stream(prompt, params, CancelToken())]
    finally:
        await backend.close()


def params(**kw: Any) -> SamplingParams:
    return SamplingParams(**{"max_tokens": 8, **kw})


async def test_backends_implement_the_interfaces(up: Replay) -> None:
    text = text_backend(Recorder(up, b""))
    embed = OpenAIUpstreamEmbeddingBackend(EMBED_INFO, up.base_url, "m")
    assert isinstance(text, TextBackend)
    assert isinstance(embed, EmbeddingBackend)
    await text.close()
    await embed.close()


async def test_chat_request_shape_and_vllm_style_stream(up: Replay) -> None:
    lp = {
        "content": [
            {
                "token": "Hel",
                "logprob": -0.5,
                "bytes": [72],
                "top_logprobs": [
                    {"token": "Hel", "logprob": -0.5},
                    {"token": "Hi", "logprob": -1.5},
                ],
            }
        ]
    }
    rec = Recorder(
        up,
        sse(
            chat_chunk(""),  # role-only opener carries no text
            chat_chunk("Hel", logprobs=lp),
            chat_chunk("lo"),
            chat_chunk(None, "stop"),
            usage(7, 2),
            "[DONE]",
        ),
    )
    events = await collect(
        text_backend(rec, api_key="sk-up"),
        USER,
        params(temperature=0.0, seed=3, stop=["\n"], logprobs=True, top_logprobs=2),
    )
    sent = rec.sent
    assert rec.requests[0].path == "/v1/chat/completions"
    assert rec.requests[0].headers["authorization"] == "Bearer sk-up"
    assert sent["model"] == "up-model" and sent["messages"] == [{"role": "user", "content": "hi"}]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert (sent["max_tokens"], sent["temperature"], sent["seed"], sent["stop"]) == (
        8,
        0.0,
        3,
        ["\n"],
    )
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    assert [e.text for e in events if isinstance(e, Delta)] == ["Hel", "lo"]
    first = events[0]
    assert isinstance(first, Delta)
    assert first.logprobs[0].token_id == 0  # unknown upstream: documented as 0
    assert [t.token for t in first.logprobs[0].top] == ["Hel", "Hi"]
    assert events[-1] == Finish("stop", 7, 2)


async def test_llama_cpp_token_ids_are_kept(up: Replay) -> None:
    lp = {"content": [{"id": 1234, "token": "x", "logprob": -0.1, "top_logprobs": []}]}
    rec = Recorder(up, sse(chat_chunk("x", logprobs=lp), chat_chunk(None, "length"), "[DONE]"))
    events = await collect(text_backend(rec), USER, params(logprobs=True))
    delta = events[0]
    assert isinstance(delta, Delta) and delta.logprobs[0].token_id == 1234
    assert events[-1] == Finish("length", 0, 1)  # no usage: prompt unknown, one logprob entry


async def test_completion_shape_token_id_strings_and_clamping(up: Replay) -> None:
    chunk = {
        "choices": [
            {
                "index": 0,
                "text": "ab",
                "finish_reason": None,
                "logprobs": {
                    "tokens": ["token_id:17", "token_id:4"],
                    "token_logprobs": [-0.25, "-Infinity"],
                    "top_logprobs": [{"a": -0.25, "c": -3.0, "b": -1.0}, {"q": 1e-9}],
                },
            }
        ]
    }
    done = {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}
    body = sse(json.dumps(chunk).replace('"-Infinity"', "-Infinity"), done, "[DONE]")
    rec = Recorder(up, body)
    events = await collect(text_backend(rec), [5, 6, 7], params(logprobs=True, top_logprobs=2))
    sent = rec.sent
    assert rec.requests[0].path == "/v1/completions"
    assert sent["prompt"] == [5, 6, 7] and sent["logprobs"] == 2
    delta = events[0]
    assert isinstance(delta, Delta)
    assert [lp.token_id for lp in delta.logprobs] == [17, 4]
    assert delta.logprobs[1].logprob == -9999.0
    assert [t.token for t in delta.logprobs[0].top] == ["a", "b"]  # best two, in order
    assert delta.logprobs[1].top[0].logprob == 0.0  # positive rounding noise clamped
    # No usage upstream: token-id prompt length is known, completion counted from logprobs.
    assert events[-1] == Finish("stop", 3, 2)


async def test_no_usage_counts_content_chunks(up: Replay) -> None:
    body = sse(
        *[{"choices": [{"index": 0, "text": t}]} for t in ("a", "b", "c")],
        {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]},
        "[DONE]",
    )
    events = await collect(text_backend(Recorder(up, body)), "prompt", params())
    assert events[-1] == Finish("stop", 0, 3)


async def test_stream_cut_before_finish_is_upstream_unavailable(up: Replay) -> None:
    body = sse(chat_chunk("partial"))
    with pytest.raises(BackendError) as caught:
        await collect(text_backend(Recorder(up, body)), USER, params())
    assert caught.value.code == "upstream_unavailable"


async def test_error_event_mid_stream(up: Replay) -> None:
    body = sse(chat_chunk("a"), {"error": {"message": "engine died", "code": 500}})
    backend = text_backend(Recorder(up, body))
    seen: list[Delta | Finish] = []
    with pytest.raises(BackendError, match="engine died") as caught:
        async for event in backend.stream(USER, params(), CancelToken()):
            seen.append(event)
    await backend.close()
    assert caught.value.code == "upstream_unavailable"
    assert seen == [Delta("a")]


async def test_garbage_chunk_is_upstream_invalid(up: Replay) -> None:
    with pytest.raises(BackendError) as caught:
        await collect(text_backend(Recorder(up, b"data: {not json\n\n")), USER, params())
    assert caught.value.code == "upstream_invalid"


VLLM_TOO_LONG = {
    "object": "error",
    "message": "This model's maximum context length is 2048 tokens. However, you requested "
    "4000 tokens (3992 in the messages, 8 in the completion).",
    "type": "BadRequestError",
    "code": 400,
}
LLAMA_CPP_TOO_LONG = {
    "error": {
        "code": 400,
        "message": "the request exceeds the available context size, try increasing it",
        "type": "exceed_context_size_error",
    }
}


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (500, {"error": {"message": "boom"}}, "upstream_unavailable"),
        (503, {"detail": "overloaded"}, "upstream_unavailable"),
        (429, {"error": {"message": "slow down"}}, "upstream_unavailable"),
        (400, VLLM_TOO_LONG, "context_length_exceeded"),
        (400, LLAMA_CPP_TOO_LONG, "context_length_exceeded"),
        (400, {"error": {"message": "temperature must be <= 2"}}, "upstream_rejected"),
        (401, {"error": {"message": "bad key"}}, "upstream_rejected"),
        (404, {"detail": "The model `x` does not exist."}, "upstream_rejected"),
    ],
)
async def test_http_errors_are_mapped(
    up: Replay, status: int, body: dict[str, Any], code: str
) -> None:
    rec = Recorder(up, json.dumps(body).encode(), status=status)
    with pytest.raises(BackendError) as caught:
        await collect(text_backend(rec), USER, params())
    assert caught.value.code == code
    if code == "context_length_exceeded":
        assert isinstance(caught.value, PromptTooLong)
    if code == "upstream_rejected":
        message = body.get("detail") or body["error"]["message"]
        assert message in str(caught.value)


async def test_empty_prompt_is_rejected_before_any_request(up: Replay) -> None:
    rec = Recorder(up, b"")
    with pytest.raises(BackendError) as caught:
        await collect(text_backend(rec), [], params())
    assert caught.value.code == "invalid_prompt"
    assert rec.requests == []


async def test_cancel_before_start_ends_without_events(up: Replay) -> None:
    cancel = CancelToken()
    cancel.cancel()
    backend = text_backend(Recorder(up, sse(chat_chunk("a"), chat_chunk(None, "stop"))))
    assert [e async for e in backend.stream(USER, params(), cancel)] == []
    await backend.close()


def embedding_handler(calls: list[dict[str, Any]], drop_one: bool = False) -> Handler:
    def handle(request: Request) -> Reply:
        assert (request.method, request.path) == ("POST", "/v1/embeddings")
        sent = json.loads(request.content)
        calls.append(sent)
        inputs = sent["input"]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(x)), float(i), 0.0]}
            for i, x in enumerate(inputs)
        ]
        if drop_one:
            data = data[1:]
        body = {"data": data[::-1], "usage": {"prompt_tokens": 5}}
        return Reply(200, json.dumps(body).encode(), "application/json")

    return handle


async def test_embeddings_mixed_inputs_come_back_in_order(up: Replay) -> None:
    calls: list[dict[str, Any]] = []
    up.handler = embedding_handler(calls)
    backend = OpenAIUpstreamEmbeddingBackend(EMBED_INFO, up.base_url, "m")
    result = await backend.embed(["abc", [1, 2], "z", [9]])
    await backend.close()
    assert [c["input"] for c in calls] == [["abc", "z"], [[1, 2], [9]]]
    assert all(c["encoding_format"] == "float" and c["model"] == "m" for c in calls)
    assert [v[:2] for v in result.vectors] == [[3.0, 0.0], [2.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    assert result.prompt_tokens == 10


async def test_embeddings_with_missing_vectors_are_upstream_invalid(up: Replay) -> None:
    up.handler = embedding_handler([], drop_one=True)
    backend = OpenAIUpstreamEmbeddingBackend(EMBED_INFO, up.base_url, "m")
    with pytest.raises(BackendError) as caught:
        await backend.embed(["a", "b"])
    await backend.close()
    assert caught.value.code == "upstream_invalid"


@pytest.mark.parametrize("status", [400, 503])
async def test_embedding_http_errors_are_mapped(up: Replay, status: int) -> None:
    up.handler = lambda request: Reply(status, b'{"error": {"message": "no"}}', "application/json")
    backend = OpenAIUpstreamEmbeddingBackend(EMBED_INFO, up.base_url, "m")
    with pytest.raises(BackendError, match="no") as caught:
        await backend.embed(["a"])
    await backend.close()
    assert caught.value.code == ("upstream_rejected" if status == 400 else "upstream_unavailable")


async def test_an_unreachable_upstream_is_upstream_unavailable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/v1"
    text = OpenAIUpstreamTextBackend(TEXT_INFO, url, "m")
    embed = OpenAIUpstreamEmbeddingBackend(EMBED_INFO, url, "m")
    with pytest.raises(BackendError, match="upstream unreachable: cannot connect") as caught:
        await collect(text, USER, params())
    assert caught.value.code == "upstream_unavailable"
    with pytest.raises(BackendError, match="upstream unreachable: cannot connect") as caught:
        await embed.embed(["a"])
    await embed.close()
    assert caught.value.code == "upstream_unavailable"


async def test_a_malformed_http_answer_is_upstream_unavailable() -> None:
    async def junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(junk, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    async with server:
        with pytest.raises(BackendError, match="malformed") as caught:
            await collect(OpenAIUpstreamTextBackend(TEXT_INFO, url, "m"), USER, params())
        server.close()
    assert caught.value.code == "upstream_unavailable"


@pytest.mark.parametrize("url", ["localhost:8000/v1", "http://user:pw@host/v1"])
def test_a_malformed_base_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="upstream"):
        OpenAIUpstreamTextBackend(TEXT_INFO, url, "m")


class ByteByByte:
    """An UpstreamClient (the backends' plug point) that hands an answer on one byte at
    a time: every SSE line and UTF-8 character arrives split across pieces."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.closed = False

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, path: str, json_body: bytes | None = None
    ) -> AsyncIterator[ByteByByte]:
        yield self

    @property
    def status(self) -> int:
        return 200

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(len(self.body)):
            yield self.body[i : i + 1]

    async def read(self) -> bytes:
        return self.body

    async def request(
        self, method: str, path: str, json_body: bytes | None = None
    ) -> tuple[int, bytes]:
        return 200, self.body

    async def aclose(self) -> None:
        self.closed = True


async def test_an_answer_split_into_single_bytes() -> None:
    body = sse(chat_chunk("é"), chat_chunk("\r\n"), chat_chunk(None, "stop"), "[DONE]")
    client = ByteByByte(body.replace(b"\n\n", b"\r\n\r\n"))
    backend = OpenAIUpstreamTextBackend(TEXT_INFO, "http://unused/v1", "m", client=client)
    events = await collect(backend, USER, params())
    assert [e.text for e in events if isinstance(e, Delta)] == ["é", "\r\n"]
    assert events[-1] == Finish("stop", 0, 2)
    assert client.closed
