"""Killing processes in the middle of work: the network heals and clients are not hurt."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tessera.demo import wait_for_network
from tessera.dev_money import stake_provider
from tessera.provider.model_hash import weights_sha256

from support.live_network import TEXT_MODEL, LiveNetwork
from support.upstream_process import running_upstream

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "Tell me a story about a fox."}]


def process(live: LiveNetwork, name: str):  # type: ignore[no-untyped-def]
    return next(proc for n, proc in live.network.processes if n == name)


def test_providers_reconnect_after_gateway_is_killed(network: LiveNetwork) -> None:
    gateway = process(network, "gateway")
    gateway.send_signal(signal.SIGKILL)
    gateway.wait(10)
    network.network.processes.remove(("gateway", gateway))
    network.network.spawn(
        "gateway", ["gateway", "--port", str(network.port), "--data-dir", str(network.data_dir)]
    )
    wait_for_network(network.base, 2, network.network, timeout_s=90)
    # The key was stored (hashed) in the gateway's database and still works.
    with network.client(timeout=60) as client:
        reply = client.chat.completions.create(model=TEXT_MODEL, messages=MSG, max_tokens=4)
    assert reply.choices[0].message.content is not None


def test_killed_provider_is_dropped_and_requests_keep_succeeding(network: LiveNetwork) -> None:
    with network.client(timeout=60) as client:
        _killed_provider_scenario(network, client)


def _killed_provider_scenario(network: LiveNetwork, client: OpenAI) -> None:

    def ask(_: int) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=TEXT_MODEL, messages=MSG, max_tokens=24, temperature=0
        )
        return raw.headers["x-tessera-provider"]

    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(ask, i) for i in range(12)]
        time.sleep(0.3)
        process(network, "provider-1").send_signal(signal.SIGKILL)
        served_by = [f.result() for f in pending]  # none may fail
    assert len(served_by) == 12
    deadline = time.monotonic() + 30
    while httpx.get(f"{network.base}/health").json()["providers"] != 1:
        assert time.monotonic() < deadline, "killed provider still listed"
        time.sleep(0.2)
    survivors = {ask(i) for i in range(3)}
    assert len(survivors) == 1

    # With every provider of the model gone, the model is known but unservable: 503.
    process(network, "provider-2").send_signal(signal.SIGKILL)
    while httpx.get(f"{network.base}/health").json()["providers"] != 0:
        assert time.monotonic() < deadline + 30, "killed providers still listed"
        time.sleep(0.2)
    with pytest.raises(openai.InternalServerError) as info:
        ask(0)
    assert info.value.status_code == 503
    assert info.value.code == "no_provider_available"


def test_upstream_provider_serves_and_abandoned_stream_is_cancelled_upstream(
    live_network: LiveNetwork, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A provider fronting an OpenAI-compatible server (as with vLLM), end to end. Nothing
    is killed here, so it joins the shared network, and leaves it as it found it."""
    network = live_network
    connected = httpx.get(f"{network.base}/health").json()["providers"]
    with running_upstream(tiny_model_dir, tmp_path, "tiny-upstream", embeddings=False) as up:
        stake_provider(network.base, network.data_dir / "upstream.key")
        provider = network.network.spawn(
            "provider-upstream",
            [
                "provider",
                "--gateway", network.base,
                "--upstream", up.base_url,
                "--upstream-model", "tiny-upstream",
                "--served-name", "tessera-tiny-upstream",
                "--weights-sha256", weights_sha256(tiny_model_dir),
                "--upstream-context", "1024",
                "--key-file", str(network.data_dir / "upstream.key"),
            ],
        )  # fmt: skip
        try:
            wait_for_network(network.base, connected + 1, network.network, timeout_s=90)
            with network.client(timeout=60) as client:
                _compare_and_abandon(client, up.base_url)
        finally:
            provider.terminate()
            provider.wait(30)
            network.network.processes.remove(("provider-upstream", provider))
            deadline = time.monotonic() + 30
            while httpx.get(f"{network.base}/health").json()["providers"] != connected:
                assert time.monotonic() < deadline, "the upstream provider is still listed"
                time.sleep(0.2)


def _compare_and_abandon(client: OpenAI, upstream_url: str) -> None:
    direct = client.chat.completions.create(
        model=TEXT_MODEL, messages=MSG, max_tokens=16, temperature=0
    )
    via_upstream = client.chat.completions.create(
        model="tessera-tiny-upstream", messages=MSG, max_tokens=16, temperature=0
    )
    # Same weights behind both paths: the same greedy answer.
    assert via_upstream.choices[0].message.content == direct.choices[0].message.content
    assert via_upstream.usage.completion_tokens == direct.usage.completion_tokens

    stream = client.chat.completions.create(
        model="tessera-tiny-upstream",
        messages=MSG,
        max_tokens=800,
        temperature=2.0,
        seed=1,
        stream=True,
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    status = httpx.get(f"{upstream_url.removesuffix('/v1')}/debug/streams").json()
    deadline = time.monotonic() + 20
    while status["abandoned"] < 1:
        assert time.monotonic() < deadline, f"upstream stream never cancelled: {status}"
        time.sleep(0.2)
        status = httpx.get(f"{upstream_url.removesuffix('/v1')}/debug/streams").json()
