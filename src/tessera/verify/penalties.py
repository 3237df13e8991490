"""What a closed audit case does, and in what order a penalty moves money.

The gateway's verifier and the simulator both apply these decisions, so an experiment
at a million providers runs the rules a live gateway runs:

- :func:`close` reads a finished :class:`~tessera.verify.disputes.Case`: its final status
  (a case still open when the auditors ran out, or without one counted vote, is
  ``inconclusive``: nobody is punished for the lack of auditors), the reputation event for
  the audited provider, and the dissenters, who are counted only when a dispute was
  decided (upheld or cleared); a lone first vote that passed has nobody to dissent from.
- :func:`penalty_for` orders an upheld case's money: the harmed consumer is refunded
  first out of what the request earned the provider (a clawback, never more than that),
  then the stake is slashed by the slashing table, and the slash pays the consumer
  whatever the clawback did not cover (:meth:`Penalty.owed_after`); the rest of the slash
  goes to the insurance pool (the staking code's split).
- :func:`bans`: an upheld case bans the provider from the model when the table's rule for
  the reason says so, or once it has ``ban_after_failures`` upheld cases.
- :func:`cheat_exposure` is what a caught cheat loses, the figure the audit rate's
  deterrence bound reads (``verify.sampling.audit_rate``'s ``loss``); its batch form
  :func:`cheat_exposures` is the simulator's.
- :func:`auditor_pay`: an auditor earns the tokens it scored at its own input price, from
  the verification pool.

Pure: no clock, no randomness, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from tessera.ledger.slashing_table import SlashingTable, SlashRule
from tessera.verify.disputes import Case
from tessera.verify.scoring import WRONG_MODEL

Outcome = Literal["passed", "cleared", "upheld", "inconclusive"]
ReputationEvent = Literal["audit_passed", "audit_cleared", "audit_failed"]

REPUTATION_EVENTS: dict[Outcome, ReputationEvent | None] = {
    "passed": "audit_passed",
    "cleared": "audit_cleared",
    "upheld": "audit_failed",
    "inconclusive": None,
}


@dataclass(frozen=True, slots=True)
class Closed:
    """A case as it ends: what happened and to whom."""

    status: Outcome
    reason: str | None  # the upheld reason (the slashing table's), else None
    dissenters: tuple[str, ...]  # auditors whose vote lost a decided dispute

    @property
    def reputation_event(self) -> ReputationEvent | None:
        """The ``ReputationBook`` event for the audited provider (None: no change)."""
        return REPUTATION_EVENTS[self.status]


def close(case: Case) -> Closed:
    """The end of ``case``, however far its votes got."""
    status = case.status
    outcome: Outcome
    if status == "open" or (status == "passed" and not case.verdicts):
        outcome = "inconclusive"
    else:
        outcome = status
    reason = (case.reason or WRONG_MODEL) if outcome == "upheld" else None
    dissenters = tuple(case.dissenters()) if outcome in ("upheld", "cleared") else ()
    return Closed(outcome, reason, dissenters)


@dataclass(frozen=True, slots=True)
class Penalty:
    """An upheld case's money, in the order it moves."""

    reason: str
    consumer: str | None  # who paid for the request (None: nobody to refund)
    refund: int  # what the consumer paid for it
    clawback: int  # asked back from the provider's earnings first

    def owed_after(self, clawed_back: int) -> list[tuple[str, int]]:
        """Who the slash must still pay, after ``clawed_back`` came from earnings (the
        provider may have withdrawn them: the clawback takes what is left)."""
        owed = self.refund - clawed_back
        if self.consumer is None or owed <= 0:
            return []
        return [(self.consumer, owed)]


def penalty_for(reason: str, consumer: str | None, refund: int, earnings: int) -> Penalty:
    """The penalty of an upheld case over a request that cost ``refund`` and earned the
    provider ``earnings``."""
    if refund < 0 or earnings < 0:
        raise ValueError("a refund and earnings are never negative")
    clawback = min(earnings, refund) if consumer is not None else 0
    return Penalty(reason, consumer, refund if consumer is not None else 0, clawback)


def bans(rule: SlashRule, audits_failed: int, ban_after_failures: int) -> bool:
    """Whether an upheld case (already counted in ``audits_failed``) bans the provider."""
    return rule.ban or audits_failed >= ban_after_failures


def cheat_exposure(table: SlashingTable, exposed_stake: int, earnings: int) -> int:
    """Base units a provider caught substituting a model loses for one request: the
    table's slash of its exposed stake (bonded and unbonding) and the request's earnings."""
    return table.amount(WRONG_MODEL, exposed_stake) + earnings


def cheat_exposures(
    table: SlashingTable,
    exposed_stake: npt.NDArray[np.int64],
    earnings: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """:func:`cheat_exposure` for many providers at once, element for element the same."""
    stake = np.asarray(exposed_stake, dtype=np.int64)
    bps = table.rule(WRONG_MODEL).stake_bps
    # stake * bps // 10_000 without the product (it passes 2**63 above 9.2e14 base units):
    # with stake = 10_000 q + r, it is q * bps + r * bps // 10_000, exactly.
    q, r = np.divmod(stake, 10_000)
    slash = np.where(stake > 0, np.maximum(1, q * bps + r * bps // 10_000), 0)
    return slash + np.asarray(earnings, dtype=np.int64)


def auditor_pay(scored_tokens: int, price_input_per_mtok: int) -> int:
    """What one audit earns its auditor: the tokens it read, at its own input price."""
    return scored_tokens * price_input_per_mtok // 1_000_000
