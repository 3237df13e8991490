"""Prices: base units per million tokens, costs rounded up to the next base unit.

Rounding up means a request never costs less than its tokens are worth; with prices in
base units per *million* tokens the rounding is worth at most one base unit (10^-9 token).
"""

from __future__ import annotations

from dataclasses import dataclass

PER = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    input_per_mtok: int
    output_per_mtok: int

    def __post_init__(self) -> None:
        for value in (self.input_per_mtok, self.output_per_mtok):
            if type(value) is not int or value < 0:
                raise ValueError("prices are non-negative ints of base units per million tokens")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError("token counts cannot be negative")
        units = prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok
        return -(-units // PER)

    def worst_case(self, prompt_tokens: int, max_tokens: int) -> int:
        """What a request can cost at most: its prompt plus every token it may produce."""
        return self.cost(prompt_tokens, max_tokens)


def split_fee(cost: int, fee_bps: int, verification_share_bps: int) -> tuple[int, int, int]:
    """(provider, fees, verification pool) shares of ``cost``; they sum to ``cost`` exactly."""
    if not (0 <= fee_bps <= 10_000 and 0 <= verification_share_bps <= 10_000):
        raise ValueError("basis points must lie in 0..10000")
    fee = cost * fee_bps // 10_000
    verification = fee * verification_share_bps // 10_000
    return cost - fee, fee - verification, verification
