"""Token amounts as people type them ("1.5") and as the ledger keeps them (base units).

One token is ``TOKEN`` = 10**9 base units; every amount inside Tessera is an ``int`` of
base units. These two functions are the only place text and units meet, and they never
touch a float: ``parse_tokens`` goes through :class:`decimal.Decimal` and refuses anything
that is not an exact, non-negative number of base units, so what a person types is what
moves.
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext

from tessera.ledger.accounts import MAX_UNITS, TOKEN

DECIMALS = 9  # TOKEN == 10**DECIMALS

# ASCII digits with at most one point: "1", "1.5", ".5", "5." (no sign, exponent, separator).
_PLAIN = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
MAX_CHARS = 64  # far beyond any valid amount; bounds the work on garbage input
_EXAMPLE = "type a number of tokens such as 1, 1.5 or 0.000000001"


def parse_tokens(text: str) -> int:
    """The exact number of base units in ``text`` tokens; ValueError says what to type instead.

    Refused: negatives, signs, exponents, NaN/infinity, anything that is not plain digits
    with an optional point, finer than one base unit (more than 9 significant decimal
    places; trailing zeros are fine), and more than ``MAX_UNITS`` base units.
    """
    cleaned = text.strip()
    if len(cleaned) > MAX_CHARS:
        raise ValueError(f"{cleaned[:20]!r}... is too long for an amount; {_EXAMPLE}")
    if cleaned.startswith("-"):
        raise ValueError(f"{text!r} is negative: amounts are never below 0; {_EXAMPLE}")
    if not _PLAIN.fullmatch(cleaned):
        raise ValueError(f"{text!r} is not an amount of tokens; {_EXAMPLE}")
    fraction = cleaned.partition(".")[2]
    if len(fraction.rstrip("0")) > DECIMALS:
        raise ValueError(
            f"{text!r} has more than {DECIMALS} decimal places; the smallest amount is "
            f"0.000000001 token (one base unit)"
        )
    with localcontext() as context:
        # Enough digits that the product is never rounded, whatever its size; with at most
        # 9 significant decimals it is then a whole number of base units, exactly.
        context.prec = len(cleaned) + DECIMALS + 2
        result = int(Decimal(cleaned) * TOKEN)
    if result > MAX_UNITS:
        raise ValueError(
            f"{text!r} is more than the largest amount; type a number of tokens no larger "
            f"than {format_tokens(MAX_UNITS)}"
        )
    return result


def format_tokens(units: int) -> str:
    """``units`` base units as tokens: "1.5", "0.000000001", "0"; negative for the mint."""
    if type(units) is not int:
        raise TypeError(f"amounts are ints of base units, got {type(units).__name__}")
    sign = "-" if units < 0 else ""
    whole, fraction = divmod(abs(units), TOKEN)
    digits = f"{fraction:0{DECIMALS}d}".rstrip("0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"
