"""Audit scoring: does a provider's output match what the claimed model computes for it?

An auditor serving the same weights runs one teacher-forced pass over prompt + output and
answers an :class:`~tessera.protocol.wire.AuditResult`. :func:`score_text` and
:func:`score_embeddings` compare it with what the audited provider delivered and return a
:class:`Verdict`. Pure: numbers in, verdict out.

Rules of :func:`score_text`, in the order they run (each failure is a :class:`Finding`
named by its ``check``):

- ``shape``: the auditor's choices cover exactly the claimed choice indexes, with one
  TokenScore per claimed token id (and, for one prompt, one prompt length). Otherwise the
  AUDITOR failed: ``passed=False, reason=None``, and nothing else is checked. The gateway
  reads reason None as "ask another auditor", never as evidence against the provider.
- ``usage``: the claimed prompt token count equals the auditor's: the one prompt's count
  for chat and single-prompt completions, the sum over prompts for a completion with n
  prompts (whose choices must then be exactly 0..n-1). The completion count is implied by
  the choices (``ChoiceOutput.completion_tokens``).
- ``text``: the delivered text equals the auditor's decoded text cut at the first
  occurrence of any of the job's stop strings (not cut when none occurs or the job has
  none). A choice that finished "stop" without EOS on a job with stop strings must show
  one in its decoded text.
- ``length``: "length" needs no EOS and completion tokens == ``max_tokens`` or prompt +
  completion >= the context length; "stop" needs EOS or (job with stop strings) a stop
  string; no choice has more tokens than ``max_tokens`` or the context allows, and no
  choice other than a "stop" one shows a stop string (an honest provider stops there).
  A cancelled job ends "stop" with neither, so the gateway must not audit one.
- ``logprob``: each token's |claimed - audited| raw log-probability <= ``logprob_abs_max``
  and each choice's mean <= ``logprob_abs_mean``. A choice without one claimed log-prob
  per token id fails as tampered output.
- ``rank`` / ``eos``: at temperature 0, every token's (top_logprob - logprob) <=
  ``greedy_gap``, and with EOS the end token's too. A model that "would have ended" at a
  position, with EOS the clear top-1 there, fails at that position's token. At temperature
  > 0, a choice's n completion tokens may have at most
  floor(f x n + 5 sqrt(n f (1 - f)) + 2) ranked below ``top_k`` (f = ``tail_fraction``): a
  binomial bound five standard deviations wide, because every auditor scores the same
  output, so an honest sample unlucky once would be failed by all three. A sampled EOS
  outside ``top_k`` counts as one of them. Random tokens (most far outside ``top_k``) still
  fail it; subtler cheats are the log-probability check's job.

Reason: ``tampered_output`` when any usage, text, length or missing-logprob rule failed
(exact evidence), else ``wrong_model`` for logprob / rank / eos (statistical evidence).
Both are rows of the slashing table. Findings are capped at ``MAX_FINDINGS``, keeping the
first of each check; ``stats["findings"]`` counts them all.
"""

from __future__ import annotations

import base64
import binascii
import math
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from tessera.protocol.receipts import ChoiceOutput
from tessera.protocol.wire import AuditResult, ChoiceScore, Job
from tessera.verify.catalog import Tolerances

WRONG_MODEL = "wrong_model"
TAMPERED_OUTPUT = "tampered_output"
CHECKS = frozenset({"usage", "text", "length", "logprob", "rank", "eos", "cosine", "shape"})
MAX_FINDINGS = 20


