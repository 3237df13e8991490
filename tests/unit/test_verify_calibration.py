"""Tolerance derivation from honest deviations: measure, worst case, margin and floors."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from tessera.protocol.wire import TokenScore
from tessera.verify.calibration import (
    Deviation,
    Floors,
    Observed,
    choose_top_k,
    derive,
    derive_embedding,
    measure,
    observe,
    tail_fraction,
)
from tessera.verify.catalog import Tolerances


@dataclass(frozen=True, slots=True)
class Scored:
    rank: int
    logprob: float
    top_logprob: float


def observed(**overrides: object) -> Observed:
    values: dict[str, object] = {
        "tokens": 100,
        "logprob_abs_max": 0.0,
        "logprob_abs_mean": 0.0,
        "greedy_gap": 0.0,
        "top_k": 16,
        "tail_fraction": 0.0,
    }
    values.update(overrides)
    return Observed(**values)  # type: ignore[arg-type]


def test_measure_takes_the_largest_and_mean_difference_and_the_greedy_gap() -> None:
    audited = [Scored(1, -0.5, -0.5), Scored(2, -1.25, -1.0), Scored(1, -2.0, -2.0)]
    d = measure([-0.5, -1.0, -2.5], audited)
    assert d.tokens == 3
    assert d.max_abs == pytest.approx(0.5)
    assert d.mean_abs == pytest.approx((0.0 + 0.25 + 0.5) / 3)
    assert d.greedy_gap == pytest.approx(0.25)
    assert d.ranks == (1, 2, 1)


def test_measure_counts_the_end_token_in_gap_and_ranks_and_accepts_wire_scores() -> None:
    audited = [TokenScore(rank=1, logprob=-0.1, top_logprob=-0.1)]
    end = TokenScore(rank=2, logprob=-1.5, top_logprob=-0.75)
    d = measure([-0.1], audited, end=end)
    assert d.tokens == 1
    assert d.max_abs == 0.0
    assert d.greedy_gap == pytest.approx(0.75)
    assert d.ranks == (1, 2)  # a sampled end token outside top_k counts in the tail


def test_measure_refuses_sides_of_different_length() -> None:
    with pytest.raises(ValueError, match="2 generated"):
        measure([-0.1, -0.2], [Scored(1, -0.1, -0.1)])


def test_measure_of_an_empty_choice_is_all_zero() -> None:
    assert measure([], []) == Deviation(0, 0.0, 0.0, 0.0, ())


def test_top_k_is_the_smallest_power_of_two_covering_99_percent() -> None:
    assert choose_top_k([]) == 8
    assert choose_top_k([1, 2, 3]) == 8
    assert choose_top_k([9]) == 16
    # 99 ranks within 20 and one outlier: the outlier is the 1% left out.
    assert choose_top_k([20] * 99 + [5000]) == 32
    assert choose_top_k([20] * 98 + [5000] * 2) == 8192


def test_tail_fraction_forgives_one_token_per_choice() -> None:
    assert tail_fraction([], 8) == 0.0
    assert tail_fraction([1, 9, 2, 3], 8) == 0.0
    assert tail_fraction([1, 9, 10, 3], 8) == pytest.approx(0.25)


def test_observe_takes_the_worst_choice_and_the_greedy_gap_only_from_greedy_output() -> None:
    greedy = [Deviation(4, 0.01, 0.004, 0.002, (1, 1, 1, 1)), Deviation(2, 0.03, 0.02, 0.0, (1, 1))]
    sampled = [Deviation(4, 0.02, 0.01, 3.0, (1, 5, 40, 50))]
    obs = observe(greedy, sampled)
    assert obs.tokens == 10
    assert obs.logprob_abs_max == 0.03
    assert obs.logprob_abs_mean == 0.02
    assert obs.greedy_gap == 0.002  # the sampled choice's large gap is not a greedy gap
    assert obs.top_k == 64
    assert obs.tail_fraction == 0.0


def test_derive_multiplies_the_worst_case_by_the_margin() -> None:
    tol, cal = derive(
        observed(
            logprob_abs_max=0.2,
            logprob_abs_mean=0.05,
            greedy_gap=0.1,
            tail_fraction=0.04,
            top_k=32,
        ),
        runs=["generate/float32", "score/bfloat16"],
        margin=3.0,
    )
    assert tol.logprob_abs_max == pytest.approx(0.6)
    assert tol.logprob_abs_mean == pytest.approx(0.15)
    assert tol.greedy_gap == pytest.approx(0.3)
    assert tol.tail_fraction == pytest.approx(0.12)
    assert tol.top_k == 32
    assert tol.min_cosine == Tolerances().min_cosine  # for embedding models only
    assert cal.runs == ["generate/float32", "score/bfloat16"]
    assert cal.tokens == 100
    assert cal.observed_logprob_abs_max == 0.2
    assert cal.observed_tail_fraction == 0.04
    assert cal.observed_min_cosine is None
    assert cal.margin == 3.0


def test_derive_never_goes_below_the_floors() -> None:
    tol, cal = derive(observed(logprob_abs_max=1e-6, logprob_abs_mean=1e-7), runs=[])
    assert tol.logprob_abs_max == 0.05
    assert tol.logprob_abs_mean == 0.01
    assert tol.greedy_gap == 0.05
    assert tol.tail_fraction == 0.05
    assert cal.observed_logprob_abs_max == 1e-6
    custom = Floors(logprob_abs_max=0.5, logprob_abs_mean=0.2, greedy_gap=0.3, tail_fraction=0.1)
    tol, _ = derive(observed(), runs=[], floors=custom)
    assert (tol.logprob_abs_max, tol.logprob_abs_mean, tol.greedy_gap, tol.tail_fraction) == (
        0.5,
        0.2,
        0.3,
        0.1,
    )


def test_derive_caps_the_tail_fraction_at_one() -> None:
    tol, _ = derive(observed(tail_fraction=0.5), runs=[], margin=3.0)
    assert tol.tail_fraction == 1.0


def test_min_cosine_widens_the_observed_gap_by_the_margin_with_a_least_slack() -> None:
    tol, cal = derive_embedding([0.999, 0.99, 1.0], runs=["embed/a", "embed/b"], tokens=40)
    assert tol.min_cosine == pytest.approx(0.97)
    assert cal.observed_min_cosine == 0.99
    assert (cal.runs, cal.tokens, cal.margin) == (["embed/a", "embed/b"], 40, 3.0)
    assert tol.logprob_abs_max == Tolerances().logprob_abs_max  # for text models only
    tol, _ = derive_embedding([1.0000001], runs=[], tokens=1)
    assert tol.min_cosine == pytest.approx(1 - Floors().cosine_slack)
    tol, cal = derive_embedding([0.2], runs=[], tokens=1, margin=3.0)
    assert tol.min_cosine == -1.0
    with pytest.raises(ValueError, match="no cosines"):
        derive_embedding([], runs=[], tokens=0)


def test_tolerances_accept_what_was_observed() -> None:
    obs = observed(logprob_abs_max=0.31, logprob_abs_mean=0.07, greedy_gap=0.12, tail_fraction=0.02)
    for margin in (1.0, 1.5, 3.0, 10.0):
        tol, _ = derive(obs, runs=[], margin=margin)
        assert tol.logprob_abs_max >= obs.logprob_abs_max
        assert tol.logprob_abs_mean >= obs.logprob_abs_mean
        assert tol.greedy_gap >= obs.greedy_gap
        assert tol.tail_fraction >= obs.tail_fraction


@pytest.mark.parametrize("margin", [0.5, math.inf, math.nan])
def test_derive_refuses_a_margin_that_would_shrink_or_break_tolerances(margin: float) -> None:
    with pytest.raises(ValueError, match="margin"):
        derive(observed(), runs=[], margin=margin)
    with pytest.raises(ValueError, match="margin"):
        derive_embedding([0.99], runs=[], tokens=1, margin=margin)
