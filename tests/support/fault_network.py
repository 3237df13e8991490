"""A real network whose providers are killed and restarted while it serves.

One dev-mode gateway and N `tessera provider` processes serving only the tiny text model,
each with its own key file (so a restarted provider is the same identity and finds its
stake and earnings where it left them), at a price dear enough that every token shows in
a cost. ``Chaos`` SIGKILLs a random connected provider at random intervals and
restarts it a little later, but never kills the last connected one.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tessera.demo import Network, free_port, wait_for_network
from tessera.dev_money import fund_account, stake_provider
from tessera.ledger.pricing import Price
from tessera.protocol.signing import public_key_hex
from tessera.provider.identity import load_or_create_key

from support.live_network import TEXT_MODEL, LiveNetwork, create_key, provider_key_file
from support.verified_network import environment

__all__ = [
    "TEXT_MODEL",
    "Chaos",
    "FaultNetwork",
    "InFlight",
    "counter_total",
    "start_fault_network",
]

# Base units per million tokens: 1,000 units per prompt token and 3,000 per output token,
# so one token moves a cost by far more than rounding does. Every provider asks the same:
# a request holds the worst case at the dearest provider connected when it arrives, so a
# dearer one that reconnects while the request waits for a slot could not take it (the
# request fails with 503 "a worst-case cost within the amount held"), which is not what
# this network is for.
PRICE = Price(1_000_000_000, 3_000_000_000)


@dataclass
class ProviderProcess:
    index: int
    key_file: Path
    provider_id: str
    price: Price
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"provider-{self.index}"


@dataclass
class FaultNetwork:
    """The live network and its providers by index (1..N); the processes are theirs to kill."""

    live: LiveNetwork
    model_dir: Path
    providers: dict[int, ProviderProcess]
    max_concurrent_jobs: int
    startup_s: float = 0.0  # how long the network took to come up

    @property
    def base(self) -> str:
        return self.live.base

    def price_of(self, provider_id: str) -> Price:
        return next(p.price for p in self.providers.values() if p.provider_id == provider_id)

    def spawn(self, index: int) -> None:
        """Start provider ``index`` (again): same key file, same identity."""
        provider = self.providers[index]
        provider.process = self.live.network.spawn(
            provider.name,
            [
                "provider",
                "--gateway", self.base,
                "--model", str(self.model_dir),
                "--region", ["US-east", "DE-eu", "JP-apac", "BR-sa"][index % 4],
                "--label", f"fault-{index}",
                "--price-in", str(provider.price.input_per_mtok),
                "--price-out", str(provider.price.output_per_mtok),
                "--key-file", str(provider.key_file),
                "--threads", "1",
                "--max-concurrent-jobs", str(self.max_concurrent_jobs),
            ],
        )  # fmt: skip

    def kill(self, index: int) -> None:
        """SIGKILL provider ``index``: no goodbye, no draining, its sockets just close."""
        provider = self.providers[index]
        proc = provider.process
        if proc is None:
            return
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # A dead child stays out of Network.processes, or wait_for_network reports it.
        self.live.network.processes.remove((provider.name, proc))
        provider.process = None

    def connected(self, index: int) -> bool:
        """Whether the gateway lists provider ``index`` as connected now."""
        provider_id = self.providers[index].provider_id
        view = httpx.get(f"{self.base}/v1/providers/{provider_id}", timeout=10).json()
        return bool(view["connected"])

    def running(self) -> list[int]:
        return [i for i, p in self.providers.items() if p.process is not None]

    def consumer_get(self, path: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.base}{path}",
            headers={"Authorization": f"Bearer {self.live.api_key}"},
            timeout=30,
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/metrics", timeout=10).text

    def usage_rows(self) -> list[dict[str, Any]]:
        """Every request of the consumer's account (GET /v1/account/usage, all pages)."""
        rows: dict[str, dict[str, Any]] = {}
        before: str | None = None
        while True:
            query = "?limit=500" + (f"&before={quote(before)}" if before else "")
            page = self.consumer_get(f"/v1/account/usage{query}")
            rows.update((r["request_id"], r) for r in page["data"])
            if not page["has_more"]:
                return list(rows.values())
            before = page["data"][-1]["created_at"]


