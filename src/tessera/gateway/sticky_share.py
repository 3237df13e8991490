"""Sticky conversations across replicas: the next turn finds its provider wherever it lands.

A load balancer sends a conversation's turns to whichever replica it likes, so each
replica tells the others what it remembered (market/sticky.py): the conversation's digest
and the provider that served it, on ``tsr.v1.sticky``, a few batches a second. A digest is
a one-way hash under the API key, so nothing of the conversation travels. Entries are
hints, as in one process: a lost batch only costs a warm cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable

from tessera.gateway.bus import Bus, BusError, BusMessage, Subscription
from tessera.market.sticky import StickyTable

log = logging.getLogger("tessera.gateway.sticky_share")

SUBJECT = "tsr.v1.sticky"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_BATCH = 2_000  # entries in one message (about 260 KB)


class StickyShare:
    def __init__(
        self,
        bus: Bus,
        replica: str,
        table: StickyTable,
        *,
        every_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.replica = replica
        self.table = table
        self.every_s = every_s
        self.clock = clock
        self.heard = 0
        self.refused = 0
        self._pending: list[tuple[str, str]] = []
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._subscription = await self.bus.subscribe(SUBJECT, self._heard)
        self._task = asyncio.create_task(self._send_loop(), name="sticky-share")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._subscription is not None:
            await self._subscription.unsubscribe()

    def remembered(self, digest: str, provider_id: str) -> None:
        """Serving remembered a conversation here: tell the others soon (never blocks)."""
        if len(self._pending) < MAX_BATCH * 10:  # a bus down for long: drop, they are hints
            self._pending.append((digest, provider_id))

    async def _send_loop(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                body = json.dumps({"entries": batch}, separators=(",", ":")).encode()
                try:
                    await self.bus.publish(SUBJECT, body, {"Tsr-Replica": self.replica})
                except BusError as exc:
                    log.debug("sticky entries not shared: %s", exc)
                    break

    async def _heard(self, message: BusMessage) -> None:
        if message.headers.get("Tsr-Replica") == self.replica:
            return
        try:
            entries = json.loads(message.data)["entries"]
            if not isinstance(entries, list):
                raise TypeError("entries is a list")
        except (ValueError, KeyError, TypeError):
            self.refused += 1
            return
        now = self.clock()
        for entry in entries[:MAX_BATCH]:
            if (
                isinstance(entry, list)
                and len(entry) == 2
                and all(isinstance(x, str) and HEX64.match(x) for x in entry)
            ):
                self.table.remember(entry[0], entry[1], now)
                self.heard += 1
            else:
                self.refused += 1