@dataclass(frozen=True, slots=True)
class Finding:
    """One failed rule: which check, which choice, which token position (None: the choice)."""

    check: str
    choice: int
    position: int | None
    detail: str

    def public(self) -> dict[str, object]:
        return {
            "check": self.check,
            "choice": self.choice,
            "position": self.position,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """An audit's outcome. ``reason`` None on a failure means the auditor failed, not the
    provider: its answer did not fit the audit (see the module docstring)."""

    passed: bool
    reason: str | None
    findings: tuple[Finding, ...]
    stats: dict[str, float]

    @property
    def auditor_fault(self) -> bool:
        return not self.passed and self.reason is None

    def public(self) -> dict[str, object]:
        """JSON-able evidence for the API and the explorer."""
        return {
            "passed": self.passed,
            "reason": self.reason,
            "findings": [f.public() for f in self.findings],
            "stats": dict(self.stats),
        }


def malformed(detail: str, choice: int = 0) -> Verdict:
    """The auditor's answer does not fit the audit: no verdict on the provider."""
    return Verdict(False, None, (Finding("shape", choice, None, detail),), {})


class Findings:
    """Collects findings with the slashing reason each one supports."""

    def __init__(self) -> None:
        self._items: list[tuple[Finding, str]] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, check: str, choice: int, position: int | None, detail: str, reason: str) -> None:
        self._items.append((Finding(check, choice, position, detail), reason))

    def verdict(self, stats: dict[str, float]) -> Verdict:
        stats = {**stats, "findings": float(len(self._items))}
        if not self._items:
            return Verdict(True, None, (), stats)
        reasons = {reason for _, reason in self._items}
        # Exact evidence (counts, text) outranks statistical evidence (log-probs, ranks).
        reason = TAMPERED_OUTPUT if TAMPERED_OUTPUT in reasons else min(reasons)
        return Verdict(False, reason, _cap([f for f, _ in self._items]), stats)


def _cap(findings: list[Finding]) -> tuple[Finding, ...]:
    """At most MAX_FINDINGS, in order, keeping the first finding of every check."""
    if len(findings) <= MAX_FINDINGS:
        return tuple(findings)
    keep: set[int] = set()
    seen: set[str] = set()
    for i, f in enumerate(findings):
        if f.check not in seen:
            seen.add(f.check)
            keep.add(i)
    for i in range(len(findings)):
        if len(keep) >= MAX_FINDINGS:
            break
        keep.add(i)
    return tuple(findings[i] for i in sorted(keep))


def _text_difference(delivered: str, expected: str) -> str:
    """Where two texts part, in numbers only: findings are public, outputs are not."""
    at = next(
        (i for i, (a, b) in enumerate(zip(delivered, expected, strict=False)) if a != b),
        min(len(delivered), len(expected)),
    )
    return (
        f"the delivered text ({len(delivered)} characters) differs from the tokens decoded "
        f"({len(expected)} characters) from character {at}"
    )


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest occurrence of any stop string in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


# ---------------------------------------------------------------- text


def score_text(
    job: Job,
    choices: list[ChoiceOutput],
    prompt_tokens: int,
    context_length: int,
    result: AuditResult,
    tol: Tolerances,
) -> Verdict:
    """Score a chat or completion job's delivered ``choices`` against the auditor's result.

    ``prompt_tokens`` is the provider's claimed usage; ``context_length`` the context its
    offer announced. ValueError when the job itself is not a text job with params (the
    gateway's own mistake, not evidence about anyone).
    """
    if job.kind not in ("chat", "completion") or job.params is None:
        raise ValueError(f"job {job.job_id} is not a text job with sampling params")
    indexes = [c.index for c in choices]
    if len(set(indexes)) != len(indexes) or not choices:
        raise ValueError("the claimed choices must be non-empty with distinct indexes")
    if result.choices is None:
        return malformed("the auditor sent no choice scores for a text job")
    scores = {s.index: s for s in result.choices}
    if len(scores) != len(result.choices):
        return malformed("the auditor scored one choice twice")
    if set(scores) != set(indexes):
        return malformed(f"the auditor scored choices {sorted(scores)}, not {sorted(indexes)}")
    for choice in choices:
        got = len(scores[choice.index].tokens)
        if got != len(choice.token_ids):
            return malformed(
                f"the auditor scored {got} tokens of {len(choice.token_ids)}", choice.index
            )
    prompts = job.prompts if job.kind == "completion" else None
    many_prompts = prompts is not None and len(prompts) > 1
    if not many_prompts and len({s.prompt_tokens for s in result.choices}) > 1:
        return malformed("the auditor counted one prompt differently per choice")

    out = Findings()
    _check_usage(out, job, indexes, prompt_tokens, result.choices, many_prompts)
    stats = _Stats()
    for choice in sorted(choices, key=lambda c: c.index):
        score = scores[choice.index]
        _check_text_and_length(out, job, choice, score, context_length)
        _check_logprobs(out, choice, score, tol, stats)
        _check_ranks(out, job, choice, score, tol, stats)
    return out.verdict(stats.public(len(choices), prompt_tokens))


def _check_usage(
    out: Findings,
    job: Job,
    indexes: list[int],
    prompt_tokens: int,
    scores: list[ChoiceScore],
    many_prompts: bool,
) -> None:
    if many_prompts:
        n = len(job.prompts or [])
        if sorted(indexes) != list(range(n)):
            out.add(
                "usage",
                min(indexes),
                None,
                f"the job has {n} prompts but the provider delivered choices {sorted(indexes)}",
                TAMPERED_OUTPUT,
            )
        expected = sum(s.prompt_tokens for s in scores)
    else:
        expected = scores[0].prompt_tokens
    if prompt_tokens != expected:
        out.add(
            "usage",
            min(indexes),
            None,
            f"claimed {prompt_tokens} prompt tokens; the model's tokenizer counts {expected}",
            TAMPERED_OUTPUT,
        )


def _check_text_and_length(
    out: Findings, job: Job, choice: ChoiceOutput, score: ChoiceScore, context_length: int
) -> None:
    params = job.params
    if params is None:  # checked by the caller; keeps the type checker informed
        raise ValueError("a text job needs params")
    i = choice.index
    stop_at = first_stop(score.text, params.stop)
    expected = score.text if stop_at is None else score.text[:stop_at]
    if choice.text != expected:
        out.add(
            "text",
            i,
            None,
            _text_difference(choice.text, expected),
            TAMPERED_OUTPUT,
        )
    finish = choice.finish_reason
    made = choice.completion_tokens
    if made > params.max_tokens or score.prompt_tokens + made > context_length:
        out.add(
            "length",
            i,
            None,
            f"{made} completion tokens exceed max_tokens {params.max_tokens} or the context "
            f"of {context_length} after a {score.prompt_tokens}-token prompt",
            TAMPERED_OUTPUT,
        )
    if finish == "length":
        if choice.eos:
            out.add("length", i, None, "finished 'length' on an EOS token", TAMPERED_OUTPUT)
        elif made != params.max_tokens and score.prompt_tokens + made < context_length:
            out.add(
                "length",
                i,
                None,
                f"finished 'length' after {made} tokens: neither max_tokens "
                f"{params.max_tokens} nor the context of {context_length} was reached",
                TAMPERED_OUTPUT,
            )
        if stop_at is not None:
            out.add("length", i, None, "ran past a stop string", TAMPERED_OUTPUT)
    elif finish == "stop":
        if not choice.eos and stop_at is None:
            check = "text" if params.stop else "length"
            why = "no stop string occurs in the text" if params.stop else "the job has none"
            out.add(
                check,
                i,
                None,
                f"finished 'stop' without EOS or a stop string: {why}",
                TAMPERED_OUTPUT,
            )
    else:
        out.add(
            "length", i, None, f"finish reason {finish!r} is not stop or length", TAMPERED_OUTPUT
        )


