"""Two gateway replicas on one PostgreSQL database and a private NATS: one network.

Real processes on 127.0.0.1: a private nats-server with JetStream, a fresh PostgreSQL
database, gateway A (started first: it owns the ledger) and gateway B (pays through A),
both with ``--nats-url``, and a provider agent with the tiny model connected to B only.
The official openai client calls both replicas. The tests run in order on one network:
requests on A are served by B's provider, B's requests are paid through A, account
requests on B are answered by A, a small balance spent from both replicas at once never
goes below zero, a revoked key is refused everywhere within a second, NATS restarts under
the cluster, and finally A is SIGKILLed and B takes the ledger over in place.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import openai
import pytest

from tessera.demo import Network, free_port, wait_for_network
from tessera.dev_money import fund_account, stake_provider
from tessera.key_file import load_or_create_key
from tessera.protocol.signing import public_key_hex

from support.databases import _admin_execute
from support.live_network import TEXT_MODEL, provider_key_file, start_provider
from support.nats_server import NatsServer
from support.tiny_model import ensure_tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

MSG = [{"role": "user", "content": "Tell me about the fox."}]


@dataclass
class Cluster:
    network: Network
    nats: NatsServer
    url: str  # the database
    base: dict[str, str]  # replica name -> its address
    key: str
    key_id: str

    def client(self, replica: str, key: str | None = None, **kw: object) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.base[replica]}/v1",
            api_key=key or self.key,
            max_retries=0,
            **kw,  # type: ignore[arg-type]
        )

    def _get_account(self, replica: str, key: str | None = None) -> httpx.Response:
        return httpx.get(
            f"{self.base[replica]}/v1/account",
            headers={"Authorization": f"Bearer {key or self.key}"},
            timeout=10,
        )

    def account(self, replica: str, key: str | None = None) -> dict[str, object]:
        response = self._get_account(replica, key)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def balance(self, replica: str) -> int | None:
        """The balance, or None while the answer is a 503 to retry (a takeover under way)."""
        response = self._get_account(replica)
        if response.status_code == 503 and "retry" in response.text:
            return None
        assert response.status_code == 200, response.text
        return int(response.json()["balance"])

    def log(self, name: str) -> str:
        return " ".join((self.network.data_dir / "logs" / f"{name}.log").read_text().split())


def _cli(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tessera.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _new_key(cluster_url: str, data_dir: Path) -> dict[str, str]:
    where = ["--data-dir", str(data_dir), "--database-url", cluster_url]
    return dict(json.loads(_cli("keys", "create", "--json", *where)))


def _gateway(network: Network, name: str, port: int, url: str, nats: str) -> None:
    where = ["--data-dir", str(network.data_dir), "--database-url", url, "--nats-url", nats]
    network.spawn(name, ["gateway", "--port", str(port), *where, "--dev"])


def _wait(predicate: object, timeout_s: float, what: str) -> float:
    """Seconds until ``predicate()`` held; fails naming ``what`` after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if predicate():  # type: ignore[operator]
                return time.monotonic() - started
        except (httpx.HTTPError, openai.APIError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_admin_user: str
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    name = f"tessera_replicas_{int(time.time() * 1000)}"
    asyncio.run(_admin_execute(postgres_admin_user, f'CREATE DATABASE "{name}"'))
    url = f"postgresql://{postgres_admin_user}@127.0.0.1:5432/{name}"
    nats = NatsServer(tmp / "nats").start()
    network = Network(tmp / "data")
    ports = {"a": free_port(), "b": free_port()}
    base = {r: f"http://127.0.0.1:{p}" for r, p in ports.items()}
    try:
        _gateway(network, "gateway-a", ports["a"], url, nats.url)
        wait_for_network(base["a"], 0, network, timeout_s=60)
        _gateway(network, "gateway-b", ports["b"], url, nats.url)
        wait_for_network(base["b"], 0, network, timeout_s=60)
        made = _new_key(url, network.data_dir)
        fund_account(base["a"], made["key"])
        stake_provider(base["a"], provider_key_file(network, 1))
        start_provider(network, base["b"], ensure_tiny_model(), 1, "US-east", embeddings=True)
        health = wait_for_network(base["a"], 1, network, timeout_s=240)  # seen from A too
        wait_for_network(base["b"], 1, network, timeout_s=30)
        assert health["providers"] == 1
        yield Cluster(network, nats, url, base, made["key"], made["id"])
    finally:
        network.stop()
        nats.stop()
        asyncio.run(
            _admin_execute(postgres_admin_user, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )


def test_every_request_type_on_either_replica_is_served_and_paid_once(cluster: Cluster) -> None:
    before = int(cluster.account("a")["balance"])  # type: ignore[call-overload]
    served_by = set()
    for replica in ("a", "b"):  # A: relayed to B's provider; B: its own, paid through A
        with cluster.client(replica, timeout=60) as client:
            raw = client.chat.completions.with_raw_response.create(
                model=TEXT_MODEL, messages=MSG, max_tokens=6, temperature=0
            )
            served_by.add(raw.headers["x-tessera-provider"])
            chat = raw.parse()
            assert chat.choices[0].message.content
            assert chat.usage is not None and chat.usage.completion_tokens > 0
            streamed = client.chat.completions.create(
                model=TEXT_MODEL,
                messages=MSG,
                max_tokens=6,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(streamed)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == chat.choices[0].message.content  # greedy: the same answer
            usage = [c.usage for c in chunks if c.usage is not None]
            assert usage and usage[-1].completion_tokens == chat.usage.completion_tokens
            completion = client.completions.create(model=TEXT_MODEL, prompt="The fox", max_tokens=4)
            assert completion.choices[0].text
            vectors = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a", "b"])
            assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 384
            receipt = httpx.get(
                f"{cluster.base[replica]}/v1/receipts/{raw.headers['x-request-id']}",
                headers={"Authorization": f"Bearer {cluster.key}"},
                timeout=10,
            )
            assert receipt.status_code == 200, receipt.text
    assert len(served_by) == 1  # the one provider, on B, served A's requests too
    # Account requests on B are answered by A, the ledger's owner: both say the same.
    seen_a, seen_b = cluster.account("a"), cluster.account("b")
    assert seen_a["balance"] == seen_b["balance"]
    assert seen_a["held"] == 0
    assert int(seen_a["balance"]) < before  # type: ignore[call-overload]
    assert "pays through it" in cluster.log("gateway-b")


def test_a_small_balance_spent_from_both_replicas_never_goes_below_zero(cluster: Cluster) -> None:
    made = _new_key(cluster.url, cluster.network.data_dir)
    key = made["key"]
    with cluster.client("a", key=key, timeout=60) as probe:
        fund_account(cluster.base["a"], key, units=1)
        try:  # one unit cannot pay for anything: learn the worst case from the refusal
            probe.chat.completions.create(model=TEXT_MODEL, messages=MSG, max_tokens=4)
        except openai.APIStatusError as exc:
            assert exc.status_code == 402 or exc.status_code == 429, exc
    raw = httpx.post(
        f"{cluster.base['a']}/v1/chat/completions",
        headers={"Authorization": f"Bearer {cluster.key}"},
        json={"model": TEXT_MODEL, "messages": MSG, "max_tokens": 4},
        timeout=60,
    )
    hold = int(raw.headers["x-tessera-max-cost"])
    assert hold > 0
    fund_account(cluster.base["a"], key, units=hold * 3 - 1)  # room for 3 holds at most
    outcomes: Counter[str] = Counter()
    lowest: list[int] = []

    def spend(replica: str) -> None:
        with cluster.client(replica, key=key, timeout=60) as client:
            try:
                client.chat.completions.create(model=TEXT_MODEL, messages=MSG, max_tokens=4)
                outcomes["ok"] += 1
            except openai.APIStatusError as exc:
                outcomes[str(exc.status_code)] += 1

    def watch(stop: threading.Event) -> None:
        while not stop.is_set():
            lowest.append(int(cluster.account("b", key)["balance"]))  # type: ignore[call-overload]
            time.sleep(0.05)

    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(stop,))
    watcher.start()
    spenders = [threading.Thread(target=spend, args=("ab"[i % 2],)) for i in range(10)]
    for thread in spenders:
        thread.start()
    for thread in spenders:
        thread.join(120)
    stop.set()
    watcher.join(10)
    after = cluster.account("a", key)
    print(f"\nten requests on one small balance from both replicas: {dict(outcomes)}")
    assert 1 <= outcomes["ok"] <= 3 + 2  # holds fit 3 at once; settled ones free room
    assert set(outcomes) <= {"ok", "402", "429", "503"}
    assert min(lowest) >= 0 and int(after["balance"]) >= 0  # type: ignore[call-overload]
    assert after["held"] == 0


def test_a_revoked_key_is_refused_by_every_replica_long_before_the_cache_expires(
    cluster: Cluster,
) -> None:
    made = _new_key(cluster.url, cluster.network.data_dir)
    fund_account(cluster.base["a"], made["key"], units=10_000)
    for replica in ("a", "b"):
        assert cluster.account(replica, made["key"])["id"]
    where = ["--data-dir", str(cluster.network.data_dir), "--database-url", cluster.url]
    _cli("keys", "revoke", made["id"], *where)
    revoked_at = time.monotonic()

    def refused(replica: str) -> bool:
        response = httpx.get(
            f"{cluster.base[replica]}/v1/models",
            headers={"Authorization": f"Bearer {made['key']}"},
            timeout=5,
        )
        chat = httpx.post(
            f"{cluster.base[replica]}/v1/chat/completions",
            headers={"Authorization": f"Bearer {made['key']}"},
            json={"model": TEXT_MODEL, "messages": MSG, "max_tokens": 2},
            timeout=30,
        )
        return chat.status_code == 401 and response.status_code in (200, 401)

    for replica in ("a", "b"):
        # The replicas cache a key for 30 s: only the key-change watcher can refuse it sooner.
        _wait(lambda r=replica: refused(r), 10, f"replica {replica} refusing the revoked key")
    print(f"\nrevoked key refused by both replicas {time.monotonic() - revoked_at:.2f} s after")


def test_the_owner_counts_uptime_for_a_provider_connected_to_another_replica(
    cluster: Cluster,
) -> None:
    key_file = provider_key_file(cluster.network, 1)
    provider_id = public_key_hex(load_or_create_key(key_file))
    for replica in ("a", "b"):  # B forwards it to A, where uptime is counted
        response = httpx.get(f"{cluster.base[replica]}/v1/providers/{provider_id}/uptime")
        assert response.status_code == 200, response.text
        current = response.json()["current"]
        assert current is not None and current["connected"] is True, response.json()
        assert current["down_ms"] == 0


def test_the_cluster_recovers_from_a_nats_restart_without_restarting_a_gateway(
    cluster: Cluster,
) -> None:
    cluster.nats.stop()
    time.sleep(1)
    cluster.nats.start()
    restarted = time.monotonic()

    def served_on_a() -> bool:
        with cluster.client("a", timeout=30) as client:
            client.chat.completions.create(model=TEXT_MODEL, messages=MSG, max_tokens=2)
        return True

    took = _wait(served_on_a, 30, "a request on A served by B's provider after NATS restarted")
    print(f"\nafter NATS restarted, A served through B again in {took:.1f} s")
    assert cluster.network.dead() == []
    assert time.monotonic() - restarted < 30


def test_the_ledger_owner_killed_another_replica_takes_it_over_in_place(cluster: Cluster) -> None:
    before = cluster.account("b")
    owner = next(p for n, p in cluster.network.processes if n == "gateway-a")
    owner.send_signal(signal.SIGKILL)
    owner.wait(10)
    cluster.network.processes.remove(("gateway-a", owner))

    def served_on_b() -> bool:
        with cluster.client("b", timeout=30) as client:
            client.chat.completions.create(model=TEXT_MODEL, messages=MSG, max_tokens=2)
        return True

    took = _wait(served_on_b, 30, "B serving a paid request after the owner was killed")
    print(f"\nB took the ledger over and served {took:.1f} s after the owner was killed")
    assert "takes the ledger over" in cluster.log("gateway-b")
    after = cluster.account("b")  # answered by B itself now
    assert int(after["balance"]) < int(before["balance"])  # type: ignore[call-overload]
    assert after["held"] == 0
    fund_account(cluster.base["b"], cluster.key, units=5)
    assert cluster.network.dead() == []  # the provider kept its connection to B throughout
    checked = subprocess.run(
        [sys.executable, "-m", "tessera.cli", "ledger", "check", "--database-url", cluster.url],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def _end_owner_session(user: str, database: str) -> int:
    """End the ledger owner's lock session from outside (a cut connection, a DBA's
    pg_terminate_backend): the advisory lock goes with it."""
    conn = await asyncpg.connect(host="127.0.0.1", port=5432, user=user, database="postgres")
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND application_name LIKE 'tessera ledger owner:%'",
            database,
        )
    finally:
        await conn.close()
    return len(rows)


def test_an_owner_that_loses_its_lock_stops_answering_for_the_ledger_and_pays_through_the_new_one(
    tmp_path: Path, postgres_admin_user: str
) -> None:
    name = f"tessera_lock_{int(time.time() * 1000)}"
    asyncio.run(_admin_execute(postgres_admin_user, f'CREATE DATABASE "{name}"'))
    url = f"postgresql://{postgres_admin_user}@127.0.0.1:5432/{name}"
    nats = NatsServer(tmp_path / "nats").start()
    network = Network(tmp_path / "data")
    base = {r: f"http://127.0.0.1:{free_port()}" for r in ("a", "b")}
    try:
        for replica in ("a", "b"):
            port = int(base[replica].rsplit(":", 1)[1])
            _gateway(network, f"gateway-{replica}", port, url, nats.url)
            wait_for_network(base[replica], 0, network, timeout_s=60)
        key = _new_key(url, network.data_dir)["key"]
        fund_account(base["b"], key, units=100)  # on B, answered by A, the owner
        assert asyncio.run(_end_owner_session(postgres_admin_user, name)) == 1
        cluster = Cluster(network, nats, url, base, key, "")
        _wait(
            lambda: "takes the ledger over" in cluster.log("gateway-b"),
            20,
            "B taking the ledger over",
        )
        # A forwards it to B now; until A notices, its own journal's fence refuses it.
        # Retried with one Idempotency-Key, as a client must: an error answered while the
        # ownership moves does not prove the deposit was not made.
        deposit = uuid.uuid4().hex
        _wait(
            lambda: bool(fund_account(base["a"], key, units=5, idempotency_key=deposit)),
            10,
            "a deposit through A after its lock was lost",
        )
        # Exactly once, and both replicas answer from B's book (retrying a 503 "retry").
        _wait(
            lambda: cluster.balance("a") is not None and cluster.balance("b") is not None,
            10,
            "both replicas answering for the account",
        )
        assert cluster.balance("a") == cluster.balance("b") == 105
        _wait(
            lambda: "no longer holds the ledger's ownership lock" in cluster.log("gateway-a"),
            10,
            "A noticing that it lost the lock",
        )
        assert network.dead() == []
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
