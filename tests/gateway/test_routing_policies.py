"""Routing policies, fallback models, hedging and mid-stream failover through a real gateway.

Scripted peers speak the real protocol over real WebSockets; each one is placed in a
region, declares (or not) no retention, and answers, stalls, fails or dies as a test asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from tessera.cli import app as cli_app
from tessera.dev_money import fund_account
from tessera.protocol.signing import sign
from tessera.protocol.wire import PROTOCOL_VERSION, REGISTER_DOMAIN, Register, register_payload
from tessera.store.api_keys import ApiKeyStore
from tessera.store.engine import create_engine, database_url_for

from support.scripted_peers import (
    MODEL,
    LiveGateway,
    Peer,
    answer,
    caps_for,
    chat_body,
    done_frame,
    live_gateway,
    wait_providers,
)

Script = Callable[["Node", dict[str, Any]], Awaitable[None]]


class Node:
    """A scripted provider placed somewhere, serving jobs with ``script``."""

    def __init__(self, peer: Peer, region: str, script: Script) -> None:
        self.peer = peer
        self.region = region
        self.script = script
        self.jobs: list[dict[str, Any]] = []
        self.cancels: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def id(self) -> str:
        return self.peer.provider_id

    async def serve(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = json.loads(await self.peer.ws.recv())
                if frame["type"] == "job":
                    self.jobs.append(frame)
                    self._tasks.append(asyncio.create_task(self.script(self, frame)))
                elif frame["type"] == "cancel":
                    self.cancels.append(frame["job_id"])


async def honest(node: Node, job: dict[str, Any]) -> None:
    await answer(node.peer, job, text=f"from {node.region}", usage=(3, 2))


async def silent(node: Node, job: dict[str, Any]) -> None:
    await asyncio.sleep(3600)


async def crashing(node: Node, job: dict[str, Any]) -> None:
    await node.peer.send(
        {"type": "job_error", "job_id": job["job_id"], "code": "backend_crashed", "message": "x"}
    )


@asynccontextmanager
async def nodes(
    gw: LiveGateway, specs: list[tuple[str, Script, dict[str, Any]]]
) -> AsyncIterator[list[Node]]:
    """Connect one node per (region, script, capability overrides)."""
    out: list[Node] = []
    tasks: list[asyncio.Task[None]] = []
    for region, script, extra in specs:
        peer = await Peer.open(gw.ws_url)
        price = extra.pop("price", (0, 0))
        caps = caps_for(peer.key, slots=4, price=price).model_copy(
            update={"region": region, **extra}
        )
        payload = register_payload(peer.hello["nonce"], caps)
        frame = Register(
            version=PROTOCOL_VERSION,
            nonce=peer.hello["nonce"],
            capabilities=caps,
            signature=sign(peer.key, REGISTER_DOMAIN, payload),
        )
        peer.price = price
        await peer.ws.send(frame.model_dump_json())
        assert (await peer.recv())["type"] == "welcome"
        node = Node(peer, region, script)
        tasks += [asyncio.create_task(node.serve()), asyncio.create_task(peer.beat_forever())]
        out.append(node)
    await wait_providers(gw, len(out))
    try:
        yield out
    finally:
        for task in tasks:
            task.cancel()
        for node in out:
            await node.peer.close()


async def key_with_policy(gw: LiveGateway, data_dir: Path, policy: dict[str, Any]) -> str:
    engine = create_engine(database_url_for(data_dir))
    key, _ = await ApiKeyStore(engine).create("eu org", policy_json=json.dumps(policy))
    await engine.dispose()
    await asyncio.to_thread(fund_account, gw.base, key, 10**12)
    return key


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-tessera-provider"]


# ---------------------------------------------------------------- policies


async def test_an_eu_only_key_never_reaches_a_provider_outside_the_eu(tmp_path: Path) -> None:
    async with (
        live_gateway(tmp_path) as gw,
        nodes(
            gw,
            [
                ("US", honest, {}),
                ("DE", honest, {}),
                ("JP", honest, {}),
                ("FR", honest, {"no_retention": True}),
                ("BR", honest, {}),
                ("US-eu", honest, {}),  # claims "eu" as a suffix: the country decides
            ],
        ) as fleet,
    ):
        eu_ids = {fleet[1].id, fleet[3].id}
        us = fleet[0].id
        key = await key_with_policy(gw, tmp_path, {"regions_allow": ["eu"]})
        headers = {"Authorization": f"Bearer {key}"}
        narrowing = [
            {},
            {"provider": {"sort": "price"}},
            {"provider": {"order": [us]}},  # asks for a US provider first: still never
            {"provider": {"ignore": [fleet[1].id]}},
            {"provider": {"data_collection": "deny"}},
        ]
        async with httpx.AsyncClient(base_url=gw.base, headers=headers, timeout=30) as client:
            for round_ in range(6):
                for extra in narrowing:
                    response = await client.post("/v1/chat/completions", json=chat_body(**extra))
                    assert served_by(response) in eu_ids, (round_, extra)
            ignored = await client.post(
                "/v1/chat/completions", json=chat_body(provider={"ignore": [fleet[1].id]})
            )
            assert served_by(ignored) == fleet[3].id
            # Widening is impossible: the key's layer still applies, and the error says so.
            widen = await client.post(
                "/v1/chat/completions", json=chat_body(provider={"regions_allow": ["US"]})
            )
            assert widen.status_code == 400
            error = widen.json()["error"]
            assert error["param"] == "provider.regions_allow"
            assert "set by the API key" in error["message"]
        total = sum(len(node.jobs) for node in fleet if node.id not in eu_ids)
        assert total == 0


async def test_each_request_policy_field_over_http(tmp_path: Path) -> None:
    async with (
        live_gateway(tmp_path) as gw,
        nodes(
            gw,
            [
                ("US", honest, {"price": (100, 100)}),
                ("DE", honest, {"price": (50, 50), "no_retention": True}),
                ("JP", honest, {"price": (300, 300)}),
            ],
        ) as fleet,
        gw.client() as client,
    ):
        us, de, jp = (node.id for node in fleet)

        async def pick(provider: dict[str, Any]) -> httpx.Response:
            return await client.post("/v1/chat/completions", json=chat_body(provider=provider))

        assert served_by(await pick({"only": [jp]})) == jp
        assert served_by(await pick({"only": [jp[:16]]})) == jp  # an id prefix works
        assert served_by(await pick({"ignore": [us, de]})) == jp
        assert served_by(await pick({"order": [us, de]})) == us
        assert served_by(await pick({"sort": "price"})) == de
        assert served_by(await pick({"data_collection": "deny"})) == de
        assert served_by(await pick({"regions_deny": ["eu", "JP"]})) == us
        assert served_by(await pick({"regions_allow": ["asia"]})) == jp
        within = await pick({"max_price": {"prompt": 120, "completion": 120}, "ignore": [de]})
        assert served_by(within) == us
        routed = await pick({"sort": "price"})
        assert routed.headers["x-tessera-route"].startswith("sort=price")
        assert "score=" in routed.headers["x-tessera-route"]

        cases = {
            "provider.min_reputation": {"min_reputation": 0.99},
            "provider.regions_allow": {"regions_allow": ["oceania"]},
            "provider.only": {"only": ["ffffffffffffffff"]},
            "provider.order": {"order": ["ffffffffffffffff"], "allow_fallbacks": False},
            "provider.max_price": {"max_price": {"completion": 1}},
            "provider.data_collection": {"data_collection": "deny", "ignore": [de]},
        }
        for param, provider in cases.items():
            response = await pick(provider)
            assert response.status_code == 400, (param, response.text)
            error = response.json()["error"]
            assert error["param"] == param, error
            assert "no provider of" in error["message"]
        bad = await pick({"regions_allow": ["atlantis"]})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid_provider_policy"
        wrong_type = await pick({"sort": 3})
        assert wrong_type.status_code == 400
        assert sum(len(n.jobs) for n in fleet) == 10  # the 400s never reached anyone


async def test_fallback_models_are_tried_in_order(tmp_path: Path) -> None:
    async with (
        live_gateway(tmp_path) as gw,
        nodes(gw, [("DE", honest, {})]),
        gw.client() as client,
    ):
        body = chat_body(model="no-such-model", models=["also-missing", MODEL])
        response = await client.post("/v1/chat/completions", json=body)
        assert served_by(response)
        assert response.json()["model"] == MODEL
        assert "fallback model" in response.headers["x-tessera-route"]
        # A policy that empties the first model's pool also moves on to the next model.
        nobody = await client.post(
            "/v1/chat/completions",
            json=chat_body(models=["no-such-model"], provider={"regions_allow": ["JP"]}),
        )
        assert nobody.status_code == 404  # the last model's own error: it does not exist


# ---------------------------------------------------------------- hedging and breakers


async def test_hedging_sends_a_slow_request_to_a_second_provider(tmp_path: Path) -> None:
    async with (
        live_gateway(tmp_path) as gw,
        nodes(gw, [("DE", silent, {"price": (1, 1)}), ("FR", honest, {"price": (9, 9)})]) as (
            slow,
            fast,
        ),
        gw.client() as client,
    ):
        body = chat_body(provider={"order": [slow.id], "hedge_after_ms": 150})
        response = await client.post("/v1/chat/completions", json=body)
        assert served_by(response) == fast.id
        assert len(slow.jobs) == 1
        # The loser's job is cancelled, its slot freed; only the winner is paid.
        for _ in range(100):
            if slow.cancels:
                break
            await asyncio.sleep(0.02)
        assert slow.cancels == [slow.jobs[0]["job_id"]]
        metrics = (await client.get("/metrics")).text
        assert 'tessera_hedged_requests_total{winner="second"} 1.0' in metrics


async def test_a_failing_provider_trips_its_breaker_and_stops_getting_work(
    tmp_path: Path,
) -> None:
    async with (
        live_gateway(tmp_path, breaker_failures=2, breaker_backoff_s=30) as gw,
        nodes(gw, [("DE", crashing, {}), ("FR", honest, {})]) as (bad, _good),
        gw.client() as client,
    ):
        # The pick is random, weighted by score: send until the bad node has had its two
        # jobs (it is shunned more with each failure, never shut out before its breaker).
        statuses = []
        while len(bad.jobs) < 2 and len(statuses) < 400:
            response = await client.post("/v1/chat/completions", json=chat_body())
            statuses.append(response.status_code)
        assert len(bad.jobs) == 2, f"the bad node got {len(bad.jobs)} jobs in 400 requests"
        assert statuses.count(502) == 2
        assert statuses.count(200) == len(statuses) - 2
        # Its breaker is open now: it gets nothing more while every request still succeeds.
        for _ in range(20):
            response = await client.post("/v1/chat/completions", json=chat_body())
            assert response.status_code == 200
        assert len(bad.jobs) == 2
        metrics = (await client.get("/metrics")).text
        assert "tessera_breaker_opened_total 1.0" in metrics


# ---------------------------------------------------------------- mid-stream failover


def dying_after(tokens: list[int]) -> Script:
    """Send these tokens, then drop the connection without a done frame."""

    async def script(node: Node, job: dict[str, Any]) -> None:
        chunk = {
            "type": "chunk",
            "job_id": job["job_id"],
            "text": "".join(f"<{t}>" for t in tokens),
            "tokens": len(tokens),
            "prompt_tokens": 3,
            "token_ids": tokens,
            "token_logprobs": [-0.1] * len(tokens),
        }
        await node.peer.send(chunk)
        await asyncio.sleep(0.1)
        await node.peer.ws.close()

    return script


async def continuing(node: Node, job: dict[str, Any]) -> None:
    """Continue after ``continue_from``: two more tokens, the prompt counted with them."""
    prefix = job.get("continue_from") or []
    new = [7, 8]
    chunk = {
        "type": "chunk",
        "job_id": job["job_id"],
        "text": "<7><8>",
        "tokens": len(new),
        "prompt_tokens": 3 + len(prefix),
        "token_ids": new,
        "token_logprobs": [-0.1, -0.1],
    }
    end = {"type": "chunk", "job_id": job["job_id"], "finish_reason": "length"}
    await node.peer.send(chunk)
    await node.peer.send(end)
    await node.peer.send(done_frame(node.peer, job, [chunk, end], (3 + len(prefix), len(new))))


async def stream_text(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> tuple[str, list[Any], httpx.Response]:
    text, events = "", []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            events.append(event)
            for choice in event.get("choices", []):
                text += choice.get("delta", {}).get("content") or ""
    return text, events, response


async def test_a_greedy_stream_continues_on_another_provider(tmp_path: Path) -> None:
    price = (10**9, 10**9)  # 1,000 base units per token: costs are easy to read
    async with (
        live_gateway(tmp_path) as gw,
        nodes(
            gw,
            [
                ("DE", dying_after([4, 5, 6]), {"price": price}),
                ("FR", continuing, {"price": price}),
            ],
        ) as (dying, rescuer),
        gw.client() as client,
    ):
        body = chat_body(
            stream=True,
            max_tokens=6,
            temperature=0,
            stream_options={"include_usage": True},
            provider={"order": [dying.id]},
        )
        text, events, response = await stream_text(client, body)
        assert text == "<4><5><6><7><8>"
        assert "continued" in response.headers.get("x-tessera-route", "") or len(rescuer.jobs) == 1
        (job,) = rescuer.jobs
        assert job["continue_from"] == [4, 5, 6]
        assert job["params"]["max_tokens"] == 3
        usage = events[-1]["usage"]
        # The client sees the whole answer; it pays the rescuer for the prompt and its 2
        # tokens: the dead provider's 3 tokens came without a receipt and are free.
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (3, 5)
        assert usage["cost"] == (3 + 2) * 1000
        account = (await client.get("/v1/account")).json()
        assert account["held"] == 0


async def test_an_unseeded_sampled_stream_ends_with_an_error_and_costs_nothing(
    tmp_path: Path,
) -> None:
    price = (10**9, 10**9)
    async with (
        live_gateway(tmp_path) as gw,
        nodes(
            gw,
            [("DE", dying_after([4, 5]), {"price": price}), ("FR", continuing, {"price": price})],
        ) as (dying, rescuer),
        gw.client() as client,
    ):
        before = (await client.get("/v1/account")).json()["balance"]
        body = chat_body(stream=True, temperature=1.0, provider={"order": [dying.id]})
        text, events, _ = await stream_text(client, body)
        assert text == "<4><5>"
        assert "error" in events[-1]
        assert (
            "could not be continued elsewhere: it was sampled without a seed"
            in (events[-1]["error"]["message"])
        )
        assert rescuer.jobs == []
        after = (await client.get("/v1/account")).json()
        assert after["balance"] == before and after["held"] == 0


# ---------------------------------------------------------------- provider status


async def test_a_provider_can_ask_why_it_gets_no_work(tmp_path: Path) -> None:
    async with (
        live_gateway(tmp_path) as gw,
        nodes(gw, [("JP", honest, {"price": (500, 500)}), ("DE", honest, {"price": (5, 5)})]) as (
            idle,
            busy,
        ),
        gw.client() as client,
    ):
        for provider in (
            {"max_price": {"completion": 100}},
            {"max_price": {"completion": 100}},
            {"regions_allow": ["eu"]},
            {"data_collection": "deny", "ignore": [busy.id]},
            {},
        ):
            await client.post("/v1/chat/completions", json=chat_body(provider=provider))
        status_response = await client.get(f"/v1/providers/{idle.id}/status")
        status = status_response.json()
        assert status_response.status_code == 200, status
        assert status["connected"] and status["region"] == "JP"
        (model,) = status["models"]
        assert model["status"] == "routable"
        assert model["recent_requests"] == 4  # the refused one held no money: not recorded
        assert model["excluded_by"] == {"max_price": 2, "regions_allow": 1}
        assert model["eligible_for"] == 1
        text = " ".join(model["reasons"])
        assert "price is above what 2 recent request(s) allowed" in text
        assert "region JP is outside" in text
        assert status["health"]["breaker"] == "closed"
        assert status["load"] == {"active_jobs": 0, "max_concurrent_jobs": 4}
        unknown = await client.get(f"/v1/providers/{'ab' * 32}/status")
        assert unknown.status_code == 404

        # The same answer on the command line, as the provider's operator sees it.
        runner = CliRunner(env={"COLUMNS": "300"})
        shown = await asyncio.to_thread(
            runner.invoke, cli_app, ["provider", "status", "--id", idle.id, "--gateway", gw.base]
        )
        assert shown.exit_code == 0, shown.output
        assert "price is above what 2 recent" in " ".join(shown.output.split())
        as_json = await asyncio.to_thread(
            runner.invoke,
            cli_app,
            ["provider", "status", "--id", "ab" * 32, "--gateway", gw.base, "--json"],
        )
        assert as_json.exit_code == 1
        assert "has been seen" in as_json.output


async def test_a_conversation_stays_on_the_provider_that_holds_its_cache(tmp_path: Path) -> None:
    async with (
        live_gateway(tmp_path) as gw,
        nodes(gw, [("DE", honest, {}), ("FR", honest, {}), ("NL", honest, {})]),
        gw.client() as client,
    ):
        for conversation in range(4):
            messages: list[dict[str, str]] = [{"role": "user", "content": f"chat {conversation}"}]
            first = await client.post("/v1/chat/completions", json=chat_body(messages=messages))
            provider = served_by(first)
            for turn in range(3):
                answer_text = first.json()["choices"][0]["message"]["content"]
                messages += [
                    {"role": "assistant", "content": answer_text},
                    {"role": "user", "content": f"and then {turn}?"},
                ]
                first = await client.post("/v1/chat/completions", json=chat_body(messages=messages))
                assert served_by(first) == provider
                assert first.headers["x-tessera-route"].startswith("sticky")
        # Another conversation (or an edited history) is routed afresh.
        fresh = await client.post(
            "/v1/chat/completions",
            json=chat_body(
                messages=[
                    {"role": "user", "content": "chat 0"},
                    {"role": "assistant", "content": "something else"},
                    {"role": "user", "content": "and then 0?"},
                ]
            ),
        )
        assert not fresh.headers["x-tessera-route"].startswith("sticky")


async def test_a_stream_whose_provider_left_after_finishing_is_not_continued(
    tmp_path: Path,
) -> None:
    async def finished_then_gone(node: Node, job: dict[str, Any]) -> None:
        chunk = {
            "type": "chunk",
            "job_id": job["job_id"],
            "text": "<4>",
            "tokens": 1,
            "prompt_tokens": 3,
            "token_ids": [4],
            "token_logprobs": [-0.1],
        }
        await node.peer.send(chunk)
        await node.peer.send({"type": "chunk", "job_id": job["job_id"], "finish_reason": "stop"})
        await asyncio.sleep(0.1)
        await node.peer.ws.close()  # no done frame, so no receipt

    async with (
        live_gateway(tmp_path) as gw,
        nodes(gw, [("DE", finished_then_gone, {}), ("FR", continuing, {})]) as (gone, rescuer),
        gw.client() as client,
    ):
        body = chat_body(stream=True, temperature=0, provider={"order": [gone.id]})
        text, events, _ = await stream_text(client, body)
        assert text == "<4>"
        assert "already finished" in events[-1]["error"]["message"]
        assert rescuer.jobs == []