class _Stats:
    """Running numbers over all choices: what the verdict reports."""

    def __init__(self) -> None:
        self.tokens = 0
        self.completion_tokens = 0
        self.logprob_abs_max = 0.0
        self.logprob_abs_mean = 0.0  # the worst choice's mean
        self.greedy_gap_max = 0.0
        self.tail_tokens = 0

    def public(self, choices: int, prompt_tokens: int) -> dict[str, float]:
        return {
            "choices": float(choices),
            "prompt_tokens": float(prompt_tokens),
            "tokens": float(self.tokens),
            "completion_tokens": float(self.completion_tokens),
            "logprob_abs_max": self.logprob_abs_max,
            "logprob_abs_mean": self.logprob_abs_mean,
            "greedy_gap_max": self.greedy_gap_max,
            "tail_tokens": float(self.tail_tokens),
            "tail_fraction": self.tail_tokens / self.completion_tokens
            if self.completion_tokens
            else 0.0,
        }


def _check_logprobs(
    out: Findings, choice: ChoiceOutput, score: ChoiceScore, tol: Tolerances, stats: _Stats
) -> None:
    i = choice.index
    stats.tokens += len(choice.token_ids)
    stats.completion_tokens += choice.completion_tokens
    if len(choice.token_logprobs) != len(choice.token_ids):
        out.add(
            "logprob",
            i,
            None,
            f"{len(choice.token_logprobs)} log-probs sent for {len(choice.token_ids)} tokens",
            TAMPERED_OUTPUT,
        )
        return
    diffs = [abs(c - s.logprob) for c, s in zip(choice.token_logprobs, score.tokens, strict=True)]
    for position, diff in enumerate(diffs):
        if diff > tol.logprob_abs_max:
            out.add(
                "logprob",
                i,
                position,
                f"|claimed - audited| log-prob {diff:.4f} > {tol.logprob_abs_max}",
                WRONG_MODEL,
            )
    if diffs:
        mean = math.fsum(diffs) / len(diffs)
        stats.logprob_abs_max = max(stats.logprob_abs_max, max(diffs))
        stats.logprob_abs_mean = max(stats.logprob_abs_mean, mean)
        if mean > tol.logprob_abs_mean:
            out.add(
                "logprob",
                i,
                None,
                f"mean |claimed - audited| log-prob {mean:.4f} > {tol.logprob_abs_mean}",
                WRONG_MODEL,
            )


def _check_ranks(
    out: Findings,
    job: Job,
    choice: ChoiceOutput,
    score: ChoiceScore,
    tol: Tolerances,
    stats: _Stats,
) -> None:
    params = job.params
    if params is None:
        raise ValueError("a text job needs params")
    i = choice.index
    gaps = [max(0.0, s.top_logprob - s.logprob) for s in score.tokens]
    end_gap = max(0.0, score.end.top_logprob - score.end.logprob)
    stats.greedy_gap_max = max(stats.greedy_gap_max, *gaps, end_gap if choice.eos else 0.0)
    tail = [p for p, s in enumerate(score.tokens) if s.rank > tol.top_k]
    eos_tail = choice.eos and score.end.rank > tol.top_k
    stats.tail_tokens += len(tail) + (1 if eos_tail else 0)
    if params.temperature == 0.0:
        for position, gap in enumerate(gaps):
            if gap > tol.greedy_gap:
                out.add(
                    "rank",
                    i,
                    position,
                    f"greedy output, but the model's top token is {gap:.4f} more likely "
                    f"(rank {score.tokens[position].rank}; tolerance {tol.greedy_gap})",
                    WRONG_MODEL,
                )
        if choice.eos and end_gap > tol.greedy_gap:
            out.add(
                "eos",
                i,
                len(choice.token_ids),
                f"greedy output ended, but EOS is {end_gap:.4f} below the top token "
                f"(rank {score.end.rank}; tolerance {tol.greedy_gap})",
                WRONG_MODEL,
            )
        return
    n = choice.completion_tokens
    allowed = tail_allowance(tol.tail_fraction, n)
    count = len(tail) + (1 if eos_tail else 0)
    if count > allowed:
        first = tail[0] if tail else len(choice.token_ids)
        out.add(
            "rank",
            i,
            first,
            f"{count} of {n} sampled tokens rank below top {tol.top_k}"
            f"{' (EOS among them)' if eos_tail else ''}; at most {allowed} allowed",
            WRONG_MODEL,
        )


