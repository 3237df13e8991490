"""Token amounts typed by people become exact base units, and back; nothing passes through a float."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.ledger.accounts import TOKEN
from tessera.units import MAX_UNITS, format_tokens, parse_tokens


@pytest.mark.parametrize(
    ("text", "units"),
    [
        ("1", TOKEN),
        ("1.5", 1_500_000_000),
        ("0.000000001", 1),
        ("0", 0),
        (".5", TOKEN // 2),
        ("5.", 5 * TOKEN),
        ("  2.25 ", 2_250_000_000),
        ("1.500000000000", 1_500_000_000),  # trailing zeros change nothing
        ("0.1", 100_000_000),  # 0.1 is not exact in binary floating point; here it is
        ("4611686018.427387904", MAX_UNITS),
    ],
)
def test_parse_tokens_is_exact(text: str, units: int) -> None:
    assert parse_tokens(text) == units
    assert type(parse_tokens(text)) is int


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("-1", "negative"),
        ("-0.5", "negative"),
        ("+1", "not an amount"),
        ("nan", "not an amount"),
        ("NaN", "not an amount"),
        ("inf", "not an amount"),
        ("Infinity", "not an amount"),
        ("1e3", "not an amount"),
        ("abc", "not an amount"),
        ("", "not an amount"),
        ("1.2.3", "not an amount"),
        ("1,5", "not an amount"),
        ("1_000", "not an amount"),
        ("١", "not an amount"),  # a non-ASCII digit
        ("0.0000000001", "more than 9 decimal places"),
        ("1.0000000005", "more than 9 decimal places"),
        ("4611686018.427387905", "more than the largest amount"),
        ("9" * 30, "more than the largest amount"),
        ("1" * 65, "too long"),
    ],
)
def test_parse_tokens_refuses_and_says_what_to_type(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        parse_tokens(text)
    message = str(caught.value)
    assert "type a number of tokens" in message or "0.000000001" in message


@pytest.mark.parametrize(
    ("units", "text"),
    [
        (0, "0"),
        (1, "0.000000001"),
        (TOKEN, "1"),
        (1_500_000_000, "1.5"),
        (10 * TOKEN + 10, "10.00000001"),
        (-1_500_000_000, "-1.5"),
        (-1, "-0.000000001"),
        (MAX_UNITS, "4611686018.427387904"),
    ],
)
def test_format_tokens_trims_trailing_zeros(units: int, text: str) -> None:
    assert format_tokens(units) == text


@pytest.mark.parametrize("value", [1.5, True, "1"])
def test_format_tokens_takes_only_ints(value: object) -> None:
    with pytest.raises(TypeError, match="ints of base units"):
        format_tokens(value)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=MAX_UNITS))
def test_format_then_parse_round_trips(units: int) -> None:
    assert parse_tokens(format_tokens(units)) == units
