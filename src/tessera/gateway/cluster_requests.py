"""Requests a dead replica left in flight, marked by the cluster instead of by its restart.

A single gateway marks the request-log rows it left ``in_flight`` when it starts again.
A replica that dies for good never starts again, so when the cluster view calls a replica
dead, the ledger's owner asks every live replica which requests it is running
(``tsr.v1.rep.<replica>.running``) and marks ``interrupted`` (``replica_gone``) the rows
left in flight before it asked that nobody runs. A replica that does not answer makes it
give up this time (a row must never be marked under a request still running); the next
death, or a start, marks it later. A final record still coming replaces the mark
(store/requests_log.py).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from tessera.gateway.bus import Bus, BusError, BusMessage, Subscription
from tessera.store.requests_log import RequestLog, RequestLogWriter

log = logging.getLogger("tessera.gateway.cluster_requests")

ASK_TIMEOUT_S = 2.0


def running_subject(replica: str) -> str:
    return f"tsr.v1.rep.{replica}.running"


class RunningDesk:
    """Every replica: says which requests it is running."""

    def __init__(self, bus: Bus, replica: str, writer: RequestLogWriter) -> None:
        self.bus = bus
        self.replica = replica
        self.writer = writer
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(running_subject(self.replica), self._ask)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def _ask(self, message: BusMessage) -> None:
        ids = sorted(self.writer.running())
        await self.bus.respond(message, json.dumps(ids).encode())


async def sweep_left_in_flight(
    bus: Bus, live: list[str], writer: RequestLogWriter, reader: RequestLog
) -> int | None:
    """Mark the rows nobody runs (see the module docstring); how many, or None if a live
    replica could not say what it runs."""
    before = datetime.now(UTC)
    running = writer.running()
    for replica in live:
        try:
            reply = await bus.request(running_subject(replica), b"", ASK_TIMEOUT_S)
            ids = json.loads(reply.data)
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError("not a list of request ids")
        except (BusError, ValueError) as exc:
            log.info("not marking requests left in flight now: replica %s: %s", replica, exc)
            return None
        running.update(ids)
    marked = await reader.mark_interrupted_unless(running, before)
    if marked:
        log.warning("%d request(s) were in flight on a replica that died", marked)
    return marked
