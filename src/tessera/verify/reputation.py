"""Reputation: a provider's public record and the one number the router reads from it.

Counters only grow; the gateway feeds events to a :class:`ReputationBook` and persists
its :meth:`~ReputationBook.snapshot`. The score, in [0, 1]::

    score       = 0.3 * completion + 0.2 * uptime + 0.5 * integrity
    completion  = (jobs_completed + 1) / (jobs_completed + jobs_failed + 2)
    uptime      = (min(online_s, seen_s) + H / 2) / (seen_s + H)          H = 3600 s
    integrity   = (good + 1) / (good + 2 + 50 * audits_failed + 20 * slashes
                                + 5 * receipts_refused + dissents)
    good        = audits_passed + audits_cleared

Each part is a Beta posterior mean with a uniform prior (one pseudo-success and one
pseudo-failure; for uptime, one pseudo-hour half online), so a newcomer scores 0.5: neither
trusted nor condemned, and its record moves it quickly. Failures weigh more than successes
in integrity because one upheld cheat says more than one clean audit. Every failure count
sits only in a denominator, so more failures never raise the score.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

# The formula above, as the explorer prints it beside a provider's numbers.
FORMULA = (
    "score = 0.3 * completion + 0.2 * uptime + 0.5 * integrity",
    "completion = (jobs_completed + 1) / (jobs_completed + jobs_failed + 2)",
    "uptime = (min(online_s, seen_s) + 1800) / (seen_s + 3600)",
    "integrity = (good + 1) / (good + 2 + 50 * audits_failed + 20 * slashes"
    " + 5 * receipts_refused + dissents), good = audits_passed + audits_cleared",
)
PRIOR_ONLINE_S = 3600.0
WEIGHTS = {"completion": 0.3, "uptime": 0.2, "integrity": 0.5}
PENALTY = {"audits_failed": 50, "slashes": 20, "receipts_refused": 5, "dissents": 1}
_DERIVED = frozenset({"completion_rate", "uptime", "score", "clean_audits", "provider_id"})


@dataclass
class Reputation:
    """One provider's record. ``audits_failed`` counts upheld cases, ``audits_cleared``
    cases whose first audit failed but 2 of 3 cleared, ``dissents`` the provider's votes
    as an auditor against a decided majority; ``seen_s`` is the time since first seen
    while the gateway ran, ``online_s`` the part of it the provider was connected."""

    jobs_completed: int = 0
    jobs_failed: int = 0
    audits_passed: int = 0
    audits_failed: int = 0
    audits_cleared: int = 0
    dissents: int = 0
    receipts_refused: int = 0
    slashes: int = 0
    online_s: float = 0.0
    seen_s: float = 0.0

    def completion_rate(self) -> float:
        return (self.jobs_completed + 1) / (self.jobs_completed + self.jobs_failed + 2)

    def uptime(self) -> float:
        online = min(self.online_s, self.seen_s)
        return (online + PRIOR_ONLINE_S / 2) / (self.seen_s + PRIOR_ONLINE_S)

    def integrity(self) -> float:
        good = self.audits_passed + self.audits_cleared
        # Every PENALTY key names an int counter field.
        bad: int = sum(weight * getattr(self, name) for name, weight in PENALTY.items())
        return (good + 1) / (good + 2 + bad)

    def score(self) -> float:
        value = (
            WEIGHTS["completion"] * self.completion_rate()
            + WEIGHTS["uptime"] * self.uptime()
            + WEIGHTS["integrity"] * self.integrity()
        )
        return min(1.0, max(0.0, value))

    def clean_audits(self) -> int:
        """Clean audits for the sampling rate: passed plus cleared while no case was ever
        upheld, else 0 (an upheld cheat starts from nothing and stays at full audit)."""
        return self.audits_passed + self.audits_cleared if self.audits_failed == 0 else 0

    def public(self) -> dict[str, object]:
        return {
            **asdict(self),
            "completion_rate": self.completion_rate(),
            "uptime": self.uptime(),
            "score": self.score(),
            "clean_audits": self.clean_audits(),
        }


# Events that move one counter by one, by name.
EVENTS = {
    "job_completed": "jobs_completed",
    "job_failed": "jobs_failed",
    "audit_passed": "audits_passed",
    "audit_failed": "audits_failed",
    "audit_cleared": "audits_cleared",
    "dissent": "dissents",
    "receipt_refused": "receipts_refused",
    "slashed": "slashes",
}
_COUNTERS = tuple(f.name for f in fields(Reputation) if f.type in ("int", int))
_SECONDS = tuple(f.name for f in fields(Reputation) if f.type in ("float", float))


class ReputationBook:
    """Every provider's record, created on first mention."""

    def __init__(self, records: dict[str, Reputation] | None = None) -> None:
        self._records: dict[str, Reputation] = dict(records or {})

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, provider_id: object) -> bool:
        return provider_id in self._records

    def get(self, provider_id: str) -> Reputation:
        record = self._records.get(provider_id)
        if record is None:
            record = self._records[provider_id] = Reputation()
        return record

    def _bump(self, provider_id: str, counter: str) -> None:
        record = self.get(provider_id)
        setattr(record, counter, getattr(record, counter) + 1)

    def record(self, provider_id: str, event: str) -> None:
        """Count ``event`` (one of EVENTS, as ``verify.penalties`` and
        ``market.refusals.job_event`` name them) for the provider."""
        try:
            counter = EVENTS[event]
        except KeyError:
            raise ValueError(
                f"unknown reputation event {event!r}; known: {sorted(EVENTS)}"
            ) from None
        self._bump(provider_id, counter)

    def job_completed(self, provider_id: str) -> None:
        self._bump(provider_id, "jobs_completed")

    def job_failed(self, provider_id: str) -> None:
        self._bump(provider_id, "jobs_failed")

    def audit_passed(self, provider_id: str) -> None:
        self._bump(provider_id, "audits_passed")

    def audit_failed(self, provider_id: str) -> None:
        """A case against the provider was upheld."""
        self._bump(provider_id, "audits_failed")

    def audit_cleared(self, provider_id: str) -> None:
        self._bump(provider_id, "audits_cleared")

    def dissent(self, provider_id: str) -> None:
        self._bump(provider_id, "dissents")

    def receipt_refused(self, provider_id: str) -> None:
        self._bump(provider_id, "receipts_refused")

    def slashed(self, provider_id: str) -> None:
        self._bump(provider_id, "slashes")

    def online(self, provider_id: str, seconds: float) -> None:
        self.get(provider_id).online_s += _seconds(seconds)

    def seen(self, provider_id: str, seconds: float) -> None:
        self.get(provider_id).seen_s += _seconds(seconds)

    def snapshot(self) -> dict[str, Reputation]:
        """Copies of every record: safe to persist while the book keeps counting."""
        return {pid: replace(record) for pid, record in self._records.items()}

    @classmethod
    def restore(cls, data: dict[str, dict[str, object]]) -> ReputationBook:
        """A book from persisted records (``asdict`` or ``public()`` form; derived values
        are ignored). ValueError naming the provider and field for anything else."""
        records: dict[str, Reputation] = {}
        for provider_id, raw in data.items():
            unknown = set(raw) - set(_COUNTERS) - set(_SECONDS) - _DERIVED
            if unknown:
                raise ValueError(f"{provider_id}: unknown reputation fields {sorted(unknown)}")
            values: dict[str, int | float] = {}
            for name in _COUNTERS:
                value = raw.get(name, 0)
                if type(value) is not int or value < 0:
                    raise ValueError(f"{provider_id}: {name} must be an int >= 0, not {value!r}")
                values[name] = value
            for name in _SECONDS:
                value = raw.get(name, 0.0)
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                    or value < 0
                ):
                    raise ValueError(
                        f"{provider_id}: {name} must be a finite number >= 0, not {value!r}"
                    )
                values[name] = float(value)
            # Field by field: each value was checked against its own field's type above.
            record = Reputation()
            for name, value in values.items():
                setattr(record, name, value)
            records[provider_id] = record
        return cls(records)


def _seconds(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"seconds must be a finite number >= 0, not {value!r}")
    return float(value)
