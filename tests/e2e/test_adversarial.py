"""Cheating providers are caught and slashed: the adversarial end-to-end test (issue 4).

A real gateway pins the tiny model in a catalog written by ``tessera catalog calibrate``,
three honest ``tessera provider`` processes (float32 on one and on two torch threads, and
bfloat16) are the operator's validators, and seven real provider identities cheat
(tests/support/cheating_provider.py, all in one process that loads the models once): one
serves another model under the claimed name and hash, one an int4-quantized copy, one
random tokens, one reads only the prompt's tail, one inflates its token counts, one forges
and one replays its receipts. Each answers the catalog's join challenge honestly (the
catalog is public), so each is routed, and undercuts the validators' price, so a consumer
who sets ``provider.max_price`` gets only cheaters. The official openai client sends a mix
of chat and completions, greedy and sampled, streamed and not, until every cheater is
banned, and the test prints how many requests each one served before it was caught, and
how.

Beside them, a naive impostor (no bait and switch) and an honest provider of another
model under the same name (another weight hash) are never routed at all, and an honest
provider at the cheaters' price serves and is audited beside them without losing a unit.
The network (support/audited_network.py) is the one test_honest_audits.py uses too.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from rich.console import Console
from rich.table import Table

from tessera.dev_money import DEFAULT_STAKE
from tessera.units import format_tokens

from support.audited_network import CHEAP_PRICE, CHEATERS, AuditedNetwork
from support.live_network import TEXT_MODEL
from support.verified_network import ROUTABLE, ledger_check, reputation

pytestmark = pytest.mark.e2e

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
MAX_PRICE = {"max_price": {"prompt": CHEAP_PRICE[0], "completion": CHEAP_PRICE[1]}}
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


def drive_until_caught(net: AuditedNetwork) -> tuple[list[Sent], float]:
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


def gather(net: AuditedNetwork, sent: list[Sent]) -> dict[str, Caught]:
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


def report(net: AuditedNetwork, found: dict[str, Caught], sent: list[Sent], took_s: float) -> None:
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


@pytest.mark.timeout(1200)  # the first test to use the network starts it
def test_naive_cheaters_and_other_weights_are_never_routed(
    audited_network: AuditedNetwork,
) -> None:
    net = audited_network
    base = net.live.base
    [naive] = net.ids("naive")
    [mismatch] = net.ids("mismatch")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and model_status(base, naive) == "challenge":
        time.sleep(0.5)
    assert model_status(base, naive) == "challenge_failed", reputation(base, naive)
    assert model_status(base, mismatch) == "weights_mismatch", reputation(base, mismatch)
    kinds = {v["kind"] for v in reputation(base, naive)["violations"]}
    assert "challenge_failed" in kinds
    for pid in net.ids("validator", "honest", *CHEATERS):
        assert model_status(base, pid) == ROUTABLE


@pytest.mark.timeout(1200)
def test_every_cheater_is_caught_slashed_and_banned(audited_network: AuditedNetwork) -> None:
    net = audited_network
    sent, took_s = drive_until_caught(net)
    found = gather(net, sent)
    report(net, found, sent, took_s)

    for pid in net.ids(*CHEATERS):
        mode, caught = net.mode(pid), found[pid]
        assert caught.served >= 1, f"{mode} was never routed"
        assert caught.status == BANNED and caught.bans, f"{mode} is not banned: {caught}"
        assert caught.stake_after < DEFAULT_STAKE, f"{mode} kept its stake"
        assert (caught.how, caught.reason) == CAUGHT_BY[mode], (mode, caught)
        if caught.how == "audit":
            assert caught.refunded > 0, f"the consumer of {mode}'s cheat got nothing back"
    [replay] = net.ids("replay")
    assert len(found[replay].answered) >= 1  # its first receipt was genuine

    # Nobody else was routed a request, and no honest provider lost anything.
    for pid in net.ids("naive", "mismatch"):
        assert found[pid].served == 0, f"{net.mode(pid)} was routed"
    for pid in net.ids("validator", "honest"):
        caught = found[pid]
        assert caught.slashed == 0 and not caught.bans, caught
        assert caught.status == ROUTABLE
        assert all(c["status"] != "upheld" for c in caught.cases)

    # The journal checks out while the gateway runs (and again once stopped, at teardown).
    checked = ledger_check(net.live.data_dir)
    assert checked.returncode == 0, checked.stdout + checked.stderr
