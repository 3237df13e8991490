"""Audits in a cluster: requests served through either replica are audited once, where the
ledger is, by auditors connected to either replica.

Real processes: a private nats-server, a fresh PostgreSQL database, gateway A (owns the
ledger) and gateway B, both with the calibrated tiny-model catalog and two validators, and
every request audited (a probation longer than the test). Validator 1 connects to A,
validator 2 to B; each passes its join challenge on its own replica. The official openai
client sends requests to B only (the replica without the ledger), half pinned to each
validator. B countersigns them and sends them to A for sampling; A audits each, asking the
other validator, through B when that is where it is connected. Every case closes passed,
exactly one case per request, and the journal checks out.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tessera.demo import Network, free_port, wait_for_network
from tessera.dev_money import fund_account, stake_provider
from tessera.key_file import load_or_create_key
from tessera.protocol.signing import public_key_hex

from support.databases import _admin_execute
from support.live_network import create_key
from support.nats_server import NatsServer
from support.verified_network import _catalog_model, environment, wait_for_cases, wait_routable

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

REQUESTS_PER_PROVIDER = 4


def _routable_on(base: str, model: str) -> int:
    models = httpx.get(f"{base}/v1/models", timeout=10).json()["data"]
    return sum(int(m["providers"]) for m in models if m["id"] == model)


def test_requests_on_a_replica_without_the_ledger_are_audited_once_by_the_owner(
    tmp_path: Path, postgres_admin_user: str, tiny_model_dir: Path, tiny_catalog: Path
) -> None:
    name = f"tessera_audits_{int(time.time() * 1000)}"
    asyncio.run(_admin_execute(postgres_admin_user, f'CREATE DATABASE "{name}"'))
    url = f"postgresql://{postgres_admin_user}@127.0.0.1:5432/{name}"
    nats = NatsServer(tmp_path / "nats").start()
    network = Network(tmp_path / "data")
    base = {r: f"http://127.0.0.1:{free_port()}" for r in ("a", "b")}
    keys = [network.data_dir / f"validator-{i}.key" for i in (1, 2)]
    network.data_dir.mkdir(parents=True, exist_ok=True)
    ids = [public_key_hex(load_or_create_key(path)) for path in keys]
    try:
        with environment({"TESSERA_GATEWAY_AUDIT_PROBATION": "100000"}):
            for replica in ("a", "b"):
                port = base[replica].rsplit(":", 1)[1]
                args = ["gateway", "--port", port, "--data-dir", str(network.data_dir),
                        "--database-url", url, "--nats-url", nats.url, "--dev",
                        "--catalog", str(tiny_catalog)]  # fmt: skip
                for pid in ids:
                    args += ["--validator", pid]
                network.spawn(f"gateway-{replica}", args)
                wait_for_network(base[replica], 0, network, timeout_s=60)
        api_key = create_key(network.data_dir, "--database-url", url)
        fund_account(base["a"], api_key, 1_000 * 10**9)
        for index, (replica, key_file) in enumerate(zip(("a", "b"), keys, strict=True), 1):
            stake_provider(base["a"], key_file)
            network.spawn(
                f"validator-{index}",
                [
                    "provider", "--gateway", base[replica], "--model", str(tiny_model_dir),
                    "--label", f"validator on {replica}", "--key-file", str(key_file),
                    "--threads", "1", "--max-concurrent-jobs", "2",
                ],
            )  # fmt: skip
        wait_for_network(base["b"], 2, network, timeout_s=240)
        model = _catalog_model(base["b"])
        wait_routable(base["b"], ids, model, network, timeout_s=240)
        # That is the owner's word (B forwards it there); B's own view follows within the
        # next announcement, a second at most.
        deadline = time.monotonic() + 10
        while _routable_on(base["b"], model) < 2:
            assert time.monotonic() < deadline, "B never saw both validators routable"
            time.sleep(0.1)

        client = openai.OpenAI(base_url=f"{base['b']}/v1", api_key=api_key, max_retries=0)
        served: dict[str, str] = {}  # request id -> provider
        for provider_id in ids:
            for n in range(REQUESTS_PER_PROVIDER):
                raw = client.chat.completions.with_raw_response.create(
                    model=model,
                    messages=[{"role": "user", "content": f"Tell me about the fox, {n}."}],
                    max_tokens=6,
                    temperature=0,
                    extra_body={"provider": {"only": [provider_id]}},
                )
                assert raw.headers["x-tessera-provider"] == provider_id
                served[raw.headers["x-request-id"]] = provider_id
        cases, still_open = wait_for_cases(base["b"], list(served), timeout_s=120)
        assert still_open == [], f"cases never closed: {still_open}"
        for request_id, case in cases.items():
            assert case["status"] == "passed", case
            assert case["provider_id"] == served[request_id]
            auditors = {a["auditor_id"] for a in case["audits"]}
            assert auditors and served[request_id] not in auditors, case
        # Validator 2 (on B) audited validator 1's requests: A asked it through B.
        audited_through_b = [c for r, c in cases.items() if served[r] == ids[0]]
        assert all({a["auditor_id"] for a in c["audits"]} == {ids[1]} for c in audited_through_b)
        audits = httpx.get(f"{base['a']}/v1/audits", params={"limit": 200}, timeout=10).json()
        per_request: dict[str, int] = {}
        for row in audits["data"]:
            if row["request_id"] in served:
                per_request[row["request_id"]] = per_request.get(row["request_id"], 0) + 1
        assert per_request == dict.fromkeys(served, 1)  # audited once, not once per replica
        print(f"\n{len(cases)} requests served by B, every one audited once by A, all passed")
    finally:
        network.stop()
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
