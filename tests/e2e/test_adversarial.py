"""Cheating providers are caught and slashed: the adversarial end-to-end test (issue 4).

A real gateway pins the tiny model in a catalog written by ``tessera catalog calibrate``,
three honest ``tessera provider`` processes are the operator's validators, and seven real
provider identities cheat (tests/support/cheating_provider.py, all in one process that
loads the models once): one serves another model under the claimed name and hash, one an
int4-quantized copy, one random tokens, one reads only the prompt's tail, one inflates its
token counts, one forges and one replays its receipts. Each answers the catalog's join
challenge honestly (the catalog is public), so each is routed, and undercuts the
validators' price, so a consumer who sets ``provider.max_price`` gets only cheaters. The
official openai client sends a mix of chat and completions, greedy and sampled, streamed
and not, until every cheater is banned, and the test prints how many requests each one
served before it was caught, and how.

Beside them, a naive impostor (no bait and switch) and an honest provider of another
model under the same name (another weight hash) are never routed at all, and an honest
provider at the cheaters' price serves and is audited beside them without losing a unit.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
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
from rich.console import Console
from rich.table import Table

from tessera.demo import Network, free_port, wait_for_network
from tessera.dev_money import DEFAULT_STAKE, fund_account, stake_provider
from tessera.key_file import load_or_create_key
from tessera.protocol.signing import public_key_hex
from tessera.units import format_tokens

from support.impostor_model import ensure_impostor_model
from support.live_network import TEXT_MODEL, LiveNetwork, create_key
from support.tiny_model import REPO_ROOT
from support.verified_network import (
    ROUTABLE,
    ledger_check,
    reputation,
    wait_routable,
)

pytestmark = pytest.mark.e2e

CHEATERS = ("impostor", "quantized", "random", "truncate", "inflate", "forge", "replay")
# How each cheat must be caught: by its receipt at once, or by a 2-of-3 audit case.
CAUGHT_BY = {
    "impostor": ("audit", "wrong_model"),
    "quantized": ("audit", "wrong_model"),
    "random": ("audit", "wrong_model"),
    "truncate": ("audit", "wrong_model"),
    "inflate": ("receipt", "tampered_output"),
    "forge": ("receipt", "forged_receipt"),
    "replay": ("receipt", "forged_receipt"),
}
VALIDATORS = 3
# Base units per million tokens (1 token = 10**9 units): cheaters undercut the validators.
VALIDATOR_PRICE = (2_000_000_000, 6_000_000_000)
CHEAP_PRICE = (500_000_000, 1_500_000_000)
MAX_PRICE = {"max_price": {"prompt": CHEAP_PRICE[0], "completion": CHEAP_PRICE[1]}}
FUNDS = 1_000 * 10**9
CONCURRENCY = 4
MAX_REQUESTS = 400
CATCH_TIMEOUT_S = 300.0
BANNED = "banned"
RECEIPT_REASONS = ("forged_receipt", "tampered_output")

CHATS = (
    "Tell me a story about a fox and the grapes.",
    "What did the ant say to the grasshopper?",
    "Why did the crow drop pebbles into the pitcher?",
    "Tell me about the wolf who came to the door.",
)
PROMPTS = (
    "The Wolf and the Lamb. A Wolf came upon a Lamb straying from the flock",
    "The Ant and the Grasshopper. In a field one summer's day a Grasshopper",
    "There was once a king who had three daughters, and the youngest",
    "The old woman said to the wolf who came knocking at her door one night:",
)


@dataclass(frozen=True)
class Process:
    name: str
    mode: str  # a cheat, "naive", "mismatch", "validator" or "honest"
    provider_id: str


@dataclass
class Adversarial:
    live: LiveNetwork
    processes: dict[str, Process]  # provider id -> process

    def ids(self, *modes: str) -> list[str]:
        return [p.provider_id for p in self.processes.values() if p.mode in modes]

    def mode(self, provider_id: str) -> str:
        return self.processes[provider_id].mode


@dataclass
class Sent:
    """What the consumer saw of one request."""

    number: int
    request_id: str | None
    provider_id: str | None
    error: str | None = None


@dataclass
class Caught:
    """How one provider fared, from the gateway's public APIs and the consumer's view."""

    answered: list[str] = field(default_factory=list)  # request ids with a good receipt
    refused_streamed: list[str] = field(default_factory=list)  # streamed, then refused
    refused_receipts: int = 0  # violations: receipts refused as forged or tampered
    how: str = "not caught"
    reason: str | None = None
    caught_on: int | None = None  # the catching request's number among those it served
    slashed: int = 0
    refunded: int = 0
    stake_after: int = 0
    status: str | None = None
    bans: list[dict[str, Any]] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def served(self) -> int:
        """Requests it was given: answered with a good receipt, or answered and refused (a
        refused non-streamed answer is retried elsewhere, so only its violation shows)."""
        return len(self.answered) + max(len(self.refused_streamed), self.refused_receipts)


# ---------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, so no cheater outlives it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn_cheaters(network: Network, name: str, args: list[str]) -> None:
    """Start ``python -m tests.support.cheating_provider`` (every cheater, in one process)
    as one of the network's processes (stopped with the rest; its log beside theirs)."""
    logs = network.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    with (logs / f"{name}.log").open("ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.cheating_provider", *args],
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    network.processes.append((name, proc))


