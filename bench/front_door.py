"""The front door side by side: one OpenAI-compatible mock upstream (bench/mock_upstream.py)
called directly, through LiteLLM's proxy, and through Tessera (a dev gateway and one
provider agent whose upstream backend is the mock), in one run on one machine.

Layout (two cores): the mock and every load generator on core 0; the servers on core 1.

- ``direct``: the mock itself;
- ``litellm``: LiteLLM's proxy from PyPI (its own venv under .cache/bench), one uvicorn
  worker, the mock as an ``openai/`` model with ``api_base``, no database, no telemetry,
  logging at ERROR;
- ``tessera-shared``: ``tessera gateway --dev`` and one ``tessera provider --upstream``,
  both on core 1, the provider staked and priced (money path on), limits raised so the
  bench key is never answered 429;
- ``tessera-split``: the same processes with the agent moved to core 0 (the gateway on
  its own core).

Phases, non-streaming chat with ``max_tokens`` 4 unless said:

- closed loop with ``wrk`` (Debian's package, a Lua script for the body) at c = 1, 16, 64:
  req/s, p50/p99, errors, and the latency added over direct;
- open loop at 100, 500, 1,500 req/s from a generator in this file (``--worker``): requests
  leave on a fixed schedule whatever the answers do, latency counts from the scheduled
  time (no coordinated omission), anything not answered within ``--timeout`` is a timeout;
- 64, 128, 256 concurrent streams against the mock restarted with ``--chunk-delay-ms 20``:
  time to first token (first non-empty content) and gaps between SSE events, a gap over
  100 ms being a stall;
- the resident memory of every server process after each phase (from /proc).

Prints a table per phase with ratios to LiteLLM and to direct, and writes
bench/RESULTS.md (machine, versions, date, every figure, and issue 12's targets met or
missed by how much). Every process it starts is stopped on exit, Ctrl-C and errors
included. Run::

    .venv/bin/python bench/front_door.py [--quick] [--duration S] [--no-litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench"
LITELLM_VENV = CACHE / "litellm-venv"
LITELLM_SPEC = "litellm[proxy]"
MOCK_SCRIPT = REPO / "bench" / "mock_upstream.py"
RESULTS = REPO / "bench" / "RESULTS.md"
LOAD_CORE, SERVER_CORE = 0, 1
MODEL = "mock"
MESSAGES = [{"role": "user", "content": "Tell me a story about a fox."}]
MAX_TOKENS = 4
STALL_S = 0.100
CONCURRENCY = (1, 16, 64)
RATES = (100, 500, 1500)
STREAMS = (64, 128, 256)
ROWS = {
    "direct": "mock called directly",
    "litellm": "LiteLLM proxy, 1 worker on core 1",
    "tessera-shared": "Tessera: gateway and agent on core 1",
    "tessera-split": "Tessera: gateway on core 1, agent on core 0",
}
_CONTENT = re.compile(rb'"(?:content|text)"\s*:\s*"(?!")')


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
            if self.first is None and _CONTENT.search(line):
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


# ================================================================ processes


def _pinned_child(core: int) -> Callable[[], None]:
    """A preexec_fn: run on ``core`` and get SIGTERM when this process dies."""

    def setup() -> None:
        os.sched_setaffinity(0, {core})
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return setup


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(tree.get(current, []))
    return out


def pin(pid: int, core: int) -> None:
    """Move every thread of ``pid`` and of its children to ``core``."""
    for proc in process_tree(pid):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{proc}/task").iterdir():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(task.name), {core})


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its children, MiB."""
    total = 0
    for proc in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        for proc in process_tree(pid):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_quiet(pids: list[int], limit_s: float = 30.0, busy: float = 0.15) -> float:
    """Wait until ``pids`` use under ``busy`` of a core over half a second; the wait, s."""
    started = time.monotonic()
    if not pids:
        return 0.0
    before = cpu_seconds(pids)
    while time.monotonic() - started < limit_s:
        time.sleep(0.5)
        now = cpu_seconds(pids)
        if now - before < busy * 0.5:
            break
        before = now
    return time.monotonic() - started


