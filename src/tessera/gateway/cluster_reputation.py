"""Reputation in a cluster: one record, kept where the ledger is, read by every replica.

The reputation a router weighs is made of audits (run on the ledger's owner:
cluster_audits.py), completed and failed jobs, and uptime. The owner keeps the record and
stores it every housekeeping period, as a single gateway does; for it to count the jobs
other replicas served, it follows their ``request_finished`` events (event_feed.py; queue
group ``ledger``, so only the owner counts them). The other replicas reload the stored
record each period, so every router ranks providers by the same record, at most a period
old.
"""

from __future__ import annotations

import asyncio
import json
import logging

from tessera.gateway.bus import Bus, BusMessage, Subscription
from tessera.gateway.event_feed import SUBJECT_PREFIX
from tessera.gateway.verification import Verifier
from tessera.market.refusals import job_event
from tessera.verify.reputation import ReputationBook

log = logging.getLogger("tessera.gateway.cluster_reputation")

FINISHED = f"{SUBJECT_PREFIX}.request_finished"
QUEUE = "ledger"


class CompletionsIntake:
    """The owner: counts the jobs other replicas finished into its reputation record."""

    def __init__(self, bus: Bus, replica: str, verifier: Verifier) -> None:
        self.bus = bus
        self.replica = replica
        self.verifier = verifier
        self.counted = 0
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(FINISHED, self._finished, queue=QUEUE)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def _finished(self, message: BusMessage) -> None:
        if message.headers.get("Tsr-Replica") in (None, self.replica):
            return  # its own requests were counted as they finished
        try:
            event = json.loads(message.data)
            provider_id, status = event["provider_id"], event["status"]
            code = event.get("error_code")
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        if not isinstance(provider_id, str) or len(provider_id) != 64:
            return
        if not isinstance(status, str) or not isinstance(code, str | None):
            return
        counted = job_event(status, code)
        if counted is None:
            return
        self.verifier.reputation.record(provider_id, counted)
        self.counted += 1
        self.verifier.refresh_score(provider_id)


async def follow_stored_reputation(verifier: Verifier, interval_s: float = 30.0) -> None:
    """A replica without the ledger: read the owner's stored record every ``interval_s``."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            stored = await verifier.store.load_reputation()
        except Exception as exc:
            log.warning("could not read the stored reputation record: %s", exc)
            continue
        verifier.reputation = ReputationBook.restore(stored)  # type: ignore[arg-type]
        for live in verifier.registry.all():
            verifier.refresh_score(live.provider_id)
