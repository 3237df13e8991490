"""Two active replicas behind HAProxy; one is SIGKILLed under steady load.

Real processes on 127.0.0.1: a private nats-server, a fresh PostgreSQL database, gateway
A (owns the ledger) and gateway B (pays through A), both serving, behind HAProxy run
from deploy/haproxy.cfg; two provider agents with the tiny model dial HAProxy's address
(each lands on one replica or the other), and the official openai client calls it. B is
killed with SIGKILL while requests stream and while whole answers are asked for. No whole
answer fails (HAProxy replays what B had not answered, the SDK retries a connection cut
before any answer, and A moves jobs off B's providers),
streams cut by the kill end, B's providers reconnect to A through HAProxy by themselves,
the holds B had open are released by A, and `tessera ledger check` passes.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest

from tessera.demo import Network, free_port, wait_for_network
from tessera.dev_money import fund_account, stake_provider

from support.databases import _admin_execute
from support.haproxy import start_haproxy
from support.live_network import TEXT_MODEL, create_key, provider_key_file, start_provider
from support.nats_server import NatsServer
from support.tiny_model import ensure_tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

MSG = [{"role": "user", "content": "Tell me about the fox."}]


def _whole(client: openai.OpenAI, stop: threading.Event, outcomes: Counter[str]) -> None:
    while not stop.is_set():
        try:
            client.chat.completions.create(model=TEXT_MODEL, messages=MSG, max_tokens=8)
            outcomes["ok"] += 1
        except (openai.APIError, httpx.HTTPError) as exc:
            outcomes[f"{type(exc).__name__}: {exc.__cause__!r}"[:160]] += 1
            time.sleep(0.2)


def _streams(client: openai.OpenAI, stop: threading.Event, outcomes: Counter[str]) -> None:
    while not stop.is_set():
        try:
            chunks = list(
                client.chat.completions.create(
                    model=TEXT_MODEL, messages=MSG, max_tokens=8, stream=True
                )
            )
            outcomes["ok" if chunks else "empty"] += 1
        except (openai.APIError, httpx.HTTPError) as exc:
            outcomes[type(exc).__name__] += 1
            time.sleep(0.2)


def _sessions(network: Network, name: str) -> int:
    """How many provider connections ``name``'s log says it accepted."""
    return (network.data_dir / "logs" / f"{name}.log").read_text().count("connected (")


def test_a_replica_killed_under_load_behind_haproxy_loses_no_whole_answer(
    tmp_path: Path, postgres_admin_user: str
) -> None:
    name = f"tessera_lb_{int(time.time() * 1000)}"
    asyncio.run(_admin_execute(postgres_admin_user, f'CREATE DATABASE "{name}"'))
    url = f"postgresql://{postgres_admin_user}@127.0.0.1:5432/{name}"
    nats = NatsServer(tmp_path / "nats").start()
    network = Network(tmp_path / "data")
    ports = {"gateway-a": free_port(), "gateway-b": free_port()}
    front_port = free_port()
    front = f"http://127.0.0.1:{front_port}"
    haproxy = None
    stop = threading.Event()
    whole: Counter[str] = Counter()
    streamed: Counter[str] = Counter()
    workers: list[threading.Thread] = []
    try:
        for gateway, port in ports.items():
            where = ["--data-dir", str(network.data_dir), "--database-url", url]
            args = ["gateway", "--port", str(port), *where, "--nats-url", nats.url, "--dev"]
            network.spawn(gateway, args)
            wait_for_network(f"http://127.0.0.1:{port}", 0, network, timeout_s=60)
        haproxy = start_haproxy(tmp_path, front_port, list(ports.values()))
        key = create_key(network.data_dir, "--database-url", url)
        fund_account(front, key)
        model = ensure_tiny_model()
        for index in (1, 2):
            stake_provider(front, provider_key_file(network, index))
            start_provider(network, front, model, index, "US-east", embeddings=False)
        wait_for_network(f"http://127.0.0.1:{ports['gateway-a']}", 2, network, timeout_s=240)
        on_b = _sessions(network, "gateway-b")
        print(f"\nproviders connected to B at the start: {on_b} of 2")

        # The SDK's own retries (2 by default) stay on, as a user has them: the kill can
        # close a client's connection to HAProxy before any answer, and the SDK sends the
        # request again (it is not charged twice: the dead replica's hold is released).
        clients = [openai.OpenAI(base_url=f"{front}/v1", api_key=key, timeout=60) for _ in range(3)]
        workers = [
            threading.Thread(target=_whole, args=(clients[0], stop, whole), daemon=True),
            threading.Thread(target=_whole, args=(clients[1], stop, whole), daemon=True),
            threading.Thread(target=_streams, args=(clients[2], stop, streamed), daemon=True),
        ]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 60
        while whole["ok"] < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert whole["ok"] >= 6, dict(whole)

        victim = next(p for n, p in network.processes if n == "gateway-b")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        network.processes.remove(("gateway-b", victim))
        killed_at, before = time.monotonic(), whole["ok"]
        while whole["ok"] < before + 6 and time.monotonic() < killed_at + 60:
            time.sleep(0.1)
        stop.set()
        for worker in workers:
            worker.join(60)
        print(
            f"whole answers: {dict(whole)}; streams: {dict(streamed)}; "
            f"{whole['ok'] - before} whole answers in {time.monotonic() - killed_at:.1f} s "
            "after the kill"
        )
        assert set(whole) == {"ok"}, dict(whole)  # not one whole answer failed
        assert whole["ok"] >= before + 6
        assert streamed["ok"] >= 1
        # Both agents are on A now (B's reconnected through HAProxy by themselves).
        health = httpx.get(f"http://127.0.0.1:{ports['gateway-a']}/health", timeout=5).json()
        assert health["providers"] == 2, health

        def nothing_held() -> bool:
            account = httpx.get(
                f"{front}/v1/account", headers={"Authorization": f"Bearer {key}"}, timeout=10
            ).json()
            return int(account["held"]) == 0

        deadline = time.monotonic() + 15
        while not nothing_held():  # B's orphans go once A calls it dead (3 s)
            assert time.monotonic() < deadline, "B's holds were never released"
            time.sleep(0.2)

        def in_flight() -> list[str]:
            rows = httpx.get(
                f"{front}/v1/account/usage",
                params={"limit": 500},
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            ).json()["data"]
            return [r["status"] for r in rows if r["status"] == "in_flight"]

        while in_flight():  # B's requests cut by the kill: marked by A, B never restarts
            assert time.monotonic() < deadline, f"rows left in flight: {in_flight()}"
            time.sleep(0.2)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        network.stop()
        if haproxy is not None:
            haproxy.kill()
            haproxy.wait(10)
        nats.stop()
    try:
        checked = subprocess.run(
            [sys.executable, "-m", "tessera.cli", "ledger", "check", "--database-url", url],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        asyncio.run(
            _admin_execute(postgres_admin_user, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )
