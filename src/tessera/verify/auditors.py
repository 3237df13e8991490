"""Who audits a request: trusted providers serving the same weights, in an order nobody
can arrange.

The caller (the gateway's verifier, or the simulator) lists the candidates that could
answer now: serving the model with the same weights, a free slot, and not excluded from
the case (the audited provider and anyone who already took part). This decides who among
them is trusted and in what order they are asked:

- operator validators are always trusted and asked first;
- a provider is trusted once it has ``min_clean_audits`` clean audits and no upheld case;
- within a tier, better reputation first (rounded to two places, so small differences do
  not decide), then a random order, so a provider cannot predict or arrange which
  auditor checks a given request.

Pure: the random source comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class Draws(Protocol):
    """The random source (``random.Random`` has it)."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Candidate:
    provider_id: str
    validator: bool
    clean_audits: int
    audits_failed: int
    reputation: float  # the router's score in [0, 1]


def trusted(candidate: Candidate, min_clean_audits: int) -> bool:
    """May this provider audit others."""
    return candidate.validator or (
        candidate.audits_failed == 0 and candidate.clean_audits >= min_clean_audits
    )


def auditor_order(candidates: Iterable[Candidate], min_clean_audits: int, rng: Draws) -> list[str]:
    """The trusted candidates' ids, in the order to ask them (module docstring)."""
    ranked = [
        (0 if c.validator else 1, -round(c.reputation, 2), rng.random(), c.provider_id)
        for c in candidates
        if trusted(c, min_clean_audits)
    ]
    return [item[-1] for item in sorted(ranked)]
