"""A scripted OpenAI-compatible upstream on a real socket, in the test's event loop.

It speaks just enough HTTP/1.1 for httpx: keep-alive, request bodies by Content-Length,
SSE answers in chunked encoding (as uvicorn sends vLLM's) and JSON embeddings answers.
Every text answer streams ``tokens`` one per chunk, with logprob entries, whatever
``max_tokens`` the request asked for (an upstream that ignores it), then a finish chunk,
a usage chunk, ``data: [DONE]`` and the end of the body. It counts the TCP connections
it accepted, so tests can see whether the client reuses one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

PROMPT_TOKENS = 7
DIMENSIONS = 3


@dataclass
class ScriptedUpstream:
    tokens: Sequence[str] = ("The", " fox", " ran", " far", " away", ".")
    finish_reason: str = "stop"
    hang_after_done: bool = False  # send [DONE] but never end the body
    eos: bool = False  # usage counts one token more than listed: an end of sequence
    connections: int = 0  # TCP connections accepted so far
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    port: int = 0
    _open: dict[asyncio.StreamWriter, asyncio.Task[Any]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._open[writer] = task
        try:
            while await self._answer(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away, mid-answer or between requests
        finally:
            self._open.pop(writer, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def close_connections(self) -> None:
        """Close what a client still keeps alive and wait for those handlers to end."""
        handlers = list(self._open.values())
        for writer in list(self._open):
            writer.close()
        if handlers:
            await asyncio.wait(handlers, timeout=5)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request and its answer; False once the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        length = int({k.lower(): v for k, v in headers.items()}.get("content-length", "0"))
        body = json.loads(await reader.readexactly(length)) if length else {}
        self.requests.append((path, body))
        if path.endswith("/embeddings"):
            await self._embeddings(writer, body)
            return True
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        chat = path.endswith("/chat/completions")
        for number, token in enumerate(self.tokens):
            await _event(writer, _token_chunk(chat, token, 100 + number))
        end = {"index": 0, "finish_reason": self.finish_reason}
        await _event(writer, {"choices": [{**end, **({"delta": {}} if chat else {"text": ""})}]})
        completion = len(self.tokens) + (1 if self.eos else 0)
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion}
        await _event(writer, {"choices": [], "usage": usage})
        await _event(writer, "[DONE]")
        if self.hang_after_done:
            await reader.read()  # until the client gives up on the body and closes
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async def _embeddings(self, writer: asyncio.StreamWriter, body: dict[str, Any]) -> None:
        data = [
            {"index": i, "embedding": [0.5] * DIMENSIONS, "object": "embedding"}
            for i, _ in enumerate(body["input"])
        ]
        answer = json.dumps({"data": data, "usage": {"prompt_tokens": 3, "total_tokens": 3}})
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(answer)}\r\n\r\n".encode()
            + answer.encode()
        )
        await writer.drain()


def _token_chunk(chat: bool, token: str, token_id: int) -> dict[str, Any]:
    if chat:
        entry = {"token": token, "logprob": -0.25, "id": token_id, "top_logprobs": []}
        choice: dict[str, Any] = {"delta": {"content": token}, "logprobs": {"content": [entry]}}
    else:
        logprobs = {"tokens": [f"token_id:{token_id}"], "token_logprobs": [-0.25]}
        choice = {"text": token, "logprobs": logprobs}
    return {"choices": [{"index": 0, "finish_reason": None, **choice}]}


async def _event(writer: asyncio.StreamWriter, payload: dict[str, Any] | str) -> None:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    event = f"data: {data}\n\n".encode()
    writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
    await writer.drain()


@contextlib.asynccontextmanager
async def scripted_upstream(**script: Any) -> AsyncIterator[ScriptedUpstream]:
    """The upstream listening on a free local port until the block ends."""
    upstream = ScriptedUpstream(**script)
    server = await asyncio.start_server(upstream._serve, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        yield upstream
    finally:
        server.close()
        await upstream.close_connections()  # Python 3.11's server has no close_clients()
        await server.wait_closed()
