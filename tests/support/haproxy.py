"""HAProxy for the tests, as operators run it: Debian's package, deploy/haproxy.cfg with
this test's ports, in the foreground, stopped by its process id."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx

from support.debian import ensure_program

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"


def render_config(port: int, gateway_ports: list[int]) -> str:
    """deploy/haproxy.cfg listening on ``port``, with one server line per gateway port."""
    text = CONFIG.read_text()
    text = re.sub(r"bind 127\.0\.0\.1:\d+", f"bind 127.0.0.1:{port}", text)
    servers = "".join(
        f"    server gateway-{i} 127.0.0.1:{p} check\n" for i, p in enumerate(gateway_ports, 1)
    )
    text, count = re.subn(r"(    server gateway-\d+ .*\n)+", servers, text)
    assert count == 1, "deploy/haproxy.cfg has no block of server lines"
    return text


def start_haproxy(workdir: Path, port: int, gateway_ports: list[int]) -> subprocess.Popen[bytes]:
    """HAProxy in the foreground on ``port``; returns once it accepts connections."""
    exe = ensure_program("haproxy", "haproxy")
    config = workdir / "haproxy.cfg"
    config.write_text(render_config(port, gateway_ports))
    checked = subprocess.run([exe, "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with (workdir / "haproxy.log").open("ab") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            [exe, "-db", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy exited: see {workdir / 'haproxy.log'}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("haproxy did not start listening within 10 s")