def start_adversarial_network(
    data_dir: Path, model_dir: Path, impostor_dir: Path, catalog: Path
) -> Adversarial:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    network = Network(data_dir)
    plan: list[tuple[str, str]] = [(f"validator-{i}", "validator") for i in range(1, 4)]
    plan += [(f"cheater-{mode}", mode) for mode in CHEATERS]
    plan += [("naive-impostor", "naive"), ("other-weights", "mismatch"), ("honest", "honest")]
    keys = {name: data_dir / f"{name}.key" for name, _ in plan}
    ids = {name: public_key_hex(load_or_create_key(path)) for name, path in keys.items()}
    gateway = ["gateway", "--port", str(port), "--data-dir", str(data_dir), "--dev",
               "--catalog", str(catalog)]  # fmt: skip
    for name, mode in plan:
        if mode == "validator":
            gateway += ["--validator", ids[name]]
    network.spawn("gateway", gateway)
    try:
        api_key = create_key(data_dir)
        wait_for_network(base, 0, network, timeout_s=60)
        fund_account(base, api_key, FUNDS)
        # Every cheater is an identity of its own in one process sharing the loaded models.
        cheaters = ["--gateway", base, "--model-dir", str(model_dir), "--impostor-dir",
                    str(impostor_dir), "--catalog", str(catalog), "--price-in",
                    str(CHEAP_PRICE[0]), "--price-out", str(CHEAP_PRICE[1]), "--threads", "1",
                    "--max-concurrent-jobs", "2"]  # fmt: skip
        for name, mode in plan:
            stake_provider(base, keys[name])
            if mode in ("validator", "mismatch", "honest"):
                model = impostor_dir if mode == "mismatch" else model_dir
                price = VALIDATOR_PRICE if mode == "validator" else CHEAP_PRICE
                common = ["--gateway", base, "--key-file", str(keys[name]), "--threads", "1",
                          "--max-concurrent-jobs", "2"]  # fmt: skip
                network.spawn(
                    name,
                    ["provider", "--model", str(model), "--label", name, "--dtype", "float32",
                     "--price-in", str(price[0]), "--price-out", str(price[1]), *common],
                )  # fmt: skip
            elif mode == "naive":  # the naive impostor never read the public catalog
                cheaters += ["--naive", f"impostor={keys[name]}"]
            else:
                cheaters += ["--cheater", f"{mode}={keys[name]}"]
        spawn_cheaters(network, "cheaters", cheaters)
        wait_for_network(base, len(plan), network, timeout_s=300)
        routed = [ids[name] for name, mode in plan if mode not in ("naive", "mismatch")]
        wait_routable(base, routed, TEXT_MODEL, network, timeout_s=300)
    except BaseException:
        network.stop()
        raise
    live = LiveNetwork(base, api_key, network, data_dir, port)
    return Adversarial(live, {ids[name]: Process(name, mode, ids[name]) for name, mode in plan})


@pytest.fixture(scope="module")
def adversarial(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_catalog: Path
) -> Iterator[Adversarial]:
    root = tmp_path_factory.mktemp("adversarial")
    impostor_dir = ensure_impostor_model()
    net = start_adversarial_network(root / "network", tiny_model_dir, impostor_dir, tiny_catalog)
    try:
        yield net
    finally:
        net.live.network.stop()


# ---------------------------------------------------------------- the consumer


