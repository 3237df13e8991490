"""Liveness: providers' uptime per epoch against their SLA, and the downtime slash.

The shell around :class:`tessera.market.uptime.UptimeTracker`. The hub's callbacks feed it
(``connected`` / ``gone`` / ``leaving``: synchronous, O(1), never on a request's path); a
background task wakes at each epoch boundary, closes the epoch, slashes every breaching
provider that has stake by the slashing table's "downtime" share (all of it to the
insurance pool: downtime harms no one consumer in particular), and stores one row per
provider for the epoch with what was slashed.

Invariants: nothing in the epoch loop raises out of it (a provider with no stake, a ledger
or database failure: logged, recorded as slashed 0, the loop goes on); one slash at most
per provider per epoch, enforced by the ledger's unique reference
``downtime:{provider}:{epoch start in Unix seconds}`` even across restarts and replicas.

A restart resumes the open epoch: the tracker's progress is saved every
``uptime_save_interval_s``, soon after each connect, disconnect or goodbye, after each
close and on stop, and the loop restores it before its first close. Downtime seen before
a crash is kept (a crash forgets at most one save interval of it); the gateway's own
outage, and ``uptime_restart_grace_s`` after it for providers to reconnect, is charged to
no one (see ``UptimeTracker.restore``). One gateway per database, as for the journal.

Epochs are whole seconds (the store's ``epoch_s`` column is an integer): ``sla_epoch_s``
is rounded, to at least one second. The gateway's reputation uptime is counted elsewhere
(gateway/verification.py); this class feeds none of it, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from tessera.config import GatewaySettings
from tessera.gateway.bookkeeper import Bookkeeper
from tessera.gateway.events import EpochClosed, EventSink, Slashed
from tessera.ledger.journal import DuplicateEntry
from tessera.market.uptime import CurrentEpoch, EpochReport, UptimeTracker
from tessera.protocol.wire import Capabilities
from tessera.store.uptime import UptimeRow, UptimeStore

log = logging.getLogger("tessera.gateway.liveness")

DOWNTIME = "downtime"  # the slashing table's rule
STOP_TIMEOUT_S = 15.0
MIN_SAVE_GAP_S = 0.5  # connection events save the epoch at most this often


@dataclass(frozen=True, slots=True)
class UptimeSummary:
    """What the status API shows: the epoch in progress and the last stored ones."""

    provider_id: str
    epoch_s: int
    current: CurrentEpoch | None  # None: not tracked now (never connected, or left)
    epochs: list[UptimeRow]


def _iso_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class Liveness:
    """Uptime tracking and downtime slashing for one gateway process."""

    def __init__(
        self,
        settings: GatewaySettings,
        bookkeeper: Bookkeeper,
        store: UptimeStore,
        is_connected: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
        events: EventSink | None = None,
    ) -> None:
        """``is_connected(provider_id)`` is the hub's word on whether the provider has a
        session now; events that disagree with it are stale and dropped. ``events`` hears
        each closed epoch and each downtime slash."""
        self.events = events
        self.epoch_s = max(1, round(settings.sla_epoch_s))
        self.tracker = UptimeTracker(self.epoch_s * 1000)
        self.bookkeeper = bookkeeper
        self.store = store
        self.is_connected = is_connected
        self.clock = clock
        self.slashed_total = 0
        self.save_interval_s = settings.uptime_save_interval_s
        self.restart_grace_s = settings.uptime_restart_grace_s
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()  # a connection event: save soon
        self._task: asyncio.Task[None] | None = None

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ------------------------------------------------------------ hub callbacks

    def connected(self, provider_id: str, caps: Capabilities) -> None:
        """A provider registered. The hub reports it from a task, so by now the session may
        already be gone again: only a provider the hub still holds is marked up."""
        if self.is_connected(provider_id):
            self.tracker.connected(provider_id, caps.sla_uptime_bps, self._now_ms())
            self._changed.set()

    def gone(self, provider_id: str) -> None:
        """A provider's session ended (a newer session of the same key may replace it)."""
        if not self.is_connected(provider_id):
            self.tracker.disconnected(provider_id, self._now_ms())
            self._changed.set()

    def leaving(self, provider_id: str, reason: str) -> None:
        """The provider said goodbye: its time from now on is not held against its SLA."""
        self.tracker.leaving(provider_id, self._now_ms())
        self._changed.set()
        log.info("provider %s left gracefully: %s", provider_id[:12], reason or "no reason")

    # ------------------------------------------------------------ the epoch loop

    def start(self) -> None:
        """Run :meth:`run` in a task of the current loop until :meth:`close`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        """Restore the saved epoch, then close each epoch at its boundary and save the
        open one as it goes, until :meth:`close` is called (which saves it once more)."""
        await self.restore()
        next_save = self.clock() + self.save_interval_s
        while not self._stop.is_set():
            now = self.clock()
            # A hair past the boundary, so the close sees the new epoch has begun.
            until_close = (now // self.epoch_s + 1) * self.epoch_s - now + 0.005
            until_save = next_save - now
            if self._changed.is_set():  # soon after a connection event, not per event
                until_save = min(until_save, MIN_SAVE_GAP_S)
            await self._sleep(max(0.0, min(until_close, until_save)))
            if self._stop.is_set():
                break
            closed = []
            try:
                closed = await self.close_epoch()
            except Exception:
                log.exception("closing an uptime epoch failed")
            if closed or self._changed.is_set() or self.clock() >= next_save:
                await self.save_progress()
                next_save = self.clock() + self.save_interval_s
        await self.save_progress()

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``; a stop, or a connection event when none is pending, cuts it short."""
        waits = [asyncio.ensure_future(self._stop.wait())]
        if not self._changed.is_set():
            waits.append(asyncio.ensure_future(self._changed.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def restore(self) -> None:
        """Resume the epochs a previous run of this gateway saved (none on a first start)."""
        try:
            saved = await self.store.load_progress(self.epoch_s)
        except Exception:
            log.exception("could not load the saved uptime epoch; starting a fresh one")
            return
        self.tracker.restore(saved, self._now_ms(), round(self.restart_grace_s * 1000))
        if saved:
            log.info("uptime: resumed the open epoch of %d provider(s)", len(saved))

    async def save_progress(self) -> None:
        """Save every tracked provider's open epochs (what ``restore`` reads back)."""
        self._changed.clear()
        progress = self.tracker.progress(self._now_ms())
        try:
            await self.store.save_progress(self.epoch_s, progress, datetime.now(UTC))
        except Exception:
            self._changed.set()  # try again soon
            log.exception("could not save the open uptime epoch")

    async def close(self) -> None:
        """Stop the loop, letting a slash in progress finish; the open epoch is saved, not
        closed (the gateway going down is not the providers' downtime)."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(task, STOP_TIMEOUT_S)
        except TimeoutError:
            log.error("the uptime loop did not stop in %.0fs; cancelled", STOP_TIMEOUT_S)
        except Exception:
            log.exception("the uptime loop failed")

    async def close_epoch(self) -> list[UptimeRow]:
        """Report every ended epoch: slash breaches, store the rows. Returns the rows."""
        reports = self.tracker.close(self._now_ms())
        if not reports:
            return []
        now = datetime.now(UTC)
        rows = []
        for report in reports:
            slashed = await self._slash(report) if report.breach else 0
            rows.append(
                UptimeRow(
                    provider_id=report.provider_id,
                    epoch_start=_iso_ms(report.epoch_start_ms),
                    epoch_s=self.epoch_s,
                    up_ms=report.up_ms,
                    down_ms=report.down_ms,
                    sla_uptime_bps=report.sla_uptime_bps,
                    slashed=slashed,
                    created_at=now,
                )
            )
        try:
            await self.store.save(rows)
        except Exception:
            log.exception("could not store %d uptime row(s)", len(rows))
        breaches = sum(r.breach for r in reports)
        if self.events is not None:
            by_epoch: dict[int, list[tuple[bool, int]]] = {}
            for report, row in zip(reports, rows, strict=True):
                by_epoch.setdefault(report.epoch_start_ms // 1000, []).append(
                    (report.breach, row.slashed)
                )
            for start, judged in sorted(by_epoch.items()):
                missed = sum(breach for breach, _ in judged)
                self.events.publish(
                    EpochClosed(
                        epoch_start=start,
                        epoch_s=self.epoch_s,
                        providers=len(judged),
                        met=len(judged) - missed,
                        breached=missed,
                        slashed_units=sum(units for _, units in judged),
                    )
                )
        log.info(
            "uptime epoch(s) closed: %d provider report(s), %d breach(es), %d unit(s) slashed",
            len(reports),
            breaches,
            sum(r.slashed for r in rows),
        )
        return rows

    async def _slash(self, report: EpochReport) -> int:
        """Slash one breach by the table's downtime share; the units taken, 0 if none."""
        pid = report.provider_id
        book = self.bookkeeper.book
        # book.bonded is the chain's stake when one is configured (no tranches here then)
        exposed = book.bonded(pid) + sum(t.amount for t in book.staking.tranches(pid))
        if exposed <= 0:
            log.info("provider %s breached its SLA but has no stake to slash", pid[:12])
            return 0
        evidence = json.dumps(
            {
                "epoch_start": report.epoch_start_ms // 1000,
                "epoch_s": self.epoch_s,
                "up_ms": report.up_ms,
                "down_ms": report.down_ms,
                "sla_uptime_bps": report.sla_uptime_bps,
                "abandoned": report.abandoned,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        reference = f"{DOWNTIME}:{pid}:{report.epoch_start_ms // 1000}"
        try:
            outcome = await self.bookkeeper.slash(pid, DOWNTIME, evidence, [], reference)
        except DuplicateEntry:
            log.warning("downtime of %s in this epoch was already slashed", pid[:12])
            return 0
        except Exception:
            log.exception("could not slash provider %s for downtime", pid[:12])
            return 0
        self.slashed_total += outcome.taken
        if self.events is not None:
            self.events.publish(Slashed(pid, "", DOWNTIME, outcome.taken, 0, reference))
        log.warning(
            "provider %s slashed %d unit(s) for downtime: %d of %d ms down, SLA %d bps",
            pid[:12],
            outcome.taken,
            report.down_ms,
            report.up_ms + report.down_ms,
            report.sla_uptime_bps,
        )
        return outcome.taken

    # ------------------------------------------------------------ status

    async def uptime(self, provider_id: str, limit: int = 24) -> UptimeSummary:
        """The provider's epoch in progress and its ``limit`` newest stored epochs."""
        current = self.tracker.current(provider_id, self._now_ms())
        epochs = await self.store.recent(provider_id, limit)
        return UptimeSummary(provider_id, self.epoch_s, current, epochs)
