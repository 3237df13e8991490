"""Per-key and per-account fairness through a real gateway: concurrency and rate limits
answered with 429 and Retry-After, slots released however a request ends, bounded
hedging, and a fast 503 instead of a long queue when the gateway is overloaded.

A scripted provider reads what each job asks for from its prompt: "hold" jobs wait
until the test lets them go, "crash" jobs fail, "trickle" jobs send one chunk and wait,
anything else is answered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from tessera.dev_money import fund_account
from tessera.store.api_keys import ApiKeyStore, KeyLimits
from tessera.store.engine import create_engine, database_url_for

from support.scripted_peers import (
    LiveGateway,
    Peer,
    answer,
    chat_body,
    journal_problems,
    live_gateway,
    wait_providers,
)


class Provider:
    """A scripted provider that serves jobs by what their prompt asks for."""

    def __init__(self, peer: Peer, delay_s: float = 0.0) -> None:
        self.peer = peer
        self.delay_s = delay_s
        self.jobs: list[dict[str, Any]] = []
        self.cancels: list[str] = []
        self.release = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def held(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs if "hold" in _prompt(j)]

    async def serve(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = json.loads(await self.peer.ws.recv())
                if frame["type"] == "job":
                    self.jobs.append(frame)
                    task = asyncio.create_task(self._run(frame))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif frame["type"] == "cancel":
                    self.cancels.append(frame["job_id"])

    async def _run(self, job: dict[str, Any]) -> None:
        prompt = _prompt(job)
        if "crash" in prompt:
            await self.peer.send(
                {
                    "type": "job_error",
                    "job_id": job["job_id"],
                    "code": "backend_crashed",
                    "message": "scripted crash",
                }
            )
            return
        if "trickle" in prompt:
            chunk = {
                "type": "chunk",
                "job_id": job["job_id"],
                "text": "a",
                "tokens": 1,
                "token_ids": [],
                "token_logprobs": [],
            }
            await self.peer.send(chunk)
            await self.release.wait()
            return
        if "hold" in prompt:
            await self.release.wait()
        await asyncio.sleep(self.delay_s)
        await answer(self.peer, job)


def _prompt(job: dict[str, Any]) -> str:
    return json.dumps(job.get("messages"))


@asynccontextmanager
async def providers(gw: LiveGateway, *specs: tuple[int, float]) -> AsyncIterator[list[Provider]]:
    """One scripted provider per (slots, answer delay in seconds)."""
    out: list[Provider] = []
    tasks: list[asyncio.Task[None]] = []
    for slots, delay_s in specs:
        peer = await Peer.open(gw.ws_url)
        assert (await peer.register(slots=slots))["type"] == "welcome"
        provider = Provider(peer, delay_s)
        tasks += [asyncio.create_task(provider.serve()), asyncio.create_task(peer.beat_forever())]
        out.append(provider)
    await wait_providers(gw, len(out))
    try:
        yield out
    finally:
        for provider in out:
            provider.release.set()
        await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        for provider in out:
            await provider.peer.close()


async def new_key(
    gw: LiveGateway,
    name: str,
    limits: KeyLimits | None = None,
    account_id: str | None = None,
) -> tuple[str, str]:
    """A funded key (plaintext, account id) in the gateway's database."""
    engine = create_engine(database_url_for(gw.settings.data_dir))
    try:
        key, record = await ApiKeyStore(engine).create(name, limits=limits, account_id=account_id)
    finally:
        await engine.dispose()
    if account_id is None:
        await asyncio.to_thread(fund_account, gw.base, key, 10**12)
    return key, record.account_id


def client_for(gw: LiveGateway, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gw.base,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
        limits=httpx.Limits(max_connections=200),
    )


def says(text: str, **extra: Any) -> dict[str, Any]:
    return chat_body(messages=[{"role": "user", "content": text}], **extra)


