"""A private nats-server for a test (Debian's package, installed when missing), on a free
port with JetStream in a temporary directory; stopped, and restartable, by process id."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tessera.demo import free_port

from support.debian import ensure_program


@dataclass
class NatsServer:
    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        exe = ensure_program("nats-server", "nats-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [exe, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.directory)]
        with (self.directory / "nats.log").open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: see {self.directory / 'nats.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not listen within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
