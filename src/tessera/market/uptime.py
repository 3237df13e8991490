"""Uptime per epoch against a provider's declared SLA: who was up, who was down, who breached.

Pure policy: the gateway feeds connection events with the time (integer milliseconds of
Unix time) and asks for the epochs that have ended; nothing here reads a clock.

Epochs are fixed windows ``[k * epoch_ms, (k + 1) * epoch_ms)`` of Unix time, the same for
every provider and every gateway. A provider is *committed* from its connection until it
says goodbye. While committed, connected time is uptime and disconnected time is downtime:
a crash, a kill or a lost network sends no goodbye, so it counts against the SLA.
Reconnecting resumes uptime. Time before a provider's first connection and after its
goodbye counts as neither, so leaving on purpose costs nothing.

Invariants:

* for every provider and epoch, ``up_ms + down_ms <= epoch_ms``: connection events are
  levels, not counts, so a second socket of the same provider (a reconnect racing the old
  one) never adds time twice;
* an epoch is reported once, when it has ended, and time never flows into a closed epoch;
* a committed provider away for a whole epoch is reported once for that epoch and then
  dropped (no longer committed), so an abandoned node is not slashed forever;
* a provider's SLA for an epoch is the highest it declared while committed in it, so
  reconnecting with a lower promise does not excuse downtime already accrued.

A gateway restart resumes from ``progress`` saved before it went down (``restore``): the
time accrued before the save is kept, downtime included, so a crash never excuses it. The
gateway's own outage is charged to no one, and every provider committed at the save gets
``grace_ms`` after the restart to find the gateway again (its reconnect backoff) before
its absence counts as downtime; that time, too, counts as neither.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

BPS = 10_000


def breached(up_ms: int, down_ms: int, sla_uptime_bps: int) -> bool:
    """Downtime beyond what ``sla_uptime_bps`` allows of the tracked time (integers only).

    ``down > (10000 - sla) / 10000 * (up + down)``; an SLA of 0 allows everything.
    """
    return down_ms * BPS > (BPS - sla_uptime_bps) * (up_ms + down_ms)


class State(enum.Enum):
    UP = "up"  # committed and connected: uptime
    DOWN = "down"  # committed and not connected: downtime
    LEFT = "left"  # said goodbye (or was dropped as abandoned): counts as neither


@dataclass(frozen=True, slots=True)
class EpochReport:
    """One provider's record for one ended epoch."""

    provider_id: str
    epoch_start_ms: int
    epoch_ms: int
    up_ms: int
    down_ms: int
    sla_uptime_bps: int
    abandoned: bool  # away the whole epoch: this is its last report until it reconnects

    @property
    def breach(self) -> bool:
        return breached(self.up_ms, self.down_ms, self.sla_uptime_bps)


@dataclass(frozen=True, slots=True)
class CurrentEpoch:
    """A provider's open epoch so far, for a status page."""

    provider_id: str
    state: State
    connected: bool
    epoch_start_ms: int
    epoch_ms: int
    up_ms: int
    down_ms: int
    sla_uptime_bps: int


@dataclass(frozen=True, slots=True)
class ProviderProgress:
    """One provider's accrued time in the epochs not yet reported, saved for a restart.

    ``tallies`` are ``(epoch_start_ms, up_ms, down_ms, sla_uptime_bps)``, oldest first.
    """

    provider_id: str
    committed: bool  # connected, or away without a goodbye: its absence is downtime
    sla_uptime_bps: int
    tallies: tuple[tuple[int, int, int, int], ...]


@dataclass(slots=True)
class _Tally:
    up_ms: int = 0
    down_ms: int = 0
    sla_uptime_bps: int = 0


@dataclass(slots=True)
class _Provider:
    state: State
    connected: bool
    sla_uptime_bps: int
    since_ms: int  # time accounted up to here
    epochs: dict[int, _Tally] = field(default_factory=dict)  # epoch index -> tally
    grace_until_ms: int | None = None  # restored after a restart: not counted until then


