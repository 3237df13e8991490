"""Providers die under load and come back; clients see answers, never charges for lost work.

Real processes: a dev-mode gateway on SQLite and three staked `tessera provider` processes
running tessera-tiny on the CPU. Worker threads keep up a steady mix of chat and
completions requests through the official openai client, whole and streamed, greedy,
seeded and unseeded, while the test's own thread SIGKILLs a random provider (preferably
one in the middle of a stream) and restarts it with the same key, never killing the last
one connected. A stream's headers leave before any continuation, so a continued stream is
told by its settlement: the gateway paid another provider than the one in its
x-tessera-provider header (and tessera_stream_continuations_total must agree). Afterwards:

* no whole (non-streaming) request failed: the gateway moved each one elsewhere;
* every stream either completed, was continued on another provider (greedy and seeded
  only, with the text an uninterrupted run gives), or ended with an OpenAI-style error
  event; nothing else (a hang, a cut connection, a missing end);
* every request cost exactly what its finishing provider's price makes of the tokens that
  provider delivered (so a continued stream pays nothing for the dead provider's part),
  a stream that ended in an error cost nothing, and the consumer's balance moved by the
  sum of those costs;
* the journal is sound (`tessera ledger check`) and every hold settled exactly once.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tessera.dev_money import DEFAULT_FUNDS
from tessera.ledger.escrow import HOLD

from support.fault_network import (
    TEXT_MODEL,
    Chaos,
    FaultNetwork,
    InFlight,
    counter_total,
    start_fault_network,
)
from support.stored_journal import settled_journal, settlements

pytestmark = pytest.mark.e2e

LOAD_S = 45.0  # seconds of load
KILLS_S = (5.0, 28.0)  # when kills happen: once streams run, and early enough to come back
WORKERS = 6
MAX_TOKENS = 40
CHAT_PROMPTS = [
    "Tell me a story about a fox.",
    "What did the crow say to the wolf?",
    "Write about the sea and the ships.",
]
TEXT_PROMPTS = ["Once upon a time", "The old lion said to the mouse"]
MODES = ("greedy", "seeded", "unseeded")


def sampling(mode: str, prompt: str) -> dict[str, Any]:
    if mode == "greedy":
        return {"temperature": 0}
    if mode == "seeded":  # one seed per prompt, so one reference answer each
        return {"temperature": 0.8, "seed": 1000 + len(prompt)}
    return {"temperature": 1.0}


@dataclass(frozen=True)
class Spec:
    endpoint: str  # chat | completions
    prompt: str
    mode: str
    stream: bool

    @property
    def reference_key(self) -> tuple[str, str, str]:
        return (self.endpoint, self.prompt, self.mode)


@dataclass
class Outcome:
    spec: Spec
    result: str = "failed"  # ok | completed | continued | error_event | failed
    request_id: str | None = None
    first_provider: str | None = None  # x-tessera-provider: who started the answer
    text: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: int | None = None  # what the response said it cost
    error: str | None = None  # an error event's code, or what went wrong
    why_not_continued: str | None = None  # an error event's reason, from its message
    view: dict[str, Any] = field(default_factory=dict)  # GET /v1/requests/{id}


def create(client: OpenAI, spec: Spec) -> Any:
    extra = sampling(spec.mode, spec.prompt)
    if spec.stream:
        extra |= {"stream": True, "stream_options": {"include_usage": True}}
    if spec.endpoint == "chat":
        return client.chat.completions.with_raw_response.create(
            model=TEXT_MODEL,
            messages=[{"role": "user", "content": spec.prompt}],
            max_tokens=MAX_TOKENS,
            **extra,
        )
    return client.completions.with_raw_response.create(
        model=TEXT_MODEL, prompt=spec.prompt, max_tokens=MAX_TOKENS, **extra
    )


def run_whole(client: OpenAI, spec: Spec) -> Outcome:
    out = Outcome(spec)
    try:
        raw = create(client, spec)
    except openai.APIError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
        response = getattr(exc, "response", None)
        if response is not None:
            out.request_id = response.headers.get("x-request-id")
        return out
    reply = raw.parse()
    out.request_id = raw.headers["x-request-id"]
    out.first_provider = raw.headers["x-tessera-provider"]
    choice = reply.choices[0]
    out.text = (choice.message.content or "") if spec.endpoint == "chat" else choice.text
    assert reply.usage is not None
    out.prompt_tokens = reply.usage.prompt_tokens
    out.completion_tokens = reply.usage.completion_tokens
    out.cost = int(raw.headers["x-tessera-cost"])
    out.result = "ok"
    return out


def run_stream(client: OpenAI, spec: Spec, inflight: InFlight) -> Outcome:
    """One stream, classified: completed (the gateway then tells if it was continued),
    error_event, or failed (anything else)."""
    out = Outcome(spec)
    try:
        raw = create(client, spec)
    except openai.APIError as exc:
        out.error = f"at the start: {type(exc).__name__}: {exc}"
        return out
    out.request_id = raw.headers["x-request-id"]
    out.first_provider = raw.headers["x-tessera-provider"]
    finish = None
    got_usage = False
    try:
        for chunk in raw.parse():
            if chunk.usage is not None:
                got_usage = True
                out.prompt_tokens = chunk.usage.prompt_tokens
                out.completion_tokens = chunk.usage.completion_tokens
                out.cost = int((chunk.usage.model_extra or {})["cost"])
            for choice in chunk.choices:
                if spec.endpoint == "chat":
                    out.text += choice.delta.content or ""  # type: ignore[union-attr]
                else:
                    out.text += choice.text  # type: ignore[union-attr]
                finish = choice.finish_reason or finish
            if out.text:
                inflight.mid_answer(out.request_id, out.first_provider, spec.mode)
    except openai.APIError as exc:
        # The SDK raises a bare APIError for an SSE `error` event; its subclasses are
        # transport failures (a cut connection, a timeout): those are not an error event.
        if type(exc) is openai.APIError and isinstance(exc.body, dict):
            out.result = "error_event"
            out.error = str(exc.body.get("code"))
            _, _, why = str(exc.body.get("message")).partition("continued elsewhere: ")
            out.why_not_continued = why.split(" (")[0].split(". ")[0] or None
        else:
            out.error = f"mid-stream: {type(exc).__name__}: {exc}"
        return out
    except httpx.HTTPError as exc:
        out.error = f"mid-stream: {type(exc).__name__}: {exc}"
        return out
    finally:
        inflight.ended(out.request_id)
    if finish is None or not got_usage:
        out.error = f"ended without finish_reason ({finish}) or usage ({got_usage})"
        return out
    out.result = "completed"
    return out


def load(
    fault: FaultNetwork,
    stop: threading.Event,
    outcomes: list[Outcome],
    inflight: InFlight,
    rng: random.Random,
) -> None:
    with fault.live.client(timeout=90) as client:
        while not stop.is_set():
            endpoint = rng.choice(["chat", "chat", "completions"])
            prompt = rng.choice(CHAT_PROMPTS if endpoint == "chat" else TEXT_PROMPTS)
            spec = Spec(endpoint, prompt, rng.choice(MODES), stream=rng.random() < 0.65)
            outcome = run_stream(client, spec, inflight) if spec.stream else run_whole(client, spec)
            outcomes.append(outcome)


@pytest.fixture
def fault(tmp_path: Path, tiny_model_dir: Path) -> Iterator[FaultNetwork]:
    net = start_fault_network(tmp_path, tiny_model_dir, providers=3, max_concurrent_jobs=3)
    try:
        yield net
    finally:
        net.live.network.stop()


@pytest.mark.timeout(480)
def test_providers_killed_under_load_cost_clients_nothing(fault: FaultNetwork) -> None:
    seed = random.SystemRandom().randrange(1 << 32)
    print(f"\nchaos seed {seed}")
    rng = random.Random(seed)
    before = fault.metrics()
    outcomes: list[Outcome] = []
    inflight = InFlight()
    stop = threading.Event()
    chaos = Chaos(fault, random.Random(rng.random()), inflight)
    workers = [
        threading.Thread(
            target=load, args=(fault, stop, outcomes, inflight, random.Random(rng.random()))
        )
        for _ in range(WORKERS)
    ]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    try:
        chaos.run(LOAD_S, *KILLS_S)  # in this thread: it outlives the restarted providers
    finally:
        stop.set()
        for worker in workers:
            worker.join(120)
    load_s = time.monotonic() - started

    started = time.monotonic()
    references = ask_references(fault, outcomes)
    references_s = time.monotonic() - started
    for outcome in [*outcomes, *references.values()]:
        if outcome.request_id is not None:
            outcome.view = fault.consumer_get(f"/v1/requests/{outcome.request_id}")
    for outcome in outcomes:
        # The gateway paid another provider than the one that began: it was continued.
        if outcome.result == "completed" and outcome.view["provider_id"] != outcome.first_provider:
            outcome.result = "continued"
    continuations = report(
        fault, chaos, outcomes, before, f"load {load_s:.0f}s, references {references_s:.0f}s"
    )

    failed = [(o.spec, o.request_id, o.error) for o in outcomes if o.result == "failed"]
    assert failed == [], failed
    assert chaos.kills >= 2 and chaos.restarts == chaos.kills
    continued = [o for o in outcomes if o.result == "continued"]
    ended = [o for o in outcomes if o.result == "error_event"]
    assert continued, "no stream was continued: the chaos missed every stream"
    assert len(continued) == continuations
    assert not [o for o in continued if o.spec.mode == "unseeded"]
    # Each error event says why the stream could not go on elsewhere.
    assert all(o.why_not_continued for o in ended), [o.error for o in ended]
    assert all(
        "without a seed" in str(o.why_not_continued) for o in ended if o.spec.mode == "unseeded"
    )

    # Greedy and seeded answers, continued or not, are what an uninterrupted run gives.
    for outcome in outcomes:
        if outcome.spec.mode != "unseeded" and outcome.result != "error_event":
            reference = references[outcome.spec.reference_key]
            assert (outcome.text, outcome.completion_tokens) == (
                reference.text,
                reference.completion_tokens,
            ), (outcome.result, outcome.spec, outcome.request_id)

    everything = [*outcomes, *references.values()]
    for outcome in everything:
        check_cost(fault, outcome)
    check_account(fault, everything)
    chaos.wait_all_connected()
    assert all(fault.connected(i) for i in fault.providers)  # each came back as itself
    check_journal(fault.live.data_dir)


def ask_references(fault: FaultNetwork, outcomes: list[Outcome]) -> dict[Any, Outcome]:
    """The answer an uninterrupted provider gives to each greedy or seeded request asked,
    asked now that nothing is killed."""
    keys = sorted({o.spec.reference_key for o in outcomes if o.spec.mode != "unseeded"})
    specs = [Spec(e, p, m, stream=True) for e, p, m in keys]
    with fault.live.client(timeout=90) as client, ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda s: run_stream(client, s, InFlight()), specs))
    assert all(a.result == "completed" for a in answers), answers
    return dict(zip(keys, answers, strict=True))


def report(
    fault: FaultNetwork, chaos: Chaos, outcomes: list[Outcome], before: str, timing: str
) -> int:
    """Print the counts; return the continued streams the gateway counted."""
    after = fault.metrics()

    def delta(name: str, **labels: str) -> int:
        return int(counter_total(after, name, **labels) - counter_total(before, name, **labels))

    n = Counter((o.spec.stream, o.result) for o in outcomes)
    continuations = {
        outcome: delta("tessera_stream_continuations_total", outcome=outcome)
        for outcome in ("started", "completed", "no_provider")
    }
    continued = Counter(o.spec.mode for o in outcomes if o.result == "continued")
    ended = Counter(
        (o.spec.mode, o.why_not_continued)
        for o in outcomes
        if o.error and o.result == "error_event"
    )
    print(
        f"startup {fault.startup_s:.0f}s, {timing}, {WORKERS} workers, "
        f"{len(fault.providers)} providers\n"
        f"{'':14}{'ok':>6}{'completed':>11}{'continued':>11}{'error-ended':>13}{'failed':>8}\n"
        f"{'non-streaming':14}{n[False, 'ok']:6d}{'-':>11}{'-':>11}{'-':>13}"
        f"{n[False, 'failed']:8d}\n"
        f"{'streams':14}{'-':>6}{n[True, 'completed']:11d}{n[True, 'continued']:11d}"
        f"{n[True, 'error_event']:13d}{n[True, 'failed']:8d}\n"
        f"kills {chaos.kills}, restarts {chaos.restarts}, "
        f"retries {delta('tessera_job_retries_total')}, continuations {continuations}\n"
        f"continued by mode {dict(continued)}, error events by mode and reason {dict(ended)}\n"
        + "\n".join(chaos.log)
    )
    return continuations["completed"]


def check_cost(fault: FaultNetwork, outcome: Outcome) -> None:
    """Exactly the finishing provider's price of the tokens it delivered; errors are free."""
    view = outcome.view
    assert view["settlement"] in ("captured", "released"), view
    if outcome.result == "error_event":
        assert (view["settlement"], view["cost"]) == ("released", 0), view
        return
    assert outcome.cost == view["cost"], (outcome, view)
    assert view["prompt_tokens"] == outcome.prompt_tokens, (outcome, view)
    price = fault.price_of(view["provider_id"])
    delivered = price.cost(outcome.prompt_tokens or 0, outcome.completion_tokens or 0)
    assert view["cost"] == price.cost(view["prompt_tokens"], view["completion_tokens"]), view
    if outcome.result == "continued":
        # The dead provider's tokens reached the client but are not paid for.
        assert view["completion_tokens"] < (outcome.completion_tokens or 0), (outcome, view)
        assert view["cost"] < delivered
    else:
        assert view["completion_tokens"] == outcome.completion_tokens, (outcome, view)
        assert view["cost"] == delivered


