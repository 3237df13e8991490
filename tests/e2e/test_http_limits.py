"""A stranger's bytes cannot hold a gateway's memory or connections: the request head is
bounded in bytes, headers and time, a body must keep arriving, idle keep-alive connections
close, and open connections are capped. Responses still being written (SSE) and the
provider WebSocket are never timed. A real `tessera gateway` process over raw sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tessera.dev_money import fund_account

from support.gateway_process import GatewayProcess, gateway_process, read_until_closed, status_of
from support.live_network import create_key
from support.scripted_peers import Peer, chat_body, done_frame

pytestmark = pytest.mark.e2e

TIMEOUT_S = 1.5  # header, body and keep-alive timeouts of the gateway under test
MIN_RATE = 100  # bytes per second a body must keep up
SLACK_S = 3.0  # a loaded two-core machine may run a timer late


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    settings = {
        "header_timeout_s": str(TIMEOUT_S),
        "body_timeout_s": str(TIMEOUT_S),
        "body_min_rate_bytes_per_s": str(MIN_RATE),
        "keepalive_timeout_s": str(TIMEOUT_S),
    }
    with gateway_process(tmp_path_factory.mktemp("limits"), settings, ("--min-stake", "0")) as gw:
        yield gw


@pytest.fixture(scope="module")
def api_key(gateway: GatewayProcess) -> str:
    key = create_key(gateway.data_dir)
    fund_account(gateway.base, key)
    return key


def send_all(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; False if the server closed the connection first."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def exchange(gateway: GatewayProcess, request: bytes) -> int | None:
    """Send one request; its response's status, or None if the server closed instead."""
    with gateway.connect() as sock:
        if not send_all(sock, request):
            return None
        received, _ = read_until_closed(sock, 10)
        return status_of(received)


def get(headers: bytes = b"", path: bytes = b"/health") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n" + headers + b"\r\n"


def test_thirty_mebibytes_of_unterminated_header_are_cut_off_early(
    gateway: GatewayProcess,
) -> None:
    before = gateway.rss_bytes()
    chunk = b"a" * (1024 * 1024)
    socks = [gateway.connect() for _ in range(10)]
    sent = [0] * len(socks)
    open_ = set(range(len(socks)))
    for sock in socks:
        send_all(sock, b"GET /health HTTP/1.1\r\nHost: gw\r\nX-Filler: ")
    for _ in range(30):  # 30 MiB each, round robin, never a blank line
        for i in sorted(open_):
            if send_all(socks[i], chunk):
                sent[i] += len(chunk)
            else:
                open_.discard(i)
    grown = gateway.rss_bytes() - before
    for sock in socks:
        sock.close()
    assert not open_, f"connections that took 30 MiB of header: {sorted(open_)}"
    assert max(sent) < 16 * 1024 * 1024, sent
    assert grown < 8 * 1024 * 1024, f"the gateway grew by {grown / 2**20:.1f} MiB"
    assert httpx.get(f"{gateway.base}/health", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        get(b"X-Big: " + b"b" * (1024 * 1024) + b"\r\n"),
        get(b"".join(b"X-H%d: v\r\n" % i for i in range(20_000))),
        get(path=b"/health?" + b"q" * (1024 * 1024)),
    ],
    ids=["one-mebibyte-header", "twenty-thousand-headers", "one-mebibyte-url"],
)
def test_an_oversized_head_is_refused(gateway: GatewayProcess, request_bytes: bytes) -> None:
    assert exchange(gateway, request_bytes) in (431, None)


def test_too_many_small_headers_get_a_431(gateway: GatewayProcess) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(150))  # 1.6 KiB, over the count
    assert exchange(gateway, get(headers)) == 431


def test_a_large_but_allowed_head_is_served(gateway: GatewayProcess) -> None:
    headers = (
        b"X-Big: " + b"b" * 16_000 + b"\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(80))
    )
    assert exchange(gateway, get(headers)) == 200


def test_a_body_sent_with_its_head_is_not_counted_as_head(
    gateway: GatewayProcess, api_key: str
) -> None:
    body = json.dumps(chat_body(model="no-such-model")).encode()
    body += b" " * (200_000 - len(body))
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        b"Authorization: Bearer " + api_key.encode() + b"\r\nX-Pad: " + b"p" * 20_000 + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    assert exchange(gateway, head + body) == 404  # one send: head and body in the same reads


def test_endless_trailers_on_a_chunked_body_are_refused(
    gateway: GatewayProcess, api_key: str
) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        b"Authorization: Bearer " + api_key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with gateway.connect() as sock:
        sent = send_all(sock, head + b"1\r\n{\r\n0\r\nX-Trailer: ")
        for _ in range(8):  # 8 MiB of one trailer, never ended
            sent = sent and send_all(sock, b"t" * (1024 * 1024))
        received, closed = read_until_closed(sock, 5)
    assert not sent or closed, "8 MiB of trailer were read and the connection kept open"
    assert status_of(received) in (400, 431, None)


def test_pipelined_requests_are_all_answered(gateway: GatewayProcess) -> None:
    keep = b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"
    with gateway.connect() as sock:
        assert send_all(sock, keep + keep + get())  # three requests in one write
        received, closed = read_until_closed(sock, 10)
    assert closed and received.count(b"HTTP/1.1 200 ") == 3