class UptimeTracker:
    """Providers' up and down time per epoch; the caller supplies every timestamp."""

    def __init__(self, epoch_ms: int) -> None:
        if type(epoch_ms) is not int or epoch_ms <= 0:
            raise ValueError("epoch_ms must be a positive integer")
        self.epoch_ms = epoch_ms
        self._providers: dict[str, _Provider] = {}
        self._open_from = 0  # epochs before this index are closed

    def __len__(self) -> int:
        return len(self._providers)

    def epoch_start(self, now_ms: int) -> int:
        """Start (ms) of the epoch holding ``now_ms``."""
        return now_ms // self.epoch_ms * self.epoch_ms

    # ------------------------------------------------------------ events

    def connected(self, provider_id: str, sla_uptime_bps: int, now_ms: int) -> None:
        """The provider has a live connection (idempotent): committed, and up."""
        if not 0 <= sla_uptime_bps <= BPS:
            raise ValueError("sla_uptime_bps must lie in 0..10000")
        provider = self._providers.get(provider_id)
        if provider is None:
            provider = _Provider(State.UP, True, sla_uptime_bps, now_ms)
            self._providers[provider_id] = provider
        else:
            self._advance(provider, now_ms)
            provider.grace_until_ms = None  # back within its restart grace
        provider.state, provider.connected = State.UP, True
        provider.sla_uptime_bps = sla_uptime_bps
        self._note_sla(provider, now_ms)

    def disconnected(self, provider_id: str, now_ms: int) -> None:
        """The provider has no connection any more (idempotent): down, unless it left."""
        provider = self._providers.get(provider_id)
        if provider is None:
            return
        self._advance(provider, now_ms)
        provider.connected = False
        if provider.state is State.UP:
            provider.state = State.DOWN
        self._forget_if_done(provider_id)

    def leaving(self, provider_id: str, now_ms: int) -> None:
        """The provider said goodbye: from now on its time counts as neither up nor down."""
        provider = self._providers.get(provider_id)
        if provider is None:
            return
        self._advance(provider, now_ms)
        provider.state = State.LEFT
        self._forget_if_done(provider_id)

    # ------------------------------------------------------------ epochs

    def close(self, now_ms: int) -> list[EpochReport]:
        """Reports for every epoch that ended by ``now_ms`` and was not reported yet.

        Ordered by epoch, then provider id. A provider away for a whole epoch is reported
        for it with ``abandoned`` set, then dropped.
        """
        current = now_ms // self.epoch_ms
        if current <= self._open_from:
            return []
        reports: list[EpochReport] = []
        for provider_id, provider in list(self._providers.items()):
            self._advance(provider, now_ms)
            for index in sorted(i for i in provider.epochs if i < current):
                tally = provider.epochs.pop(index)
                abandoned = (
                    provider.state is State.DOWN
                    and tally.up_ms == 0
                    and tally.down_ms == self.epoch_ms
                )
                if tally.up_ms + tally.down_ms > 0:
                    reports.append(
                        EpochReport(
                            provider_id,
                            index * self.epoch_ms,
                            self.epoch_ms,
                            tally.up_ms,
                            tally.down_ms,
                            tally.sla_uptime_bps,
                            abandoned,
                        )
                    )
                if abandoned:
                    # Whatever it accrued since (a late close) is dropped with it.
                    provider.epochs.clear()
                    provider.state = State.LEFT
                    break
            self._forget_if_done(provider_id)
        self._open_from = current
        reports.sort(key=lambda r: (r.epoch_start_ms, r.provider_id))
        return reports

    def current(self, provider_id: str, now_ms: int) -> CurrentEpoch | None:
        """The provider's epoch in progress, or None if it is not tracked."""
        provider = self._providers.get(provider_id)
        if provider is None:
            return None
        self._advance(provider, now_ms)
        index = now_ms // self.epoch_ms
        tally = provider.epochs.get(index, _Tally())
        committed = provider.state is not State.LEFT
        return CurrentEpoch(
            provider_id,
            provider.state,
            provider.connected,
            index * self.epoch_ms,
            self.epoch_ms,
            tally.up_ms,
            tally.down_ms,
            max(tally.sla_uptime_bps, provider.sla_uptime_bps if committed else 0),
        )

    # ------------------------------------------------------------ restarts

    def progress(self, now_ms: int) -> list[ProviderProgress]:
        """Every tracked provider's state and unreported tallies up to ``now_ms``: what a
        restarted gateway needs to resume (see ``restore``)."""
        saved = []
        for provider_id, provider in sorted(self._providers.items()):
            self._advance(provider, now_ms)
            tallies = tuple(
                (index * self.epoch_ms, t.up_ms, t.down_ms, t.sla_uptime_bps)
                for index, t in sorted(provider.epochs.items())
            )
            committed = provider.state is not State.LEFT
            saved.append(ProviderProgress(provider_id, committed, provider.sla_uptime_bps, tallies))
        return saved

    def restore(self, saved: Iterable[ProviderProgress], now_ms: int, grace_ms: int) -> None:
        """Resume from ``saved`` after a restart at ``now_ms``; merges with providers that
        connected already (their time since the restart cannot overlap the saved time).

        Committed providers not connected now count as neither up nor down until
        ``now_ms + grace_ms``, then as down; saved tallies of closed epochs are ignored.
        """
        if grace_ms < 0:
            raise ValueError("grace_ms must not be negative")
        for entry in saved:
            provider = self._providers.get(entry.provider_id)
            if provider is None:
                provider = _Provider(
                    State.DOWN if entry.committed else State.LEFT,
                    False,
                    entry.sla_uptime_bps,
                    now_ms,
                    grace_until_ms=now_ms + grace_ms if entry.committed else None,
                )
                self._providers[entry.provider_id] = provider
            for start_ms, up_ms, down_ms, sla_bps in entry.tallies:
                index, misaligned = divmod(start_ms, self.epoch_ms)
                if misaligned or index < self._open_from or min(up_ms, down_ms, sla_bps) < 0:
                    continue
                tally = provider.epochs.setdefault(index, _Tally())
                tally.down_ms = min(self.epoch_ms, tally.down_ms + down_ms)
                tally.up_ms = min(self.epoch_ms - tally.down_ms, tally.up_ms + up_ms)
                tally.sla_uptime_bps = min(BPS, max(tally.sla_uptime_bps, sla_bps))
            self._forget_if_done(entry.provider_id)

    # ------------------------------------------------------------ accounting

    def _advance(self, provider: _Provider, now_ms: int) -> None:
        """Account ``[since, now)`` to the provider's state, split at epoch boundaries."""
        if provider.grace_until_ms is not None:
            if now_ms < provider.grace_until_ms:
                provider.since_ms = max(provider.since_ms, now_ms)
                return
            provider.since_ms = max(provider.since_ms, provider.grace_until_ms)
            provider.grace_until_ms = None
        start = max(provider.since_ms, self._open_from * self.epoch_ms)
        if now_ms <= start:
            provider.since_ms = max(provider.since_ms, now_ms)
            return
        provider.since_ms = now_ms
        if provider.state is State.LEFT:
            return
        while start < now_ms:
            index = start // self.epoch_ms
            end = min(now_ms, (index + 1) * self.epoch_ms)
            tally = provider.epochs.setdefault(index, _Tally())
            if provider.state is State.UP:
                tally.up_ms += end - start
            else:
                tally.down_ms += end - start
            tally.sla_uptime_bps = max(tally.sla_uptime_bps, provider.sla_uptime_bps)
            start = end

    def _note_sla(self, provider: _Provider, now_ms: int) -> None:
        index = now_ms // self.epoch_ms
        if index >= self._open_from:
            tally = provider.epochs.setdefault(index, _Tally())
            tally.sla_uptime_bps = max(tally.sla_uptime_bps, provider.sla_uptime_bps)

    def _forget_if_done(self, provider_id: str) -> None:
        provider = self._providers[provider_id]
        if provider.state is State.LEFT and not provider.connected and not provider.epochs:
            del self._providers[provider_id]
