"""Disputes: one failed audit is not enough to slash; two of three independent auditors are.

A :class:`Case` follows one audited request. Counted votes are verdicts with an opinion
(passed, or failed with a reason); an auditor that did not answer, or answered something
that does not fit the audit (a verdict with reason None), is excluded from the case and
counts for nothing. States::

    open ──first vote passes──▶ passed                    (1 vote; the usual case)
      │
      └─first vote fails──▶ open ──2 fails of ≤ 3──▶ upheld    (slash for `reason`)
                                 └──2 passes of ≤ 3─▶ cleared

At most three votes count, and two that agree decide, so a case is decided within three
counted votes; ``upheld`` always has two failing votes behind it. Every auditor is another
provider serving the same weights; the audited provider and anyone who already took part
are :meth:`Case.excluded`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from tessera.verify.scoring import WRONG_MODEL, Verdict

Status = Literal["passed", "open", "upheld", "cleared"]
MAX_VOTES = 3
MAJORITY = 2


@dataclass
class Case:
    """The audit record of one request; the gateway adds votes as auditors answer."""

    request_id: str
    provider_id: str
    model: str
    verdicts: list[tuple[str, Verdict]] = field(default_factory=list)
    failed_auditors: list[str] = field(default_factory=list)

    def add(self, auditor_id: str, verdict: Verdict) -> None:
        """Record an auditor's verdict; one with reason None counts as that auditor failing.

        ValueError for the audited provider itself, an auditor already in the case, or a
        case already decided (ask :meth:`auditors_needed` before sending an audit).
        """
        self._check_newcomer(auditor_id)
        if self.decided:
            raise ValueError(f"case {self.request_id} is already {self.status}")
        if verdict.auditor_fault:
            self.failed_auditors.append(auditor_id)
            return
        self.verdicts.append((auditor_id, verdict))

    def auditor_failed(self, auditor_id: str) -> None:
        """An auditor gave no usable answer: excluded from now on, not a vote.

        Repeating it is harmless; ValueError for the provider or an auditor that voted.
        """
        if auditor_id in self.failed_auditors:
            return
        self._check_newcomer(auditor_id)
        self.failed_auditors.append(auditor_id)

    def _check_newcomer(self, auditor_id: str) -> None:
        if auditor_id == self.provider_id:
            raise ValueError("a provider never audits its own output")
        if auditor_id in self.failed_auditors or any(a == auditor_id for a, _ in self.verdicts):
            raise ValueError(f"auditor {auditor_id} already took part in this case")

    def excluded(self) -> set[str]:
        """Who may not audit this case any more: the provider and every auditor so far."""
        return {self.provider_id, *self.failed_auditors, *(a for a, _ in self.verdicts)}

    def _counts(self) -> tuple[int, int]:
        votes = self.verdicts[:MAX_VOTES]
        fails = sum(1 for _, v in votes if not v.passed)
        return fails, len(votes) - fails

    @property
    def status(self) -> Status:
        if not self.verdicts:
            return "open"
        if self.verdicts[0][1].passed:
            return "passed"
        fails, passes = self._counts()
        if fails >= MAJORITY:
            return "upheld"
        if passes >= MAJORITY:
            return "cleared"
        return "open"

    @property
    def decided(self) -> bool:
        return self.status != "open"

    @property
    def reason(self) -> str | None:
        """When upheld: the most common failing reason (a tie goes to wrong_model)."""
        if self.status != "upheld":
            return None
        counts = Counter(v.reason for _, v in self.verdicts if not v.passed and v.reason)
        top = max(counts.values())
        leaders = sorted(r for r, n in counts.items() if n == top)
        return leaders[0] if len(leaders) == 1 else WRONG_MODEL

    def auditors_needed(self) -> int:
        """More auditors to ask now: 1 to start, the rest of three after a first failure."""
        if self.decided:
            return 0
        return 1 if not self.verdicts else MAX_VOTES - len(self.verdicts)

    def dissenters(self) -> list[str]:
        """Auditors whose vote went against the decided outcome, in voting order."""
        status = self.status
        if status in ("open", "passed"):
            return []
        majority_passed = status == "cleared"
        return [a for a, v in self.verdicts if v.passed != majority_passed]

    def public(self) -> dict[str, object]:
        """The case as the API and the explorer show it."""
        return {
            "request_id": self.request_id,
            "provider_id": self.provider_id,
            "model": self.model,
            "status": self.status,
            "reason": self.reason,
            "votes": [
                {"auditor_id": a, "passed": v.passed, "reason": v.reason} for a, v in self.verdicts
            ],
            "failed_auditors": list(self.failed_auditors),
        }


def upheld_chance(first_fails: float, next_fails: float) -> float:
    """The chance a case ends upheld when the first auditor fails the request with chance
    ``first_fails`` and each later one, independently, with ``next_fails``: the first
    fails, then at least one of the (at most) two more agrees."""
    for chance in (first_fails, next_fails):
        if not 0.0 <= chance <= 1.0:
            raise ValueError("chances lie in [0, 1]")
    return first_fails * (1.0 - (1.0 - next_fails) ** 2)
