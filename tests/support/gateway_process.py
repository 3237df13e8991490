"""One real `tessera gateway` process with no providers, for tests that talk to it over raw
sockets: its settings come from ``TESSERA_GATEWAY_*`` environment variables, as an
operator's would."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tessera.demo import Network, free_port, wait_for_network


@dataclass
class GatewayProcess:
    port: int
    network: Network
    data_dir: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/providers/connect"

    @property
    def pid(self) -> int:
        return self.network.processes[0][1].pid

    def rss_bytes(self) -> int:
        """The gateway process's resident memory, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line in /proc status")

    def connect(self, timeout_s: float = 10.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def log(self) -> str:
        return (self.network.data_dir / "logs" / "gateway.log").read_text(errors="replace")


@contextmanager
def gateway_process(
    root: Path,
    settings: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    data_dir: Path | None = None,
) -> Iterator[GatewayProcess]:
    """A dev gateway on a free port; ``settings`` maps GatewaySettings fields to values.

    Its log goes to ``root/logs/gateway.log``; its state to ``data_dir`` (default ``root``).
    """
    port = free_port()
    network = Network(root)
    state = data_dir or root
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (settings or {}).items():
            patch.setenv(f"TESSERA_GATEWAY_{name.upper()}", value)
        network.spawn(
            "gateway",
            ["gateway", "--port", str(port), "--data-dir", str(state), "--dev", *args],
        )
    try:
        wait_for_network(f"http://127.0.0.1:{port}", 0, network, timeout_s=60)
        yield GatewayProcess(port, network, state)
    finally:
        network.stop()


def read_until_closed(sock: socket.socket, deadline_s: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``deadline_s`` passes (False)."""
    received = b""
    end = time.monotonic() + deadline_s
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return received, False
        except ConnectionResetError:
            return received, True
        if not data:
            return received, True
        received += data
    return received, False


def status_of(response: bytes) -> int | None:
    """The status code of the first response in ``response``, if one arrived."""
    if not response.startswith(b"HTTP/1.1 "):
        return None
    return int(response[9:12])