def send(client: OpenAI, number: int) -> Sent:
    """Request ``number`` of the mix: chat or completion, greedy or sampled, some streamed."""
    temperature = (0.0, 0.8, 0.0, 1.0)[number % 4]
    max_tokens = 8 + number % 9
    common: dict[str, Any] = {
        "model": TEXT_MODEL,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "extra_body": {"provider": MAX_PRICE},
    }
    try:
        if number % 3 == 2:
            raw: Any = client.completions.with_raw_response.create(
                prompt=PROMPTS[number % len(PROMPTS)], **common
            )
            raw.parse()
        else:
            messages = [{"role": "user", "content": CHATS[number % len(CHATS)]}]
            stream = number % 5 == 4
            raw = client.chat.completions.with_raw_response.create(
                messages=messages, stream=stream, **common
            )
            reply = raw.parse()
            if stream:
                list(reply)
    except openai.APIStatusError as exc:
        return Sent(number, exc.response.headers.get("x-request-id"), None, f"{exc.status_code}")
    except openai.APIConnectionError as exc:
        return Sent(number, None, None, type(exc).__name__)
    return Sent(number, raw.headers["x-request-id"], raw.headers["x-tessera-provider"])


def model_status(base: str, provider_id: str) -> str | None:
    status = reputation(base, provider_id)["models"].get(TEXT_MODEL)
    return None if status is None else str(status)


def drive_until_caught(net: Adversarial) -> tuple[list[Sent], float]:
    """Send requests until every cheater is banned (or the budget runs out)."""
    base = net.live.base
    cheaters = net.ids(*CHEATERS)
    sent: list[Sent] = []
    started = time.monotonic()
    with net.live.client(timeout=120) as client, ThreadPoolExecutor(CONCURRENCY) as pool:
        while len(sent) < MAX_REQUESTS and time.monotonic() - started < CATCH_TIMEOUT_S:
            if all(model_status(base, pid) == BANNED for pid in cheaters):
                break
            numbers = range(len(sent), len(sent) + CONCURRENCY)
            sent.extend(pool.map(lambda n: send(client, n), numbers))
    # Audit cases opened by the last requests may still be closing.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(model_status(base, pid) == BANNED for pid in cheaters):
            break
        time.sleep(1.0)
    return sent, time.monotonic() - started


# ---------------------------------------------------------------- what the gateway says


def gather(net: Adversarial, sent: list[Sent]) -> dict[str, Caught]:
    """Each provider's requests (by the response header, then its receipt), stake, audit
    cases, bans and violations."""
    live = net.live
    found = {pid: Caught() for pid in net.processes}
    auth = {"Authorization": f"Bearer {live.api_key}"}
    with httpx.Client(base_url=live.base, timeout=30) as http:
        for s in sorted(sent, key=lambda s: s.number):
            if s.provider_id not in found or s.request_id is None:
                continue
            receipt = http.get(f"/v1/receipts/{s.request_id}", headers=auth)
            if receipt.status_code == 404:  # answered (streamed), but its receipt refused
                found[s.provider_id].refused_streamed.append(s.request_id)
                continue
            receipt.raise_for_status()
            assert receipt.json()["receipt"]["provider_id"] == s.provider_id
            found[s.provider_id].answered.append(s.request_id)
        for pid, caught in found.items():
            record = reputation(live.base, pid)
            caught.status = record["models"].get(TEXT_MODEL)
            caught.bans = [b for b in record["bans"] if b["model"] == TEXT_MODEL]
            caught.refused_receipts = sum(
                1 for v in record["violations"] if v["kind"] in RECEIPT_REASONS
            )
            stake = http.get(f"/v1/providers/{pid}").json()
            caught.stake_after = stake["bonded"] + sum(t["amount"] for t in stake["unbonding"])
            caught.slashed = DEFAULT_STAKE - caught.stake_after
            caught.cases = http.get(
                "/v1/audit-cases", params={"provider": pid, "limit": 200}
            ).json()["data"]
            upheld = [c for c in caught.cases if c["status"] == "upheld"]
            caught.refunded = sum(c["refunded"] for c in upheld)
            if upheld:
                first = min(upheld, key=lambda c: c["closed_at"] or "")
                caught.how, caught.reason = "audit", first["reason"]
                if first["request_id"] in caught.answered:
                    caught.caught_on = caught.answered.index(first["request_id"]) + 1
            elif caught.refused_receipts or caught.refused_streamed:
                # A refused receipt bans at once: its good receipts came before it.
                caught.how, caught.caught_on = "receipt", len(caught.answered) + 1
                caught.reason = caught.bans[0]["reason"] if caught.bans else None
    return found


def audit_votes(base: str, request_id: str) -> list[dict[str, Any]]:
    case = httpx.get(f"{base}/v1/audit-cases/{request_id}", timeout=30).json()
    return list(case.get("audits", []))


