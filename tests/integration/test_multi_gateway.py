"""One provider serving two independent gateways: no single operator can cut it off.

Real processes on 127.0.0.1: gateways A and B (each its own data directory, SQLite
database and ledger, the provider's stake bonded on each) and ONE `tessera provider` with
the tiny model, started with ``--gateway A --gateway B``. The official openai client talks
to both. A is killed with SIGKILL in the middle of a stream and restarted on the same port
and data directory; B must serve throughout, the provider must find A again on its own,
and each gateway's journal must charge exactly the requests that gateway answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tessera.ledger.accounts import earnings_of
from tessera.ledger.escrow import CAPTURE, HOLD, RELEASE

from support.live_network import TEXT_MODEL
from support.multi_gateway import (
    GatewayProcess,
    MultiGatewayNetwork,
    ledger_check,
    start_multi_gateway,
    wait_routable,
)
from support.stored_journal import stored_journal

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MSG = [{"role": "user", "content": "Tell me a story about a fox."}]
# Small reconnect backoff, so a restarted gateway is found again within about a second.
PROVIDER_ENV = {"TESSERA_PROVIDER_BACKOFF_INITIAL_S": "0.2", "TESSERA_PROVIDER_BACKOFF_MAX_S": "1"}


@dataclass
class Served:
    """What the client saw each gateway answer: request id -> cost, per gateway."""

    costs: dict[str, dict[str, int]] = field(default_factory=dict)
    aborted: dict[str, set[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ask(self, gateway: GatewayProcess, max_tokens: int = 4) -> str:
        """One chat completion on ``gateway``; returns the provider that served it."""
        with gateway.client(timeout=60) as client:
            raw = client.chat.completions.with_raw_response.create(
                model=TEXT_MODEL, messages=MSG, max_tokens=max_tokens, temperature=0
            )
        raw.parse()
        with self.lock:
            self.costs.setdefault(gateway.name, {})[raw.headers["x-request-id"]] = int(
                raw.headers["x-tessera-cost"]
            )
        return raw.headers["x-tessera-provider"]


@pytest.fixture(scope="module")
def multi(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[MultiGatewayNetwork]:
    live = start_multi_gateway(
        tmp_path_factory.mktemp("multi-gateway"), tiny_model_dir, provider_env=PROVIDER_ENV
    )
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def served() -> Served:
    return Served()


def test_both_gateways_route_to_the_one_provider(
    multi: MultiGatewayNetwork, served: Served
) -> None:
    for gateway in multi.gateways.values():
        assert served.ask(gateway) == multi.provider_id
        view = gateway.get(f"/v1/providers/{multi.provider_id}")
        assert view["connected"] and view["routable"] and view["label"] == "multi-gateway"
        assert gateway.get("/health")["providers"] == 1
        models = {m["id"]: m for m in gateway.get("/v1/models")["data"]}
        assert models[TEXT_MODEL]["providers"] == 1


class Load:
    """Sequential requests to one gateway in a thread, recording every outcome."""

    def __init__(self, served: Served, gateway: GatewayProcess) -> None:
        self.served, self.gateway = served, gateway
        self.stop = threading.Event()
        self.ok: list[tuple[float, float, str]] = []  # (start, end, provider)
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                provider = self.served.ask(self.gateway)
            except Exception as exc:  # every failure is the finding; none is expected
                self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.1)
            else:
                self.ok.append((start, time.monotonic(), provider))

    def wait_for(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.ok) < count and not self.errors:
            assert time.monotonic() < deadline, f"{self.gateway.name} served {len(self.ok)}"
            time.sleep(0.05)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(60)


def stream_until_cut(
    gateway: GatewayProcess, started: threading.Event, outcome: dict[str, str]
) -> None:
    """A long stream on ``gateway``; records its request id and how it ended."""
    try:
        with gateway.client(timeout=60) as client:
            with client.chat.completions.with_streaming_response.create(
                model=TEXT_MODEL,
                messages=MSG,
                max_tokens=800,
                temperature=2.0,
                seed=1,
                stream=True,
            ) as response:
                outcome["request_id"] = response.headers["x-request-id"]
                for chunk in response.parse():
                    if chunk.choices and chunk.choices[0].delta.content:
                        started.set()
        outcome["end"] = "finished"
    except Exception as exc:
        outcome["end"] = f"{type(exc).__name__}: {exc}"
    finally:
        started.set()


def test_b_serves_while_a_is_killed_and_the_provider_finds_a_again(
    multi: MultiGatewayNetwork, served: Served
) -> None:
    a, b = multi.gateways["a"], multi.gateways["b"]
    load = Load(served, b)
    load.thread.start()
    try:
        load.wait_for(2)
        # A is streaming through the provider when it dies: the provider loses that job.
        started, cut = threading.Event(), dict[str, str]()
        streamer = threading.Thread(target=stream_until_cut, args=(a, started, cut), daemon=True)
        streamer.start()
        assert started.wait(60), cut
        multi.kill_gateway("a")
        killed_at, served_at_kill = time.monotonic(), len(load.ok)
        streamer.join(60)
        assert cut["end"] != "finished", "the stream on A ended before A was killed"
        served.aborted.setdefault("a", set()).add(cut["request_id"])
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{a.base}/health", timeout=5)
        load.wait_for(served_at_kill + 3)  # B answers while A is down

        multi.restart_gateway("a")
        # Nothing is done to the provider: it must redial A by itself.
        wait_routable(a, multi.provider_id, multi.network, timeout_s=60)
        back_at = time.monotonic()
        assert served.ask(a) == multi.provider_id
        load.wait_for(len(load.ok) + 2)
    finally:
        load.finish()
    assert load.errors == [], load.errors
    assert {provider for _, _, provider in load.ok} == {multi.provider_id}
    during = [r for r in load.ok if killed_at < r[1] <= back_at]
    assert len(during) >= 3, "B stopped answering while A was down"
    view = b.get(f"/v1/providers/{multi.provider_id}")
    assert view["connected"] and view["routable"]

    # The job lost with A gave its slot back: both slots serve B at once again.
    with ThreadPoolExecutor(2) as pool:
        assert set(pool.map(lambda _: served.ask(b), range(2))) == {multi.provider_id}


def test_each_gateway_bills_only_what_it_served(multi: MultiGatewayNetwork, served: Served) -> None:
    for gateway in multi.gateways.values():
        served.ask(gateway)  # each gateway has answered at least once
    journals = {}
    for name, gateway in multi.gateways.items():
        mine = served.costs[name]
        # The journal is written in batches: wait until every answered request is on disk.
        deadline = time.monotonic() + 30
        while True:
            entries, problems = stored_journal(gateway.data_dir)
            captured = {
                e.reference: int(e.memo_dict()["cost"]) for e in entries if e.kind == CAPTURE
            }
            if set(mine) <= set(captured) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        journals[name] = captured
        assert problems == []
        checked = ledger_check(gateway.data_dir)
        assert checked.returncode == 0, checked.stdout + checked.stderr

        # Exactly what this gateway answered was charged, at the cost the client was told.
        assert captured == mine
        holds = {e.reference for e in entries if e.kind == HOLD}
        settled = [e.reference for e in entries if e.kind in (CAPTURE, RELEASE)]
        assert sorted(settled) == sorted(holds), "a hold settled twice or never"
        for request_id in served.aborted.get(name, set()):
            assert request_id not in captured
            releases = [e for e in entries if e.kind == RELEASE and e.reference == request_id]
            assert len(releases) == (1 if request_id in holds else 0)
            assert all(e.memo_dict()["reason"] == "gateway_restart" for e in releases)

        account = gateway.get("/v1/account")
        assert account["held"] == 0
        assert account["balance"] == multi.funds - sum(mine.values())
        earned = sum(
            p.amount
            for e in entries
            if e.kind == CAPTURE
            for p in e.postings
            if p.account == earnings_of(multi.provider_id)
        )
        provider = gateway.get(f"/v1/providers/{multi.provider_id}")
        assert 0 < provider["earnings"] == earned < sum(mine.values())
    # Each operator's ledger knows only its own requests.
    assert not set(journals["a"]) & set(journals["b"])
