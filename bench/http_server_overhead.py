"""What the gateway's HTTP limits (gateway/http_server.py) cost a request, against stock uvicorn.

Baseline: the gateway app served by uvicorn's own httptools protocol. Limited: the same app
served by the gateway's protocol, with its head, body, keep-alive and connection limits.
Each runs in its own process; a client in this process sends ``GET /health`` in blocks
that alternate between the two, over one kept-alive connection and over a new connection
per request, so machine noise hits both alike. Run::

    PYTHONPATH=src python bench/http_server_overhead.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src")]

from tessera.demo import free_port  # noqa: E402

REQUEST = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"


def serve(kind: str, port: int, data_dir: str) -> None:
    import uvicorn

    from tessera.config import GatewaySettings
    from tessera.gateway.app import create_app
    from tessera.gateway.http_server import server_config

    settings = GatewaySettings(port=port, data_dir=Path(data_dir))
    config = server_config(create_app(settings), settings)
    if kind == "stock":
        config.http = "httptools"
    uvicorn.Server(config).run()


def read_response(sock: socket.socket) -> None:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(rest) < length:
        rest += sock.recv(65536)


def kept_alive(port: int, requests: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        for _ in range(requests):
            sock.sendall(REQUEST)
            read_response(sock)
        return requests / (time.perf_counter() - started)


def fresh(port: int, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(REQUEST)
            read_response(sock)
    return requests / (time.perf_counter() - started)


def wait_up(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            kept_alive(port, 1)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no server on port {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=500, help="requests per block")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--serve", choices=["stock", "limited"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.data_dir)
        return
    ports = {"stock": free_port(), "limited": free_port()}
    with tempfile.TemporaryDirectory() as root:
        servers = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--serve",
                    kind,
                    "--port",
                    str(port),
                    "--data-dir",
                    f"{root}/{kind}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for kind, port in ports.items()
        ]
        try:
            for port in ports.values():
                wait_up(port)
                kept_alive(port, 200)  # warm up
            rates: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for kind, port in ports.items():
                    rates.setdefault((kind, "kept-alive"), []).append(
                        kept_alive(port, args.requests)
                    )
                    rates.setdefault((kind, "new connection"), []).append(
                        fresh(port, args.requests // 4)
                    )
        finally:
            for server in servers:
                server.terminate()
                server.wait(10)
    print(f"GET /health, {args.rounds} alternating rounds; median requests per second")
    print(f"{'connection':<16}{'stock':>10}{'limited':>10}{'ratio':>8}")
    for mode in ("kept-alive", "new connection"):
        stock = statistics.median(rates[("stock", mode)])
        limited = statistics.median(rates[("limited", mode)])
        print(f"{mode:<16}{stock:>10.0f}{limited:>10.0f}{limited / stock:>8.3f}")


if __name__ == "__main__":
    main()
