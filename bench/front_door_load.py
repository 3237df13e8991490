"""The front-door bench's load generator: closed loop, open loop and concurrent streams,
run in a process of its own pinned to the load core (``front_door.py --worker SPEC``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable
from typing import Any, cast

from front_door_common import CONTENT_FIELD, MAX_TOKENS, MESSAGES, MODEL, STALL_S

# ================================================================ load generator (--worker)
#
# Runs in its own process pinned to the load core. Raw HTTP/1.1 on asyncio (uvloop when
# importable): a generator in httpx would spend more CPU per request than the mock does.


class HttpConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 client connection carrying one request at a time.

    ``send`` resolves to the status code once the whole response has arrived; ``on_body``
    gets every de-chunked piece of the body with the time its bytes arrived.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.done: asyncio.Future[int] | None = None
        self.on_body: Callable[[bytes, float], None] | None = None
        self.state = "idle"
        self.status = 0
        self.remaining = 0
        self.keep = True
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection closed mid-response"))

    def send(
        self, raw: bytes, on_body: Callable[[bytes, float], None] | None = None
    ) -> asyncio.Future[int]:
        self.done = asyncio.get_running_loop().create_future()
        self.on_body, self.state = on_body, "head"
        if self.transport is None or self.lost:
            self.done.set_exception(ConnectionError("connection closed"))
        else:
            self.transport.write(raw)
        return self.done

    def abort(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._parse(time.perf_counter())

    def _body(self, now: float) -> bool:
        """Pass on what there is of the current body part; True once it is complete."""
        take = min(self.remaining, len(self.buf))
        if take and self.on_body is not None:
            self.on_body(bytes(self.buf[:take]), now)
        del self.buf[:take]
        self.remaining -= take
        return self.remaining == 0

    def _parse(self, now: float) -> None:
        buf = self.buf
        while True:
            if self.state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(buf[:end]).lower().split(b"\r\n")
                del buf[: end + 4]
                self.status = int(lines[0].split()[1])
                self.keep, self.remaining, self.state = (
                    lines[0].startswith(b"http/1.1"),
                    0,
                    "length",
                )
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name == b"content-length":
                        self.remaining = int(value)
                    elif name == b"transfer-encoding" and b"chunked" in value:
                        self.state = "size"
                    elif name == b"connection":
                        self.keep = b"close" not in value
            elif self.state == "length":
                if not self._body(now):
                    return
                self._finish()
                return
            elif self.state == "size":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";")[0], 16)
                del buf[: end + 2]
                self.state, self.remaining = ("trailer", 0) if size == 0 else ("data", size)
            elif self.state == "data":
                if not self._body(now):
                    return
                self.state = "crlf"
            elif self.state == "crlf":
                if len(buf) < 2:
                    return
                del buf[:2]
                self.state = "size"
            elif self.state == "trailer":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._finish()
                    return
            else:
                return  # idle: bytes nobody asked for are kept until the next request

    def _finish(self) -> None:
        self.state = "idle"
        if self.done is not None and not self.done.done():
            self.done.set_result(self.status)


class StreamTrace:
    """Arrival times of one SSE response's events: first content, gaps, [DONE]."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.pending = b""
        self.first: float | None = None
        self.last: float | None = None
        self.gaps: list[float] = []
        self.finished = False

    def feed(self, piece: bytes, now: float) -> None:
        lines = (self.pending + piece).split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            if self.last is not None:
                self.gaps.append(now - self.last)
            self.last = now
            if self.first is None and CONTENT_FIELD.search(line):
                self.first = now
            if b"[DONE]" in line:
                self.finished = True


def _request_bytes(spec: dict[str, Any], body: dict[str, Any]) -> bytes:
    raw = json.dumps(body).encode()
    head = f"POST {spec['path']} HTTP/1.1\r\nHost: {spec['host']}:{spec['port']}\r\n"
    head += "Content-Type: application/json\r\n"
    if spec.get("key"):
        head += f"Authorization: Bearer {spec['key']}\r\n"
    return (head + f"Content-Length: {len(raw)}\r\n\r\n").encode() + raw


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def _connect(spec: dict[str, Any]) -> HttpConn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(HttpConn, spec["host"], spec["port"])
    return conn


