"""Run tests/support/openai_server.py (our stand-in for vLLM) as a real subprocess."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SERVER_SCRIPT = REPO / "tests" / "support" / "openai_server.py"
STARTUP_S = 180.0


@dataclass(frozen=True, slots=True)
class Upstream:
    base_url: str  # ends in /v1
    process: subprocess.Popen[str]


def _read_lines(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


@contextlib.contextmanager
def running_upstream(
    model_dir: Path, log_dir: Path, model_name: str, embeddings: bool = True
) -> Iterator[Upstream]:
    """Start the server on a free port, wait for READY, and always terminate it."""
    log = log_dir / "openai_server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])}
    cmd = [sys.executable, str(SERVER_SCRIPT), "--model-dir", str(model_dir)]
    cmd += ["--model-name", model_name, "--port", "0", "--threads", "1"]
    if embeddings:
        cmd.append("--embeddings")
    with log.open("w") as stderr:
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + STARTUP_S
        port = None
        while port is None and time.monotonic() < deadline and process.poll() is None:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith("READY "):
                port = int(line.split()[1])
        if port is None:
            raise RuntimeError(f"openai_server did not start:\n{log.read_text()[-3000:]}")
        yield Upstream(f"http://127.0.0.1:{port}/v1", process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        reader.join(timeout=15)  # ends at EOF once the process is gone
        if process.stdout is not None:
            process.stdout.close()
