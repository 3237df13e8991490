"""A lean HTTP/1.1 client for one upstream origin: what the OpenAI upstream backends send
their requests through, in place of httpx (whose pool and anyio layers cost about as
much CPU per job as the rest of the agent).

One :class:`UpstreamHTTP` per backend holds a keep-alive pool of connections to its
origin (``http://``, ``https://``, or a Unix socket). A request is one write of head and
body; the response is parsed by ``httptools`` (llhttp) as it arrives, Content-Length,
chunked or until-close bodies alike, and the body is handed on piece by piece.

Contracts:

- A connection goes back to the pool only when its response was read to the end of its
  body, the server did not say ``Connection: close``, and nothing else went wrong; any
  other exit (an error, a timeout, a cancelled task, a body abandoned half way) closes it.
- At most ``max_connections`` are open at once; a request that finds none free waits up
  to ``read_timeout_s`` (:class:`PoolTimeout`). At most ``max_idle_connections`` stay open
  between requests, each for at most ``idle_expiry_s``; a connection the server closes
  while idle leaves the pool as soon as the event loop hears of it.
- A request sent on a reused connection that the server closes before a single byte of
  the response arrived is sent once more on a new connection (the server closed an idle
  connection as we wrote to it); a request on a new connection is never repeated.
- Timeouts: ``connect_timeout_s`` to open a connection (TCP and TLS); ``read_timeout_s``
  between any two pieces of the response (the head included), to write the request, and
  to wait for a free connection.

Errors, all raised from here and translated by the caller::

    HTTPClientError             any failure to get a whole answer
    ├── ConnectFailed           the connection could not be opened (refused, DNS, TLS)
    ├── ConnectionLost          the server closed or reset the connection mid-answer
    │                           (or this client was closed)
    ├── BadResponse             what came back is not HTTP/1.x we can parse
    └── ClientTimeout
        ├── ConnectTimeout, ReadTimeout, WriteTimeout, PoolTimeout

An HTTP error status is not an error here: the caller reads status and body.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

MAX_HEAD_BYTES = 64 * 1024  # an answer's header lines together
_HIGH_WATER_BYTES = 256 * 1024  # body buffered unread before we stop reading the socket


class HTTPClientError(Exception):
    """Base of every error of this client."""


class ConnectFailed(HTTPClientError):
    pass


class ConnectionLost(HTTPClientError):
    pass


class BadResponse(HTTPClientError):
    pass


class ClientTimeout(HTTPClientError):
    pass


class ConnectTimeout(ClientTimeout):
    pass


class ReadTimeout(ClientTimeout):
    pass


class WriteTimeout(ClientTimeout):
    pass


class PoolTimeout(ClientTimeout):
    pass


class UpstreamResponse(Protocol):
    """A response whose head has arrived; iterating it yields the body's pieces."""

    @property
    def status(self) -> int: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes:
        """The rest of the body, whole."""
        ...


