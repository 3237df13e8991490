"""Audits in a cluster: every replica's paid requests, sampled and audited once, where
the ledger is.

An audit moves money (the auditor's pay, a consumer's refund, a provider's slash), so
cases run on the replica that owns the ledger. A replica without it countersigns and
stores each receipt itself, then sends what an audit needs (the job, the offer, what the
provider produced, the receipt, who paid and what) to the owner on ``tsr.v1.audit.sample``;
the owner decides, with its own book and reputation record, whether to audit it, exactly
as for a request it served itself, and runs the case, asking auditors connected to any
replica (remote_jobs.py). So one request is sampled once, by one rule, whichever replica
served it.

A ban the owner decides (a provider caught serving other weights, say) is told to every
replica on ``tsr.v1.audit.ban``: the one holding the provider's socket stops routing to it
at once, and its announcements carry the ban to every view. (Each replica also loads the
stored bans when it starts.)

The sample is a core NATS message: one sent while no replica owns the ledger (a takeover's
second or two) is not audited. A sample larger than the bus carries is not sent (counted).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

from tessera.gateway.bus import Bus, BusError, BusMessage, Subscription
from tessera.gateway.verification import ServedJob, Verifier
from tessera.protocol.receipts import ChoiceOutput, OutputDigest, verify_receipt_signature
from tessera.protocol.signing import SignatureInvalid
from tessera.protocol.wire import Done, Job, ModelOffer

log = logging.getLogger("tessera.gateway.cluster_audits")

SUBJECT = "tsr.v1.audit.sample"
BANS = "tsr.v1.audit.ban"
QUEUE = "ledger"


@dataclass(slots=True)
class Sampled:
    """A served job as the owner's verifier reads it (the fields of a JobStream it uses)."""

    job: Job
    offer: ModelOffer
    provider_id: str
    digest: OutputDigest | None


class AuditSender:
    """A replica without the ledger: its accepted requests go to the owner for sampling."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.sent = 0
        self.too_large = 0
        self.failed = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, stream: ServedJob, done: Done, consumer: str, cost: int) -> None:
        """The verifier's hook for a paid job with a good receipt (never blocks)."""
        choices = [asdict(c) for c in stream.digest.ordered()] if stream.digest else None
        body = {
            "job": stream.job.model_dump(mode="json"),
            "offer": stream.offer.model_dump(mode="json"),
            "provider_id": stream.provider_id,
            "done": done.model_dump(mode="json"),
            "choices": choices,
            "consumer": consumer,
            "cost": cost,
        }
        data = json.dumps(body, separators=(",", ":")).encode()
        if len(data) > self.bus.max_payload:
            self.too_large += 1
            return
        task = asyncio.get_running_loop().create_task(self._send(data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, data: bytes) -> None:
        try:
            await self.bus.publish(SUBJECT, data)
            self.sent += 1
        except BusError as exc:
            self.failed += 1
            log.warning("could not send a request to be sampled for audit: %s", exc)


class AuditIntake:
    """The owner: samples the other replicas' requests as its own (queue group ``ledger``)."""

    def __init__(self, bus: Bus, verifier: Verifier) -> None:
        self.bus = bus
        self.verifier = verifier
        self.received = 0
        self.refused = 0
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(SUBJECT, self._sampled, queue=QUEUE)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def _sampled(self, message: BusMessage) -> None:
        try:
            sampled, done, consumer, cost = parse(message.data)
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            self.refused += 1
            log.warning("refused a request sent for audit sampling: %s", str(exc)[:200])
            return
        self.received += 1
        self.verifier.sample_for_audit(sampled, done, consumer, cost)


def parse(data: bytes) -> tuple[Sampled, Done, str, int]:
    """A sample as sent by :class:`AuditSender`; ValueError (or a pydantic error) if not."""
    body: dict[str, Any] = json.loads(data)
    job = Job.model_validate(body["job"])
    offer = ModelOffer.model_validate(body["offer"])
    done = Done.model_validate(body["done"])
    provider_id, consumer, cost = body["provider_id"], body["consumer"], body["cost"]
    if not isinstance(provider_id, str) or not isinstance(consumer, str):
        raise ValueError("provider_id and consumer are strings")
    if not isinstance(cost, int) or isinstance(cost, bool) or cost < 0:
        raise ValueError("cost is a non-negative integer")
    digest: OutputDigest | None = None
    if body["choices"] is not None:
        digest = OutputDigest()
        for raw in body["choices"]:
            choice = ChoiceOutput(
                index=int(raw["index"]),
                text=str(raw["text"]),
                token_ids=[int(t) for t in raw["token_ids"]],
                token_logprobs=[float(x) for x in raw["token_logprobs"]],
                eos=bool(raw["eos"]),
                finish_reason=None if raw["finish_reason"] is None else str(raw["finish_reason"]),
            )
            digest.choices[choice.index] = choice
    if done.receipt is None or done.receipt_signature is None:
        raise ValueError("no receipt")
    if done.receipt.provider_id != provider_id or done.receipt.job_id != job.job_id:
        raise ValueError("the receipt is for another provider or job")
    try:  # checked where it was served; checked again here, where money may move for it
        verify_receipt_signature(done.receipt, done.receipt_signature)
    except SignatureInvalid as exc:
        raise ValueError("the receipt's signature does not verify") from exc
    return Sampled(job, offer, provider_id, digest), done, consumer, cost


class BanShare:
    """Every replica: bans decided where the ledger is take effect everywhere."""

    def __init__(self, bus: Bus, verifier: Verifier) -> None:
        self.bus = bus
        self.verifier = verifier
        self.applied = 0
        self._subscription: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(BANS, self._heard)
        self.verifier.on_ban = self.banned

    async def close(self) -> None:
        self.verifier.on_ban = None
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    def banned(self, provider_id: str, model: str) -> None:
        """The verifier banned here: tell every replica (never blocks)."""
        body = json.dumps({"provider_id": provider_id, "model": model}).encode()
        task = asyncio.get_running_loop().create_task(self._send(body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, body: bytes) -> None:
        try:
            await self.bus.publish(BANS, body)
        except BusError as exc:
            log.warning("could not tell the replicas of a ban (they load it at start): %s", exc)

    async def _heard(self, message: BusMessage) -> None:
        try:
            body = json.loads(message.data)
            provider_id, model = body["provider_id"], body["model"]
            if not (isinstance(provider_id, str) and isinstance(model, str)):
                raise TypeError("provider_id and model are strings")
        except (ValueError, KeyError, TypeError):
            return
        if (provider_id, model) not in self.verifier.bans:
            self.verifier.apply_ban(provider_id, model)
            self.applied += 1
