"""Untrusted bytes to typed requests: bounded JSON, whole numbers, clean 400s."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from tessera.errors import InvalidRequest
from tessera.gateway.request_body import (
    MAX_JSON_DEPTH,
    IsoDateTime,
    _nests_deeper_than,
    invalid_parameter,
    parse_json,
)


def nested(depth: int) -> bytes:
    """An object whose value ``x`` nests lists so the whole is ``depth`` containers deep."""
    return b'{"x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_depth_is_bounded_at_any_size() -> None:
    assert parse_json(nested(MAX_JSON_DEPTH))["x"] is not None
    for depth in (MAX_JSON_DEPTH + 1, 5_000, 200_000):
        with pytest.raises(InvalidRequest) as info:
            parse_json(nested(depth))
        assert info.value.code == "invalid_json" and "nests deeper" in info.value.message
    wide = b'{"ids": [' + b",".join([b"1"] * 100_000) + b"]}"
    assert len(parse_json(wide)["ids"]) == 100_000


def test_brackets_inside_strings_do_not_count_toward_depth() -> None:
    text = '"[[[{{' + "[" * 500 + '\\"' + "{" * 500 + '"'  # one JSON string
    body = b'{"prompt": ' + text.encode() + b', "x": [[1]]}'
    assert parse_json(body)["x"] == [[1]]
    many = b'{"m": [' + b",".join([b'{"a": [1]}'] * 1_000) + b"]}"
    assert len(parse_json(many)["m"]) == 1_000


def test_depth_holds_when_a_library_raised_the_recursion_limit() -> None:
    """py_ecc (imported by web3) raises the limit to 100,000: json.loads would then recurse
    until the stack overflows and kill the process instead of raising."""
    script = (
        "import sys; sys.setrecursionlimit(100_000)\n"
        "from tessera.errors import InvalidRequest\n"
        "from tessera.gateway.request_body import parse_json\n"
        "try:\n"
        "    parse_json(b'{\"x\": ' + b'[' * 1_000_000 + b']' * 1_000_000 + b'}')\n"
        "except InvalidRequest as exc:\n"
        "    print(exc.code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout.strip()) == (0, "invalid_json"), done.stderr[-2000:]


@pytest.mark.parametrize(
    "body", [b'{"seed": ' + b"9" * 4301 + b"}", b"\xff\xfe\x00garbage", b'{"a": ', b"[1]", b"null"]
)
def test_what_is_not_a_json_object_is_invalid_json(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json(body)
    assert info.value.code == "invalid_json"
    assert info.value.status_code == 400


def test_a_whole_number_is_an_integer_as_json_schema_counts_it() -> None:
    data = parse_json(b'{"a": 8.0, "b": 1e3, "c": 8.5, "d": 1e400, "e": "8", "f": true}')
    assert data == {"a": 8, "b": 1000, "c": 8.5, "d": math.inf, "e": "8", "f": True}
    assert type(data["a"]) is int and type(data["f"]) is bool
    assert type(parse_json(b'{"big": 1e300}')["big"]) is float  # no exact integer


def test_parameter_errors_name_the_parameter_and_never_the_value() -> None:
    error = invalid_parameter(
        [{"loc": ("query", "limit"), "msg": "Input should be a valid integer", "input": "SECRET"}]
    )
    assert error.param == "limit"
    assert (
        error.message
        == "Invalid value for query parameter 'limit': Input should be a valid integer"
    )


def test_dates_are_iso_only() -> None:
    dates = TypeAdapter(IsoDateTime)
    assert dates.validate_python("2026-01-31T12:00:00Z").year == 2026
    for bad in ("0.5", "1700000000", "yesterday"):
        with pytest.raises(ValueError):
            dates.validate_python(bad)


@pytest.mark.parametrize("opener", [b"[", b"{"])
def test_unclosed_brackets_are_refused_before_parsing(opener: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_json(b'{"x": ' + opener * 100_000)
    assert info.value.code == "invalid_json"


def test_each_level_counts_once_whatever_the_bracket_kind() -> None:
    alternating = b'{"x": ' + b'[{"k": ' * 32 + b"1" + b"}]" * 32 + b"}"
    with pytest.raises(InvalidRequest):
        parse_json(alternating)  # 65 deep
    shallow = b'{"x": ' + b'[{"k": ' * 31 + b"1" + b"}]" * 31 + b"}"
    assert parse_json(shallow)["x"]


def reference_depth_refusal(body: bytes, limit: int) -> bool:
    """What the depth check must say of a body without strings, one byte at a time."""
    depth = 0
    for char in body.decode():
        depth += (char in "[{") - (char in "]}")
        if depth > limit or depth < 0:
            return True
    return depth != 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["[", "]", "{", "}", "1,", " "]), max_size=400),
    st.integers(min_value=0, max_value=12),
)
def test_the_depth_check_agrees_with_a_byte_walk(parts: list[str], limit: int) -> None:
    body = "".join(parts).encode()
    if body.count(b"[") + body.count(b"{") <= limit:
        return  # too few brackets to nest too deep: json.loads judges the rest
    assert _nests_deeper_than(body, limit) == reference_depth_refusal(body, limit)


def comb(spine: int, tooth_depth: int = 60, teeth: int = 200) -> bytes:
    """A spine ``spine`` lists deep, each level holding ``teeth`` lists ``tooth_depth``
    deep: the shape that took peeling one level per pass ``tooth_depth`` passes."""
    tooth = b"[" * tooth_depth + b"]" * tooth_depth
    level = b""
    for _ in range(spine):
        level = b"[" + b",".join([tooth] * teeth) + (b"," + level if level else b"") + b"]"
    return b'{"x": ' + level + b"}"


def test_a_comb_is_measured_exactly() -> None:
    assert parse_json(comb(3))["x"]  # 1 + 3 + 60 = 64 deep
    with pytest.raises(InvalidRequest) as info:
        parse_json(comb(4))  # 65
    assert "nests deeper" in info.value.message
