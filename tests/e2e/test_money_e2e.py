"""Money as a user meets it: costs in the openai SDK's responses, and the money CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from openai import OpenAI

from tessera.dev_money import DEFAULT_STAKE

from support.live_network import TEXT_MODEL, LiveNetwork

pytestmark = pytest.mark.e2e

MSG = [{"role": "user", "content": "Tell me about the crow."}]


def cli(*args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "tessera.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout) if "--json" in args else done.stdout


def test_costs_reach_the_openai_client_and_the_account(
    client: OpenAI, live_network: LiveNetwork
) -> None:
    base = ("--gateway", live_network.base, "--api-key", live_network.api_key)
    before = cli("account", "balance", *base, "--json")
    raw = client.chat.completions.with_raw_response.create(
        model=TEXT_MODEL, messages=MSG, max_tokens=12, temperature=0
    )
    reply = raw.parse()
    cost = int(raw.headers["x-tessera-cost"])
    assert cost > 0
    assert reply.usage is not None and reply.usage.model_extra == {"cost": cost}
    assert int(raw.headers["x-tessera-max-cost"]) >= cost

    stream = client.chat.completions.create(
        model=TEXT_MODEL,
        messages=MSG,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed_cost = [c.usage.model_extra["cost"] for c in stream if c.usage is not None]
    assert len(streamed_cost) == 1 and streamed_cost[0] > 0

    after = cli("account", "balance", *base, "--json")
    assert after["held"] == 0
    # Other tests share this account; at least these two requests were paid.
    assert before["balance"] - after["balance"] >= cost + streamed_cost[0]
    usage = cli("account", "usage", *base, "--limit", "50", "--json")
    ours = next(r for r in usage["data"] if r["request_id"] == raw.headers["x-request-id"])
    assert ours["cost"] == cost and ours["status"] == "ok"
    assert "request" in cli("account", "usage", *base)  # the table renders


def test_provider_stake_and_earnings_through_the_cli(live_network: LiveNetwork) -> None:
    key = str(live_network.data_dir / "provider-1.key")
    gateway = ("--gateway", live_network.base)
    status = cli("stake", "status", "--key-file", key, *gateway, "--json")
    assert status["bonded"] >= DEFAULT_STAKE and status["connected"] is True
    bonded = status["bonded"]
    cli("stake", "fund", "2", "--key-file", key, *gateway)
    cli("stake", "bond", "2", "--key-file", key, *gateway)
    cli("stake", "unbond", "1", "--key-file", key, *gateway)
    status = cli("stake", "status", "--key-file", key, *gateway, "--json")
    assert status["bonded"] == bonded + 10**9
    assert status["unbonding"][-1]["amount"] == 10**9  # slashable for the unbonding delay
    assert status["routable"] is True
    refused = subprocess.run(
        [sys.executable, "-m", "tessera.cli", "earnings", "withdraw", "1000000", "--key-file", key,
         *gateway],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "not enough funds" in refused.stdout + refused.stderr
