"""The tenant tag a job carries to its provider: stable per account at one provider,
different at another, absent without an account, and outside the receipt's prompt hash."""

from __future__ import annotations

import json
import random
from pathlib import Path

from nacl.signing import SigningKey

from tessera.config import GatewaySettings
from tessera.gateway.hub import ProviderHub, ProviderSession, tenant_tag
from tessera.gateway.metrics import GatewayMetrics
from tessera.market.registry import ProviderRegistry
from tessera.market.routing import RouteRequest
from tessera.protocol.receipts import prompt_sha256
from tessera.protocol.wire import Job, SamplingParams

from support.scripted_peers import caps_for


class Recorder:
    """Stands in for a provider's WebSocket: keeps what the hub sends."""

    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))


def hub_with(tmp_path: Path, providers: int) -> tuple[ProviderHub, dict[str, Recorder]]:
    settings = GatewaySettings(data_dir=tmp_path, dev_mode=True)
    registry = ProviderRegistry()
    hub = ProviderHub(settings, registry, GatewayMetrics(), rng=random.Random(1))
    sockets = {}
    for _ in range(providers):
        caps = caps_for(SigningKey.generate(), slots=8, model="m")
        registry.add(caps.public_key, caps, now=0.0)
        sockets[caps.public_key] = Recorder()
        hub.sessions[caps.public_key] = ProviderSession(
            caps.public_key,
            sockets[caps.public_key],
            last_seen=0.0,  # type: ignore[arg-type]
        )
    return hub, sockets


def job(n: int) -> Job:
    return Job(
        job_id=f"r{n}.0", model="m", kind="completion", prompts=["x"],
        params=SamplingParams(max_tokens=1),
    )  # fmt: skip


async def test_jobs_carry_the_accounts_tag_for_the_provider_they_go_to(tmp_path: Path) -> None:
    hub, sockets = hub_with(tmp_path, providers=1)
    ((provider_id, socket),) = sockets.items()
    for n, account in enumerate(["alice", "alice", "bob", None]):
        stream = await hub.open_job(job(n), RouteRequest("m", account=account), set())
        await stream.close()
    tags = [frame["tenant"] for frame in socket.sent if frame["type"] == "job"]
    alice, bob = tenant_tag("alice", provider_id), tenant_tag("bob", provider_id)
    assert tags == [alice, alice, bob, None]
    assert alice != bob and len(alice) == 16
    assert "alice" not in json.dumps(socket.sent)


async def test_two_providers_see_unlinkable_tags_and_one_prompt_hash(tmp_path: Path) -> None:
    hub, sockets = hub_with(tmp_path, providers=2)
    seen: dict[str, Job] = {}
    n = 0
    while len(seen) < 2 and n < 200:  # the router spreads jobs over both in time
        stream = await hub.open_job(job(n), RouteRequest("m", account="alice"), set())
        seen[stream.provider_id] = Job.model_validate(sockets[stream.provider_id].sent[-1])
        n += 1
    first, second = seen.values()
    assert first.tenant != second.tenant
    assert prompt_sha256(first) == prompt_sha256(job(0).model_copy(update={"job_id": first.job_id}))
    assert prompt_sha256(first) == prompt_sha256(second)