def _busy_s() -> dict[int, float]:
    """CPU time each core has spent busy since boot, s."""
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            fields = [int(x) for x in values]
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
            guest = sum(fields[8:10])  # already counted in user and nice
            busy[int(name[3:])] = (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")
    return busy


def _own_s() -> float:
    """CPU time of this process and of its finished children (wrk, the generators), s:
    all of it on the load core."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + done.ru_utime + done.ru_stime


class OthersMeter:
    """How busy processes outside this run kept each of its two cores while a point was
    measured: the noise in a figure, on a machine other people use too. Every process of
    the run is pinned to one core, so the rest of a core's busy time is someone else's."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids

    def _ours(self) -> dict[int, float]:
        ours = {LOAD_CORE: _own_s(), SERVER_CORE: 0.0}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                core = min(os.sched_getaffinity(pid))
                ours[core] = ours.get(core, 0.0) + cpu_seconds([pid])
        return ours

    @contextlib.contextmanager
    def measuring(self, result: dict[str, Any]) -> Iterator[None]:
        """Sets ``result["others_pct"]``: {core: percent of that core}, over the block."""
        started, busy, ours = time.monotonic(), _busy_s(), self._ours()
        yield
        elapsed = time.monotonic() - started
        busy_now, ours_now = _busy_s(), self._ours()
        result["others_pct"] = {
            core: 100
            * max(0.0, busy_now[core] - busy[core] - ours_now[core] + ours[core])
            / elapsed
            for core in (LOAD_CORE, SERVER_CORE)
        }


def _others(result: dict[str, Any]) -> str:
    """Others' share of the load core / the servers' core, percent."""
    shares = result.get("others_pct")
    if not shares:
        return "n/a"
    return " / ".join(f"{shares[core]:.0f}" for core in (LOAD_CORE, SERVER_CORE))


@dataclass
class Started:
    """A process this run started (in its own session, so its whole group can be ended)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start_mock(port: int, log: Path, *options: str) -> Started:
    """The mock on ``port`` (0: a free one) on the load core, once it prints READY."""
    cmd = [sys.executable, str(MOCK_SCRIPT), "--port", str(port), "--model", MODEL, *options]
    with log.open("ab") as err:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_pinned_child(LOAD_CORE),
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline().decode()
            if line.startswith("READY "):
                return Started("mock", proc, int(line.split()[1]))
    Started("mock", proc, port).stop()
    raise RuntimeError(f"the mock did not start; see {log}")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer {url} in {timeout_s:.0f} s")


# ---------------------------------------------------------------- setup: wrk, LiteLLM


def _logged(cmd: list[str], log: Path, timeout_s: float, **kw: Any) -> bool:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        try:
            return (
                subprocess.run(cmd, stdout=out, stderr=out, timeout=timeout_s, **kw).returncode == 0
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            out.write(f"failed: {exc!r}\n".encode())
            return False


def ensure_wrk() -> str | None:
    """wrk's path, installing Debian's package when missing; None if that fails."""
    if found := shutil.which("wrk"):
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    log = CACHE / "wrk-install.log"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "wrk"]
    if not _logged(install, log, 300, env=env):
        _logged([*sudo, "apt-get", "update", "-q"], log, 300, env=env)
        _logged(install, log, 300, env=env)
    return shutil.which("wrk")


def ensure_litellm() -> tuple[Path | None, str]:
    """(the litellm command, its version), installing it in its own venv once; or
    (None, why not)."""
    exe, python = LITELLM_VENV / "bin" / "litellm", LITELLM_VENV / "bin" / "python"
    stamp, log = LITELLM_VENV / ".bench-installed", CACHE / "litellm-install.log"
    if not (exe.exists() and stamp.exists() and stamp.read_text() == LITELLM_SPEC):
        base = Path(sys.base_prefix) / "bin" / "python3"
        if not python.exists() and not _logged(
            [str(base), "-m", "venv", str(LITELLM_VENV)], log, 300
        ):
            return None, f"could not create {LITELLM_VENV} (see {log})"
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        if not _logged([*pip, LITELLM_SPEC], log, 1200):
            return None, f"pip install {LITELLM_SPEC} failed (see {log})"
        stamp.write_text(LITELLM_SPEC)
    probe = "import importlib.metadata as m; print(m.version('litellm'))"
    got = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    if got.returncode != 0 or not exe.exists():
        return None, f"litellm is not importable from {LITELLM_VENV}: {got.stderr[-300:]}"
    return exe, got.stdout.strip()


def start_litellm(exe: Path, mock_port: int, workdir: Path) -> tuple[Started, str]:
    """The proxy on core 1 with the mock as model ``mock``; returns it and its master key."""
    from tessera.demo import free_port

    master = "sk-bench-" + os.urandom(16).hex()
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{mock_port}/v1\n"
        "      api_key: unused\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  turn_off_message_logging: true\n"
        "  drop_params: true\n"
        "  num_retries: 0\n"
        "  request_timeout: 60\n"
        "general_settings:\n"
        f"  master_key: {master}\n"
        "  disable_spend_logs: true\n"
        "  disable_error_logs: true\n"
        "  background_health_checks: false\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "LITELLM_MASTER_KEY")
    }
    env |= {
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "DISABLE_ADMIN_UI": "True",
    }
    port = free_port()
    cmd = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--num_workers", "1"]
    with (workdir / "litellm.log").open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=env,
            start_new_session=True,
            preexec_fn=_pinned_child(SERVER_CORE),
        )
    started = Started("litellm", proc, port)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc, 180, "LiteLLM")
    except BaseException:
        started.stop()
        raise
    return started, master


# ---------------------------------------------------------------- Tessera


@dataclass
class Tessera:
    network: Any  # tessera.demo.Network
    port: int
    key: str
    gateway_pid: int
    agent_pid: int


def start_tessera(mock_port: int, data_dir: Path) -> Tessera:
    """A dev gateway and one staked, priced provider whose upstream is the mock; the bench
    key is funded and its and its account's limits raised far above what the bench sends."""
    from tessera.demo import Network, free_port, wait_for_network
    from tessera.dev_money import fund_account, stake_provider

    from support.live_network import create_key

    high = "100000000"
    os.environ.update(
        {
            "TESSERA_GATEWAY_ACCOUNT_REQUESTS_PER_MINUTE": high,
            "TESSERA_GATEWAY_ACCOUNT_MAX_CONCURRENT_REQUESTS": "100000",
            "TESSERA_GATEWAY_KEY_REQUESTS_PER_MINUTE": high,
            "TESSERA_GATEWAY_KEY_MAX_CONCURRENT_REQUESTS": "100000",
        }
    )
    network = Network(data_dir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        gateway = network.spawn(
            "gateway", ["gateway", "--port", str(port), "--data-dir", str(data_dir), "--dev"]
        )
        pin(gateway.pid, SERVER_CORE)
        key = create_key(
            data_dir, "--rpm", high, "--tpm", "1000000000000", "--max-concurrency", "100000"
        )
        wait_for_network(base, 0, network, timeout_s=60)
        fund_account(base, key, units=1_000 * 10**9)
        key_file = data_dir / "provider.key"
        stake_provider(base, key_file)
        agent = network.spawn(
            "provider",
            [
                "provider", "--gateway", base,
                "--upstream", f"http://127.0.0.1:{mock_port}/v1",
                "--upstream-model", MODEL, "--served-name", MODEL,
                "--weights-sha256", "be" * 32,
                "--key-file", str(key_file),
                "--price-in", "100", "--price-out", "300",
                "--max-concurrent-jobs", "1024",
                "--label", "front-door-bench",
            ],
        )  # fmt: skip
        pin(agent.pid, SERVER_CORE)
        wait_for_network(base, 1, network, timeout_s=120)
    except BaseException:
        network.stop()
        raise
    return Tessera(network, port, key, gateway.pid, agent.pid)


# ================================================================ measuring


@dataclass
class Target:
    name: str
    port: int
    key: str | None
    pids: list[int]  # server processes to wait on after overload


@dataclass
class Results:
    closed: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    open: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    streams: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    memory: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _lua(name: str, key: str | None, directory: Path) -> Path:
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS})
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    script = directory / f"post-{name}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{body}]]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"{auth}"
        "done = function(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        '  io.write(string.format("WRKJSON {\\"requests\\":%.0f,\\"duration_us\\":%.0f,'
        '\\"connect\\":%.0f,\\"read\\":%.0f,\\"write\\":%.0f,\\"status\\":%.0f,'
        '\\"timeout\\":%.0f,\\"p50_us\\":%.1f,\\"p99_us\\":%.1f}\\n",\n'
        "    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,\n"
        "    e.timeout, latency:percentile(50), latency:percentile(99)))\n"
        "end\n"
    )
    return script


