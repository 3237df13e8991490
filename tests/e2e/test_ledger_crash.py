"""The ledger survives a gateway killed with SIGKILL under paying load.

Real processes: a dev-mode gateway on SQLite, two staked providers running tessera-tiny,
and eight client threads using the official openai SDK (half streaming). The gateway is
killed mid-load and restarted on the same data directory. Afterwards the stored journal
must balance, every hold must have exactly one settlement, and the account must hold
exactly what was minted minus what was captured: nothing lost, nothing charged twice.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import openai
import pytest

from tessera.demo import wait_for_network
from tessera.dev_money import DEFAULT_FUNDS
from tessera.ledger.escrow import CAPTURE, HOLD, RELEASE

from support.live_network import TEXT_MODEL, LiveNetwork
from support.stored_journal import settled_journal, stored_journal

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "Tell me a story about a fox."}]


def load(live: LiveNetwork, stop: threading.Event, outcomes: Counter[str], worker: int) -> None:
    with live.client(timeout=30) as client:
        while not stop.is_set():
            try:
                if worker % 2:
                    stream = client.chat.completions.create(
                        model=TEXT_MODEL, messages=MSG, max_tokens=40, stream=True
                    )
                    for _ in stream:
                        pass
                else:
                    client.chat.completions.create(model=TEXT_MODEL, messages=MSG, max_tokens=40)
                outcomes["ok"] += 1
            except (openai.APIError, httpx.HTTPError) as exc:
                outcomes[type(exc).__name__] += 1
                time.sleep(0.1)


def test_gateway_killed_under_load_leaves_a_sound_ledger(network: LiveNetwork) -> None:
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    workers = [
        threading.Thread(target=load, args=(network, stop, outcomes, i), daemon=True)
        for i in range(8)
    ]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 60
    while outcomes["ok"] < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    gateway = next(p for n, p in network.network.processes if n == "gateway")
    gateway.send_signal(signal.SIGKILL)
    gateway.wait(10)
    served_before_kill = outcomes["ok"]
    network.network.processes.remove(("gateway", gateway))

    entries, at_kill_problems = stored_journal(network.data_dir)
    assert at_kill_problems == []  # what SIGKILL left on disk is already a sound prefix
    open_at_kill = {e.reference for e in entries if e.kind == HOLD} - {
        e.reference for e in entries if e.kind in (CAPTURE, RELEASE)
    }

    network.network.spawn(
        "gateway",
        ["gateway", "--port", str(network.port), "--data-dir", str(network.data_dir), "--dev"],
    )
    wait_for_network(network.base, 2, network.network, timeout_s=120)
    # Let the load run on the restarted gateway until it has served a few paid requests.
    deadline = time.monotonic() + 60
    while outcomes["ok"] < served_before_kill + 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for worker in workers:
        worker.join(60)

    entries, problems = settled_journal(network.data_dir)  # the last captures written
    holds = [e for e in entries if e.kind == HOLD]
    settlements = Counter(e.reference for e in entries if e.kind in (CAPTURE, RELEASE))
    restart_releases = [
        e for e in entries if e.kind == RELEASE and e.memo_dict().get("reason") == "gateway_restart"
    ]
    captured = sum(int(e.memo_dict()["cost"]) for e in entries if e.kind == CAPTURE)
    account = httpx.get(
        f"{network.base}/v1/account",
        headers={"Authorization": f"Bearer {network.api_key}"},
        timeout=10,
    ).json()
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "tessera.cli",
            "ledger",
            "check",
            "--data-dir",
            str(network.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(
        f"\nserved before kill {served_before_kill}, outcomes {dict(outcomes)}; "
        f"{len(entries)} entries, {len(holds)} holds, {len(open_at_kill)} open at the kill, "
        f"{len(restart_releases)} released on restart, {captured} base units captured"
    )
    assert problems == []
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert open_at_kill, "the kill should have caught requests in flight"
    assert {e.reference for e in restart_releases} == open_at_kill
    assert all(settlements[h.reference] == 1 for h in holds), "a hold settled twice or never"
    assert set(settlements) <= {h.reference for h in holds}
    assert account["held"] == 0
    assert account["balance"] == DEFAULT_FUNDS - captured
    assert outcomes["ok"] > served_before_kill  # the restarted gateway served paid work too
