"""A private nats-server for a test (Debian's package, installed when missing), on a free
port with JetStream in a temporary directory; stopped, and restartable, by process id."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tessera.demo import free_port


def ensure_nats_server() -> str:
    """nats-server's path, installing Debian's package when missing; RuntimeError if not."""
    for found in (shutil.which("nats-server"), "/usr/sbin/nats-server"):
        if found and Path(found).exists():
            return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "nats-server"]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True, timeout=600)
    if Path("/usr/sbin/nats-server").exists():
        return "/usr/sbin/nats-server"
    raise RuntimeError(
        "nats-server is missing and could not be installed: apt-get install nats-server"
    )


@dataclass
class NatsServer:
    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        exe = ensure_nats_server()
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
