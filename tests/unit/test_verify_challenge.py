"""Join challenges: the job a provider is asked, and its answer against the reference."""

from __future__ import annotations

import base64
import struct

import pytest

from tessera.protocol.receipts import ChoiceOutput
from tessera.verify.catalog import Challenge, ReferenceToken, Tolerances
from tessera.verify.challenge import (
    CHALLENGE_PREFIX,
    challenge_job,
    challenge_job_id,
    check_embedding_challenge,
    check_text_challenge,
    is_challenge,
)
from tessera.verify.scoring import WRONG_MODEL, Verdict

TOL = Tolerances(logprob_abs_max=0.5, logprob_abs_mean=0.1, greedy_gap=0.5, min_cosine=0.99)
EOS = 2

# Greedy reference: 11 12 13 14 then EOS. Position 2 nearly ties 13 with 23 (0.3 apart);
# position 1 has a distant second choice 22 (1.5 apart).
REFERENCE = [
    ReferenceToken(id=11, logprob=-0.2, top=[(11, -0.2), (21, -2.5)]),
    ReferenceToken(id=12, logprob=-0.4, top=[(12, -0.4), (22, -1.9)]),
    ReferenceToken(id=13, logprob=-0.8, top=[(13, -0.8), (23, -1.1), (EOS, -1.2)]),
    ReferenceToken(id=14, logprob=-0.1, top=[(14, -0.1)]),
    ReferenceToken(id=EOS, logprob=-0.05, top=[(EOS, -0.05), (15, -4.0)]),
]
CHALLENGE = Challenge(
    prompt="Once upon a time", max_tokens=8, prompt_tokens=4, tokens=REFERENCE, eos=True
)
RUN_ON = Challenge(
    prompt="Once upon a time", max_tokens=4, prompt_tokens=4, tokens=REFERENCE[:4], eos=False
)


def answer(ids: list[int], logprobs: list[float] | None = None, eos: bool = True) -> ChoiceOutput:
    by_id = {t.id: t.logprob for t in REFERENCE}
    return ChoiceOutput(
        index=0,
        text="",
        token_ids=ids,
        token_logprobs=[by_id.get(i, -1.0) for i in ids] if logprobs is None else logprobs,
        eos=eos,
        finish_reason="stop" if eos else "length",
    )


def check(output: ChoiceOutput, challenge: Challenge = CHALLENGE, prompt: int = 4) -> Verdict:
    return check_text_challenge(challenge, output, prompt, TOL)


def where(verdict: Verdict) -> list[tuple[str, int | None]]:
    return [(f.check, f.position) for f in verdict.findings]


def test_a_text_challenge_is_a_greedy_completion_of_its_prompt() -> None:
    job_id = challenge_job_id("abc")
    job = challenge_job("tiny", CHALLENGE, job_id)
    assert job.kind == "completion" and job.prompts == ["Once upon a time"]
    assert job.params is not None
    assert job.params.temperature == 0.0 and job.params.max_tokens == 8
    assert job.job_id == job_id and job.model == "tiny"
    assert is_challenge(job_id) and job_id.startswith(CHALLENGE_PREFIX)
    assert not is_challenge("req_0123")


def test_an_embedding_challenge_embeds_its_inputs() -> None:
    challenge = Challenge(inputs=["a", "b"], vectors_b64=[vec([1.0]), vec([0.0])])
    job = challenge_job("mini", challenge, "challenge-1")
    assert job.kind == "embedding" and job.inputs == ["a", "b"] and job.params is None


def test_the_reference_answer_passes() -> None:
    verdict = check(answer([11, 12, 13, 14]))
    assert verdict.passed, verdict.findings
    assert verdict.stats["diverged_at"] == -1
    assert verdict.stats["compared"] == 4  # the EOS position has no provider log-prob


def test_a_run_to_max_tokens_matches_a_reference_without_eos() -> None:
    assert check(answer([11, 12, 13, 14], eos=False), RUN_ON).passed


def test_another_tokenizer_counts_the_prompt_differently() -> None:
    verdict = check(answer([11, 12, 13, 14]), prompt=5)
    assert verdict.reason == WRONG_MODEL and where(verdict) == [("usage", None)]


def test_log_probs_far_from_the_reference_fail() -> None:
    verdict = check(answer([11, 12, 13, 14], [-0.2, -1.4, -0.8, -0.1]))
    assert verdict.reason == WRONG_MODEL
    assert where(verdict) == [("logprob", 1), ("logprob", None)]


