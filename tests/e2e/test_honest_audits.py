"""Honest providers are never slashed: 500+ audited requests across dtypes and batch sizes.

Four real provider processes serve the tiny model as honest hardware differs: float32 on
one and on two torch threads, and bfloat16 (twice). Three are the operator's validators
(so a disputed audit can find three auditors). The gateway audits every request (a
probation longer than the test) against tolerances that ``tessera catalog calibrate``
derived from honest runs (the shared ``tiny_catalog``). The official openai client sends a
mix of chat and completions, greedy and sampled, with stop strings and two-prompt
completions, eight at a time, so auditors see batches of varying size. Every audit case
must close without an upheld failure, no stake may move, every provider must stay
routable, and the journal must check out.

The network (support/audited_network.py) is the one test_adversarial.py runs its cheaters
in; these requests name the four honest providers (``provider.only``), each in turn first
(``provider.order``), so each setup generates a quarter of them and no cheater serves one.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from openai import OpenAI
from rich.console import Console
from rich.table import Table

from tessera.verify.scoring import tail_allowance

from support.audited_network import AuditedNetwork
from support.live_network import TEXT_MODEL
from support.verified_network import (
    ROUTABLE,
    VerifiedNetwork,
    all_audits,
    ledger_check,
    reputation,
    wait_for_cases,
)

pytestmark = pytest.mark.e2e

REQUESTS = 520
CONCURRENCY = 8
MIN_AUDITED = 500

CHATS = (
    "Tell me about the crow.",
    "What did the fox say to the grapes?",
    "Tell me a story about a wolf and a lamb.",
    "Who was the wisest animal in the forest?",
    "Why did the ant work all summer?",
    "Say something kind.",
)
SYSTEMS = ("You tell fables.", "Answer briefly.")
PROMPTS = (
    "The Wolf and the Lamb. A Wolf",
    "Once upon a time there was",
    "The Ant said to the Grasshopper",
    "In olden times, when wishing still helped,",
    "The old woman said to the wolf:",
    "The Fox",
    "There was once a king who",
    "The Crow and the Pitcher.",
)
STOPS: tuple[list[str] | None, ...] = (None, None, ["."], ["\n"], [" the", ","], ["ox"])
TEMPERATURES = (0.0, 0.0, 0.7, 1.0)


@dataclass(frozen=True)
class Ask:
    """One request of the mix: what the openai client sends."""

    kind: str  # chat | completion
    temperature: float
    max_tokens: int
    stop: list[str] | None
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str | list[str] = ""
    seed: int | None = None
    stream: bool = False


def request_mix(count: int, rng: random.Random) -> list[Ask]:
    asks = []
    for _ in range(count):
        temperature = rng.choice(TEMPERATURES)
        common: dict[str, Any] = {
            "temperature": temperature,
            "max_tokens": rng.randint(4, 24),
            "stop": rng.choice(STOPS),
            "seed": rng.randint(0, 10**6) if temperature and rng.random() < 0.5 else None,
        }
        if rng.random() < 0.5:
            messages = [{"role": "user", "content": rng.choice(CHATS)}]
            if rng.random() < 0.3:
                messages.insert(0, {"role": "system", "content": rng.choice(SYSTEMS)})
            asks.append(Ask("chat", messages=messages, stream=rng.random() < 0.2, **common))
        elif rng.random() < 0.3:
            asks.append(Ask("completion", prompt=rng.sample(PROMPTS, 2), **common))
        else:
            asks.append(Ask("completion", prompt=rng.choice(PROMPTS), **common))
    return asks


def send(client: OpenAI, ask: Ask, route: dict[str, Any]) -> str:
    """Send one request with the ``provider`` preferences ``route``; the gateway's request
    id (what its audit case is filed under)."""
    extra: dict[str, Any] = {"extra_body": {"provider": route}}
    if ask.stop is not None:
        extra["stop"] = ask.stop
    if ask.seed is not None:
        extra["seed"] = ask.seed
    if ask.kind == "chat":
        raw = client.chat.completions.with_raw_response.create(
            model=TEXT_MODEL,
            messages=ask.messages,  # type: ignore[arg-type]
            temperature=ask.temperature,
            max_tokens=ask.max_tokens,
            stream=ask.stream,
            **extra,
        )
        if ask.stream:
            chunks = list(raw.parse())  # type: ignore[call-overload]
            reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
            assert reasons[-1] in ("stop", "length")
        else:
            reply = raw.parse()
            assert reply.choices[0].finish_reason in ("stop", "length")
    else:
        raw = client.completions.with_raw_response.create(  # type: ignore[assignment]
            model=TEXT_MODEL,
            prompt=ask.prompt,
            temperature=ask.temperature,
            max_tokens=ask.max_tokens,
            **extra,
        )
        done = raw.parse()
        expected = len(ask.prompt) if isinstance(ask.prompt, list) else 1
        assert sorted(c.index for c in done.choices) == list(range(expected))  # type: ignore[union-attr]
    return str(raw.headers["x-request-id"])


def routes(providers: list[str], count: int) -> list[dict[str, Any]]:
    """Only ``providers``, each in turn first: every setup generates its share."""
    return [{"only": providers, "order": [providers[i % len(providers)]]} for i in range(count)]


@pytest.mark.timeout(1200)  # the first test to use the network starts it
def test_honest_providers_pass_every_audit(audited_network: AuditedNetwork) -> None:
    verified = audited_network.verified
    live = verified.live
    ours = list(verified.providers)
    asks = request_mix(REQUESTS, random.Random(4))
    started = time.monotonic()
    with live.client(timeout=120) as client, ThreadPoolExecutor(CONCURRENCY) as pool:
        request_ids = list(
            pool.map(lambda ask, route: send(client, ask, route), asks, routes(ours, REQUESTS))
        )
    assert len(set(request_ids)) == REQUESTS
    sent = time.monotonic()
    verified.phases[f"{REQUESTS} requests"] = sent - started

    cases, still_open = wait_for_cases(live.base, request_ids, timeout_s=120)
    verified.phases["cases closed after"] = time.monotonic() - sent
    # Audits of these providers' answers (the cheaters beside them are audited too).
    audits = [a for a in all_audits(live.base) if a["provider_id"] in verified.providers]
    catalog = httpx.get(f"{live.base}/v1/catalog", timeout=10).json()["data"][0]
    temperature = {rid: ask.temperature for rid, ask in zip(request_ids, asks, strict=True)}
    report(verified, temperature, cases, audits, catalog["tolerances"])

    assert not still_open, f"{len(still_open)} audit cases never closed: {still_open[:5]}"
    statuses = Counter(case["status"] for case in cases.values())
    assert statuses["upheld"] == 0, statuses
    assert set(statuses) <= {"passed", "cleared"}, statuses
    assert statuses["passed"] + statuses["cleared"] >= MIN_AUDITED, statuses
    assert all(case["slashed"] == 0 and case["refunded"] == 0 for case in cases.values())
    assert {case["provider_id"] for case in cases.values()} == set(ours)
    # Every verdict came from a real answer that fits the audit: no auditor failed either.
    assert {a["outcome"] for a in audits} <= {"passed", "failed"}, Counter(
        a["outcome"] for a in audits
    )
    generators = {a["provider_id"] for a in audits}
    assert generators == set(verified.providers), "some provider was never audited"

    for provider_id in verified.providers:
        stake = httpx.get(f"{live.base}/v1/providers/{provider_id}", timeout=10).json()
        assert stake["bonded"] == verified.stake and stake["unbonding"] == [], stake
        record = reputation(live.base, provider_id)
        assert record["models"] == {TEXT_MODEL: ROUTABLE}, record
        assert record["bans"] == [] and record["violations"] == [], record

    # The journal checks out while the gateway runs (and again once stopped, at teardown).
    checked = ledger_check(live.data_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def report(
    verified: VerifiedNetwork,
    temperature: dict[str, float],
    cases: dict[str, dict[str, Any]],
    audits: list[dict[str, Any]],
    tolerances: dict[str, float],
) -> None:
    """Audits per (generator, auditor), the worst deviations against their tolerances, and
    every first audit that did not pass, with its findings."""
    setup = {pid: f"{spec.setup}{' (v)' if spec.validator else ''}".replace("threads=", "t")
             for pid, spec in verified.providers.items()}  # fmt: skip
    cells: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for audit in audits:
        auditor = setup.get(audit["auditor_id"], audit["auditor_id"][:12])
        cells[(setup[audit["provider_id"]], auditor)].append(audit)
    table = Table(
        title=f"{len(audits)} audits of {len(cases)} closed cases; tN = N torch threads, "
        "(v) = validator; deviations: worst over the cell's audits"
    )
    for column in ("generator", "auditor", "audits", "failed", "no answer", "max |dlogprob|",
                   "worst mean", "greedy gap", "tail frac"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("generator", "auditor") else "right")
    worst: dict[str, float] = defaultdict(float)
    for (generator, auditor), rows in sorted(cells.items()):
        cell: dict[str, float] = defaultdict(float)
        for audit in rows:
            stats = audit["evidence"].get("verdict", {}).get("stats", {})
            greedy = temperature.get(audit["request_id"]) == 0.0
            # The greedy gap is a rule at temperature 0 only; the rank tail one when sampled.
            wanted = ("logprob_abs_max", "logprob_abs_mean",
                      "greedy_gap_max" if greedy else "tail_fraction")  # fmt: skip
            for key in wanted:
                cell[key] = max(cell[key], stats.get(key, 0.0))
                worst[key] = max(worst[key], stats.get(key, 0.0))
        outcomes = Counter(a["outcome"] for a in rows)
        table.add_row(
            generator,
            auditor,
            str(len(rows)),
            str(outcomes["failed"]),
            str(outcomes["no_answer"]),
            f"{cell['logprob_abs_max']:.4f}",
            f"{cell['logprob_abs_mean']:.4f}",
            f"{cell['greedy_gap_max']:.4f}",
            f"{cell['tail_fraction']:.3f}",
        )
    console = Console(file=sys.stdout, width=140)
    console.print(table)
    console.print(f"cases: {dict(Counter(c['status'] for c in cases.values()))}")
    console.print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in verified.phases.items()))
    for name, tol in (("logprob_abs_max", "logprob_abs_max"),
                      ("logprob_abs_mean", "logprob_abs_mean"),
                      ("greedy_gap_max", "greedy_gap")):  # fmt: skip
        console.print(
            f"worst {name}: {worst[name]:.4f} vs tolerance {tolerances[tol]:.4f} "
            f"({worst[name] / tolerances[tol]:.0%} of it)"
        )
    # The tail rule allows a count per choice; over a whole audit this is a close proxy.
    tails: list[tuple[int, int]] = []
    for audit in audits:
        stats = audit["evidence"].get("verdict", {}).get("stats")
        if stats and temperature.get(audit["request_id"]):
            tails.append((int(stats["tail_tokens"]), int(stats["completion_tokens"])))
    if tails:
        fraction = tolerances["tail_fraction"]
        count, n = max(tails, key=lambda t: t[0] / tail_allowance(fraction, t[1]))
        console.print(
            f"worst sampled tail: {count} of {n} tokens below top {tolerances['top_k']:.0f}, "
            f"{tail_allowance(fraction, n)} allowed (tail_fraction {fraction})"
        )
    for audit in audits:
        if audit["round"] == 1 and audit["outcome"] != "passed":
            findings = audit["evidence"].get("verdict", {}).get("findings")
            console.print(
                f"first audit of {audit['request_id']} (T={temperature.get(audit['request_id'])}, "
                f"{setup[audit['provider_id']]} by "
                f"{setup.get(audit['auditor_id'], audit['auditor_id'][:12])}): "
                f"{audit['outcome']} {audit['reason']}: "
                f"{findings if findings is not None else audit['evidence'].get('problem')}"
            )
