"""The pure pieces of the transformers text backend: stop strings, detokenising, continuing
a stream, sampling."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tessera.provider.backends.base import BackendError
from tessera.provider.backends.sampling import counter_uniform, fresh_uniform, sample_token
from tessera.provider.backends.transformers_text import (
    REPLACEMENT_CHAR,
    IncrementalDetokenizer,
    StopStringFilter,
    held_suffix_length,
    primed_text_state,
)

# ---------------------------------------------------------------- stop strings


def run_filter(pieces: list[str], stops: list[str]) -> tuple[list[str], bool]:
    f = StopStringFilter(stops)
    out = [f.push(p) for p in pieces]
    if not f.stopped:
        out.append(f.flush())
    return out, f.stopped


def expected_output(text: str, stops: list[str]) -> str:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(hits)] if hits else text


def test_stop_string_split_across_pieces_never_leaks() -> None:
    out, stopped = run_filter(["Once upon a ti", "me the E", "N", "D came"], ["END"])
    assert stopped
    assert "".join(out) == "Once upon a time the "
    assert all("E" not in piece for piece in out)


def test_text_that_only_looks_like_a_stop_start_is_released_at_the_end() -> None:
    out, stopped = run_filter(["the fox ", "EN"], ["END"])
    assert not stopped
    assert out == ["the fox ", "", "EN"]


def test_earliest_stop_wins() -> None:
    out, stopped = run_filter(["a wolf and a fox"], ["fox", "wolf"])
    assert stopped
    assert "".join(out) == "a "


def test_nothing_after_a_stop() -> None:
    f = StopStringFilter(["."])
    assert f.push("Hello. World") == "Hello"
    assert f.push("more") == ""
    assert f.flush() == ""


def test_held_suffix_length() -> None:
    assert held_suffix_length("abc", ["cd"]) == 1
    assert held_suffix_length("abc", ["bcd", "cd"]) == 2
    assert held_suffix_length("abc", ["xyz"]) == 0
    assert held_suffix_length("", ["xyz"]) == 0


@given(
    text=st.text(alphabet="abcde .", max_size=60),
    stops=st.lists(st.text(alphabet="abcde .", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=10),
)
def test_stop_filter_matches_a_plain_search(text: str, stops: list[str], cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    out, stopped = run_filter(pieces, stops)
    joined = "".join(out)
    assert joined == expected_output(text, stops)
    assert stopped == any(s in text for s in stops)
    for s in stops:
        assert s not in joined


# ---------------------------------------------------------------- detokenising


def byte_decoder(vocab: list[bytes]) -> Callable[[list[int]], str]:
    """A byte-level decode, as byte-level BPE tokenizers do it."""

    def decode(ids: list[int]) -> str:
        return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")

    return decode


def test_multibyte_character_is_held_until_complete() -> None:
    euro = "€".encode()  # three bytes
    vocab = [b"price ", euro[:1], euro[1:2], euro[2:], b"5"]
    detok = IncrementalDetokenizer(byte_decoder(vocab))
    out = [detok.push(i) for i in (0, 1, 2, 3, 4)]
    assert out == ["price ", "", "", "€", "5"]
    assert detok.flush() == ""


def test_flush_releases_an_incomplete_tail_as_replacement() -> None:
    vocab = [b"ok", "é".encode()[:1]]
    detok = IncrementalDetokenizer(byte_decoder(vocab))
    assert detok.push(0) == "ok"
    assert detok.push(1) == ""
    assert detok.flush() == REPLACEMENT_CHAR


@given(
    text=st.text(max_size=40).filter(lambda t: REPLACEMENT_CHAR not in t),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=20),
)
def test_detokeniser_reassembles_any_byte_split(text: str, cuts: list[int]) -> None:
    data = text.encode()
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    vocab = [data[a:b] for a, b in itertools.pairwise(bounds)]
    detok = IncrementalDetokenizer(byte_decoder(vocab))
    pieces = [detok.push(i) for i in range(len(vocab))]
    pieces.append(detok.flush())
    assert "".join(pieces) == text
    assert all(REPLACEMENT_CHAR not in p for p in pieces)


# ---------------------------------------------------------------- continuing a stream


@given(
    text=st.text(alphabet="ab é€.", max_size=30),
    stops=st.lists(st.text(alphabet="ab é.", min_size=1, max_size=3), max_size=2),
    cuts=st.lists(st.integers(min_value=0, max_value=90), max_size=12),
    handed=st.integers(min_value=0, max_value=20),
)
def test_a_primed_stream_delivers_exactly_the_rest(
    text: str, stops: list[str], cuts: list[int], handed: int
) -> None:
    data = text.encode()
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    vocab = [data[a:b] for a, b in itertools.pairwise(bounds)]
    decode = byte_decoder(vocab)
    # What one stream delivers for the first `handed` tokens (the chunks sent before it
    # died), then a second stream primed with those tokens delivers the rest.
    ids = list(range(len(vocab)))
    handed = min(handed, len(ids))
    detok, stop_filter = IncrementalDetokenizer(decode), StopStringFilter(stops)
    delivered = "".join(stop_filter.push(detok.push(i)) for i in ids[:handed])
    if stop_filter.stopped:
        with pytest.raises(BackendError) as raised:
            primed_text_state(decode, ids[:handed], stops)
        assert raised.value.code == "invalid_continuation"
        return
    detok, stop_filter = primed_text_state(decode, ids[:handed], stops)
    rest = "".join(stop_filter.push(detok.push(i)) for i in ids[handed:])
    if not stop_filter.stopped:
        rest += stop_filter.push(detok.flush()) + stop_filter.flush()
    assert delivered + rest == expected_output(text, stops)


# ---------------------------------------------------------------- sampling


def test_greedy_is_argmax() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample_token(logits, 0.0, 1.0, 0.999) == 1


def test_uniform_draws_are_fixed_by_seed_and_position_alone() -> None:
    draws = [counter_uniform(7, i) for i in range(200)]
    assert draws == [counter_uniform(7, i) for i in range(200)]
    assert draws[120:] == [counter_uniform(7, i) for i in range(120, 200)]
    assert draws != [counter_uniform(8, i) for i in range(200)]
    assert len(set(draws)) == len(draws)
    assert all(0.0 <= u < 1.0 for u in draws)
    # seeds beyond 64 bits and negative ones are fine: the wire does not bound them
    assert counter_uniform(-3, 0) != counter_uniform(3, 0) != counter_uniform(2**80, 0)


def test_same_seed_same_samples_from_any_position() -> None:
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1))

    def draw(seed: int, start: int = 0) -> list[int]:
        return [sample_token(logits, 1.0, 1.0, counter_uniform(seed, i)) for i in range(start, 60)]

    assert draw(7) == draw(7)
    assert draw(7)[25:] == draw(7, start=25)  # a continuation at 25 draws what follows
    assert draw(7) != draw(8)


def test_unseeded_draws_differ() -> None:
    assert len({fresh_uniform() for _ in range(50)}) == 50


def test_inverse_cdf_follows_the_distribution() -> None:
    probs = torch.tensor([0.1, 0.5, 0.15, 0.25])
    logits = torch.log(probs)
    n = 4000
    picks = [sample_token(logits, 1.0, 1.0, counter_uniform(3, i)) for i in range(n)]
    for token, p in enumerate(probs.tolist()):
        assert abs(picks.count(token) / n - p) < 0.03, (token, picks.count(token))
    # the ends of the unit interval: the likeliest token first, the least likely last
    assert sample_token(logits, 1.0, 1.0, 0.0) == 1
    assert sample_token(logits, 1.0, 1.0, 1.0 - 2**-53) == 0


def test_tokens_without_mass_are_never_picked() -> None:
    logits = torch.tensor([float("-inf"), 1.0, float("-inf"), 0.5, float("-inf")])
    picks = {sample_token(logits, 0.7, 1.0, u) for u in (0.0, 0.3, 0.9, 1.0 - 2**-53)}
    assert picks == {1, 3}


def test_top_p_never_picks_outside_the_nucleus() -> None:
    # probabilities ~ 0.64, 0.24, 0.09, 0.03: top_p 0.7 keeps only the first two
    logits = torch.log(torch.tensor([0.64, 0.24, 0.09, 0.03]))
    picks = {sample_token(logits, 1.0, 0.7, counter_uniform(0, i)) for i in range(300)}
    assert picks == {0, 1}
    assert sample_token(logits, 1.0, 0.7, 1.0 - 2**-53) == 1


def test_tiny_top_p_is_greedy() -> None:
    logits = torch.tensor([0.5, 0.2, 2.0, 1.9])
    assert {sample_token(logits, 1.5, 1e-6, counter_uniform(0, i)) for i in range(50)} == {2}
