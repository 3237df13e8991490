"""A provider's compute is shared by account, not by job.

With the real tiny model: while one tenant keeps six streams going, another tenant's one
stream gets every other forward pass, so its answer arrives in about twice its alone time
instead of seven times (the issue 11 flood). And through a real gateway and agent, the
backend learns each job's tenant: the gateway's tag for the paying account at this
provider, never the account itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from nacl.signing import SigningKey

from tessera.config import ProviderSettings
from tessera.gateway.hub import tenant_tag
from tessera.protocol.signing import public_key_hex
from tessera.protocol.wire import Hardware, ModelOffer, SamplingParams
from tessera.provider.agent import ProviderAgent, ServedModel
from tessera.provider.backends.base import (
    BackendError,
    CancelToken,
    Delta,
    Finish,
    ModelInfo,
    Prompt,
    ScoreRequest,
    ScoreResult,
    TokenLogprob,
)
from tessera.provider.backends.transformers_text import TransformersTextBackend

from support.scripted_peers import account, live_gateway, wait_providers

FLOOD_STREAMS = 6
HONEST_TOKENS = 24
SHORT_TOKENS = 5


class TenantStreams:
    """Streams on one backend, each for a tenant; the order their deltas arrive in."""

    def __init__(self, backend: TransformersTextBackend) -> None:
        self.backend = backend
        self.arrivals: list[tuple[str, int]] = []  # (tenant, tokens) as deltas arrive
        self.stop = asyncio.Event()

    async def consume(self, tenant: str, max_tokens: int, seed: int) -> int:
        params = SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=seed)
        produced = 0
        async for event in self.backend.stream("Once upon a time", params, CancelToken(tenant)):
            if isinstance(event, Delta):
                self.arrivals.append((tenant, len(event.logprobs)))
                produced += len(event.logprobs)
        return produced

    async def flood(self, n: int) -> None:
        seed = 1000 * n
        while not self.stop.is_set():
            seed += 1
            await self.consume("f100d", 64, seed)

    async def flood_decoding(self) -> None:
        """Until every flood stream is decoding."""
        while sum(t for who, t in self.arrivals if who == "f100d") < 3 * FLOOD_STREAMS:
            await asyncio.sleep(0.005)


async def test_one_stream_is_not_starved_by_another_tenants_six(
    text_backend: TransformersTextBackend,
) -> None:
    streams = TenantStreams(text_backend)
    flooders = [asyncio.create_task(streams.flood(n)) for n in range(FLOOD_STREAMS)]
    try:
        await streams.flood_decoding()
        start = len(streams.arrivals)
        honest = 0
        for seed in range(20):  # the tiny model may end an answer early: ask again
            honest += await streams.consume("0be57", HONEST_TOKENS, seed)
            if honest >= HONEST_TOKENS:
                break
    finally:
        streams.stop.set()
        await asyncio.gather(*flooders)
    arrivals = streams.arrivals
    last = max(i for i, (who, _) in enumerate(arrivals) if who != "f100d")
    during = arrivals[start : last + 1]  # the floods run on to the end of their answers
    flood_tokens = sum(t for who, t in during if who == "f100d")
    assert honest >= HONEST_TOKENS
    # Fair turns: the honest stream's first passes run back to back (its idle credit),
    # then about one flood pass per honest one, plus slack for the passes in flight when
    # it starts, for tokens held back a step, and for a busy machine (measured 66 flood
    # tokens for 24 with a turn per pass and both cores taken by other work, 2.75 to 1).
    # Shared by job, the flood makes six or more for each honest one (203 for 24).
    assert flood_tokens <= 3 * honest + 2 * FLOOD_STREAMS, (honest, flood_tokens)


async def test_a_short_answer_runs_back_to_back_beside_another_tenants_six(
    text_backend: TransformersTextBackend,
) -> None:
    """An account that was idle gets its short answer's passes one after another (its
    idle credit), not one flood pass between each two: its answer takes about its alone
    time, not twice it."""
    streams = TenantStreams(text_backend)
    flooders = [asyncio.create_task(streams.flood(n)) for n in range(FLOOD_STREAMS)]
    between: list[int] = []
    try:
        for seed in range(5):
            await streams.flood_decoding()
            await asyncio.sleep(0.05)  # the honest tenant has been idle a while
            tenant = f"0be57-{seed}"
            assert await streams.consume(tenant, SHORT_TOKENS, seed) > 0
            mine = [i for i, (who, _) in enumerate(streams.arrivals) if who == tenant]
            during = streams.arrivals[mine[0] : mine[-1]]
            between.append(sum(t for who, t in during if who == "f100d"))
    finally:
        streams.stop.set()
        await asyncio.gather(*flooders)
    # Flood tokens between the answer's first and last token, in each of five tries: 0 now;
    # 4 to 6 with a turn per pass, when the decoding loop was never waiting as its pass
    # ended and a flood job took every other turn.
    assert sorted(between)[2] <= 1, between


INFO = ModelInfo("tenant-probe", "b" * 64, "text", 2048)
OFFER = ModelOffer(
    name=INFO.name, weights_sha256=INFO.weights_sha256, kind=INFO.kind, context_length=2048
)


class TenantRecorder:
    """A text backend answering one token, keeping each job's tenant."""

    info = INFO

    def __init__(self) -> None:
        self.tenants: list[str] = []

    async def stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: CancelToken,
        continue_from: Sequence[int] = (),
    ) -> AsyncIterator[Delta | Finish]:
        self.tenants.append(cancel.tenant)
        yield Delta("ok", (TokenLogprob("ok", 7, -0.1),))
        yield Finish("stop", 3, 1)

    async def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        raise BackendError("no", "audit_unsupported")

    async def close(self) -> None:
        pass


async def test_the_backend_learns_the_accounts_tag_not_the_account(tmp_path: Path) -> None:
    key = SigningKey(bytes(range(1, 33)))
    backend = TenantRecorder()
    async with live_gateway(tmp_path) as gw:
        settings = ProviderSettings(gateway_urls=[gw.base])
        hardware = Hardware(cpu="test", cpu_cores=1, ram_bytes=1)
        agent = ProviderAgent(settings, key, [ServedModel(OFFER, backend)], hardware)
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        try:
            await wait_providers(gw, 1, timeout_s=30)
            async with gw.client() as client:
                for _ in range(2):
                    response = await client.post(
                        "/v1/chat/completions",
                        json={
                            "model": INFO.name,
                            "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 1,
                        },
                    )
                    assert response.status_code == 200, response.text
                account_id = (await account(client))["id"]
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)
    expected = tenant_tag(account_id, public_key_hex(key))
    assert backend.tenants == [expected, expected]
    assert account_id not in expected