def report(net: Adversarial, found: dict[str, Caught], sent: list[Sent], took_s: float) -> None:
    """The table the issue asks for, then the audit evidence behind each upheld case."""
    base = net.live.base
    table = Table(title=f"{len(sent)} requests in {took_s:.0f}s until every cheater was banned")
    for column in ("provider", "served", "caught on", "caught by", "slash reason",
                   "stake slashed", "consumer refunds", "model status"):  # fmt: skip
        table.add_column(column, justify="right" if column in ("served", "caught on") else "left")
    evidence: list[str] = []
    for pid in net.ids(*CHEATERS, "naive", "mismatch", "honest"):
        caught, name = found[pid], net.processes[pid].name
        how = caught.how
        upheld = [c for c in caught.cases if c["status"] == "upheld"]
        if upheld:
            audits = audit_votes(base, upheld[0]["request_id"])
            failed = sum(1 for a in audits if a["outcome"] == "failed")
            how = f"audit case: {failed} of {len(audits)} auditors failed it"
            for audit in audits:
                verdict = audit["evidence"].get("verdict", {})
                stats = verdict.get("stats", {})
                finding = (verdict.get("findings") or [{}])[0].get("detail", "-")
                evidence.append(
                    f"{name} audit {audit['round']} {audit['outcome']}: max |dlogprob| "
                    f"{stats.get('logprob_abs_max', 0.0):.3f}, worst mean "
                    f"{stats.get('logprob_abs_mean', 0.0):.3f}, greedy gap "
                    f"{stats.get('greedy_gap_max', 0.0):.3f}; first finding: {finding}"
                )
        elif caught.how == "receipt":
            how = f"receipt ({caught.refused_receipts} refused)"
        elif caught.cases:
            statuses = Counter(c["status"] for c in caught.cases)
            how = "audit cases: " + ", ".join(f"{n} {k}" for k, n in sorted(statuses.items()))
        table.add_row(
            name,
            str(caught.served),
            "-" if caught.caught_on is None else f"#{caught.caught_on}",
            how,
            caught.reason or "-",
            format_tokens(caught.slashed),
            "not charged" if caught.how == "receipt" else f"{caught.refunded} units",
            str(caught.status),
        )
    console = Console(file=sys.stdout, width=170)
    console.print(table)
    errors = Counter(s.error for s in sent if s.error)
    console.print(f"consumer-visible errors: {dict(errors) or 'none'}")
    for line in evidence:
        console.print(line)


# ---------------------------------------------------------------- the tests


@pytest.mark.timeout(1200)
def test_naive_cheaters_and_other_weights_are_never_routed(adversarial: Adversarial) -> None:
    base = adversarial.live.base
    [naive] = adversarial.ids("naive")
    [mismatch] = adversarial.ids("mismatch")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and model_status(base, naive) == "challenge":
        time.sleep(0.5)
    assert model_status(base, naive) == "challenge_failed", reputation(base, naive)
    assert model_status(base, mismatch) == "weights_mismatch", reputation(base, mismatch)
    kinds = {v["kind"] for v in reputation(base, naive)["violations"]}
    assert "challenge_failed" in kinds
    for pid in adversarial.ids("validator", "honest", *CHEATERS):
        assert model_status(base, pid) == ROUTABLE


@pytest.mark.timeout(900)
def test_every_cheater_is_caught_slashed_and_banned(adversarial: Adversarial) -> None:
    live = adversarial.live
    sent, took_s = drive_until_caught(adversarial)
    found = gather(adversarial, sent)
    report(adversarial, found, sent, took_s)

    for pid in adversarial.ids(*CHEATERS):
        mode, caught = adversarial.mode(pid), found[pid]
        assert caught.served >= 1, f"{mode} was never routed"
        assert caught.status == BANNED and caught.bans, f"{mode} is not banned: {caught}"
        assert caught.stake_after < DEFAULT_STAKE, f"{mode} kept its stake"
        assert (caught.how, caught.reason) == CAUGHT_BY[mode], (mode, caught)
        if caught.how == "audit":
            assert caught.refunded > 0, f"the consumer of {mode}'s cheat got nothing back"
    [replay] = adversarial.ids("replay")
    assert len(found[replay].answered) >= 1  # its first receipt was genuine

    # Nobody else was routed a request, and no honest provider lost anything.
    for pid in adversarial.ids("naive", "mismatch"):
        assert found[pid].served == 0, f"{adversarial.mode(pid)} was routed"
    for pid in adversarial.ids("validator", "honest"):
        caught = found[pid]
        assert caught.slashed == 0 and not caught.bans, caught
        assert caught.status == ROUTABLE
        assert all(c["status"] != "upheld" for c in caught.cases)

    live.network.stop()
    checked = ledger_check(live.data_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