class UpstreamClient(Protocol):
    """What the upstream backends need of an HTTP client; :class:`UpstreamHTTP` is the
    real one. ``path`` is relative to the client's base URL; ``json_body`` is sent as
    ``application/json``."""

    def stream(
        self, method: str, path: str, json_body: bytes | None = None
    ) -> AbstractAsyncContextManager[UpstreamResponse]: ...

    async def request(
        self, method: str, path: str, json_body: bytes | None = None
    ) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class _Connection(asyncio.Protocol):
    """One connection and the response in progress on it; driven by the event loop's
    callbacks (bytes in, flow control, close) and by the request that holds it."""

    def __init__(self, pool: UpstreamHTTP) -> None:
        self._pool = pool
        self.loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.lost = False  # closed, by either side
        self.reused = False  # has answered a request before
        self.idle_since = 0.0
        self.counted = True  # still counted in the pool's open connections
        self._write_paused = False
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._reset(busy=False)

    def _reset(self, *, busy: bool) -> None:
        self.busy = busy
        self.status = 0
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.received = False  # any byte of this response has arrived
        self.error: HTTPClientError | None = None
        self.pieces: deque[bytes] = deque()
        self.buffered = 0
        self._head_bytes = 0
        self._framed = False  # the body has a Content-Length or is chunked

    # ------------------------------------------------------------ event loop side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self._expecting():
            self._break()  # bytes nobody asked for: this connection can't be trusted
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("upstream switched protocols"))
        except httptools.HttpParserError as exc:
            if self.complete:
                self.keep_alive = False  # a whole answer, then junk: keep the answer only
            else:
                self._fail(BadResponse(f"upstream sent a malformed response: {exc}"))
        if self.buffered > _HIGH_WATER_BYTES and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def _expecting(self) -> bool:
        return self.busy and not self.complete

    def eof_received(self) -> bool:
        self._ended("upstream closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._ended(f"upstream connection lost: {exc}" if exc else "upstream closed the connection")
        self._pool._forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    def _ended(self, why: str) -> None:
        """The server will send nothing more."""
        self.keep_alive = False
        if self.busy and not self.complete and self.error is None:
            if self.head_done and not self._framed:
                self.complete = True  # a body that runs until the connection closes
            else:
                self.error = ConnectionLost(why)
        self._wake()

    # ------------------------------------------------------------ httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        if self._head_bytes > MAX_HEAD_BYTES:
            self._fail(BadResponse(f"upstream response head over {MAX_HEAD_BYTES} bytes"))
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._framed = False  # an interim answer; the real one follows
            return
        self.status = status
        self.head_done = True
        if status in (204, 304):
            self._framed = True

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self.keep_alive = self._parser.should_keep_alive()

    # ------------------------------------------------------------ request side

    def _fail(self, error: HTTPClientError) -> None:
        if self.error is None:
            self.error = error
        self._break()

    def _break(self) -> None:
        self.keep_alive = False
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):  # its event loop is closed: it is gone
                self.transport.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout_s: float, error: type[ClientTimeout], what: str) -> None:
        """Until the event loop has news for this connection, or ``error`` on timeout."""
        waiter = self.loop.create_future()
        self._waiter = waiter
        handle = self.loop.call_later(timeout_s, _expire, waiter, error, what, timeout_s)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None

    def take(self) -> bytes:
        """Every body byte buffered so far, as one piece."""
        pieces = self.pieces
        piece = pieces.popleft() if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self.buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return piece

    async def send(self, data: bytes, timeout_s: float) -> None:
        """Write a request and wait for the head of its response."""
        self._reset(busy=True)
        if self.lost or self.transport is None:
            raise ConnectionLost("upstream closed the connection")
        self.transport.write(data)
        while self._write_paused and not (self.head_done or self.error or self.lost):
            await self.wait(timeout_s, WriteTimeout, "writing the request")
        while not self.head_done:
            if self.error is not None:
                raise self.error
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(BadResponse(f"upstream response head over {MAX_HEAD_BYTES} bytes"))
                continue
            await self.wait(timeout_s, ReadTimeout, "waiting for the response")

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.pieces and not self.lost


def _expire(
    waiter: asyncio.Future[None], error: type[ClientTimeout], what: str, timeout_s: float
) -> None:
    if not waiter.done():
        waiter.set_exception(error(f"upstream timed out after {timeout_s:g} s {what}"))


class Response:
    """The response on a held connection: its status and its body's pieces in order."""

    __slots__ = ("_conn", "_timeout_s", "status")

    def __init__(self, conn: _Connection, timeout_s: float) -> None:
        self._conn = conn
        self._timeout_s = timeout_s
        self.status = conn.status

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        while True:
            if conn.pieces:
                return conn.take()
            if conn.complete:
                raise StopAsyncIteration
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._timeout_s, ReadTimeout, "between two reads")

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self])


class _Exchange:
    """``async with client.stream(...) as response``: holds one connection for one
    request and, at the end, gives it back to the pool or closes it."""

    __slots__ = ("_client", "_conn", "_data")

    def __init__(self, client: UpstreamHTTP, data: bytes) -> None:
        self._client = client
        self._data = data
        self._conn: _Connection | None = None

    async def __aenter__(self) -> Response:
        self._conn = await self._client._send(self._data)
        return Response(self._conn, self._client.read_timeout_s)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            self._client._release(self._conn)
            self._conn = None


