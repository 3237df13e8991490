"""Spend caps per API key: a hard total and a per-day limit, counted from the journal.

Open holds count as spent until they settle, so many requests started at once cannot
together pass a cap that each alone respects. Days are UTC calendar days of the entry's
time. Everything here is rebuilt from the journal's hold, capture and release entries.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.ledger.escrow import CAPTURE, HOLD, RELEASE
from tessera.ledger.journal import Entry, forget_through

DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class SpendCaps:
    """Limits in base units; None means no limit."""

    total: int | None = None
    daily: int | None = None


def utc_day(at: float) -> int:
    return int(at // DAY_S)


class SpendTracker:
    def __init__(self) -> None:
        self._holds: dict[str, tuple[str, int, int]] = {}  # request -> (key, amount, day)
        self._open: dict[str, int] = {}
        self._total: dict[str, int] = {}
        self._daily: dict[tuple[str, int], int] = {}
        self.keep_undo = False  # see Escrow.keep_undo
        self._settled: dict[int, tuple[str, int, int]] = {}

    def track(self, entry: Entry) -> None:
        memo = entry.memo_dict()
        if entry.kind == HOLD:
            key = memo.get("key")
            if key:
                amount = next(p.amount for p in entry.postings if p.amount > 0)
                self._holds[entry.reference] = (key, amount, utc_day(entry.at))
                self._open[key] = self._open.get(key, 0) + amount
        elif entry.kind in (CAPTURE, RELEASE):
            held = self._holds.pop(entry.reference, None)
            if held is None:
                return
            if self.keep_undo:
                self._settled[entry.entry_id] = held
            key, amount, _ = held
            self._open[key] -= amount
            if entry.kind == CAPTURE:
                cost = int(memo["cost"])
                self._total[key] = self._total.get(key, 0) + cost
                day = (key, utc_day(entry.at))
                self._daily[day] = self._daily.get(day, 0) + cost

    def untrack(self, entry: Entry) -> None:
        """Undo ``track(entry)`` for an entry the ledger reverted (newest first)."""
        if entry.kind == HOLD:
            held = self._holds.pop(entry.reference, None)
            if held is not None:
                self._open[held[0]] -= held[1]
        elif entry.kind in (CAPTURE, RELEASE):
            held = self._settled.pop(entry.entry_id, None)
            if held is None:
                return
            key, amount, _ = held
            self._holds[entry.reference] = held
            self._open[key] = self._open.get(key, 0) + amount
            if entry.kind == CAPTURE:
                cost = int(entry.memo_dict()["cost"])
                self._total[key] -= cost
                self._daily[(key, utc_day(entry.at))] -= cost

    def forget_undo(self, upto_entry_id: int) -> None:
        forget_through(self._settled, upto_entry_id)

    def spent(self, key: str, at: float) -> tuple[int, int, int]:
        """(settled in total, settled today, held now) for ``key``."""
        return (
            self._total.get(key, 0),
            self._daily.get((key, utc_day(at)), 0),
            self._open.get(key, 0),
        )

    def headroom(self, key: str, caps: SpendCaps, at: float) -> int | None:
        """How much more ``key`` may hold now; None when it has no cap."""
        total, today, held = self.spent(key, at)
        room: int | None = None
        if caps.total is not None:
            room = caps.total - total - held
        if caps.daily is not None:
            daily_room = caps.daily - today - held
            room = daily_room if room is None else min(room, daily_room)
        return None if room is None else max(room, 0)