def counter_total(metrics_text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus counter's samples (``name``_total) matching ``labels``."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{(?P<labels>[^}}]*)\}})? (?P<value>\S+)$")
    for line in metrics_text.splitlines():
        match = pattern.match(line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match["value"])
    return total


# The load here is the test's own: a 429 from the per-key and per-account rate limits
# (600 and 1,200 a minute by default, reached on a fast machine) would fail a request
# for a reason that has nothing to do with a killed provider.
NO_RATE_LIMITS = {
    "TESSERA_GATEWAY_KEY_REQUESTS_PER_MINUTE": "1000000",
    "TESSERA_GATEWAY_ACCOUNT_REQUESTS_PER_MINUTE": "1000000",
}


def start_fault_network(
    data_dir: Path, model_dir: Path, providers: int = 3, max_concurrent_jobs: int = 3
) -> FaultNetwork:
    """A dev gateway and ``providers`` staked tiny-model providers, a funded API key."""
    started = time.monotonic()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    network = Network(data_dir)
    with environment(NO_RATE_LIMITS):
        network.spawn(
            "gateway", ["gateway", "--port", str(port), "--data-dir", str(data_dir), "--dev"]
        )
    try:
        api_key = create_key(data_dir)
        wait_for_network(base, 0, network, timeout_s=60)
        fund_account(base, api_key)
        live = LiveNetwork(base, api_key, network, data_dir, port)
        procs = {}
        for index in range(1, providers + 1):
            key_file = provider_key_file(network, index)
            procs[index] = ProviderProcess(
                index,
                key_file,
                public_key_hex(load_or_create_key(key_file)),
                PRICE,
            )
            stake_provider(base, key_file)
        fault = FaultNetwork(live, model_dir, procs, max_concurrent_jobs)
        for index in procs:
            fault.spawn(index)
        wait_for_network(base, providers, network, timeout_s=180)
        fault.startup_s = time.monotonic() - started
    except BaseException:
        network.stop()
        raise
    return fault


class InFlight:
    """Streams that have delivered text and not ended yet: request id -> (provider, mode).

    Load threads write it; the chaos reads it to aim a kill at a provider that is in the
    middle of an answer (a kill between answers tests much less).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, tuple[str, str]] = {}

    def mid_answer(self, request_id: str, provider_id: str, mode: str) -> None:
        with self._lock:
            self._streams[request_id] = (provider_id, mode)

    def ended(self, request_id: str | None) -> None:
        with self._lock:
            self._streams.pop(request_id or "", None)

    def providers(self, reproducible: bool) -> set[str]:
        """Providers streaming a greedy or seeded answer now (``reproducible``) or an
        unseeded one; if none, those streaming any answer."""
        with self._lock:
            streams = list(self._streams.values())
        wanted = {p for p, mode in streams if (mode != "unseeded") == reproducible}
        return wanted or {p for p, _ in streams}


@dataclass
class Chaos:
    """Kills a random connected provider every ``interval_s`` (a random span) and restarts
    each after ``down_s``. A kill happens only while another provider stays connected.
    Kills alternate between aiming at a provider in the middle of a greedy or seeded stream
    and one in the middle of an unseeded stream (then of any stream, then any provider).

    Runs in the caller's thread, which must outlive the providers it restarts: they are
    spawned with a parent-death signal, and Linux sends it when the spawning *thread* ends.
    """

    net: FaultNetwork
    rng: random.Random
    inflight: InFlight
    interval_s: tuple[float, float] = (2.0, 5.0)
    down_s: tuple[float, float] = (0.5, 3.0)
    kills: int = 0
    restarts: int = 0
    log: list[str] = field(default_factory=list)
    _down: dict[int, float] = field(default_factory=dict)  # index -> when to restart it
    _started: float = field(default_factory=time.monotonic)

    def run(self, for_s: float, kill_from_s: float, kill_until_s: float) -> None:
        """Kill and restart for ``for_s`` seconds, killing between ``kill_from_s`` and
        ``kill_until_s`` (the load is under way; the killed have time to come back)."""
        self._started = time.monotonic()
        next_kill = self._started + kill_from_s
        while (now := time.monotonic()) < self._started + for_s:
            for index, at in list(self._down.items()):
                if now >= at:
                    self._restart(index)
            killing = now - self._started < kill_until_s
            if killing and now >= next_kill and self._kill_one():
                next_kill = now + self.rng.uniform(*self.interval_s)
            time.sleep(0.1)
        for index in list(self._down):
            self._restart(index)

    def wait_all_connected(self, timeout_s: float = 120) -> None:
        """Wait until every provider is connected again (the restarted ones too)."""
        wait_for_network(self.net.base, len(self.net.providers), self.net.live.network, timeout_s)
        self._note("every provider connected")

    def _note(self, what: str) -> None:
        self.log.append(f"{time.monotonic() - self._started:6.1f}s {what}")

    def _kill_one(self) -> bool:
        """Kill one connected provider if another stays connected; True if done."""
        candidates = [i for i in self.net.running() if self.net.connected(i)]
        if len(candidates) < 2:
            return False
        streaming = self.inflight.providers(reproducible=self.kills % 2 == 0)
        aimed = [i for i in candidates if self.net.providers[i].provider_id in streaming]
        victim = self.rng.choice(aimed or candidates)
        self.net.kill(victim)
        self.kills += 1
        self._down[victim] = time.monotonic() + self.rng.uniform(*self.down_s)
        what = "mid-stream" if aimed else "any"
        self._note(f"killed provider-{victim} ({what}; {len(candidates)} were connected)")
        return True

    def _restart(self, index: int) -> None:
        self._down.pop(index, None)
        self.net.spawn(index)
        self.restarts += 1
        self._note(f"restarted provider-{index}")