def assert_limited(response: httpx.Response, code: str) -> int:
    """A 429 rate-limit answer with ``code``; returns its Retry-After in seconds."""
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", code), error
    retry_after = int(response.headers["retry-after"])
    retry_after_ms = int(response.headers["retry-after-ms"])  # what the openai SDK waits
    assert retry_after >= 1 and retry_after == max(1, -(-retry_after_ms // 1000))
    return retry_after


async def until(condition: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


async def admitted(client: httpx.AsyncClient, timeout_s: float = 5.0) -> httpx.Response:
    """A plain request, retried while it is refused for concurrency (a slot frees late)."""
    async with asyncio.timeout(timeout_s):
        while True:
            response = await client.post("/v1/chat/completions", json=says("hello"))
            if response.status_code != 429:
                return response
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------- fairness


async def test_a_flooding_key_is_refused_beyond_its_limit_and_another_key_is_served(
    gateway_dir: Path,
) -> None:
    async with (
        live_gateway(gateway_dir, key_max_concurrent_requests=4) as gw,
        providers(gw, (8, 0.0)) as (provider,),
    ):
        hog_key, _ = await new_key(gw, "hog")
        polite_key, _ = await new_key(gw, "polite")
        async with client_for(gw, hog_key) as hog, client_for(gw, polite_key) as polite:
            flood = [
                asyncio.create_task(hog.post("/v1/chat/completions", json=says("hold")))
                for _ in range(64)
            ]
            await until(lambda: sum(t.done() for t in flood) >= 60, timeout_s=20)
            refused = [t for t in flood if t.done()]
            assert len(refused) == 60
            for response in (t.result() for t in refused):
                assert_limited(response, "too_many_concurrent_requests")
                assert "4 concurrent requests" in response.json()["error"]["message"]
            await until(lambda: len(provider.held) == 4)

            response = await polite.post("/v1/chat/completions", json=says("hello"))
            assert response.status_code == 200, response.text
            # Not queued behind the flood: its four held requests are still running.
            assert len(provider.held) == 4
            assert not any(t.done() for t in flood if t not in refused)

            provider.release.set()
            held = await asyncio.gather(*(t for t in flood if t not in refused))
            assert [r.status_code for r in held] == [200] * 4
            assert len(provider.held) == 4  # no refused request ever reached a provider
            # Their slots are free again.
            again = await asyncio.gather(
                *(hog.post("/v1/chat/completions", json=says("hello")) for _ in range(4))
            )
            assert [r.status_code for r in again] == [200] * 4


async def test_a_keys_own_limit_overrides_the_default_and_every_ending_frees_its_slot(
    gateway_dir: Path,
) -> None:
    async with (
        live_gateway(gateway_dir, key_max_concurrent_requests=50) as gw,
        providers(gw, (8, 0.0)) as (provider,),
    ):
        key, _ = await new_key(gw, "one at a time", KeyLimits(max_concurrent_requests=1))
        async with client_for(gw, key) as client:
            # Success.
            assert (await client.post("/v1/chat/completions", json=says("hi"))).status_code == 200
            # A provider failure.
            crash = await client.post("/v1/chat/completions", json=says("crash"))
            assert crash.status_code == 502, crash.text
            assert (await admitted(client)).status_code == 200
            # A stream read to its end.
            done = await client.post("/v1/chat/completions", json=says("hi", stream=True))
            assert done.status_code == 200 and "[DONE]" in done.text
            assert (await admitted(client)).status_code == 200
            # A client that leaves mid-stream.
            async with client.stream(
                "POST", "/v1/chat/completions", json=says("trickle", stream=True)
            ) as stream:
                assert stream.status_code == 200
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        break
            await until(lambda: len(provider.cancels) == 1)
            assert (await admitted(client)).status_code == 200
            # A client that leaves before any output.
            waiting = asyncio.create_task(client.post("/v1/chat/completions", json=says("hold")))
            await until(lambda: len(provider.held) == 1)
            busy = await client.post("/v1/chat/completions", json=says("hi"))
            assert_limited(busy, "too_many_concurrent_requests")
            waiting.cancel()
            await until(lambda: len(provider.cancels) == 2)
            assert (await admitted(client)).status_code == 200
            # Freed once each: still exactly one at a time.
            second_hold = asyncio.create_task(
                client.post("/v1/chat/completions", json=says("hold"))
            )
            await until(lambda: len(provider.held) == 2)
            assert_limited(
                await client.post("/v1/chat/completions", json=says("hi")),
                "too_many_concurrent_requests",
            )
            provider.release.set()
            assert (await second_hold).status_code == 200


async def test_an_account_bounds_all_its_keys(gateway_dir: Path) -> None:
    async with (
        live_gateway(gateway_dir, account_max_concurrent_requests=1) as gw,
        providers(gw, (8, 0.0)) as (provider,),
    ):
        first, account = await new_key(gw, "first")
        second, _ = await new_key(gw, "second", account_id=account)
        async with client_for(gw, first) as a, client_for(gw, second) as b:
            holding = asyncio.create_task(a.post("/v1/chat/completions", json=says("hold")))
            await until(lambda: len(provider.held) == 1)
            refused = await b.post("/v1/chat/completions", json=says("hi"))
            assert_limited(refused, "too_many_concurrent_requests")
            assert "API account" in refused.json()["error"]["message"]
            provider.release.set()
            assert (await holding).status_code == 200
            assert (await b.post("/v1/chat/completions", json=says("hi"))).status_code == 200


async def test_requests_and_tokens_per_minute(gateway_dir: Path) -> None:
    async with (
        live_gateway(gateway_dir, key_requests_per_minute=3, key_tokens_per_minute=100) as gw,
        providers(gw, (8, 0.0)),
    ):
        async with gw.client() as client:
            for _ in range(3):
                ok = await client.post("/v1/chat/completions", json=says("hi"))
                assert ok.status_code == 200, ok.text
            retry = assert_limited(
                await client.post("/v1/chat/completions", json=says("hi")),
                "rate_limit_exceeded",
            )
            assert 15 <= retry <= 21  # a request every 20 s, spread over a second more
        # Tokens: each request counts its max_tokens.
        key, _ = await new_key(gw, "tokens", KeyLimits(requests_per_minute=1000))
        async with client_for(gw, key) as client:
            ok = await client.post("/v1/chat/completions", json=says("hi", max_tokens=80))
            assert ok.status_code == 200, ok.text
            assert_limited(
                await client.post("/v1/chat/completions", json=says("hi", max_tokens=80)),
                "tokens_per_minute_exceeded",
            )
            ok = await client.post("/v1/chat/completions", json=says("hi", max_tokens=10))
            assert ok.status_code == 200, ok.text


async def test_malformed_requests_spend_the_keys_rate_too(gateway_dir: Path) -> None:
    """A key is admitted before its body is parsed: looping over bodies the gateway must
    refuse (each costing it a parse) runs into the key's rate like any other request."""
    async with live_gateway(gateway_dir) as gw, providers(gw, (2, 0.0)):
        key, _ = await new_key(gw, "garbage", KeyLimits(requests_per_minute=3))
        async with client_for(gw, key) as client:
            for body in (b"{", b'{"model":' + b"[" * 1000 + b"]" * 1000 + b"}", b"[]"):
                bad = await client.post("/v1/chat/completions", content=body)
                assert bad.status_code == 400, bad.text
            assert_limited(
                await client.post("/v1/chat/completions", json=says("hi")),
                "rate_limit_exceeded",
            )


# ---------------------------------------------------------------- hedging


async def test_a_hedge_needs_a_spare_slot_of_the_key_and_a_sane_delay(gateway_dir: Path) -> None:
    async with (
        live_gateway(gateway_dir, key_max_concurrent_requests=1) as gw,
        providers(gw, (4, 1.0), (4, 0.0)) as (slow, fast),
    ):
        order = {"order": [slow.peer.provider_id]}
        async with gw.client() as client:
            too_eager = await client.post(
                "/v1/chat/completions", json=says("hi", provider={**order, "hedge_after_ms": 1})
            )
            assert too_eager.status_code == 400, too_eager.text
            assert "hedge_after_ms" in too_eager.json()["error"]["message"]
            assert slow.jobs == [] and fast.jobs == []
            # One slot: the slow provider answers, nobody is asked a second time.
            body = says("hi", provider={**order, "hedge_after_ms": 150})
            response = await client.post("/v1/chat/completions", json=body)
            assert response.headers["x-tessera-provider"] == slow.peer.provider_id
            assert (len(slow.jobs), len(fast.jobs)) == (1, 0)
        # Two slots: the hedge goes out and the fast provider wins.
        key, _ = await new_key(gw, "two", KeyLimits(max_concurrent_requests=2))
        async with client_for(gw, key) as client:
            response = await client.post("/v1/chat/completions", json=body)
            assert response.headers["x-tessera-provider"] == fast.peer.provider_id
            assert (len(slow.jobs), len(fast.jobs)) == (2, 1)
            # Both slots come back when the request ends.
            await until(lambda: len(slow.cancels) == 1)
            pair = await asyncio.gather(
                *(client.post("/v1/chat/completions", json=says("hi")) for _ in range(2))
            )
            assert [r.status_code for r in pair] == [200, 200]


# ---------------------------------------------------------------- overload


async def test_an_overloaded_gateway_answers_fast_instead_of_queueing(gateway_dir: Path) -> None:
    async with (
        live_gateway(gateway_dir, max_waiting_requests=1, queue_timeout_s=10.0) as gw,
        providers(gw, (1, 0.0)) as (provider,),
    ):
        async with gw.client() as client:
            running = asyncio.create_task(client.post("/v1/chat/completions", json=says("hold")))
            await until(lambda: len(provider.held) == 1)
            waiting = asyncio.create_task(client.post("/v1/chat/completions", json=says("hi")))
            await asyncio.sleep(0.3)  # inside the queue for a provider slot
            refused = await client.post("/v1/chat/completions", json=says("hi"))
            # Answered at once, not after the 10 s queue timeout: the one waiting still waits.
            assert not waiting.done()
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "gateway_overloaded"
            assert int(refused.headers["retry-after"]) >= 1
            provider.release.set()
            assert (await running).status_code == 200
            assert (await waiting).status_code == 200
            assert (await client.post("/v1/chat/completions", json=says("hi"))).status_code == 200


def _refused_for_overload(response: httpx.Response) -> None:
    """A fast refusal in OpenAI's shape: 503, gateway_overloaded, Retry-After, a request id."""
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "gateway_overloaded"
    assert error["type"] and "retry in" in error["message"]
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-request-id"].startswith("req_")


async def test_requests_beyond_the_gateways_in_flight_bound_are_refused_at_the_door(
    gateway_dir: Path,
) -> None:
    async with (
        live_gateway(gateway_dir, max_in_flight_requests=1) as gw,
        providers(gw, (4, 0.0)) as (provider,),
    ):
        async with gw.client() as client:
            running = asyncio.create_task(client.post("/v1/chat/completions", json=says("hold")))
            await until(lambda: len(provider.held) == 1)
            refused = await client.post("/v1/chat/completions", json=says("hi"))
            _refused_for_overload(refused)
            assert "running 1 requests" in refused.json()["error"]["message"]
            assert len(provider.jobs) == 1  # refused before any work or hold
            # Everything but inference still answers.
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/v1/account")).status_code == 200
            metrics = (await client.get("/metrics")).text
            assert 'tessera_requests_shed_total{reason="in_flight"} 1.0' in metrics
            provider.release.set()
            assert (await running).status_code == 200
            served = await client.post("/v1/chat/completions", json=says("hi"))
            assert served.status_code == 200, served.text
        assert await journal_problems(gw) == []


async def test_a_queue_the_providers_do_not_drain_is_refused_at_the_door(
    gateway_dir: Path,
) -> None:
    """A provider that takes jobs and sits on them (the gateway's loop idle all along)
    makes requests queue; beyond what the gateway answers in overload_queue_s (here at
    least 2) the next one gets a fast 503 instead of joining a queue it would time out in."""
    async with (
        live_gateway(gateway_dir, overload_queue_s=1.0, overload_min_queue=2) as gw,
        providers(gw, (8, 0.0)) as (provider,),
    ):
        async with gw.client() as client:
            waiting = [
                asyncio.create_task(client.post("/v1/chat/completions", json=says("hold")))
                for _ in range(2)
            ]
            await until(lambda: len(provider.held) == 2)
            refused = await client.post("/v1/chat/completions", json=says("hi"))
            _refused_for_overload(refused)
            assert "2 requests waiting" in refused.json()["error"]["message"]
            assert len(provider.jobs) == 2
            metrics = (await client.get("/metrics")).text
            assert 'tessera_requests_shed_total{reason="queue"} 1.0' in metrics
            provider.release.set()
            assert [(await w).status_code for w in waiting] == [200, 200]
            served = await client.post("/v1/chat/completions", json=says("hi"))
            assert served.status_code == 200, served.text
        assert await journal_problems(gw) == []


async def test_a_lagging_event_loop_refuses_new_requests_until_it_catches_up(
    gateway_dir: Path,
) -> None:
    """Work the loop cannot keep up with (here a callback that hogs it 30 ms a turn) makes
    new inference requests fail fast with 503 instead of queueing; once the loop catches
    up they are served again. Nothing was held or charged for the refused ones."""
    async with (
        live_gateway(gateway_dir, overload_loop_lag_ms=10, overload_sample_ms=5) as gw,
        providers(gw, (4, 0.0)) as (provider,),
    ):
        gauge = gw.app.state.gateway.load
        loop = asyncio.get_running_loop()
        hogging = True

        def hog() -> None:
            time.sleep(0.03)
            if hogging:
                loop.call_later(0.001, hog)

        async with gw.client() as client:
            balance = (await client.get("/v1/account")).json()["balance"]
            loop.call_soon(hog)
            await until(lambda: gauge.overloaded)
            refused = await client.post("/v1/chat/completions", json=says("hi"))
            _refused_for_overload(refused)
            assert "event loop runs" in refused.json()["error"]["message"]
            hogging = False
            assert provider.jobs == []
            assert (await client.get("/v1/account")).json()["balance"] == balance
            await until(lambda: not gauge.overloaded)
            served = await client.post("/v1/chat/completions", json=says("hi"))
            assert served.status_code == 200, served.text
            assert len(provider.jobs) == 1
        assert await journal_problems(gw) == []


async def test_an_account_leaves_a_slot_of_the_model_for_other_accounts(
    gateway_dir: Path,
) -> None:
    """Within its own limits an account may still fill every slot of a model; it may not
    take the last one (account_slot_headroom_fraction), so another account is served at
    once instead of queueing behind the flood's jobs."""
    async with live_gateway(gateway_dir) as gw, providers(gw, (2, 0.0), (2, 0.0)) as both:
        hog_key, _ = await new_key(gw, "hog")
        polite_key, _ = await new_key(gw, "polite")
        async with client_for(gw, hog_key) as hog, client_for(gw, polite_key) as polite:
            flood = [
                asyncio.create_task(hog.post("/v1/chat/completions", json=says("hold")))
                for _ in range(6)
            ]
            # 4 slots: the hog runs 3 jobs and its other 3 requests wait.
            await until(lambda: sum(len(p.held) for p in both) == 3)
            await asyncio.sleep(0.3)
            assert sum(len(p.held) for p in both) == 3
            assert not any(t.done() for t in flood)

            response = await polite.post("/v1/chat/completions", json=says("hello"))
            assert response.status_code == 200, response.text
            # The free slot was kept for it: the hog's three waiting requests still wait.
            assert not any(t.done() for t in flood)

            for provider in both:
                provider.release.set()
            answers = await asyncio.gather(*flood)
            assert [r.status_code for r in answers] == [200] * 6
            assert sum(len(p.held) for p in both) == 6
