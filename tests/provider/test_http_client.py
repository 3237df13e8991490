"""The upstream HTTP client (backends/http_client.py) against real local servers.

Each test runs a small asyncio server whose per-connection script decides what the
client gets: keep-alive answers, chunked / Content-Length / until-close bodies, idle
connections closed by the server, answers that hang or stop half way, malformed heads.
The server counts the connections it accepted, so reuse is observed, not assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tessera.protocol.wire import ChatMessage, SamplingParams
from tessera.provider.backends.base import BackendError, CancelToken, Delta, Finish, ModelInfo
from tessera.provider.backends.http_client import (
    BadResponse,
    ConnectFailed,
    ConnectionLost,
    PoolTimeout,
    ReadTimeout,
    UpstreamHTTP,
)
from tessera.provider.backends.openai_upstream import OpenAIUpstreamTextBackend

pytestmark = pytest.mark.timeout(30)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    """Connections accepted so far, requests read, and how many connections saw EOF."""

    connections: int = 0
    requests: list[Seen] = field(default_factory=list)
    closed_by_client: int = 0
    port: int = 0
    path: str | None = None  # a Unix socket instead of the port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


Script = Callable[[Server, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(server: Server, reader: asyncio.StreamReader) -> Seen | None:
    """The next request on a connection, or None once the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        server.closed_by_client += 1
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ")
    headers = {k.lower(): v for k, _, v in (x.partition(": ") for x in lines[1:] if x)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    seen = Seen(method, path, headers, body)
    server.requests.append(seen)
    return seen


def answer(body: bytes, status: int = 200, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


async def keep_alive(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Echo every request's path and body, one answer per request, for as long as the
    client keeps the connection."""
    while (seen := await read_request(server, reader)) is not None:
        w.write(answer(json.dumps({"path": seen.path, "body": seen.body.decode()}).encode()))
        await w.drain()


@contextlib.asynccontextmanager
async def serving(script: Script, listen: dict[str, Any] | None = None) -> AsyncIterator[Server]:
    """The server on a free local port, or as ``listen`` says (``path``: a Unix socket;
    ``ssl``: TLS)."""
    server = Server()
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await script(server, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the test is over; ending quietly keeps asyncio's stream callback silent
        finally:
            handlers.discard(task)
            writer.close()

    listen = listen or {}
    if "path" in listen:
        listener = await asyncio.start_unix_server(handle, **listen)
        server.path = listen["path"]
    else:
        listener = await asyncio.start_server(handle, "127.0.0.1", 0, **listen)
        server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        for task in list(handlers):
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=5)
        await listener.wait_closed()


@contextlib.asynccontextmanager
async def client_for(server: Server, **options: float) -> AsyncIterator[UpstreamHTTP]:
    client = UpstreamHTTP(server.url, **options)  # type: ignore[arg-type]
    try:
        yield client
    finally:
        await client.aclose()


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


# ---------------------------------------------------------------- keep-alive


async def test_requests_in_sequence_share_one_connection() -> None:
    async with serving(keep_alive) as server, client_for(server) as client:
        for number in range(8):
            if number % 2:
                status, body = await client.request("POST", "chat/completions", b'{"n":1}')
            else:
                async with client.stream("GET", "/models") as response:
                    status, body = response.status, await response.read()
            assert status == 200
            assert json.loads(body)["path"] == (
                "/v1/chat/completions" if number % 2 else "/v1/models"
            )
        assert server.connections == 1
        assert len(server.requests) == 8


async def test_request_shape() -> None:
    async with serving(keep_alive) as server:
        client = UpstreamHTTP(server.url + "/", headers={"Authorization": "Bearer sk"})
        try:
            await client.request("POST", "embeddings", b'{"a":"\xc3\xa9"}')
            await client.request("GET", "models")
        finally:
            await client.aclose()
    post, get = server.requests
    assert (post.method, post.path, post.body) == ("POST", "/v1/embeddings", b'{"a":"\xc3\xa9"}')
    assert post.headers["host"] == f"127.0.0.1:{server.port}"
    assert post.headers["authorization"] == "Bearer sk"
    assert post.headers["content-type"] == "application/json"
    assert post.headers["content-length"] == "10"
    assert (get.method, get.path, get.body) == ("GET", "/v1/models", b"")
    assert "content-length" not in get.headers


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8000/v1", "ftp://host/v1", "http://u:p@host/v1", "http://host/v1?x=1"]
)
def test_bad_base_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        UpstreamHTTP(url)


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError):
        UpstreamHTTP("http://host/v1", headers={"Authorization": "Bearer x\r\nX-Evil: 1"})


async def test_concurrent_requests_beyond_the_idle_limit() -> None:
    async def slow(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await read_request(server, reader) is not None:
            await asyncio.sleep(0.05)
            w.write(answer(b"ok"))

    async with serving(slow) as server, client_for(server, max_idle_connections=2) as client:
        results = await asyncio.gather(*(client.request("GET", "x") for _ in range(4)))
        assert results == [(200, b"ok")] * 4
        assert server.connections == 4
        await eventually(lambda: server.closed_by_client == 2)  # two stay idle in the pool
        assert await client.request("GET", "x") == (200, b"ok")
        assert server.connections == 4


async def test_max_connections_makes_requests_wait_then_time_out() -> None:
    release = asyncio.Event()

    async def held(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await read_request(server, reader) is not None:
            w.write(CHUNKED_HEAD + b"3\r\nabc\r\n")
            await release.wait()
            w.write(b"0\r\n\r\n")

    async with serving(held) as server:
        async with client_for(server, max_connections=1, read_timeout_s=5) as client:
            first = asyncio.create_task(client.request("GET", "a"))
            second = asyncio.create_task(client.request("GET", "b"))
            await eventually(lambda: len(server.requests) == 1)
            await asyncio.sleep(0.05)
            assert len(server.requests) == 1  # the second waits for a free connection
            release.set()
            assert await first == await second == (200, b"abc")
            assert server.connections == 1
        release.clear()
        async with client_for(server, max_connections=1, read_timeout_s=0.2) as client:
            async with client.stream("GET", "a") as response:
                assert await anext(aiter(response)) == b"abc"
                with pytest.raises(PoolTimeout, match="no free upstream connection"):
                    await client.request("GET", "b")
                release.set()
                assert await response.read() == b""
            assert await client.request("GET", "c") == (200, b"abc")


# ---------------------------------------------------------------- bodies


async def test_chunked_content_length_and_until_close_bodies() -> None:
    async def three(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(server, reader)
        w.write(CHUNKED_HEAD + b"5\r\nhel")  # a chunk split across writes
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(b"lo\r\n")
        await asyncio.sleep(0.02)
        w.write(chunked(b" world", b"!"))
        await read_request(server, reader)
        w.write(answer(b"x" * 100_000))
        await read_request(server, reader)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ")
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(b"the end")
        await w.drain()
        w.close()

    async with serving(three) as server, client_for(server) as client:
        async with client.stream("GET", "a") as response:
            pieces = [piece async for piece in response]
        assert b"".join(pieces) == b"hello world!"
        assert len(pieces) >= 2  # handed on as they arrived
        assert await client.request("GET", "b") == (200, b"x" * 100_000)
        assert await client.request("GET", "c") == (200, b"until the end")
    assert server.connections == 1


async def test_a_large_body_read_slowly_arrives_whole() -> None:
    """More than the client buffers unread: it stops reading the socket until the
    consumer catches up, and nothing is lost."""
    blob = bytes(range(256)) * 8 * 1024  # 2 MiB

    async def big(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await read_request(server, reader) is not None:
            w.write(
                CHUNKED_HEAD + chunked(*(blob[i : i + 65536] for i in range(0, len(blob), 65536)))
            )
            await w.drain()

    async with serving(big) as server, client_for(server) as client:
        async with client.stream("POST", "big", b"{}" + b" " * 4_000_000) as response:
            got = bytearray()
            async for piece in response:
                got += piece
                await asyncio.sleep(0)
        assert bytes(got) == blob
        assert len(server.requests[0].body) == 4_000_002  # a request body bigger than a write
        status, body = await client.request("GET", "again")
        assert (status, body) == (200, blob)
        assert server.connections == 1


# ---------------------------------------------------------------- closed connections


async def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    async def once(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(server, reader)
        w.write(answer(b"ok"))  # keep-alive by default, then closed anyway
        await w.drain()

    async with serving(once) as server, client_for(server) as client:
        assert await client.request("GET", "a") == (200, b"ok")
        await asyncio.sleep(0.05)  # the close reaches the client while the connection is idle
        assert client._idle == []  # noticed at once, not at the next request
        assert await client.request("GET", "b") == (200, b"ok")
        assert server.connections == 2


async def test_a_reused_connection_closed_before_any_answer_is_retried_once() -> None:
    """The race the idle check cannot see: the server closes the connection as the
    request goes out. The request is sent again on a new connection."""

    async def drop_second(
        server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await read_request(server, reader)
        w.write(answer(b"first"))
        await w.drain()
        if server.connections == 1:
            await read_request(server, reader)  # read, never answered: closed

    async with serving(drop_second) as server, client_for(server) as client:
        assert await client.request("GET", "a") == (200, b"first")
        assert await client.request("GET", "b") == (200, b"first")
        assert [r.path for r in server.requests] == ["/v1/a", "/v1/b", "/v1/b"]
        assert server.connections == 2


async def test_no_retry_on_a_new_connection_or_after_part_of_an_answer() -> None:
    async def half(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(server, reader)
        if server.connections == 1:
            w.write(answer(b"ok"))
            await read_request(server, reader)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-le")  # part of a head, then closed
            await w.drain()

    async with serving(half) as server, client_for(server) as client:
        assert await client.request("GET", "a") == (200, b"ok")
        with pytest.raises(ConnectionLost):
            await client.request("GET", "b")
        assert len(server.requests) == 2
        with pytest.raises(ConnectionLost):  # a new connection, closed unanswered
            await client.request("GET", "c")
        assert len(server.requests) == 3


async def test_connection_close_from_the_server_is_honoured() -> None:
    async def closing(
        server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await read_request(server, reader)
        w.write(answer(b"bye", extra=b"connection: close\r\n"))
        await w.drain()
        await reader.read()  # leaves it to the client to close
        server.closed_by_client += 1

    async with serving(closing) as server, client_for(server) as client:
        for _ in range(3):
            assert await client.request("GET", "a") == (200, b"bye")
        assert server.connections == 3
        await eventually(lambda: server.closed_by_client == 3)


async def test_idle_connections_expire() -> None:
    async with serving(keep_alive) as server, client_for(server, idle_expiry_s=0.05) as client:
        await client.request("GET", "a")
        await client.request("GET", "b")
        await asyncio.sleep(0.1)
        await client.request("GET", "c")
        assert server.connections == 2


async def test_close_closes_idle_connections() -> None:
    async with serving(keep_alive) as server:
        client = UpstreamHTTP(server.url)
        await client.request("GET", "a")
        await client.aclose()
        await eventually(lambda: server.closed_by_client == 1)
        with pytest.raises(ConnectionLost):
            await client.request("GET", "a")


# ---------------------------------------------------------------- broken answers


async def test_a_server_that_hangs_is_a_read_timeout() -> None:
    async def hang(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(server, reader)
        if server.connections == 2:
            w.write(CHUNKED_HEAD + b"3\r\nabc\r\n")  # the head and a piece, then nothing
        await asyncio.sleep(60)

    async with serving(hang) as server, client_for(server, read_timeout_s=0.1) as client:
        with pytest.raises(ReadTimeout, match=r"timed out after 0\.1 s"):
            await client.request("GET", "head")
        async with client.stream("GET", "body") as response:
            assert await anext(aiter(response)) == b"abc"
            with pytest.raises(ReadTimeout):
                await anext(aiter(response))
        assert server.connections == 2


async def test_the_backend_maps_a_hanging_upstream_to_upstream_unavailable() -> None:
    async def hang(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(server, reader)
        await asyncio.sleep(60)

    info = ModelInfo("served", "a" * 64, "text", 2048)
    prompt = [ChatMessage(role="user", content="hi")]
    async with serving(hang) as server:
        backend = OpenAIUpstreamTextBackend(info, server.url, "m", timeout_s=0.1)
        try:
            events = backend.stream(prompt, SamplingParams(max_tokens=4), CancelToken())
            with pytest.raises(BackendError) as caught:
                _ = [e async for e in events]
        finally:
            await backend.close()
    assert caught.value.code == "upstream_unavailable"
    assert str(caught.value) == (
        "upstream unreachable: upstream timed out after 0.1 s waiting for the response"
    )


async def test_a_body_abandoned_half_way_closes_its_connection() -> None:
    async def slow(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await read_request(server, reader) is not None:
            w.write(CHUNKED_HEAD + b"5\r\nfirst\r\n")
            await w.drain()
            await asyncio.sleep(0.2)
            w.write(chunked(b"second"))
            await w.drain()

    async with serving(slow) as server, client_for(server) as client:
        async with client.stream("GET", "a") as response:
            async for piece in response:
                assert piece == b"first"
                break
        await eventually(lambda: server.closed_by_client == 1)  # closed, not pooled
        async with client.stream("GET", "b") as response:
            assert await response.read() == b"firstsecond"
        assert server.connections == 2


async def test_a_malformed_answer_is_bad_response() -> None:
    async def junk(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(server, reader)
        w.write(b"SPDY/9 what\r\n\r\n" if server.connections == 1 else b"HTTP/1.1 200 OK\r\n")
        if server.connections == 2:
            w.write(b"x-big: " + b"y" * 70_000 + b"\r\n\r\n")
        await w.drain()
        await asyncio.sleep(60)

    async with serving(junk) as server, client_for(server) as client:
        with pytest.raises(BadResponse, match="malformed"):
            await client.request("GET", "a")
        with pytest.raises(BadResponse, match="head over"):
            await client.request("GET", "b")


async def test_nothing_listening_is_connect_failed() -> None:
    async with serving(keep_alive) as server:
        pass  # closed again: its port now refuses
    client = UpstreamHTTP(server.url)
    with pytest.raises(ConnectFailed, match=r"cannot connect to 127\.0\.0\.1"):
        await client.request("GET", "a")
    await client.aclose()


async def test_a_unix_socket_upstream(tmp_path: Path) -> None:
    async with serving(keep_alive, listen={"path": str(tmp_path / "up.sock")}) as server:
        client = UpstreamHTTP("http://localhost/v1", uds=server.path)
        try:
            for _ in range(3):
                status, body = await client.request("POST", "completions", b"{}")
                assert status == 200 and json.loads(body)["path"] == "/v1/completions"
        finally:
            await client.aclose()
        assert server.connections == 1


# ---------------------------------------------------------------- through the text backend

INFO = ModelInfo("served", "a" * 64, "text", 2048)
PROMPT = [ChatMessage(role="user", content="hi")]


def sse_event(payload: dict[str, object] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    event = f"data: {data}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(event), event)


def token(text: str) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


async def test_a_stream_cut_mid_body_is_upstream_unavailable() -> None:
    async def cut(server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(server, reader)
        w.write(CHUNKED_HEAD + sse_event(token("a")) + b"40\r\ndata: {")
        await w.drain()

    async with serving(cut) as server:
        backend = OpenAIUpstreamTextBackend(INFO, server.url, "m")
        seen: list[Delta | Finish] = []
        try:
            with pytest.raises(BackendError) as caught:
                async for event in backend.stream(
                    PROMPT, SamplingParams(max_tokens=4), CancelToken()
                ):
                    seen.append(event)
        finally:
            await backend.close()
    assert caught.value.code == "upstream_unavailable"
    assert str(caught.value).startswith("upstream unreachable: upstream closed the connection")
    assert [e.text for e in seen if isinstance(e, Delta)] == ["a"]


async def test_a_cancelled_stream_closes_its_connection_and_the_next_job_opens_one() -> None:
    async def endless(
        server: Server, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        while await read_request(server, reader) is not None:
            w.write(CHUNKED_HEAD)
            for _ in range(1000):
                w.write(sse_event(token("x")))
                await w.drain()
                await asyncio.sleep(0.01)

    async with serving(endless) as server:
        backend = OpenAIUpstreamTextBackend(INFO, server.url, "m")
        try:
            for _ in range(2):
                cancel = CancelToken()
                params = SamplingParams(max_tokens=900)
                async for _event in backend.stream(PROMPT, params, cancel):
                    cancel.cancel()
        finally:
            await backend.close()
    assert server.connections == 2


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by the openssl command."""
    assert shutil.which("openssl"), (
        "the https test needs the openssl command (apt-get install openssl)"
    )
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subj = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subj, *files],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_an_https_upstream_is_verified(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    async with serving(keep_alive, listen={"ssl": served}) as server:
        url = server.url.replace("http://", "https://")
        untrusting = UpstreamHTTP(url)
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.request("GET", "a")
        await untrusting.aclose()
        client = UpstreamHTTP(url, tls=ssl.create_default_context(cafile=cert))
        try:
            for _ in range(2):
                status, body = await client.request("POST", "embeddings", b"{}")
                assert status == 200 and json.loads(body)["path"] == "/v1/embeddings"
        finally:
            await client.aclose()
    assert server.connections == 1  # both on one connection (the refused one never got here)
