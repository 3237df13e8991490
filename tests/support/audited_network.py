"""One audited network for both audit end-to-end tests: honest providers on differing
hardware, and cheaters beside them.

tests/e2e/test_honest_audits.py needs honest providers that differ in dtype and torch
threads, three of them validators, with every request audited; tests/e2e/test_adversarial.py
needs three validators, an honest provider, and cheaters that undercut the validators.
Starting torch and a model costs seconds of CPU per process, so one network serves both:
the honest test sends its requests to the four honest providers only (``provider.only``);
the adversarial consumer sets ``provider.max_price`` and so reaches only the cheaters and
the cheap honest provider.

Processes: the gateway (the calibrated catalog, the validators, every request audited:
no provider leaves probation during the tests); four `tessera provider` processes, float32
on one and on two torch threads and bfloat16 as the validators, priced above the cheaters,
and bfloat16 at the cheaters' price, not a validator; one `tessera provider` serving
another model under the same name (other weights); and one process running every cheater
(tests/support/cheating_provider.py), seven that read the public catalog and one naive
impostor that did not.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tessera.demo import Network
from tessera.dev_money import stake_provider
from tessera.key_file import load_or_create_key
from tessera.protocol.signing import public_key_hex

from support.live_network import LiveNetwork
from support.tiny_model import REPO_ROOT
from support.verified_network import Joined, ProviderSpec, VerifiedNetwork, start_verified_network

CHEATERS = ("impostor", "quantized", "random", "truncate", "inflate", "forge", "replay")
# Base units per million tokens (1 token = 10**9 units): cheaters undercut the validators.
VALIDATOR_PRICE = (2_000_000_000, 6_000_000_000)
CHEAP_PRICE = (500_000_000, 1_500_000_000)
SPECS = (
    ProviderSpec("float32", 1, validator=True, price=VALIDATOR_PRICE, name="validator-1"),
    ProviderSpec("float32", 2, validator=True, price=VALIDATOR_PRICE, name="validator-2"),
    ProviderSpec("bfloat16", 1, validator=True, price=VALIDATOR_PRICE, name="validator-3"),
    # One thread: two-thread torch processes crawl when several share two cores.
    ProviderSpec("bfloat16", 1, validator=False, price=CHEAP_PRICE, name="honest"),
)
# Every request is audited: no provider leaves probation during the tests.
GATEWAY_ENV = {"TESSERA_GATEWAY_AUDIT_PROBATION": "100000"}
CHEATER_SLOTS = 2


@dataclass(frozen=True)
class Process:
    name: str
    mode: str  # a cheat, "naive", "mismatch", "validator" or "honest"
    provider_id: str


@dataclass
class AuditedNetwork:
    verified: VerifiedNetwork  # its providers: the four honest `tessera provider` processes
    processes: dict[str, Process]  # every provider id -> what it is

    @property
    def live(self) -> LiveNetwork:
        return self.verified.live

    def ids(self, *modes: str) -> list[str]:
        return [p.provider_id for p in self.processes.values() if p.mode in modes]

    def mode(self, provider_id: str) -> str:
        return self.processes[provider_id].mode


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, so no cheater outlives it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn_cheaters(network: Network, name: str, args: list[str]) -> None:
    """Start ``python -m tests.support.cheating_provider`` as one of the network's
    processes (stopped with the rest; its log beside theirs)."""
    logs = network.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    with (logs / f"{name}.log").open("ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.cheating_provider", *args],
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    network.processes.append((name, proc))


def start_audited_network(
    data_dir: Path, model_dir: Path, impostor_dir: Path, catalog: Path, timeout_s: float = 300
) -> AuditedNetwork:
    """Start it all; every honest provider and every catalog-reading cheater routable."""
    plan = [(f"cheater-{mode}", mode) for mode in CHEATERS]
    plan += [("naive-impostor", "naive"), ("other-weights", "mismatch")]
    keys = {name: data_dir / f"{name}.key" for name, _ in plan}
    ids = {name: public_key_hex(load_or_create_key(path)) for name, path in keys.items()}
    cheap = ["--price-in", str(CHEAP_PRICE[0]), "--price-out", str(CHEAP_PRICE[1])]
    common = ["--threads", "1", "--max-concurrent-jobs", str(CHEATER_SLOTS)]

    def join_more(network: Network, base: str) -> Joined:
        for name, _ in plan:
            stake_provider(base, keys[name])
        network.spawn(
            "other-weights",
            ["provider", "--gateway", base, "--model", str(impostor_dir), "--label",
             "other-weights", "--dtype", "float32", "--key-file", str(keys["other-weights"]),
             *cheap, *common],
        )  # fmt: skip
        args = ["--gateway", base, "--model-dir", str(model_dir), "--impostor-dir",
                str(impostor_dir), "--catalog", str(catalog), *cheap, *common]  # fmt: skip
        for name, mode in plan:
            if mode in CHEATERS:
                args += ["--cheater", f"{mode}={keys[name]}"]
            elif mode == "naive":  # an impostor that never read the public catalog
                args += ["--naive", f"impostor={keys[name]}"]
        spawn_cheaters(network, "cheaters", args)
        return Joined(len(plan), tuple(ids[f"cheater-{mode}"] for mode in CHEATERS))

    started = time.monotonic()
    verified = start_verified_network(
        data_dir, model_dir, catalog, SPECS, GATEWAY_ENV, timeout_s, join_more
    )
    verified.phases["start network"] = time.monotonic() - started
    processes = {
        pid: Process(verified.names[pid], "validator" if spec.validator else "honest", pid)
        for pid, spec in verified.providers.items()
    }
    processes.update({ids[name]: Process(name, mode, ids[name]) for name, mode in plan})
    return AuditedNetwork(verified, processes)