def test_a_slowloris_head_is_closed_after_the_header_timeout(gateway: GatewayProcess) -> None:
    with gateway.connect() as sock:
        started = time.monotonic()
        send_all(sock, b"GET /health HTTP/1.1\r\nHost: gw\r\n")
        closed = False
        while not closed and time.monotonic() - started < TIMEOUT_S + SLACK_S:
            closed = not send_all(sock, b"X-Drip: 1\r\n")
            received, closed = read_until_closed(sock, 0.2)
            closed = closed or bool(received)
        elapsed = time.monotonic() - started
    assert closed, "a head trickled for longer than the header timeout was still being read"
    assert TIMEOUT_S * 0.8 <= elapsed <= TIMEOUT_S + SLACK_S


def test_a_silent_connection_is_closed_after_the_header_timeout(gateway: GatewayProcess) -> None:
    with gateway.connect() as sock:
        started = time.monotonic()
        received, closed = read_until_closed(sock, TIMEOUT_S + SLACK_S)
        elapsed = time.monotonic() - started
    assert closed and status_of(received) in (408, None)
    assert TIMEOUT_S * 0.8 <= elapsed


def test_a_trickled_body_is_cut_off(gateway: GatewayProcess, api_key: str) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        b"Authorization: Bearer " + api_key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    )
    with gateway.connect() as sock:
        send_all(sock, head)
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < TIMEOUT_S + SLACK_S:
            closed = not send_all(sock, b" ")  # 5 bytes a second, under the minimum rate
            received, closed = read_until_closed(sock, 0.2)
            closed = closed or bool(received)
        elapsed = time.monotonic() - started
    assert closed, "a body trickled for longer than the body timeout was still being read"
    assert status_of(received) in (408, None)
    assert TIMEOUT_S * 0.8 <= elapsed <= TIMEOUT_S + SLACK_S


def test_a_slow_but_steady_body_is_read_to_the_end(gateway: GatewayProcess, api_key: str) -> None:
    body = json.dumps(chat_body(model="no-such-model")).encode()
    body += b" " * (1200 - len(body))  # sent over ~3 s: twice the timeout, 4x the minimum rate
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
        b"Authorization: Bearer " + api_key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with gateway.connect() as sock:
        assert send_all(sock, head)
        for i in range(0, len(body), 200):
            time.sleep(0.5)
            assert send_all(sock, body[i : i + 200]), "cut off while keeping up the rate"
        received, _ = read_until_closed(sock, 10)
    assert status_of(received) == 404, received[:300]


def test_an_idle_keep_alive_connection_is_closed(gateway: GatewayProcess) -> None:
    with gateway.connect() as sock:
        assert send_all(sock, b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
        first = b""
        while b"}" not in first:
            first += sock.recv(65536)
        assert status_of(first) == 200
        started = time.monotonic()
        _, closed = read_until_closed(sock, TIMEOUT_S + SLACK_S)
        elapsed = time.monotonic() - started
    assert closed and TIMEOUT_S * 0.8 <= elapsed <= TIMEOUT_S + SLACK_S


async def test_a_stream_and_the_provider_socket_outlive_every_timeout(
    gateway: GatewayProcess, api_key: str
) -> None:
    peer = await Peer.open(gateway.ws_url)
    assert (await peer.register())["type"] == "welcome"
    beat = asyncio.create_task(peer.beat_forever())
    pieces = [f"piece{i} " for i in range(6)]
    headers = {"Authorization": f"Bearer {api_key}"}
    received: list[str] = []

    async def stream() -> None:
        async with (
            httpx.AsyncClient(base_url=gateway.base, headers=headers, timeout=30) as client,
            client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as reply,
        ):
            assert reply.status_code == 200
            async for line in reply.aiter_lines():
                if line.startswith("data: "):
                    received.append(line[6:])

    try:
        request = asyncio.create_task(stream())
        job = await peer.recv(timeout_s=10)
        assert job["type"] == "job"
        chunks = []
        for piece in pieces:  # 3 s of output: twice every timeout of this gateway
            chunk = {"type": "chunk", "job_id": job["job_id"], "text": piece, "tokens": 1}
            chunks.append(chunk)
            await peer.send(chunk)
            await asyncio.sleep(0.5)
        finish = {"type": "chunk", "job_id": job["job_id"], "finish_reason": "stop"}
        chunks.append(finish)
        await peer.send(finish)
        await peer.send(done_frame(peer, job, chunks, (3, len(pieces))))
        await asyncio.wait_for(request, 15)
    finally:
        beat.cancel()
        await peer.close()
    assert received[-1] == "[DONE]"
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(json.loads, received[:-1])
        if c.get("choices")
    )
    assert text == "".join(pieces)


def test_connections_over_the_cap_are_refused(tmp_path: Path) -> None:
    with gateway_process(tmp_path, {"max_connections": "4"}) as gw:
        held = [gw.connect() for _ in range(4)]
        try:
            time.sleep(0.3)  # the gateway accepts them
            with gw.connect() as extra:
                received, closed = read_until_closed(extra, 5)
            assert closed and status_of(received) in (503, None)
            held.pop().close()
            deadline = time.monotonic() + 5
            while (status := exchange(gw, get())) != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert status == 200
        finally:
            for sock in held:
                sock.close()
