"""From honest runs' deviations to audit tolerances (pure: numbers in, catalog values out).

Calibration runs one model several honest ways (dtype, thread count, batch size, sampling)
and compares what a generator reported for each token with what an auditor's
teacher-forced pass computes for it. This module turns those comparisons into
:class:`~tessera.verify.catalog.Tolerances`:

- :func:`measure` compares one choice: generated log-probs against the auditor's scores;
- :func:`observe` folds many choices into the worst case seen (:class:`Observed`);
- :func:`derive` multiplies the worst case by a safety margin and never goes below
  :class:`Floors`; :func:`derive_embedding` does the same for embedding cosines.

Why a margin *and* floors: a calibration sees a few dozen prompts on one machine, while
honest providers run other kernels (GPUs, TF32, fused attention) and other prompts, so
the worst case seen underestimates the worst case served. A float32-only calibration on a
CPU can observe deviations near 1e-6; three times that would reject every GPU. The floors
(hundredths of a nat) stay far below what a cheater moves: another model, a quantized copy
or a truncated prompt changes log-probabilities by tenths to whole nats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tessera.verify.catalog import Calibration, Tolerances

DEFAULT_MARGIN = 3.0
TOP_K_COVERAGE = 0.99  # top_k covers this share of honest sampled tokens
LEAST_TOP_K = 8


class ScoredToken(Protocol):
    """A token under the auditor's model (a backend's TokenRank or a wire TokenScore)."""

    @property
    def rank(self) -> int: ...

    @property
    def logprob(self) -> float: ...

    @property
    def top_logprob(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Deviation:
    """One choice against the auditor: per-token |generated - audited| log-prob and ranks.

    ``greedy_gap`` is the largest (auditor's top-1 log-prob - auditor's log-prob of the
    token); it only means something for greedy output. ``ranks`` are the auditor's ranks
    of the tokens. Both count the end-of-sequence token when the choice ended with one, as
    the audit does; ``tokens``, ``max_abs`` and ``mean_abs`` do not (it has no claimed
    log-prob).
    """

    tokens: int
    max_abs: float
    mean_abs: float
    greedy_gap: float
    ranks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Observed:
    """The worst case over honest runs; what :func:`derive` scales into tolerances.

    ``tail_fraction`` is, over sampled choices, the largest (tokens ranked below
    ``top_k`` - 1) / tokens: the audit rule allows one such token per choice for free.
    """

    tokens: int
    logprob_abs_max: float
    logprob_abs_mean: float
    greedy_gap: float
    top_k: int
    tail_fraction: float


@dataclass(frozen=True, slots=True)
class Floors:
    """The least tolerance whatever was observed; ``cosine_slack``: least 1 - min_cosine."""

    logprob_abs_max: float = 0.05
    logprob_abs_mean: float = 0.01
    greedy_gap: float = 0.05
    tail_fraction: float = 0.05
    cosine_slack: float = 1e-3


def measure(
    generated: Sequence[float],
    audited: Sequence[ScoredToken],
    end: ScoredToken | None = None,
) -> Deviation:
    """Compare one choice; ``end`` is the auditor's score of the end-of-sequence token.

    ValueError when the two sides do not cover the same tokens.
    """
    if len(generated) != len(audited):
        raise ValueError(
            f"{len(generated)} generated log-probs against {len(audited)} audited tokens"
        )
    diffs = [abs(g - a.logprob) for g, a in zip(generated, audited, strict=True)]
    ended = [*audited, end] if end is not None else list(audited)
    gaps = [a.top_logprob - a.logprob for a in ended]
    return Deviation(
        tokens=len(diffs),
        max_abs=max(diffs, default=0.0),
        mean_abs=math.fsum(diffs) / len(diffs) if diffs else 0.0,
        greedy_gap=max(0.0, *gaps) if gaps else 0.0,
        ranks=tuple(a.rank for a in ended),
    )


def choose_top_k(
    ranks: Iterable[int], coverage: float = TOP_K_COVERAGE, least: int = LEAST_TOP_K
) -> int:
    """The smallest power of two >= ``least`` with at least ``coverage`` of ``ranks`` within.

    A power of two keeps the value stable between calibrations of the same model.
    """
    ordered = sorted(ranks)
    if not ordered:
        return least
    needed = ordered[max(0, math.ceil(coverage * len(ordered)) - 1)]
    top_k = least
    while top_k < needed:
        top_k *= 2
    return top_k


def tail_fraction(ranks: Sequence[int], top_k: int) -> float:
    """(tokens ranked below ``top_k`` - 1) / tokens, at least 0: the one free token removed."""
    if not ranks:
        return 0.0
    tail = sum(1 for r in ranks if r > top_k)
    return max(0, tail - 1) / len(ranks)


def observe(greedy: Sequence[Deviation], sampled: Sequence[Deviation]) -> Observed:
    """The worst case over greedy and sampled choices."""
    every = [*greedy, *sampled]
    top_k = choose_top_k(r for d in sampled for r in d.ranks)
    return Observed(
        tokens=sum(d.tokens for d in every),
        logprob_abs_max=max((d.max_abs for d in every), default=0.0),
        logprob_abs_mean=max((d.mean_abs for d in every), default=0.0),
        greedy_gap=max((d.greedy_gap for d in greedy), default=0.0),
        top_k=top_k,
        tail_fraction=max((tail_fraction(d.ranks, top_k) for d in sampled), default=0.0),
    )


def _check_margin(margin: float) -> None:
    if margin < 1.0 or not math.isfinite(margin):
        raise ValueError(f"the safety margin must be a finite number >= 1, not {margin}")


def derive(
    observed: Observed,
    runs: Sequence[str],
    margin: float = DEFAULT_MARGIN,
    floors: Floors | None = None,
) -> tuple[Tolerances, Calibration]:
    """A text model's tolerances = observed worst case x ``margin``, never below ``floors``.

    ``min_cosine`` keeps its default (it is for embedding models). ValueError if margin < 1.
    """
    _check_margin(margin)
    floors = floors or Floors()
    tolerances = Tolerances(
        logprob_abs_max=max(floors.logprob_abs_max, margin * observed.logprob_abs_max),
        logprob_abs_mean=max(floors.logprob_abs_mean, margin * observed.logprob_abs_mean),
        greedy_gap=max(floors.greedy_gap, margin * observed.greedy_gap),
        top_k=observed.top_k,
        tail_fraction=min(1.0, max(floors.tail_fraction, margin * observed.tail_fraction)),
    )
    calibration = Calibration(
        runs=list(runs),
        tokens=observed.tokens,
        observed_logprob_abs_max=observed.logprob_abs_max,
        observed_logprob_abs_mean=observed.logprob_abs_mean,
        observed_greedy_gap=observed.greedy_gap,
        observed_tail_fraction=observed.tail_fraction,
        margin=margin,
    )
    return tolerances, calibration


def derive_embedding(
    cosines: Sequence[float],
    runs: Sequence[str],
    tokens: int,
    margin: float = DEFAULT_MARGIN,
    floors: Floors | None = None,
) -> tuple[Tolerances, Calibration]:
    """An embedding model's ``min_cosine`` = 1 - margin x (1 - worst cosine seen).

    At most 1 - ``cosine_slack`` (a perfect match on one machine must not demand
    bit-exact vectors from the next), at least -1; the log-prob tolerances keep their
    defaults. ``tokens`` counts the input tokens embedded. ValueError without cosines or
    with a margin below 1.
    """
    _check_margin(margin)
    if not cosines:
        raise ValueError("no cosines to calibrate an embedding model from")
    floors = floors or Floors()
    worst = min(1.0, max(-1.0, min(cosines)))
    slack = max(floors.cosine_slack, margin * (1.0 - worst))
    tolerances = Tolerances(min_cosine=max(-1.0, 1.0 - slack))
    calibration = Calibration(
        runs=list(runs), tokens=tokens, observed_min_cosine=worst, margin=margin
    )
    return tolerances, calibration
