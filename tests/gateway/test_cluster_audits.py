"""A replica without the ledger sends its paid requests to the owner for audit sampling.

What arrives is what was served (job, offer, output, receipt, payer, cost), exactly; a
receipt that does not verify, a malformed message or one for another job is refused and
sampled for nothing; a sample over the bus's limit is not sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from nacl.signing import SigningKey

from tessera.gateway.bus import LocalBus
from tessera.gateway.cluster_audits import (
    BANS,
    SUBJECT,
    AuditIntake,
    AuditSender,
    BanShare,
    Sampled,
)
from tessera.protocol.receipts import OutputDigest
from tessera.protocol.signing import public_key_hex
from tessera.protocol.wire import Chunk, Done, Job, ModelOffer, SamplingParams

from support.scripted_peers import done_frame

OFFER = ModelOffer(
    name="m", weights_sha256="ab" * 32, kind="text", context_length=512,
    price_input_per_mtok=100, price_output_per_mtok=300,
)  # fmt: skip


@dataclass
class Recording:
    """Stands in for the owner's verifier: keeps what it was asked to sample."""

    sampled: list[tuple[Any, Done, str, int]] = field(default_factory=list)

    def sample_for_audit(self, stream: Any, done: Done, consumer: str, cost: int) -> None:
        self.sampled.append((stream, done, consumer, cost))


def served(key: SigningKey) -> tuple[Sampled, Done]:
    job = Job(
        job_id="req_1.0", model="m", kind="completion", prompts=["The fox"],
        params=SamplingParams(max_tokens=4),
    )  # fmt: skip
    chunks = [
        {"type": "chunk", "job_id": job.job_id, "text": " ran", "tokens": 2,
         "token_ids": [7, 9], "token_logprobs": [-0.5, -1.25]},
        {"type": "chunk", "job_id": job.job_id, "finish_reason": "stop", "eos": True},
    ]  # fmt: skip
    peer = SimpleNamespace(
        key=key, provider_id=public_key_hex(key), weights=OFFER.weights_sha256, price=(100, 300)
    )
    done = Done.model_validate(done_frame(peer, job.model_dump(mode="json"), chunks, (2, 3)))  # type: ignore[arg-type]
    digest = OutputDigest()
    for chunk in chunks:
        digest.add(Chunk.model_validate(chunk))
    return Sampled(job, OFFER, public_key_hex(key), digest), done


@pytest.fixture
async def wired() -> AsyncIterator[tuple[LocalBus, AuditSender, Recording, AuditIntake]]:
    bus = LocalBus()
    recording = Recording()
    intake = AuditIntake(bus, recording)  # type: ignore[arg-type]
    await intake.start()
    yield bus, AuditSender(bus), recording, intake
    await intake.close()
    await bus.close()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_the_owner_samples_exactly_what_another_replica_served(wired: Any) -> None:
    _bus, sender, recording, intake = wired
    sample, done = served(SigningKey.generate())
    sender(sample, done, "acct_1", 1234)
    await settle()
    ((got, got_done, consumer, cost),) = recording.sampled
    assert (consumer, cost, intake.received, sender.sent) == ("acct_1", 1234, 1, 1)
    assert got.job == sample.job and got.offer == OFFER and got.provider_id == sample.provider_id
    assert got.digest.ordered() == sample.digest.ordered()  # token ids, logprobs, eos
    assert got.digest.sha256() == done.receipt.output_sha256  # the receipt still matches
    assert got_done == done


async def test_forged_or_malformed_samples_are_refused(wired: Any) -> None:
    bus, sender, recording, intake = wired
    sample, done = served(SigningKey.generate())
    forged = done.model_copy(
        update={"receipt": done.receipt.model_copy(update={"completion_tokens": 999})}
    )
    sender(sample, forged, "acct_1", 5)
    other_job = Sampled(
        sample.job.model_copy(update={"job_id": "req_2.0"}), OFFER, sample.provider_id, None
    )
    sender(other_job, done, "acct_1", 5)
    good = json.loads(_body(sample, done))
    for bad in (
        b"not json",
        json.dumps({**good, "cost": -1}).encode(),
        json.dumps({**good, "cost": "5"}).encode(),
        json.dumps({**good, "provider_id": 7}).encode(),
        json.dumps({k: v for k, v in good.items() if k != "offer"}).encode(),
        json.dumps({**good, "choices": [{"index": "x"}]}).encode(),
    ):
        await bus.publish(SUBJECT, bad)
    await settle()
    assert recording.sampled == []
    assert intake.refused == 8


async def test_a_sample_too_large_for_the_bus_is_not_sent() -> None:
    bus = LocalBus(max_payload=512)
    sender = AuditSender(bus)
    sample, done = served(SigningKey.generate())
    sender(sample, done, "acct_1", 5)
    await settle()
    assert (sender.too_large, sender.sent) == (1, 0)
    await bus.close()


def _body(sample: Sampled, done: Done) -> bytes:
    """A well-formed sample, as AuditSender writes it, to spoil field by field."""
    assert sample.digest is not None
    return json.dumps(
        {
            "job": sample.job.model_dump(mode="json"),
            "offer": sample.offer.model_dump(mode="json"),
            "provider_id": sample.provider_id,
            "done": done.model_dump(mode="json"),
            "choices": [asdict(c) for c in sample.digest.ordered()],
            "consumer": "acct_1",
            "cost": 5,
        }
    ).encode()


@dataclass
class Banning:
    """Stands in for a replica's verifier: its bans, and whom it stopped routing to."""

    bans: set[tuple[str, str]] = field(default_factory=set)
    on_ban: Any = None

    def apply_ban(self, provider_id: str, model: str) -> None:
        self.bans.add((provider_id, model))


async def test_a_ban_decided_by_the_owner_takes_effect_on_every_replica() -> None:
    bus = LocalBus()
    owner, other = Banning(), Banning()
    shares = [BanShare(bus, owner), BanShare(bus, other)]  # type: ignore[arg-type]
    for share in shares:
        await share.start()
    assert owner.on_ban == shares[0].banned  # the verifier tells the share
    owner.apply_ban("ab" * 32, "m")
    owner.on_ban("ab" * 32, "m")
    for bad in (b"nope", b'{"provider_id": 1, "model": "m"}', b"{}"):
        await bus.publish(BANS, bad)
    await settle()
    assert other.bans == {("ab" * 32, "m")} and shares[1].applied == 1
    assert shares[0].applied == 0  # its own ban, already applied
    for share in shares:
        await share.close()
    await bus.close()
