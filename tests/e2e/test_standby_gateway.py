"""Two gateways on one database: the second is refused, a standby takes over.

Real processes on one database (SQLite in the data directory, and PostgreSQL): gateway
A owns the ledger; gateway B,
started plainly beside it, must exit naming the owner instead of releasing A's running
holds; gateway C, started with ``--standby``, keeps its port closed while A lives, and
after A is killed with SIGKILL it takes over: the account A funded is there, C moves
money itself, and the stored journal checks out.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tessera.demo import Network, free_port, wait_for_network
from tessera.dev_money import DEFAULT_FUNDS, fund_account

from support.live_network import create_key

pytestmark = pytest.mark.e2e


def _gateway(network: Network, url: str, name: str, port: int, *extra: str) -> None:
    where = ["--data-dir", str(network.data_dir), "--database-url", url]
    network.spawn(name, ["gateway", "--port", str(port), *where, "--dev", *extra])


def _log(network: Network, name: str) -> str:
    """A process's log with rich's line wrapping undone."""
    return " ".join((network.data_dir / "logs" / f"{name}.log").read_text().split())


def _balance(base: str, key: str) -> int:
    response = httpx.get(
        f"{base}/v1/account", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    response.raise_for_status()
    return int(response.json()["balance"])


def test_one_owner_per_ledger_and_a_standby_that_takes_over(
    tmp_path: Path, database_url: str
) -> None:
    network = Network(tmp_path / "data")  # the SQLite database_url lives here too
    url = database_url
    ports = {name: free_port() for name in ("a", "b", "c")}
    base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    try:
        _gateway(network, url, "gateway-a", ports["a"])
        wait_for_network(base["a"], 0, network, timeout_s=60)
        key = create_key(network.data_dir, "--database-url", url)
        fund_account(base["a"], key)

        _gateway(network, url, "gateway-b", ports["b"])
        b = next(proc for name, proc in network.processes if name == "gateway-b")
        assert b.wait(60) != 0
        network.processes.remove(("gateway-b", b))
        log_b = _log(network, "gateway-b")
        assert "owns its ledger" in log_b and "--standby" in log_b, log_b[-2000:]

        _gateway(network, url, "gateway-c", ports["c"], "--standby")
        time.sleep(3)
        with pytest.raises(httpx.HTTPError):  # waiting: no port for a load balancer yet
            httpx.get(f"{base['c']}/health", timeout=2)
        assert _balance(base["a"], key) == DEFAULT_FUNDS  # A serves throughout

        # An operator's Ctrl-C or SIGTERM stops a waiting standby cleanly.
        _gateway(network, url, "gateway-d", free_port(), "--standby")
        d = next(proc for name, proc in network.processes if name == "gateway-d")
        deadline = time.monotonic() + 60
        while "owns the ledger; this gateway takes over" not in _log(network, "gateway-d"):
            assert time.monotonic() < deadline and d.poll() is None, _log(network, "gateway-d")
            time.sleep(0.1)
        d.send_signal(signal.SIGTERM)
        assert d.wait(10) == 0
        network.processes.remove(("gateway-d", d))
        assert "SIGTERM before taking over the ledger" in _log(network, "gateway-d")
        assert "Traceback" not in _log(network, "gateway-d")

        a = next(proc for name, proc in network.processes if name == "gateway-a")
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        network.processes.remove(("gateway-a", a))
        took_over = time.monotonic()
        wait_for_network(base["c"], 0, network, timeout_s=60)
        print(f"\nstandby answered {time.monotonic() - took_over:.1f} s after the kill")
        assert _balance(base["c"], key) == DEFAULT_FUNDS
        fund_account(base["c"], key, units=5)
        assert _balance(base["c"], key) == DEFAULT_FUNDS + 5
        assert "now owns the ledger" in _log(network, "gateway-c")
    finally:
        network.stop()
    checked = subprocess.run(
        [sys.executable, "-m", "tessera.cli", "ledger", "check", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
