"""Hostile load against a live gateway, beside one honest key: what the bench measures
and the e2e test checks (bench/hostile_load.py, tests/e2e/test_hostile_load.py).

Three kinds of traffic run at once over real sockets:

- hostile clients, each looping over the inputs that once made the gateway answer an
  unhandled 500 (and block its event loop rendering a traceback), or open every
  provider's circuit breaker;
- one flooding key keeping ``flood_concurrency`` long requests in flight;
- the honest key, sending one short chat at a time, five a second, and timing each.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tessera.provider.compute_priority import lower_this_session

MODEL = "tessera-tiny"
TESTS_DIR = str(Path(__file__).resolve().parents[1])  # for the attack process's imports
HONEST_CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me about the fox."}],
    "max_tokens": 4,
    "temperature": 0,
}
FLOOD_CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me a long story about a wolf."}],
    "max_tokens": 48,
}


def _chat_with_parts(parts: int, size: int) -> bytes:
    content = [{"type": "text", "text": "x" * size} for _ in range(parts)]
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}]}).encode()


def hostile_requests() -> list[tuple[str, str, bytes]]:
    """(method, path, body): each once answered with an unhandled 500 or a breaker trip."""
    deep = 100_000
    return [
        ("POST", "/v1/completions", b'{"model":"tessera-tiny","prompt":[10000001]}'),
        ("POST", "/v1/embeddings", b'{"model":"all-MiniLM-L6-v2","input":[[10000001]]}'),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model":"tessera-tiny","messages":' + b"[" * deep + b"]" * deep + b"}",
        ),
        ("POST", "/v1/completions", b'{"model":"tessera-tiny","max_tokens":' + b"7" * 5000 + b"}"),
        ("POST", "/v1/chat/completions", _chat_with_parts(3, 1_500_000)),
        ("GET", "/v1/providers/%3Ax/status", b""),
        ("POST", "/v1/completions", b'{"model":"tessera-tiny","prompt":[9440],"max_tokens":1}'),
    ]


@dataclass
class Tally:
    """Statuses seen per kind of traffic, and the honest key's latencies (ms)."""

    statuses: dict[str, Counter[int]] = field(
        default_factory=lambda: {"hostile": Counter(), "flood": Counter(), "honest": Counter()}
    )
    honest_ms: list[float] = field(default_factory=list)
    honest_errors: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.honest_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.honest_ms)


HONEST_INTERVAL_S = 0.2  # five requests a second: well inside a key's default limits


async def honest_loop(base: str, key: str, until: float, tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        next_at = time.monotonic()
        while time.monotonic() < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += HONEST_INTERVAL_S
            started = time.perf_counter()
            try:
                response = await client.post("/v1/chat/completions", json=HONEST_CHAT)
            except httpx.HTTPError as exc:
                tally.honest_errors.append(f"{type(exc).__name__}: {exc}")
                continue
            tally.statuses["honest"][response.status_code] += 1
            if response.status_code != 200:
                tally.honest_errors.append(f"{response.status_code}: {response.text[:300]}")
                continue
            tally.honest_ms.append((time.perf_counter() - started) * 1000)


async def hostile_loop(base: str, key: str, until: float, tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    requests = hostile_requests()
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        while time.monotonic() < until:
            for method, path, body in requests:
                try:
                    response = await client.request(method, path, content=body or None)
                    tally.statuses["hostile"][response.status_code] += 1
                except httpx.HTTPError:
                    tally.statuses["hostile"][0] += 1  # a clean disconnect
                if time.monotonic() >= until:
                    return


def retry_wait_s(headers: httpx.Headers) -> float:
    """How long a 429 says to wait, read as OpenAI's SDK reads it (milliseconds first)."""
    if "retry-after-ms" in headers:
        return float(headers["retry-after-ms"]) / 1000
    return float(headers.get("retry-after", "1"))


async def flood_loop(base: str, key: str, until: float, tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        while time.monotonic() < until:
            try:
                response = await client.post("/v1/chat/completions", json=FLOOD_CHAT)
                tally.statuses["flood"][response.status_code] += 1
                if response.status_code == 429:
                    wait = retry_wait_s(response.headers)
                    await asyncio.sleep(min(wait, max(until - time.monotonic(), 0)))
            except httpx.HTTPError:
                tally.statuses["flood"][0] += 1


async def attack(
    base: str,
    hostile_key: str,
    flood_key: str,
    duration_s: float,
    hostile_clients: int,
    flood_concurrency: int,
) -> Tally:
    """The attackers alone, until ``duration_s`` has passed: what the attack process runs."""
    tally = Tally()
    until = time.monotonic() + duration_s
    await asyncio.gather(
        *(hostile_loop(base, hostile_key, until, tally) for _ in range(hostile_clients)),
        *(flood_loop(base, flood_key, until, tally) for _ in range(flood_concurrency)),
    )
    return tally


async def run_load(
    base: str,
    honest_key: str,
    hostile_key: str,
    flood_key: str,
    duration_s: float,
    *,
    hostile_clients: int = 4,
    flood_concurrency: int = 64,
) -> Tally:
    """The honest key's latencies while one key sends hostile input and another floods
    (either may be 0 clients).

    The attackers run in a process of their own at a lower CPU priority, standing in for
    clients on other machines: in this one the honest client's own event loop would
    otherwise wait on theirs, and time their work, not the gateway's. Where Linux shares
    the CPU by session (autogroup), a niceness ranks a process only inside its session,
    so the attack process gets a session of its own and lowers that (nice 19) instead.
    """
    spec = json.dumps(
        [base, hostile_key, flood_key, duration_s, hostile_clients, flood_concurrency]
    )
    tests_dir = TESTS_DIR
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]),
    }
    attacker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from support.hostile_load import attack_main; attack_main()",
        spec,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    tally = Tally()
    try:
        await asyncio.sleep(min(1.0, duration_s / 10))  # let the attack build up first
        await honest_loop(base, honest_key, time.monotonic() + duration_s, tally)
        out, _ = await asyncio.wait_for(attacker.communicate(), duration_s + 120)
    finally:
        if attacker.returncode is None:
            attacker.kill()
            await attacker.wait()
    if attacker.returncode != 0:
        raise RuntimeError(f"the attack process failed with exit status {attacker.returncode}")
    for kind, counts in json.loads(out).items():
        tally.statuses[kind].update({int(status): n for status, n in counts.items()})
    return tally


def attack_main() -> None:
    """Entry of the attack process: run :func:`attack`, print its statuses as JSON."""
    os.nice(10)  # what counts where the kernel does not group by session
    lower_this_session("idle")
    base, hostile_key, flood_key, duration_s, clients, flooders = json.loads(sys.argv[1])
    tally = asyncio.run(attack(base, hostile_key, flood_key, duration_s, clients, flooders))
    json.dump({k: dict(v) for k, v in tally.statuses.items()}, sys.stdout)


async def run_unloaded(base: str, honest_key: str, duration_s: float) -> Tally:
    tally = Tally()
    await honest_loop(base, honest_key, time.monotonic() + duration_s, tally)
    return tally
