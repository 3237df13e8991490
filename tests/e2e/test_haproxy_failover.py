"""The front door survives its gateway: HAProxy, an owner and a standby, SIGKILL.

Real processes on 127.0.0.1: gateway A (owner) and gateway B (``--standby``) on one
data directory, behind HAProxy run from deploy/haproxy.cfg; one provider agent with the
tiny model dials HAProxy's address, and the official openai client calls it too. A is
killed with SIGKILL while clients are served; B takes over the ledger, the agent finds
it through HAProxy on its own, and requests through the same address are answered again.
Afterwards every hold has one settlement, nothing is left held, and `tessera ledger
check` passes.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest

from tessera.demo import Network, free_port, wait_for_network
from tessera.dev_money import DEFAULT_FUNDS, fund_account, stake_provider

from support.haproxy import start_haproxy
from support.live_network import (
    TEXT_MODEL,
    LiveNetwork,
    create_key,
    provider_key_file,
    start_provider,
)
from support.tiny_model import ensure_tiny_model
from support.verified_network import ledger_check

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "Tell me about the fox."}]


def _load(live: LiveNetwork, stop: threading.Event, outcomes: Counter[str]) -> None:
    with live.client(timeout=20) as client:
        while not stop.is_set():
            try:
                client.chat.completions.create(model=TEXT_MODEL, messages=MSG, max_tokens=8)
                outcomes["ok"] += 1
            except (openai.APIError, httpx.HTTPError) as exc:
                outcomes[type(exc).__name__] += 1
                time.sleep(0.2)


def test_a_standby_behind_haproxy_takes_over_from_a_killed_gateway(tmp_path: Path) -> None:
    network = Network(tmp_path / "data")
    gateways = {"gateway-a": free_port(), "gateway-b": free_port()}
    front_port = free_port()
    front = f"http://127.0.0.1:{front_port}"
    haproxy = None
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    workers: list[threading.Thread] = []
    try:
        for name, port in gateways.items():
            standby = ["--standby"] if name == "gateway-b" else []
            where = ["--data-dir", str(network.data_dir)]
            network.spawn(name, ["gateway", "--port", str(port), *where, "--dev", *standby])
            if not standby:
                wait_for_network(f"http://127.0.0.1:{port}", 0, network, timeout_s=60)
        haproxy = start_haproxy(tmp_path, front_port, list(gateways.values()))
        wait_for_network(front, 0, network, timeout_s=30)
        key = create_key(network.data_dir)
        fund_account(front, key)
        stake_provider(front, provider_key_file(network, 1))
        start_provider(network, front, ensure_tiny_model(), 1, "US-east", embeddings=False)
        wait_for_network(front, 1, network, timeout_s=120)
        live = LiveNetwork(front, key, network, network.data_dir, front_port)

        workers = [
            threading.Thread(target=_load, args=(live, stop, outcomes), daemon=True)
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 60
        while outcomes["ok"] < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert outcomes["ok"] >= 5, dict(outcomes)

        owner = next(p for n, p in network.processes if n == "gateway-a")
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        network.processes.remove(("gateway-a", owner))
        killed_at, served_before = time.monotonic(), outcomes["ok"]
        deadline = killed_at + 90
        while outcomes["ok"] < served_before + 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        back_after = time.monotonic() - killed_at
        stop.set()
        for worker in workers:
            worker.join(30)
        print(
            f"\nserved {served_before} before the kill, {outcomes['ok'] - served_before} "
            f"after; answered again through HAProxy {back_after:.1f} s after it; {dict(outcomes)}"
        )
        assert outcomes["ok"] >= served_before + 5, "the standby never served through HAProxy"
        account = httpx.get(
            f"{front}/v1/account", headers={"Authorization": f"Bearer {key}"}, timeout=10
        ).json()
        assert account["held"] == 0  # the killed owner's holds were released by the standby
        assert account["balance"] < DEFAULT_FUNDS  # paid work on both sides of the kill
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        network.stop()
        if haproxy is not None:
            haproxy.kill()
            haproxy.wait(10)
    checked = ledger_check(network.data_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