# ---------------------------------------------------------------- embeddings


def decode_vector(text: str) -> list[float] | None:
    """A base64 float32 little-endian vector, or None if malformed or not finite."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if not raw or len(raw) % 4:
        return None
    values = array("f")
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    vector = values.tolist()
    if not all(math.isfinite(v) for v in vector):
        return None
    return vector


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity; two zero vectors are alike (1), one zero vector is not (0)."""
    na = math.sqrt(math.fsum(x * x for x in a))
    nb = math.sqrt(math.fsum(y * y for y in b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    return max(-1.0, min(1.0, dot / (na * nb)))


def compare_vectors(
    out: Findings,
    claimed_b64: Sequence[str],
    reference: Sequence[Sequence[float]],
    min_cosine: float,
    shape_reason: str,
) -> dict[str, float]:
    """Compare claimed vectors with reference ones; count or shape problems carry
    ``shape_reason``, a low cosine ``wrong_model``. Returns the cosine stats."""
    if len(claimed_b64) != len(reference):
        out.add(
            "cosine",
            0,
            None,
            f"{len(claimed_b64)} vectors delivered; the model computes {len(reference)}",
            shape_reason,
        )
        return {"vectors": float(len(claimed_b64))}
    cosines: list[float] = []
    for i, (text, ref) in enumerate(zip(claimed_b64, reference, strict=True)):
        vector = decode_vector(text)
        if vector is None:
            out.add("cosine", i, None, "not a finite base64 float32 vector", shape_reason)
            continue
        if len(vector) != len(ref):
            out.add(
                "cosine",
                i,
                None,
                f"{len(vector)} dimensions; the model computes {len(ref)}",
                shape_reason,
            )
            continue
        value = cosine(vector, ref)
        cosines.append(value)
        if value < min_cosine:
            out.add("cosine", i, None, f"cosine {value:.6f} < {min_cosine}", WRONG_MODEL)
    stats = {"vectors": float(len(claimed_b64))}
    if reference:
        stats["dimensions"] = float(len(reference[0]))
    if cosines:
        stats["cosine_min"] = min(cosines)
        stats["cosine_mean"] = math.fsum(cosines) / len(cosines)
    return stats


def score_embeddings(
    claimed_b64: list[str], prompt_tokens: int, result: AuditResult, tol: Tolerances
) -> Verdict:
    """Score an embedding job: same vector count and dimensions, each vector's cosine to
    the auditor's >= ``min_cosine`` (else wrong_model), same prompt token count (else, like
    a count or shape difference, tampered_output). An auditor answer without decodable,
    equally long vectors is the auditor's failure (reason None)."""
    if result.embeddings_b64 is None:
        return malformed("the auditor sent no vectors for an embedding job")
    reference: list[list[float]] = []
    for i, text in enumerate(result.embeddings_b64):
        vector = decode_vector(text)
        if vector is None:
            return malformed("the auditor sent a vector that is not finite float32", i)
        reference.append(vector)
    if len({len(v) for v in reference}) > 1:
        return malformed("the auditor's vectors differ in dimensions")
    out = Findings()
    if prompt_tokens != result.prompt_tokens:
        out.add(
            "usage",
            0,
            None,
            f"claimed {prompt_tokens} input tokens; the model's tokenizer counts "
            f"{result.prompt_tokens}",
            TAMPERED_OUTPUT,
        )
    stats = compare_vectors(out, claimed_b64, reference, tol.min_cosine, TAMPERED_OUTPUT)
    stats["prompt_tokens"] = float(prompt_tokens)
    return out.verdict(stats)


def tail_allowance(fraction: float, n: int) -> int:
    """Most of n sampled tokens an honest provider may have ranked below top_k."""
    spread = math.sqrt(n * fraction * (1.0 - fraction))
    return math.floor(fraction * n + 5.0 * spread + 2.0)
