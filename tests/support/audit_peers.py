"""Scripted peers for audit tests: a catalog with one join challenge, peers that answer it
and then jobs and audits as a test scripts them, and the gateway's validators. Shared by
tests/gateway/test_verification.py and the chain's slashing test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from nacl.signing import SigningKey

from tessera.dev_money import stake_provider
from tessera.key_file import load_or_create_key
from tessera.protocol.signing import public_key_hex
from tessera.verify.catalog import (
    Catalog,
    CatalogModel,
    Challenge,
    ReferenceToken,
    Tolerances,
)

from support.scripted_peers import (
    MODEL,
    LiveGateway,
    Peer,
    answer,
    answer_tokens,
    audit_result,
    chat_body,
    live_gateway,
    poll,
)

PRICE = (10**9, 2 * 10**9)  # base units per million tokens: answer() costs 5000 units
CHALLENGE_TOKENS = [5, 6, 7]
CHALLENGE_LOGPROBS = [-0.1, -0.2, -0.3]
CLOSED = {"passed", "cleared", "upheld", "inconclusive"}

Handler = Callable[[Peer, dict[str, Any]], Awaitable[None]]


def catalog_file(tmp_path: Path) -> Path:
    entry = CatalogModel(
        name=MODEL,
        weights_sha256="cd" * 32,
        kind="text",
        tolerances=Tolerances(logprob_abs_max=0.5, logprob_abs_mean=0.2, greedy_gap=0.5, top_k=20),
        challenges=[
            Challenge(
                prompt="ping",
                max_tokens=3,
                prompt_tokens=2,
                tokens=[
                    ReferenceToken(id=i, logprob=lp, top=[(i, lp)])
                    for i, lp in zip(CHALLENGE_TOKENS, CHALLENGE_LOGPROBS, strict=True)
                ],
            )
        ],
    )
    path = tmp_path / "catalog.json"
    path.write_text(Catalog([entry]).to_json())
    return path


async def honest_job(peer: Peer, job: dict[str, Any]) -> None:
    await answer(peer, job)


async def pass_audit(peer: Peer, audit: dict[str, Any]) -> None:
    await peer.send(audit_result(peer, audit, logprob=-0.5, prompt_tokens=3, text="hello"))


async def fail_audit(peer: Peer, audit: dict[str, Any]) -> None:
    await peer.send(audit_result(peer, audit, logprob=-6.0, prompt_tokens=3, text="nonsense"))


async def serve(peer: Peer, on_job: Handler = honest_job, on_audit: Handler = pass_audit) -> None:
    """A scripted agent: answers challenges right, jobs with ``on_job``, audits with
    ``on_audit``, until its connection closes."""
    running: set[asyncio.Future[None]] = set()
    try:
        while True:
            frame = await peer.recv(timeout_s=60)
            if frame["type"] == "job" and frame["job_id"].startswith("challenge"):
                await answer_tokens(peer, frame, CHALLENGE_TOKENS, CHALLENGE_LOGPROBS, 2)
                continue
            if frame["type"] == "job":
                work = asyncio.ensure_future(on_job(peer, frame))
            elif frame["type"] == "audit":
                work = asyncio.ensure_future(on_audit(peer, frame))
            else:
                continue
            running.add(work)
            work.add_done_callback(running.discard)
    except Exception:
        return


async def join(
    gw: LiveGateway,
    tmp_path: Path,
    name: str,
    *,
    stake: bool = False,
    on_job: Handler = honest_job,
    on_audit: Handler = pass_audit,
    key: SigningKey | None = None,
    weights: str = "cd" * 32,
) -> tuple[Peer, list[asyncio.Task[None]]]:
    key_file = tmp_path / f"{name}.key"
    if key is not None:
        key_file.write_text(key.encode().hex() + "\n")
        key_file.chmod(0o600)
    signer = load_or_create_key(key_file)
    if stake:
        await asyncio.to_thread(stake_provider, gw.base, key_file)
    peer = await Peer.open(gw.ws_url, signer)
    assert (await peer.register(slots=4, price=PRICE, weights=weights))["type"] == "welcome"
    tasks = [
        asyncio.create_task(peer.beat_forever()),
        asyncio.create_task(serve(peer, on_job, on_audit)),
    ]
    return peer, tasks


async def model_status(client: httpx.AsyncClient, peer: Peer) -> str | None:
    body = (await client.get(f"/v1/providers/{peer.provider_id}/reputation")).json()
    return body["models"].get(MODEL)


async def wait_status(client: httpx.AsyncClient, peer: Peer, status: str) -> None:
    path = f"/v1/providers/{peer.provider_id}/reputation"
    await poll(client, path, lambda body: body["models"].get(MODEL) == status)


async def bonded(client: httpx.AsyncClient, peer: Peer) -> int:
    return int((await client.get(f"/v1/providers/{peer.provider_id}")).json()["bonded"])


async def says_something_else(peer: Peer, job: dict[str, Any]) -> None:
    """A cheat: answers with text the model does not produce."""
    await answer(peer, job, text="not what the model says")


@asynccontextmanager
async def gateway_with_a_cheat(
    gateway_dir: Path, **settings: Any
) -> AsyncIterator[tuple[LiveGateway, httpx.AsyncClient, Peer, list[SigningKey]]]:
    """A gateway with three validators and one staked provider that answers with another
    model's text, routable: (gateway, consumer client, the cheat, validator keys)."""
    keys = [SigningKey.generate() for _ in range(3)]
    async with live_gateway(
        gateway_dir,
        catalog_file=catalog_file(gateway_dir),
        validator_keys=[public_key_hex(k) for k in keys],
        min_stake_units=10**9,
        **settings,
    ) as gw:
        async with gw.client() as client:
            tasks = await join_validators(gw, client, gateway_dir, keys)
            cheat, more = await join(
                gw, gateway_dir, "cheat", stake=True, on_job=says_something_else
            )
            tasks += more
            try:
                await wait_status(client, cheat, "routable")
                yield gw, client, cheat, keys
            finally:
                stop(tasks)


def stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()


async def join_validators(
    gw: LiveGateway,
    client: httpx.AsyncClient,
    tmp_path: Path,
    keys: list[SigningKey],
    first_audits: Handler = pass_audit,
) -> list[asyncio.Task[None]]:
    """Connect the gateway's validators (``keys[0]`` audits with ``first_audits``), all at
    once, and wait until each passed its join challenge."""

    async def one(i: int, key: SigningKey) -> list[asyncio.Task[None]]:
        on_audit = first_audits if i == 0 else pass_audit
        validator, tasks = await join(gw, tmp_path, f"v{i}", key=key, on_audit=on_audit)
        await wait_status(client, validator, "routable")
        return tasks

    joined = await asyncio.gather(*(one(i, key) for i, key in enumerate(keys)))
    return [task for tasks in joined for task in tasks]


async def until_audited(
    client: httpx.AsyncClient, provider: Peer, enough: Callable[[], Awaitable[bool]]
) -> None:
    """Send requests one by one, each audited to the end, until ``enough()`` (at most 30)."""
    for sent in range(1, 31):
        response = await client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 200, response.text
        await poll(
            client,
            f"/v1/audit-cases?provider={provider.provider_id}",
            lambda body, n=sent: (
                len(body["data"]) == n and all(c["status"] in CLOSED for c in body["data"])
            ),
        )
        if await enough():
            return
