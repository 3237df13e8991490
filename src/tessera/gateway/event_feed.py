"""The gateway's domain events on the bus, for whoever watches the network live.

With ``--nats-url`` every event the gateway publishes in process (a request settled, a
provider joined or left, an audit closed, a slash) also goes out as JSON on
``tsr.v1.evt.<kind>`` (``request_finished``, ``provider_joined``, ``provider_left``,
``audit_closed``, ``slashed``), with headers ``Tsr-Replica`` (the replica: its gateway
id and a suffix new at each start) and ``Tsr-Seq`` (1, 2, ... per replica, so a watcher
sees what it missed). Other replicas, an
explorer or an operator's ``nats sub 'tsr.v1.evt.>'`` read the same facts. Events carry
ids, counts and costs, never prompt or output text.

The request path never waits for the bus: events queue in memory and one task publishes
them in order. The feed is live, not a log (core NATS keeps nothing): a backlog past
``max_backlog`` (a bus down for long) drops the oldest, counted, and the journal and the
request log in the database stay the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections import deque
from datetime import datetime
from typing import Any

from tessera.gateway.bus import Bus, BusError
from tessera.gateway.events import (
    AuditClosed,
    EpochClosed,
    Event,
    EventBus,
    ProviderJoined,
    ProviderLeft,
    RequestFinished,
    Slashed,
)

log = logging.getLogger("tessera.gateway.event_feed")

SUBJECT_PREFIX = "tsr.v1.evt"
KINDS: dict[type, str] = {
    RequestFinished: "request_finished",
    ProviderJoined: "provider_joined",
    ProviderLeft: "provider_left",
    AuditClosed: "audit_closed",
    Slashed: "slashed",
    EpochClosed: "epoch_closed",
}


def event_json(event: Event) -> bytes:
    """The event's fields as JSON (times in ISO 8601, tuples as lists)."""

    def plain(value: Any) -> Any:
        return value.isoformat() if isinstance(value, datetime) else value

    fields = {f.name: plain(getattr(event, f.name)) for f in dataclasses.fields(event)}
    return json.dumps(fields, separators=(",", ":")).encode()


class EventFeed:
    """Forwards an :class:`EventBus`'s events onto a :class:`Bus`, in order, from one task."""

    def __init__(self, bus: Bus, replica: str, max_backlog: int = 10_000) -> None:
        self.bus = bus
        self.replica = replica
        self.max_backlog = max_backlog
        self.sent = 0
        self.dropped = 0
        self._backlog: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None

    def attach(self, events: EventBus) -> None:
        for kind in KINDS:
            events.subscribe(kind, self._queue)

    def _queue(self, event: Event) -> None:
        if len(self._backlog) >= self.max_backlog:
            self._backlog.popleft()
            self.dropped += 1
        self._backlog.append(event)
        self._drained.clear()
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        failing = False
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._backlog:
                event = self._backlog[0]
                headers = {"Tsr-Replica": self.replica, "Tsr-Seq": str(self.sent + 1)}
                subject = f"{SUBJECT_PREFIX}.{KINDS[type(event)]}"
                try:
                    await self.bus.publish(subject, event_json(event), headers)
                except BusError as exc:
                    if not failing:
                        log.warning("events are not reaching the bus (%s); retrying", exc)
                    failing = True
                    await asyncio.sleep(1.0)
                    continue
                failing = False
                self._backlog.popleft()
                self.sent += 1
            self._drained.set()

    async def close(self, flush_s: float = 2.0) -> None:
        """Publish what is queued (for at most ``flush_s``), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), flush_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
