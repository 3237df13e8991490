"""The ledger owner counts the jobs other replicas finished into its reputation record;
its own, and malformed events, are not counted."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from tessera.gateway.bus import LocalBus
from tessera.gateway.cluster_reputation import FINISHED, CompletionsIntake
from tessera.verify.reputation import ReputationBook

PROVIDER = "ab" * 32


@dataclass
class Owner:
    """The owner's verifier as the intake uses it: its real reputation record."""

    reputation: ReputationBook = field(default_factory=ReputationBook)
    refreshed: list[str] = field(default_factory=list)

    def refresh_score(self, provider_id: str) -> None:
        self.refreshed.append(provider_id)


def finished(status: str, provider_id: object = PROVIDER, code: str | None = None) -> bytes:
    event = {"request_id": "r", "provider_id": provider_id, "status": status, "error_code": code}
    return json.dumps(event).encode()


async def test_jobs_finished_on_other_replicas_count_once_on_the_owner() -> None:
    bus = LocalBus()
    owner = Owner()
    intake = CompletionsIntake(bus, "a", owner)  # type: ignore[arg-type]
    await intake.start()
    for replica, body in (
        ("b", finished("ok")),
        ("b", finished("ok")),
        ("c", finished("error", code="provider_failed")),
        ("c", finished("error", code="invalid_prompt")),  # the client's fault: not counted
        ("c", finished("error", code="not_delivered")),  # lost on the client's side
        ("c", finished("error", code=["not", "a", "code"])),  # type: ignore[arg-type]
        ("b", finished("cancelled")),  # the client left: nobody's fault
        ("a", finished("ok")),  # its own: counted when it finished there
        ("b", b"not json"),
        ("b", finished("ok", provider_id=5)),
    ):
        await bus.publish(FINISHED, body, {"Tsr-Replica": replica})
    await asyncio.sleep(0.05)
    record = owner.reputation.get(PROVIDER).public()
    assert intake.counted == 3 and owner.refreshed == [PROVIDER] * 3
    assert record["jobs_completed"] == 2 and record["jobs_failed"] == 1, record
    await intake.close()
    await bus.close()