async def open_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """Send ``rate`` requests a second for ``duration`` s on a fixed schedule."""
    rate, duration, timeout = spec["rate"], spec["duration"], spec["timeout"]
    raw = _request_bytes(spec, {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS})
    slots = asyncio.Semaphore(spec["max_conns"])
    idle: list[HttpConn] = []
    ok_ms: list[float] = []
    all_ms: list[float] = []  # failures count as infinite
    lags_ms: list[float] = []
    statuses: dict[str, int] = {}
    tally = {"errors": 0, "timeouts": 0, "last_ok": 0.0}

    async def one(scheduled: float) -> int:
        lags_ms.append((time.perf_counter() - scheduled) * 1000)
        conn: HttpConn | None = None
        try:
            async with slots:
                while idle and conn is None:
                    conn = idle.pop()
                    conn = None if conn.lost else conn
                conn = conn or await _connect(spec)
                status = await conn.send(raw)
                if conn.keep and not conn.lost:
                    idle.append(conn)
                    conn = None
                return status
        finally:
            if conn is not None:
                conn.abort()

    async def timed(scheduled: float) -> None:
        try:
            status = await asyncio.wait_for(
                one(scheduled), scheduled + timeout - time.perf_counter()
            )
        except TimeoutError:
            tally["timeouts"] += 1
            all_ms.append(math.inf)
            return
        except OSError:
            statuses["connection"] = statuses.get("connection", 0) + 1
            tally["errors"] += 1
            all_ms.append(math.inf)
            return
        now = time.perf_counter()
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if 200 <= status < 300:
            ok_ms.append((now - scheduled) * 1000)
            all_ms.append(ok_ms[-1])
            tally["last_ok"] = max(tally["last_ok"], now)
        else:
            tally["errors"] += 1
            all_ms.append(math.inf)

    count = max(1, round(rate * duration))
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed(scheduled)))
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.abort()
    span = max(duration, tally["last_ok"] - start)
    return {
        "sent": count,
        "ok": len(ok_ms),
        "achieved": len(ok_ms) / span,
        "p50_ms": percentile(ok_ms, 0.50),
        "p99_ms": percentile(ok_ms, 0.99),
        "p99_all_ms": percentile(all_ms, 0.99),
        "errors": tally["errors"],
        "timeouts": tally["timeouts"],
        "statuses": statuses,
        "lag_p99_ms": percentile(lags_ms, 0.99),
    }


async def closed_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """``concurrency`` connections, each sending its next request when the last returns
    (the stand-in for wrk when wrk cannot be installed)."""
    raw = _request_bytes(spec, {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS})
    deadline = time.perf_counter() + spec["duration"]
    ok_ms: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        conn: HttpConn | None = None
        while time.perf_counter() < deadline:
            try:
                conn = conn if conn is not None and not conn.lost else await _connect(spec)
                started = time.perf_counter()
                status = await asyncio.wait_for(conn.send(raw), spec["timeout"])
            except (OSError, TimeoutError):
                errors += 1
                if conn is not None:
                    conn.abort()
                conn = None
                continue
            if 200 <= status < 300:
                ok_ms.append((time.perf_counter() - started) * 1000)
            else:
                errors += 1
        if conn is not None:
            conn.abort()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(ok_ms) + errors,
        "rps": len(ok_ms) / elapsed,
        "p50_ms": percentile(ok_ms, 0.50),
        "p99_ms": percentile(ok_ms, 0.99),
        "errors": errors,
    }


async def streams(spec: dict[str, Any]) -> dict[str, Any]:
    """``streams`` connections, each streaming one answer after another for ``duration`` s."""
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": spec["max_tokens"], "stream": True}
    raw = _request_bytes(spec, body)
    deadline = time.perf_counter() + spec["duration"]
    ttft_ms: list[float] = []
    gaps_ms: list[float] = []
    tally = {"completed": 0, "errors": 0, "stalls": 0, "stalled_streams": 0}
    statuses: dict[str, int] = {}  # why streams failed: an HTTP status, or unfinished

    async def worker() -> None:
        conn: HttpConn | None = None
        while time.perf_counter() < deadline:
            trace = StreamTrace(time.perf_counter())
            try:
                conn = conn if conn is not None and not conn.lost else await _connect(spec)
                trace.started = time.perf_counter()
                status = await asyncio.wait_for(conn.send(raw, trace.feed), spec["timeout"])
            except (OSError, TimeoutError):
                tally["errors"] += 1
                if conn is not None:
                    conn.abort()
                conn = None
                continue
            if status != 200 or not trace.finished or trace.first is None:
                tally["errors"] += 1
                why = str(status) if status != 200 else "unfinished"
                statuses[why] = statuses.get(why, 0) + 1
                continue
            tally["completed"] += 1
            ttft_ms.append((trace.first - trace.started) * 1000)
            gaps_ms.extend(g * 1000 for g in trace.gaps)
            stalls = sum(g > STALL_S for g in trace.gaps)
            tally["stalls"] += stalls
            tally["stalled_streams"] += stalls > 0
            if not conn.keep:
                conn.abort()
                conn = None
        if conn is not None:
            conn.abort()

    await asyncio.gather(*(worker() for _ in range(spec["streams"])))
    return {
        **tally,
        "failures": statuses,
        "ttft_p50_ms": percentile(ttft_ms, 0.50),
        "ttft_p99_ms": percentile(ttft_ms, 0.99),
        "gap_p99_ms": percentile(gaps_ms, 0.99),
        "max_gap_ms": max(gaps_ms, default=math.nan),
    }


def run_worker(spec: dict[str, Any]) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    modes = {"open": open_loop, "closed": closed_loop, "streams": streams}
    factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(modes[spec["mode"]](spec))
    print("RESULT " + json.dumps(result), flush=True)