class Bench:
    """Runs one measured point at a time against a target, each in a process on core 0."""

    def __init__(
        self,
        args: argparse.Namespace,
        workdir: Path,
        wrk: str | None,
        results: Results,
        meter: OthersMeter,
    ) -> None:
        self.args = args
        self.workdir = workdir
        self.wrk = wrk
        self.results = results
        self.meter = meter

    def _worker(self, spec: dict[str, Any], limit_s: float) -> dict[str, Any]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
        got = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=limit_s,
            preexec_fn=_pinned_child(LOAD_CORE),
        )
        for line in got.stdout.splitlines():
            if line.startswith("RESULT "):
                return cast(dict[str, Any], json.loads(line[7:]))
        raise RuntimeError(f"load generator failed ({got.returncode}): {got.stderr[-2000:]}")

    def _spec(self, target: Target, mode: str, **kw: Any) -> dict[str, Any]:
        return {
            "mode": mode,
            "host": "127.0.0.1",
            "port": target.port,
            "path": "/v1/chat/completions",
            "key": target.key,
            "timeout": self.args.timeout,
            **kw,
        }

    def closed(self, target: Target, concurrency: int, duration: int) -> dict[str, Any]:
        noise: dict[str, Any] = {}
        with self.meter.measuring(noise):
            result = self._closed(target, concurrency, duration)
        return result | noise

    def _closed(self, target: Target, concurrency: int, duration: int) -> dict[str, Any]:
        if self.wrk is None:
            spec = self._spec(target, "closed", concurrency=concurrency, duration=duration)
            return self._worker(spec, duration + 120)
        url = f"http://127.0.0.1:{target.port}/v1/chat/completions"
        cmd = [
            self.wrk,
            "-t1",
            f"-c{concurrency}",
            f"-d{duration}s",
            "--timeout",
            f"{int(self.args.timeout)}s",
        ]
        cmd += ["-s", str(_lua(target.name, target.key, self.workdir)), url]
        got = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=duration + 120,
            preexec_fn=_pinned_child(LOAD_CORE),
        )
        line = next((x for x in got.stdout.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(
                f"wrk failed ({got.returncode}): {got.stdout[-1000:]} {got.stderr[-1000:]}"
            )
        w = json.loads(line[8:])
        errors = int(w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"])
        ok = max(0, int(w["requests"]) - int(w["status"]))
        return {
            "requests": int(w["requests"]),
            "rps": ok / (w["duration_us"] / 1e6),
            "p50_ms": w["p50_us"] / 1000,
            "p99_ms": w["p99_us"] / 1000,
            "errors": errors,
        }

    def open(self, target: Target, rate: int, duration: int) -> dict[str, Any]:
        spec = self._spec(
            target, "open", rate=rate, duration=duration, max_conns=self.args.max_conns
        )
        noise: dict[str, Any] = {}
        with self.meter.measuring(noise):
            result = self._worker(spec, duration + self.args.timeout + 120)
        # How long the server kept working on what the load left behind.
        result["drain_s"] = wait_quiet(target.pids, limit_s=self.args.drain_limit)
        return result | noise

    def streams(self, target: Target, count: int, duration: int) -> dict[str, Any]:
        spec = self._spec(
            target, "streams", streams=count, duration=duration, max_tokens=self.args.stream_tokens
        )
        spec["timeout"] = max(self.args.timeout, 30.0)
        noise: dict[str, Any] = {}
        with self.meter.measuring(noise):
            result = self._worker(spec, duration + spec["timeout"] + 120)
        if result.get("failures"):
            print(f"{count} streams: failed {result['failures']}", file=sys.stderr, flush=True)
        wait_quiet(target.pids, limit_s=self.args.drain_limit)
        return result | noise


# ================================================================ report


def _f(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "n/a"
    x = a / b
    return f"{x:,.0f}×" if x >= 100 else f"{x:.1f}×" if x >= 10 else f"{x:.2g}×"


def _added(a: float | None, b: float | None) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return "n/a"
    return f"{a - b:+,.2f}"


def tables(results: Results, rows: list[str]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every table as (title, columns, rows of cells): rendered by rich and as Markdown."""
    out = []
    closed_rows = []
    for row in rows:
        for c, r in results.closed.get(row, {}).items():
            direct = results.closed.get("direct", {}).get(c)
            lite = results.closed.get("litellm", {}).get(c)
            closed_rows.append(
                [
                    row, str(c), _f(r["rps"], 0), _f(r["p50_ms"], 2), _f(r["p99_ms"], 2),
                    str(r["errors"]),
                    _added(r["p50_ms"], direct and direct["p50_ms"]),
                    _added(r["p99_ms"], direct and direct["p99_ms"]),
                    _ratio(r["rps"], lite and lite["rps"]),
                    _ratio(r["rps"], direct and direct["rps"]),
                    _others(r),
                ]
            )  # fmt: skip
    out.append(
        (
            f"Closed loop (wrk), non-streaming chat, max_tokens {MAX_TOKENS}",
            ["path", "c", "req/s", "p50 ms", "p99 ms", "errors", "added p50 ms", "added p99 ms",
             "req/s vs LiteLLM", "req/s vs direct", "others' CPU % (core 0 / 1)"],
            closed_rows,
        )
    )  # fmt: skip
    open_rows = []
    for row in rows:
        for rate, r in results.open.get(row, {}).items():
            direct = results.open.get("direct", {}).get(rate)
            lite = results.open.get("litellm", {}).get(rate)
            open_rows.append(
                [
                    row, str(rate), _f(r["achieved"], 0), _f(r["p50_ms"], 2), _f(r["p99_ms"], 2),
                    str(r["errors"]), str(r["timeouts"]),
                    _added(r["p50_ms"], direct and direct["p50_ms"]),
                    _added(r["p99_all_ms"], direct and direct["p99_all_ms"]),
                    _ratio(r["achieved"], lite and lite["achieved"]),
                    _ratio(r["achieved"], direct and direct["achieved"]),
                    _f(r["lag_p99_ms"], 2), _f(r["drain_s"], 1),
                    _others(r),
                ]
            )  # fmt: skip
    out.append(
        (
            "Open loop: fixed send schedule, latency from the scheduled time",
            ["path", "rate/s", "achieved/s", "p50 ms", "p99 ms", "errors", "timeouts",
             "added p50 ms", "added p99 ms (failures ∞)", "achieved vs LiteLLM",
             "achieved vs direct", "send lag p99 ms", "drain s", "others' CPU % (core 0 / 1)"],
            open_rows,
        )
    )  # fmt: skip
    stream_rows = []
    for row in rows:
        for n, r in results.streams.get(row, {}).items():
            direct = results.streams.get("direct", {}).get(n)
            lite = results.streams.get("litellm", {}).get(n)
            stream_rows.append(
                [
                    row, str(n), str(r["completed"]), str(r["errors"]),
                    _f(r["ttft_p50_ms"], 2), _f(r["ttft_p99_ms"], 2),
                    _added(r["ttft_p50_ms"], direct and direct["ttft_p50_ms"]),
                    _added(r["ttft_p99_ms"], direct and direct["ttft_p99_ms"]),
                    _ratio(r["completed"], lite and lite["completed"]),
                    _ratio(r["completed"], direct and direct["completed"]),
                    _f(r["gap_p99_ms"], 1), _f(r["max_gap_ms"], 0),
                    str(r["stalls"]), str(r["stalled_streams"]),
                    _others(r),
                ]
            )  # fmt: skip
    out.append(
        (
            "Concurrent streams, 20 ms between upstream chunks",
            ["path", "streams", "completed", "errors", "TTFT p50 ms", "TTFT p99 ms",
             "added TTFT p50", "added TTFT p99", "completed vs LiteLLM",
             "completed vs direct", "gap p99 ms", "max gap ms", "stalls >100 ms",
             "streams stalled", "others' CPU % (core 0 / 1)"],
            stream_rows,
        )
    )  # fmt: skip
    names = sorted({name for _, rss in results.memory for name in rss})
    out.append(
        (
            "Resident memory after each phase, MiB",
            ["after", *names],
            [[phase, *(_f(rss.get(n), 0) for n in names)] for phase, rss in results.memory],
        )
    )
    return out


def _best(points: dict[int, dict[str, Any]], clean: bool = False) -> tuple[float, int, int]:
    """(best req/s, its concurrency, its errors) over a row's closed-loop points; with
    ``clean``, points without errors first."""
    if not points:
        return math.nan, 0, 0
    candidates = [(c, r) for c, r in points.items() if not clean or r["errors"] == 0] or list(
        points.items()
    )
    c, r = max(candidates, key=lambda cr: cr[1]["rps"])
    return r["rps"], c, r["errors"]


def targets(results: Results) -> list[list[str]]:
    """Issue 12's targets: [target, figure, verdict, margin]."""
    out: list[list[str]] = []

    def at_least(
        name: str, figure: float, goal: float, unit: str, detail: str = "", ok: bool = True
    ) -> None:
        if math.isnan(figure):
            out.append([name, "not measured", "—", ""])
            return
        met = figure >= goal and ok
        margin = f"{figure - goal:+,.0f} {unit} ({figure / goal:.1%} of the target)" if goal else ""
        out.append([name, f"{figure:,.1f} {unit}{detail}", "met" if met else "MISSED", margin])

    def at_most(name: str, figure: float, goal: float, unit: str, detail: str = "") -> None:
        if math.isnan(figure):
            out.append([name, "not measured", "—", ""])
            return
        met = figure <= goal
        margin = f"{figure - goal:+,.2f} {unit} ({figure / goal:.1f}× the limit)" if goal else ""
        out.append([name, f"{_f(figure, 2)} {unit}{detail}", "met" if met else "MISSED", margin])

    split = results.closed.get("tessera-split", {})
    shared = results.closed.get("tessera-shared", {})
    direct = results.closed.get("direct", {})
    rps, c, errors = _best(split, clean=True)
    at_least(
        "gateway on its own core: ≥ 2,000 req/s with no errors",
        rps, 2000, "req/s", f" at c={c}, {errors} errors", ok=errors == 0,
    )  # fmt: skip
    lite_rps = _best(results.closed.get("litellm", {}))[0]
    ratio = rps / lite_rps if lite_rps else math.nan
    at_least(
        "gateway on its own core: ≥ 20× LiteLLM",
        ratio,
        20,
        "×",
        f" ({rps:,.0f} vs {lite_rps:,.0f} req/s)",
    )
    at_least(
        "gateway and agent sharing a core: ≥ 1,000 req/s",
        _best(shared)[0],
        1000,
        "req/s",
        f" at c={_best(shared)[1]}",
    )
    for label, points in (
        ("gateway on its own core", split),
        ("gateway and agent on one core", shared),
    ):
        one, base = points.get(1), direct.get(1)
        p50 = one["p50_ms"] - base["p50_ms"] if one and base else math.nan
        p99 = one["p99_ms"] - base["p99_ms"] if one and base else math.nan
        at_most(f"added latency at c=1, {label}: p50 ≤ 1 ms", p50, 1.0, "ms")
        at_most(f"added latency at c=1, {label}: p99 ≤ 2 ms", p99, 2.0, "ms")
    open_split, open_direct = results.open.get("tessera-split", {}), results.open.get("direct", {})
    got, base = open_split.get(500), open_direct.get(500)
    added = got["p99_all_ms"] - base["p99_all_ms"] if got and base else math.nan
    detail = (
        f" ({got['achieved']:,.0f} req/s achieved, {got['errors']} errors, {got['timeouts']} timeouts)"
        if got
        else ""
    )
    at_most(
        "open loop 500 req/s, gateway on its own core: added p99 ≤ 5 ms", added, 5.0, "ms", detail
    )
    got = open_split.get(1500)
    if got:
        failures = got["errors"] + got["timeouts"]
        out.append(
            [
                "open loop 1,500 req/s, gateway on its own core: no errors",
                f"{got['errors']} errors, {got['timeouts']} timeouts of {got['sent']:,} "
                f"({got['achieved']:,.0f} req/s achieved)",
                "met" if failures == 0 else "MISSED",
                f"{failures / got['sent']:.1%} of requests failed" if failures else "",
            ]
        )
    else:
        out.append(
            ["open loop 1,500 req/s, gateway on its own core: no errors", "not measured", "—", ""]
        )
    st, base = (
        results.streams.get("tessera-split", {}).get(256),
        results.streams.get("direct", {}).get(256),
    )
    if st:
        out.append(
            [
                "256 streams, gateway on its own core: no stall > 100 ms",
                f"{st['stalls']} stalls in {st['stalled_streams']} of {st['completed']} streams "
                f"(max gap {_f(st['max_gap_ms'], 0)} ms, {st['errors']} errors)",
                "met" if st["stalls"] == 0 and st["errors"] == 0 else "MISSED",
                f"{st['stalled_streams'] / max(1, st['completed']):.1%} of streams stalled"
                if st["stalls"]
                else "",
            ]
        )
    added = st["ttft_p99_ms"] - base["ttft_p99_ms"] if st and base else math.nan
    at_most("256 streams, gateway on its own core: added TTFT p99 ≤ 5 ms", added, 5.0, "ms")
    return out


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "kernel": platform.release(),
        "load average at the start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def versions(litellm_version: str, wrk: str | None) -> dict[str, str]:
    def out(cmd: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            got = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO)
            return (
                (got.stdout or got.stderr).strip().splitlines()[0]
                if (got.stdout or got.stderr)
                else ""
            )
        return ""

    import uvloop

    return {
        "python": platform.python_version(),
        "tessera (git)": out(["git", "describe", "--always", "--dirty", "--abbrev=12"]),
        "litellm": litellm_version,
        "load generator": (out([wrk, "-v"]) if wrk else "") or "the Python closed loop (no wrk)",
        "uvloop": uvloop.__version__,
    }


def markdown(
    results: Results,
    rows: list[str],
    info: dict[str, dict[str, str]],
    args: argparse.Namespace,
) -> str:
    def table(columns: list[str], cells: list[list[str]]) -> str:
        lines = [
            "| " + " | ".join(columns) + " |",
            "| " + " | ".join("---" for _ in columns) + " |",
        ]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines)

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Front door, side by side",
        "",
        f"Written by `bench/front_door.py` on {now} "
        f"(`{' '.join(['bench/front_door.py', *sys.argv[1:]])}`). Regenerate with `make bench` or "
        "`.venv/bin/python bench/front_door.py`.",
        "",
        "Layout: the mock upstream (bench/mock_upstream.py) and every load generator on core 0, "
        "the servers on core 1 (the `tessera-split` row moves the provider agent to core 0). "
        f"Non-streaming chat with max_tokens {MAX_TOKENS}; {args.duration} s per point; "
        f"streams of {args.stream_tokens} tokens with 20 ms between upstream chunks. The "
        "Tessera rows run with money on: a funded key, a staked provider priced at 100/300 base "
        "units per million tokens, hold and capture, receipts, request log.",
        "",
    ]
    parts += ["Rows:", ""] + [f"- `{row}`: {ROWS[row]}" for row in rows] + [""]
    for title, values in info.items():
        parts += [f"## {title}", ""] + [f"- {k}: {v}" for k, v in values.items()] + [""]
    parts += [
        "## Targets (issue 12)",
        "",
        table(["target", "figure", "verdict", "margin"], targets(results)),
        "",
    ]
    for title, columns, cells in tables(results, rows):
        parts += [f"## {title}", "", table(columns, cells), ""]
    parts += [
        "## How to read it",
        "",
        "- Closed loop: wrk on core 0, one thread, c connections; req/s counts 2xx answers; "
        "errors are socket errors, timeouts and non-2xx answers. Added latency is the row's "
        "percentile minus direct's at the same c.",
        "- Open loop: a generator in bench/front_door.py (`--worker`) sends on a fixed "
        "schedule over a pool of keep-alive connections (at most "
        f"{args.max_conns}); latency counts from the scheduled send time, so a server that "
        f"falls behind is charged for the queue. Unanswered after {args.timeout:.0f} s is a "
        "timeout. p50/p99 are over 2xx answers; the added p99 counts failures as infinite. "
        "Send lag is how late the generator itself sent (its own health); drain is how long "
        "the server stayed busy after the load stopped, on what the load left behind.",
        "- Streams: each of N connections streams one answer after another; time to first "
        "token is the first SSE event with non-empty content; a stall is a gap over 100 ms "
        "between two SSE events of one stream.",
        "- Memory: VmRSS of each server process (with its children) after each phase.",
        "- Others' CPU: how busy processes outside this run kept core 0 (load) and core 1 "
        "(servers) while a point was measured, in percent of that core (/proc/stat less this "
        "run's own processes, each pinned to one core). A point with a high share on a core "
        "it needed was disturbed and is worth measuring again.",
    ]
    if args.nice:
        parts.append(f"- Every process of this run ran at niceness {args.nice} (`--nice`).")
    notes = [*results.notes, *disturbed(results)]
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


DISTURBED_PCT = 25.0


def disturbed(results: Results) -> list[str]:
    """A note naming the points during which other processes took over DISTURBED_PCT of a
    core the point used (direct: the load core only; the proxies: both)."""
    points = []
    for phase, unit, by_row in (
        ("closed loop c=", "", results.closed),
        ("open loop ", "/s", results.open),
        ("streams ", "", results.streams),
    ):
        for row, figures in by_row.items():
            for x, r in figures.items():
                shares = r.get("others_pct") or {}
                used = (LOAD_CORE,) if row == "direct" else (LOAD_CORE, SERVER_CORE)
                if max((shares.get(c, 0.0) for c in used), default=0.0) > DISTURBED_PCT:
                    points.append(f"{row} {phase}{x}{unit} ({_others(r)})")
    if not points:
        return []
    return [
        f"Other processes took more than {DISTURBED_PCT:.0f} % of core 0 or core 1 during "
        f"{len(points)} points, whose figures are likely understated (measure again on a quiet machine): "
        + "; ".join(points)
        + "."
    ]


# ================================================================ main


def fresh_workdir(base: Path) -> Path:
    """This run's own directory under ``base`` (logs, configs, the gateway's data), so two
    runs at once never delete each other's files; those of runs no longer alive go, the
    last one's logs stay until the next run."""
    base.mkdir(parents=True, exist_ok=True)
    for old in base.iterdir():
        pid = old.name.removeprefix("run-")
        if old.name.startswith("run-") and pid.isdigit() and _alive(int(pid)):
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    workdir = base / f"run-{os.getpid()}"
    workdir.mkdir()
    return workdir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per point (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 s per point, for a smoke run")
    parser.add_argument("--timeout", type=float, default=5.0, help="open-loop request timeout, s")
    parser.add_argument("--max-conns", type=int, default=256, help="open-loop connection cap")
    parser.add_argument(
        "--drain-limit", type=float, default=60.0, help="longest wait for a server to go idle, s"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run everything at this niceness (negative needs root): on a machine others "
        "use, their processes then disturb the figures less",
    )
    parser.add_argument("--stream-tokens", type=int, default=16, help="tokens per streamed answer")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM row")
    parser.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.duration = min(args.duration, 2)
    args.duration = max(1, args.duration)
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@dataclass
class Servers:
    """Everything measured; ``stop`` ends every process this run started (idempotent)."""

    mock: Started
    tessera: Tessera | None = None
    litellm: Started | None = None
    litellm_key: str = ""

    def pids(self) -> dict[str, int]:
        pids = {"mock": self.mock.proc.pid}
        if self.litellm:
            pids["litellm"] = self.litellm.proc.pid
        if self.tessera:
            pids |= {"gateway": self.tessera.gateway_pid, "agent": self.tessera.agent_pid}
        return pids

    def targets(self) -> dict[str, Target]:
        out = {"direct": Target("direct", self.mock.port, None, [])}
        if self.litellm:
            pid = self.litellm.proc.pid
            out["litellm"] = Target("litellm", self.litellm.port, self.litellm_key, [pid])
        if self.tessera:
            t = self.tessera
            for row in ("tessera-shared", "tessera-split"):
                out[row] = Target(row, t.port, t.key, [t.gateway_pid, t.agent_pid])
        return out

    def layout(self, row: str) -> None:
        """Pin the Tessera processes as ``row`` wants them; fail if one has died."""
        if self.tessera is None or not row.startswith("tessera"):
            return
        if dead := self.tessera.network.dead():
            logs = self.tessera.network.data_dir / "logs"
            raise RuntimeError(f"{', '.join(dead)} exited; see {logs}")
        pin(self.tessera.gateway_pid, SERVER_CORE)
        pin(self.tessera.agent_pid, LOAD_CORE if row == "tessera-split" else SERVER_CORE)

    def stop(self) -> None:
        for stop in (
            self.tessera.network.stop if self.tessera else None,
            self.litellm.stop if self.litellm else None,
            self.mock.stop,
        ):
            if stop is not None:
                with contextlib.suppress(Exception):
                    stop()


def start_servers(
    console: Any, workdir: Path, litellm_exe: Path | None, results: Results
) -> Servers:
    """The mock, LiteLLM's proxy (when installed) and Tessera; stops what started if any
    of them fails."""
    servers = Servers(start_mock(0, workdir / "mock.log", "--tokens", str(MAX_TOKENS)))
    try:
        console.print(f"mock upstream on port {servers.mock.port} (core {LOAD_CORE})")
        if litellm_exe:
            try:
                with console.status("starting LiteLLM's proxy…"):
                    servers.litellm, servers.litellm_key = start_litellm(
                        litellm_exe, servers.mock.port, workdir
                    )
            except RuntimeError as exc:
                why = f"LiteLLM did not start ({exc}); see {workdir / 'litellm.log'}"
                results.notes.append(why)
                console.print(f"[yellow]{why}; its row is skipped[/]")
            else:
                console.print(f"LiteLLM proxy on port {servers.litellm.port} (core {SERVER_CORE})")
        (workdir / "tessera").mkdir()
        servers.tessera = start_tessera(servers.mock.port, workdir / "tessera")
        console.print(
            f"Tessera gateway on port {servers.tessera.port} with one provider agent "
            f"(core {SERVER_CORE})"
        )
    except BaseException:
        servers.stop()
        raise
    return servers


def measure(bench: Bench, servers: Servers, rows: list[str], console: Any, workdir: Path) -> None:
    """Every phase for every row, with a progress bar; fills ``bench.results``."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    results, args, targets_by_row = bench.results, bench.args, servers.targets()

    def memory(label: str) -> None:
        rss = {name: rss_mib(pid) for name, pid in servers.pids().items()}
        results.memory.append((label, rss))

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    points = len(rows) * (len(CONCURRENCY) + len(RATES) + len(STREAMS))
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("measuring…", total=points)

        def step(description: str) -> None:
            progress.update(task, description=description)

        for row in rows:
            target = targets_by_row[row]
            servers.layout(row)
            step(f"{row}: warming up…")
            bench.closed(target, 16, 1)
            wait_quiet(target.pids)
            for c in CONCURRENCY:
                step(f"{row}: closed loop c={c}…")
                results.closed.setdefault(row, {})[c] = bench.closed(target, c, args.duration)
                wait_quiet(target.pids)
                progress.advance(task)
            memory(f"{row}: closed loop")
            for rate in RATES:
                step(f"{row}: open loop {rate}/s…")
                results.open.setdefault(row, {})[rate] = bench.open(target, rate, args.duration)
                progress.advance(task)
            memory(f"{row}: open loop")
        step("restarting the mock with 20 ms between chunks…")
        port = servers.mock.port
        servers.mock.stop()
        delayed = ("--tokens", str(args.stream_tokens), "--chunk-delay-ms", "20")
        servers.mock = start_mock(port, workdir / "mock.log", *delayed)
        for row in rows:
            target = targets_by_row[row]
            servers.layout(row)
            step(f"{row}: warming up streams…")
            bench.streams(target, 8, 1)
            for n in STREAMS:
                step(f"{row}: {n} concurrent streams…")
                results.streams.setdefault(row, {})[n] = bench.streams(target, n, args.duration)
                progress.advance(task)
            memory(f"{row}: streams")


def report(console: Any, results: Results, rows: list[str]) -> None:
    from rich.table import Table

    console.print("rows: " + "; ".join(f"[bold]{row}[/]: {ROWS[row]}" for row in rows))
    for title, columns, cells in tables(results, rows):
        table = Table(title=title)
        for column in columns:
            left = column in ("path", "after")
            table.add_column(column, justify="left" if left else "right", no_wrap=left)
        for cells_row in cells:
            table.add_row(*cells_row)
        console.print(table)
    verdicts = Table(title="Issue 12 targets")
    for column in ("target", "figure", "verdict", "margin"):
        verdicts.add_column(column)
    for target_row in targets(results):
        style = {"met": "green", "MISSED": "red"}.get(target_row[2], "")
        verdicts.add_row(*target_row, style=style)
    console.print(verdicts)


def main() -> int:
    args = parse_args()
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 200)
    if (os.cpu_count() or 1) < 2:
        console.print("[red]needs two cores (the load on core 0, the servers on core 1)[/]")
        return 2
    os.sched_setaffinity(0, {LOAD_CORE})
    # Measure the tree this file lives in, also in the processes it starts.
    sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]
    paths = [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    workdir = fresh_workdir(CACHE / "front-door")
    info = {"Machine": machine()}
    results = Results()
    with console.status("checking wrk and LiteLLM (installed once into .cache/bench)…"):
        wrk = ensure_wrk()
        litellm_exe, litellm_version = (
            (None, "skipped (--no-litellm)") if args.no_litellm else ensure_litellm()
        )
    if wrk is None:
        results.notes.append(
            "wrk could not be installed: the closed loop used this file's generator."
        )
        console.print(
            "[yellow]wrk could not be installed; the closed loop uses this file's generator[/]"
        )
    if litellm_exe is None:
        results.notes.append(f"LiteLLM row not run: {litellm_version}")
        console.print(f"[yellow]LiteLLM row not run: {litellm_version}[/]")
    info["Versions"] = versions(litellm_version if litellm_exe else "not run", wrk)
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by everything started
    bench = Bench(args, workdir, wrk, results, OthersMeter(lambda: []))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    servers = None
    try:
        servers = start_servers(console, workdir, litellm_exe, results)
        bench.meter.pids = lambda: list(servers.pids().values()) if servers else []
        rows = [row for row in ROWS if row in servers.targets()]
        measure(bench, servers, rows, console, workdir)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: nothing written[/]")
        return 130
    finally:
        if servers is not None:
            with console.status("stopping every process…"):
                servers.stop()
        signal.signal(signal.SIGTERM, previous)
    info["Machine"]["load average at the end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report(console, results, rows)
    if not args.no_results:
        RESULTS.write_text(markdown(results, rows, info, args))
        console.print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