def test_a_small_drift_on_every_token_fails_on_the_mean() -> None:
    verdict = check(answer([11, 12, 13, 14], [-0.35, -0.55, -0.95, -0.25]))
    assert where(verdict) == [("logprob", None)]
    assert verdict.stats["logprob_abs_mean"] == pytest.approx(0.15)


def test_missing_log_probs_fail() -> None:
    verdict = check(answer([11, 12, 13, 14], [-0.2]))
    assert verdict.reason == WRONG_MODEL and ("logprob", None) in where(verdict)


def test_a_near_tie_divergence_passes_and_ends_the_comparison() -> None:
    # 23 is 0.3 below 13 at position 2; what follows is the provider's own continuation.
    verdict = check(answer([11, 12, 23, 99, 98], [-0.2, -0.4, -1.1, -3.0, -3.0]))
    assert verdict.passed, verdict.findings
    assert verdict.stats["diverged_at"] == 2


def test_a_divergence_that_is_no_near_tie_fails() -> None:
    verdict = check(answer([11, 22, 13, 14]))
    assert verdict.reason == WRONG_MODEL and where(verdict) == [("rank", 1)]
    assert "1.5000 below" in verdict.findings[0].detail


def test_a_token_the_reference_never_considered_fails() -> None:
    verdict = check(answer([11, 12, 77, 14]))
    assert where(verdict) == [("rank", 2)]


def test_an_early_eos_that_nearly_ties_passes() -> None:
    # EOS is 0.4 below 13 at position 2.
    assert check(answer([11, 12])).passed


def test_an_early_eos_that_is_no_tie_fails() -> None:
    verdict = check(answer([11]))
    assert where(verdict) == [("rank", 1)]


def test_an_eos_where_the_reference_never_ends_fails() -> None:
    verdict = check(answer([11, 12, 13], eos=True), RUN_ON)
    assert where(verdict) == [("eos", 3)]


def test_running_on_past_the_reference_eos_needs_a_near_tie() -> None:
    verdict = check(answer([11, 12, 13, 14, 16, 17], eos=False))
    assert where(verdict) == [("rank", 4)]
    assert check(answer([11, 12, 13, 14, 15, 17], eos=False), prompt=4).reason == WRONG_MODEL


def test_stopping_short_of_the_reference_fails() -> None:
    verdict = check(answer([11, 12], eos=False))
    assert where(verdict) == [("length", 2)]


def test_more_than_max_tokens_fails() -> None:
    verdict = check(answer([11, 12, 13, 14, 15], eos=False), RUN_ON)
    assert where(verdict) == [("length", None)]


def test_a_challenge_without_reference_tokens_is_a_catalog_error() -> None:
    with pytest.raises(ValueError, match="calibrate"):
        check(answer([11]), Challenge(prompt="x"))


def vec(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


EMBED = Challenge(inputs=["a", "b"], vectors_b64=[vec([1.0, 0.0, 0.2]), vec([0.0, 1.0, 0.0])])


def test_embedding_challenge_matches_and_mismatches() -> None:
    good = [vec([1.0, 0.001, 0.2]), vec([0.0, 2.0, 0.0])]
    assert check_embedding_challenge(EMBED, good, TOL).passed
    rotated = [vec([1.0, 0.0, 0.2]), vec([0.0, 1.0, 1.0])]
    verdict = check_embedding_challenge(EMBED, rotated, TOL)
    assert verdict.reason == WRONG_MODEL and verdict.findings[0].choice == 1
    short = [vec([1.0, 0.0, 0.2])]
    assert check_embedding_challenge(EMBED, short, TOL).reason == WRONG_MODEL
    flat = [vec([1.0, 0.0]), vec([0.0, 1.0])]
    assert check_embedding_challenge(EMBED, flat, TOL).reason == WRONG_MODEL


def test_an_embedding_challenge_needs_good_reference_vectors() -> None:
    with pytest.raises(ValueError, match="float32"):
        check_embedding_challenge(Challenge(inputs=["a"], vectors_b64=["!!"]), [vec([1.0])], TOL)
    with pytest.raises(ValueError, match="one reference vector per input"):
        check_embedding_challenge(Challenge(inputs=["a", "b"], vectors_b64=[vec([1.0])]), [], TOL)
