"""The slashing table: what triggers a slash and how much it takes, in one published place.

Shares are basis points of the provider's exposed stake (bonded plus unbonding). The
operator may replace the table; the gateway publishes whichever table is in force.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class SlashRule:
    reason: str
    stake_bps: int
    ban: bool
    description: str

    def __post_init__(self) -> None:
        if not 0 < self.stake_bps <= 10_000:
            raise ValueError(f"{self.reason}: stake_bps must lie in 1..10000")


DEFAULT_RULES = (
    SlashRule("forged_receipt", 10_000, True, "a receipt with a forged or replayed signature"),
    SlashRule(
        "wrong_model",
        5_000,
        True,
        "served another model than the one claimed (audit failed 2 of 3)",
    ),
    SlashRule(
        "tampered_output",
        5_000,
        True,
        "output or token counts that the claimed model did not produce",
    ),
    SlashRule("downtime", 100, False, "downtime beyond the declared SLA in an epoch"),
)


# The StakeManager's offence kinds (contracts/StakeManager.vy), for the same reasons and
# the same shares as DEFAULT_RULES: on a chain the contract's shares are the ones in force.
CHAIN_KINDS = {"forged_receipt": 1, "wrong_model": 2, "tampered_output": 3, "downtime": 4}


def chain_kind(reason: str) -> int:
    """The StakeManager's kind for ``reason``; KeyError naming the known ones if none."""
    try:
        return CHAIN_KINDS[reason]
    except KeyError:
        raise KeyError(
            f"no on-chain slashing kind for {reason!r}; known: {sorted(CHAIN_KINDS)}"
        ) from None


class SlashingTable:
    def __init__(self, rules: Iterable[SlashRule] = DEFAULT_RULES) -> None:
        self._rules = {rule.reason: rule for rule in rules}

    @classmethod
    def from_json(cls, text: str) -> SlashingTable:
        """A table from a JSON list of rules (the operator's file); ValueError if malformed."""
        try:
            raw = json.loads(text)
            rules = [
                SlashRule(
                    reason=str(r["reason"]),
                    stake_bps=int(r["stake_bps"]),
                    ban=bool(r["ban"]),
                    description=str(r["description"]),
                )
                for r in raw
            ]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(
                "a slashing table is a JSON list of {reason, stake_bps, ban, description}"
            ) from exc
        if not rules:
            raise ValueError("a slashing table needs at least one rule")
        return cls(rules)

    def rule(self, reason: str) -> SlashRule:
        try:
            return self._rules[reason]
        except KeyError:
            raise KeyError(
                f"no slashing rule for {reason!r}; known: {sorted(self._rules)}"
            ) from None

    def amount(self, reason: str, exposed_stake: int) -> int:
        """Base units to slash for ``reason``; at least one unit while any stake is exposed."""
        if exposed_stake <= 0:
            return 0
        return max(1, exposed_stake * self.rule(reason).stake_bps // 10_000)

    def public(self) -> list[dict[str, object]]:
        """The table as the API and the README publish it."""
        return [asdict(rule) for rule in sorted(self._rules.values(), key=lambda r: -r.stake_bps)]