def check_account(fault: FaultNetwork, outcomes: list[Outcome]) -> None:
    """The balance moved by exactly the sum of the costs, nothing is held, and the usage
    listing knows no other request and agrees with what each client was told."""
    account = fault.consumer_get("/v1/account")
    assert account["held"] == 0
    assert DEFAULT_FUNDS - account["balance"] == sum(o.view["cost"] for o in outcomes)
    listed = {
        r["request_id"]: (r["cost"], r["prompt_tokens"], r["completion_tokens"])
        for r in fault.usage_rows()
    }
    told = {
        o.request_id: (o.view["cost"], o.prompt_tokens or 0, o.completion_tokens or 0)
        for o in outcomes
    }
    assert listed.keys() == told.keys()
    assert {k: (listed[k], told[k]) for k in told if listed[k] != told[k]} == {}


def check_journal(data_dir: Path) -> None:
    """The stored journal is sound, and every hold settled exactly once."""
    entries, problems = settled_journal(data_dir)  # the last captures written
    settled = settlements(entries)
    held = {e.reference for e in entries if e.kind == HOLD}
    assert problems == []
    assert set(settled) <= held
    assert all(settled[reference] == 1 for reference in held), "a hold settled twice or never"
    checked = subprocess.run(
        [sys.executable, "-m", "tessera.cli", "ledger", "check", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
