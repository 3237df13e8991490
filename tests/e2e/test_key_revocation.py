"""A real gateway process, and the real `tessera keys` commands run beside it: a revoke
or a limit set from the command line holds for the gateway's next request, on SQLite and
on PostgreSQL, with no restart and no per-request database read.

The gateway caches a key for 30 s (its default); each change must show within
``SHOWS_WITHIN_S``, far sooner, so only its key-change watcher can have brought it. How fast
it showed is printed, not asserted."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tessera.demo import Network, free_port

pytestmark = pytest.mark.e2e

SHOWS_WITHIN_S = 10.0  # the key cache keeps a key for 30 s


def tessera(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tessera.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def wait_healthy(base: str, network: Network, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert not network.dead(), (network.data_dir / "logs" / "gateway.log").read_text()
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the gateway did not come up")


def seconds_until(request: httpx.Request, status: int) -> float:
    """From now until ``request`` is answered with ``status`` (fails after ``SHOWS_WITHIN_S``)."""
    started = time.monotonic()
    with httpx.Client(timeout=5) as client:
        while client.send(request).status_code != status:
            took = time.monotonic() - started
            assert took < SHOWS_WITHIN_S, "the change never reached the gateway"
            time.sleep(0.02)
    took = time.monotonic() - started
    print(f"change shown after {took:.2f} s")
    return took


async def test_the_cli_revokes_and_limits_a_key_in_a_running_gateway(
    tmp_path: Path, database_url: str
) -> None:
    await asyncio.to_thread(run_scenario, tmp_path, database_url)


def run_scenario(tmp_path: Path, database_url: str) -> None:
    data_dir = tmp_path / "gateway"
    store = ["--data-dir", str(data_dir), "--database-url", database_url]
    network = Network(data_dir)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    network.spawn("gateway", ["gateway", "--port", str(port), *store])
    try:
        wait_healthy(base, network)
        revoked = json.loads(tessera("keys", "create", "--name", "leaked", "--json", *store))
        limited = json.loads(tessera("keys", "create", "--name", "busy", "--json", *store))

        def account(key: str) -> httpx.Request:
            headers = {"Authorization": f"Bearer {key}"}
            return httpx.Request("GET", f"{base}/v1/account", headers=headers)

        def chat(key: str) -> httpx.Request:
            body = {"model": "any", "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": f"Bearer {key}"}
            return httpx.Request("POST", f"{base}/v1/chat/completions", json=body, headers=headers)

        with httpx.Client(timeout=5) as client:
            assert client.send(account(revoked["key"])).status_code == 200  # cached now
            assert client.send(chat(limited["key"])).status_code == 404  # no such model

        tessera("keys", "revoke", revoked["id"], *store)
        seconds_until(account(revoked["key"]), 401)

        tessera("keys", "limits", limited["id"], "--max-concurrency", "0", *store)
        seconds_until(chat(limited["key"]), 429)
        tessera("keys", "limits", limited["id"], "--default", *store)
        seconds_until(chat(limited["key"]), 404)
    finally:
        network.stop()