class UpstreamHTTP:
    """An HTTP/1.1 client for one origin with a keep-alive pool; see the module docstring.

    ``base_url`` is ``http[s]://host[:port][/prefix]``; with ``uds`` the connections go to
    that Unix socket instead (the URL still names the host and prefix). ``tls`` replaces
    the verifying default context for ``https``. ``headers`` go with every request. Not thread-safe; a connection serves only the event loop that
    opened it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout_s: float = 15.0,
        read_timeout_s: float = 600.0,
        max_connections: int = 1024,
        max_idle_connections: int = 64,
        idle_expiry_s: float = 4.0,
        uds: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"{base_url!r} is not an http:// or https:// URL")
        if url.query or url.username or url.password:
            raise ValueError(f"{base_url!r}: a base URL takes no query and no credentials")
        self.read_timeout_s = read_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._max_idle = max_idle_connections
        self._idle_expiry_s = idle_expiry_s
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._tls = (tls or _tls_context()) if url.scheme == "https" else None
        self._uds = uds
        self._prefix = url.path.rstrip("/") + "/"
        host = url.netloc.rpartition("@")[2]
        fixed = {"Host": host, "User-Agent": "tessera-provider", "Accept": "*/*"}
        fixed |= dict(headers or {})
        for name, value in fixed.items():
            if any(c in name + value for c in "\r\n\0") or not name or ":" in name:
                raise ValueError(f"header {name!r} has a forbidden character")
        self._head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._idle: list[_Connection] = []  # most recently used last
        self._open = 0  # connections counted against max_connections
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def _encode(self, method: str, path: str, json_body: bytes | None) -> bytes:
        target = (self._prefix + path.lstrip("/")).encode("latin-1")
        start = b"%s %s HTTP/1.1\r\n" % (method.encode("ascii"), target)
        if json_body is None:
            return start + self._head + b"\r\n"
        return b"%s%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            start,
            self._head,
            len(json_body),
            json_body,
        )

    def stream(
        self, method: str, path: str, json_body: bytes | None = None
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        return _Exchange(self, self._encode(method, path, json_body))

    async def request(
        self, method: str, path: str, json_body: bytes | None = None
    ) -> tuple[int, bytes]:
        async with _Exchange(self, self._encode(method, path, json_body)) as response:
            return response.status, await response.read()

    async def aclose(self) -> None:
        """Close the idle connections and refuse new requests; held ones close when given
        back."""
        self._closed = True
        while self._idle:
            self._close(self._idle.pop())
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionLost("the client was closed"))

    # ------------------------------------------------------------ the pool

    async def _send(self, data: bytes) -> _Connection:
        """A connection holding the answer's head to ``data``; one retry on a fresh one
        when a reused connection was closed before any answer."""
        conn = await self._acquire(fresh=False)
        try:
            await conn.send(data, self.read_timeout_s)
            return conn
        except ConnectionLost:
            self._release(conn)
            if not conn.reused or conn.received:
                raise
        except BaseException:
            self._release(conn)
            raise
        conn = await self._acquire(fresh=True)
        try:
            await conn.send(data, self.read_timeout_s)
        except BaseException:
            self._release(conn)
            raise
        return conn

    async def _acquire(self, *, fresh: bool) -> _Connection:
        if self._closed:
            raise ConnectionLost("the client was closed")
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if conn.loop is not loop:
                self._close(conn)
                continue
            if conn.lost or now - conn.idle_since > self._idle_expiry_s:
                self._close(conn)
                while self._idle:  # every one below is older still
                    self._close(self._idle.pop())
                break
            return conn
        while self._open >= self._max_connections:
            await self._wait_for_slot()
            if self._idle and not fresh:
                return await self._acquire(fresh=False)
        self._open += 1
        conn = _Connection(self)
        try:
            await self._connect(conn)
        except BaseException:
            self._forget(conn)
            raise
        return conn

    async def _wait_for_slot(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout(self.read_timeout_s):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._slot_freed()  # woken but leaving: the next in line gets the slot
            else:
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(
                    f"no free upstream connection within {self.read_timeout_s:g} s "
                    f"({self._max_connections} in use)"
                ) from exc
            raise

    def _slot_freed(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, conn: _Connection) -> None:
        """Open ``conn``'s connection (TCP or Unix socket, TLS for https)."""
        where = self._uds or f"{self._host}:{self._port}"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if self._uds is not None:
                    await loop.create_unix_connection(
                        lambda: conn,
                        self._uds,
                        ssl=self._tls,
                        server_hostname=self._host if self._tls else None,
                    )
                else:
                    await loop.create_connection(
                        lambda: conn, self._host, self._port, ssl=self._tls
                    )
        except TimeoutError as exc:
            raise ConnectTimeout(
                f"connecting to {where} timed out after {self._connect_timeout_s:g} s"
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {where}: {exc}") from exc

    def _release(self, conn: _Connection) -> None:
        """Back to the pool if it can serve another request, else closed."""
        conn.busy = False
        if not conn.reusable or self._closed:
            self._close(conn)
            return
        now = conn.loop.time()
        idle = self._idle
        while idle and now - idle[0].idle_since > self._idle_expiry_s:
            self._close(idle.pop(0))
        if len(idle) >= self._max_idle:
            self._close(conn)
            return
        conn.reused = True
        conn.idle_since = now
        idle.append(conn)
        self._slot_freed()

    def _close(self, conn: _Connection) -> None:
        conn._break()
        self._forget(conn)

    def _forget(self, conn: _Connection) -> None:
        """``conn`` no longer counts: closed by us, or lost (maybe while idle)."""
        if conn.counted:
            conn.counted = False
            self._open -= 1
            self._slot_freed()
        if not conn.busy:
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)


def _tls_context() -> ssl.SSLContext:
    """Verified TLS with certifi's roots where installed (as httpx did), else the system's."""
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with httpx
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())
