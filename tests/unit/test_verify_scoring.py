"""Audit scoring: every rule of score_text and score_embeddings, passing and failing."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.protocol.receipts import ChoiceOutput
from tessera.protocol.wire import (
    AuditResult,
    ChatMessage,
    ChoiceScore,
    Job,
    SamplingParams,
    TokenScore,
)
from tessera.verify.catalog import Tolerances
from tessera.verify.scoring import (
    MAX_FINDINGS,
    TAMPERED_OUTPUT,
    WRONG_MODEL,
    Verdict,
    cosine,
    decode_vector,
    score_embeddings,
    score_text,
    tail_allowance,
)

HASH = "ab" * 32
SIG = "cd" * 64
TOL = Tolerances(
    logprob_abs_max=0.5,
    logprob_abs_mean=0.1,
    greedy_gap=0.5,
    top_k=10,
    tail_fraction=0.1,
    min_cosine=0.99,
)
CONTEXT = 1024


def text_job(
    kind: str = "completion",
    prompts: int = 1,
    temperature: float = 0.0,
    max_tokens: int = 8,
    stop: list[str] | None = None,
) -> Job:
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, stop=stop or [])
    if kind == "chat":
        return Job(
            job_id="r.1",
            model="m",
            kind="chat",
            messages=[ChatMessage(role="user", content="hi")],
            params=params,
        )
    return Job(
        job_id="r.1",
        model="m",
        kind="completion",
        prompts=[f"prompt {i}" for i in range(prompts)],
        params=params,
    )


def top1(logprob: float) -> TokenScore:
    return TokenScore(rank=1, logprob=logprob, top_logprob=logprob)


def honest(
    index: int = 0,
    logprobs: tuple[float, ...] = (-0.1, -0.2, -0.3),
    text: str = "one two three",
    eos: bool = True,
    finish: str = "stop",
    prompt_tokens: int = 5,
    delivered: str | None = None,
) -> tuple[ChoiceOutput, ChoiceScore]:
    """A choice as an honest greedy provider makes it, and the auditor's matching score."""
    ids = list(range(100, 100 + len(logprobs)))
    output = ChoiceOutput(
        index=index,
        text=text if delivered is None else delivered,
        token_ids=ids,
        token_logprobs=list(logprobs),
        eos=eos,
        finish_reason=finish,
    )
    score = ChoiceScore(
        index=index,
        prompt_tokens=prompt_tokens,
        tokens=[top1(lp) for lp in logprobs],
        end=top1(-0.05) if eos else TokenScore(rank=40, logprob=-9.0, top_logprob=-0.5),
        text=text,
    )
    return output, score


def audit(*scores: ChoiceScore, **kw: object) -> AuditResult:
    return AuditResult(
        job_id="r.1.audit",
        auditor_id=HASH,
        weights_sha256=HASH,
        audit_sha256=HASH,
        choices=list(scores),
        signature=SIG,
        **kw,  # type: ignore[arg-type]
    )


def score(
    job: Job,
    pairs: list[tuple[ChoiceOutput, ChoiceScore]],
    prompt_tokens: int | None = None,
    tol: Tolerances = TOL,
) -> Verdict:
    outputs = [o for o, _ in pairs]
    scores = [s for _, s in pairs]
    if prompt_tokens is None:
        prompt_tokens = sum(s.prompt_tokens for s in scores) if len(scores) > 1 else 5
    return score_text(job, outputs, prompt_tokens, CONTEXT, audit(*scores), tol)


def checks(verdict: Verdict) -> list[str]:
    return [f.check for f in verdict.findings]


def with_tokens(score: ChoiceScore, tokens: list[TokenScore], **kw: object) -> ChoiceScore:
    return score.model_copy(update={"tokens": tokens, **kw})


# ---------------------------------------------------------------- passing and shape


def test_an_honest_greedy_answer_passes_with_its_numbers() -> None:
    verdict = score(text_job(), [honest()])
    assert verdict.passed and verdict.reason is None and verdict.findings == ()
    assert verdict.stats["tokens"] == 3
    assert verdict.stats["completion_tokens"] == 4  # the EOS counts
    assert verdict.stats["logprob_abs_max"] == 0.0
    assert verdict.stats["greedy_gap_max"] == 0.0
    assert verdict.stats["findings"] == 0
    json.dumps(verdict.public(), allow_nan=False)


def test_small_honest_noise_passes() -> None:
    output, sc = honest(logprobs=(-0.1, -0.2, -0.3))
    output.token_logprobs = [-0.15, -0.12, -0.31]
    verdict = score(text_job(), [(output, sc)])
    assert verdict.passed
    assert verdict.stats["logprob_abs_max"] == pytest.approx(0.08)


def test_an_auditor_without_choices_failed_itself_not_the_provider() -> None:
    output, _ = honest()
    result = audit().model_copy(update={"choices": None})
    verdict = score_text(text_job(), [output], 5, CONTEXT, result, TOL)
    assert not verdict.passed and verdict.reason is None and verdict.auditor_fault
    assert checks(verdict) == ["shape"]


@pytest.mark.parametrize(
    "broken",
    [
        lambda s: [s.model_copy(update={"index": 1})],  # another choice
        lambda s: [s, s],  # one choice twice
        lambda s: [with_tokens(s, s.tokens[:2])],  # a token short
        lambda s: [],  # nothing scored
    ],
)
def test_an_auditor_answer_that_does_not_fit_the_output_is_the_auditors_fault(
    broken: Callable[[ChoiceScore], list[ChoiceScore]],
) -> None:
    output, sc = honest()
    result = audit(*broken(sc))
    verdict = score_text(text_job(), [output], 5, CONTEXT, result, TOL)
    assert verdict.auditor_fault and checks(verdict) == ["shape"]
    assert verdict.public()["reason"] is None


def test_an_auditor_counting_one_prompt_two_ways_is_malformed() -> None:
    a = honest(0, prompt_tokens=5)
    b = honest(1, prompt_tokens=6)
    verdict = score(text_job(), [a, b], prompt_tokens=5)
    assert verdict.auditor_fault


def test_a_job_that_is_not_text_is_the_callers_error() -> None:
    output, sc = honest()
    job = Job(job_id="e.1", model="m", kind="embedding", inputs=["x"])
    with pytest.raises(ValueError, match="not a text job"):
        score_text(job, [output], 5, CONTEXT, audit(sc), TOL)
    with pytest.raises(ValueError, match="non-empty"):
        score_text(text_job(), [], 5, CONTEXT, audit(sc), TOL)


# ---------------------------------------------------------------- usage


def test_chat_prompt_tokens_must_match_the_tokenizer() -> None:
    assert score(text_job("chat"), [honest()], prompt_tokens=5).passed
    verdict = score(text_job("chat"), [honest()], prompt_tokens=7)
    assert verdict.reason == TAMPERED_OUTPUT and checks(verdict) == ["usage"]
    assert "7" in verdict.findings[0].detail and "5" in verdict.findings[0].detail


def test_a_completion_of_n_prompts_claims_the_sum_of_their_counts() -> None:
    pairs = [honest(0, prompt_tokens=4), honest(1, prompt_tokens=9), honest(2, prompt_tokens=2)]
    assert score(text_job(prompts=3), pairs, prompt_tokens=15).passed
    verdict = score(text_job(prompts=3), pairs, prompt_tokens=9)
    assert verdict.reason == TAMPERED_OUTPUT and checks(verdict) == ["usage"]


def test_a_completion_of_n_prompts_needs_one_choice_per_prompt() -> None:
    pairs = [honest(0, prompt_tokens=4), honest(1, prompt_tokens=9)]
    verdict = score(text_job(prompts=3), pairs, prompt_tokens=13)
    assert verdict.reason == TAMPERED_OUTPUT
    assert "3 prompts" in verdict.findings[0].detail


def test_one_bad_choice_among_n_is_named() -> None:
    good = honest(0, prompt_tokens=4)
    bad_output, bad_score = honest(1, prompt_tokens=4)
    bad_output.token_logprobs = [-0.1, -1.5, -0.3]
    verdict = score(text_job(prompts=2), [good, (bad_output, bad_score)], prompt_tokens=8)
    assert verdict.reason == WRONG_MODEL
    assert {(f.choice, f.position) for f in verdict.findings} == {(1, 1), (1, None)}


# ---------------------------------------------------------------- text and stop strings


def test_delivered_text_must_be_the_decoded_tokens() -> None:
    verdict = score(text_job(), [honest(delivered="one two four")])
    assert verdict.reason == TAMPERED_OUTPUT and checks(verdict) == ["text"]
    # Findings are public: where the texts part, in numbers, never the texts.
    detail = verdict.findings[0].detail
    assert "from character 8" in detail and "12 characters" in detail
    assert "two" not in detail and "four" not in detail


def test_a_stop_string_cuts_the_text_at_its_first_occurrence() -> None:
    job = text_job(stop=["\n\n", "two"])
    pair = honest(text="one two three\n\nfour", delivered="one ", eos=False)
    assert score(job, [pair]).passed


def test_text_delivered_past_a_stop_string_is_tampered() -> None:
    job = text_job(stop=["two"])
    pair = honest(text="one two three", delivered="one two three", eos=False)
    verdict = score(job, [pair])
    assert verdict.reason == TAMPERED_OUTPUT and "text" in checks(verdict)


def test_stop_without_eos_needs_a_stop_string_in_the_text() -> None:
    job = text_job(stop=["zzz"])
    verdict = score(job, [honest(eos=False)])
    assert verdict.reason == TAMPERED_OUTPUT
    assert checks(verdict) == ["text"]
    assert "no stop string" in verdict.findings[0].detail


def test_stop_without_eos_on_a_job_without_stop_strings_is_a_length_failure() -> None:
    verdict = score(text_job(), [honest(eos=False)])
    assert verdict.reason == TAMPERED_OUTPUT and checks(verdict) == ["length"]


def test_running_to_length_past_a_stop_string_is_tampered() -> None:
    job = text_job(max_tokens=3, stop=["two"])
    pair = honest(text="one two three", delivered="one ", eos=False, finish="length")
    verdict = score(job, [pair])
    assert verdict.reason == TAMPERED_OUTPUT
    assert any("past a stop string" in f.detail for f in verdict.findings)


# ---------------------------------------------------------------- length


def test_length_is_max_tokens_or_the_context() -> None:
    at_max = honest(eos=False, finish="length")
    assert score(text_job(max_tokens=3), [at_max]).passed
    early = honest(eos=False, finish="length")
    verdict = score(text_job(max_tokens=8), [early])
    assert verdict.reason == TAMPERED_OUTPUT and checks(verdict) == ["length"]
    # The context (1024) is full after a 1021-token prompt and 3 tokens.
    full = honest(eos=False, finish="length", prompt_tokens=1021)
    assert score(text_job(max_tokens=8), [full], prompt_tokens=1021).passed


def test_more_tokens_than_max_tokens_is_tampered() -> None:
    verdict = score(text_job(max_tokens=2), [honest(eos=False, finish="length")])
    assert verdict.reason == TAMPERED_OUTPUT
    assert "exceed max_tokens" in verdict.findings[0].detail


@pytest.mark.parametrize("finish", ["length", None, "tool_calls"])
def test_eos_ends_with_stop_and_every_choice_has_a_known_finish(finish: str | None) -> None:
    output, sc = honest(eos=True)
    output.finish_reason = finish
    verdict = score(text_job(max_tokens=4), [(output, sc)])
    assert verdict.reason == TAMPERED_OUTPUT and checks(verdict) == ["length"]


# ---------------------------------------------------------------- logprobs


def test_one_token_far_from_the_auditor_is_the_wrong_model() -> None:
    output, sc = honest()
    output.token_logprobs = [-0.1, -0.9, -0.3]
    verdict = score(text_job(), [(output, sc)])
    assert verdict.reason == WRONG_MODEL
    assert [(f.check, f.position) for f in verdict.findings] == [("logprob", 1), ("logprob", None)]
    assert verdict.stats["logprob_abs_max"] == pytest.approx(0.7)


def test_a_consistent_small_drift_fails_on_the_mean() -> None:
    output, sc = honest()
    output.token_logprobs = [lp - 0.2 for lp in output.token_logprobs]
    verdict = score(text_job(), [(output, sc)])
    assert verdict.reason == WRONG_MODEL
    assert [(f.check, f.position) for f in verdict.findings] == [("logprob", None)]
    assert verdict.stats["logprob_abs_mean"] == pytest.approx(0.2)


def test_tokens_without_claimed_logprobs_are_tampered() -> None:
    output, sc = honest()
    output.token_logprobs = output.token_logprobs[:2]
    verdict = score(text_job(), [(output, sc)])
    assert verdict.reason == TAMPERED_OUTPUT and checks(verdict) == ["logprob"]


@settings(max_examples=200, deadline=None)
@given(
    noise=st.lists(st.floats(-0.099, 0.099), min_size=1, max_size=30),
    base=st.floats(-20.0, -0.2),
)
def test_any_noise_within_the_mean_tolerance_passes(noise: list[float], base: float) -> None:
    logprobs = tuple(base for _ in noise)
    output, sc = honest(logprobs=logprobs, eos=False, finish="length")
    output.token_logprobs = [base + n for n in noise]
    verdict = score(text_job(max_tokens=len(noise)), [(output, sc)])
    assert verdict.passed, verdict.findings


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 30),
    where=st.integers(0, 29),
    shift=st.floats(0.51, 50.0),
)
def test_any_token_beyond_the_max_tolerance_fails(size: int, where: int, shift: float) -> None:
    output, sc = honest(logprobs=tuple(-25.0 for _ in range(size)), eos=False, finish="length")
    output.token_logprobs[where % size] += shift
    verdict = score(text_job(max_tokens=size), [(output, sc)])
    assert verdict.reason == WRONG_MODEL
    assert ("logprob", where % size) in [(f.check, f.position) for f in verdict.findings]


# ---------------------------------------------------------------- greedy ranks


def test_a_greedy_near_tie_within_tolerance_passes() -> None:
    output, sc = honest()
    # The provider's token ranks 2nd, 0.4 below the top: within the 0.5 greedy gap.
    tokens = [top1(-0.1), TokenScore(rank=2, logprob=-0.9, top_logprob=-0.5), top1(-0.3)]
    output.token_logprobs = [-0.1, -0.9, -0.3]
    verdict = score(text_job(), [(output, with_tokens(sc, tokens))])
    assert verdict.passed
    assert verdict.stats["greedy_gap_max"] == pytest.approx(0.4)


def test_a_greedy_token_well_below_the_top_is_the_wrong_model() -> None:
    output, sc = honest()
    tokens = [top1(-0.1), TokenScore(rank=3, logprob=-2.2, top_logprob=-0.2), top1(-0.3)]
    output.token_logprobs = [-0.1, -2.2, -0.3]
    verdict = score(text_job(), [(output, with_tokens(sc, tokens))])
    assert verdict.reason == WRONG_MODEL
    assert [(f.check, f.position) for f in verdict.findings] == [("rank", 1)]


def test_a_greedy_model_that_would_have_ended_fails_at_that_token() -> None:
    # At position 2 the auditor's top-1 is EOS (top_logprob -0.01); the output went on.
    output, sc = honest(eos=False, finish="length", logprobs=(-0.1, -0.2, -3.0))
    tokens = [top1(-0.1), top1(-0.2), TokenScore(rank=2, logprob=-3.0, top_logprob=-0.01)]
    verdict = score(text_job(max_tokens=3), [(output, with_tokens(sc, tokens))])
    assert verdict.reason == WRONG_MODEL
    assert [(f.check, f.position) for f in verdict.findings] == [("rank", 2)]


def test_a_greedy_eos_the_model_would_not_choose_fails() -> None:
    output, sc = honest(eos=True)
    sc = sc.model_copy(update={"end": TokenScore(rank=5, logprob=-4.0, top_logprob=-0.5)})
    verdict = score(text_job(), [(output, sc)])
    assert verdict.reason == WRONG_MODEL
    assert [(f.check, f.position) for f in verdict.findings] == [("eos", 3)]


# ---------------------------------------------------------------- sampled tails


def sampled(ranks: list[int], eos_rank: int | None) -> tuple[ChoiceOutput, ChoiceScore]:
    output, sc = honest(
        logprobs=tuple(-1.0 for _ in ranks),
        eos=eos_rank is not None,
        finish="stop" if eos_rank is not None else "length",
    )
    tokens = [TokenScore(rank=r, logprob=-1.0, top_logprob=-0.1) for r in ranks]
    end = TokenScore(rank=eos_rank or 1, logprob=-2.0, top_logprob=-0.1)
    return output, with_tokens(sc, tokens, end=end)


def test_sampled_output_may_have_a_few_tokens_outside_top_k() -> None:
    # 20 tokens, tail_fraction 0.1: floor(2 + 5 * sqrt(1.8) + 2) = 10 may rank below top 10.
    assert tail_allowance(0.1, 20) == 10
    ranks = [1] * 17 + [11, 500, 9000]
    verdict = score(text_job(temperature=0.8, max_tokens=20), [sampled(ranks, None)])
    assert verdict.passed
    assert verdict.stats["tail_tokens"] == 3
    assert verdict.stats["tail_fraction"] == pytest.approx(3 / 20)
    assert score(
        text_job(temperature=0.8, max_tokens=20), [sampled([1] * 10 + [11] * 10, None)]
    ).passed


def test_too_many_sampled_tokens_outside_top_k_is_the_wrong_model() -> None:
    ranks = [1] * 9 + [11, 12, 500, 9000] + [20] * 7
    verdict = score(text_job(temperature=0.8, max_tokens=20), [sampled(ranks, None)])
    assert verdict.reason == WRONG_MODEL
    assert [(f.check, f.position) for f in verdict.findings] == [("rank", 9)]
    assert "11 of 20" in verdict.findings[0].detail


def test_random_tokens_fail_the_tail_check() -> None:
    ranks = [1500 + 37 * i for i in range(16)]
    verdict = score(text_job(temperature=1.0, max_tokens=16), [sampled(ranks, None)])
    assert verdict.reason == WRONG_MODEL and verdict.findings[0].check == "rank"


def test_a_sampled_eos_outside_top_k_counts_as_a_tail_token() -> None:
    # 19 tokens + EOS = 20: 10 allowed; 10 tokens in the tail pass, the EOS makes 11.
    ranks = [1] * 9 + [11] * 10
    assert score(text_job(temperature=1.0, max_tokens=20), [sampled(ranks, 3)]).passed
    verdict = score(text_job(temperature=1.0, max_tokens=20), [sampled(ranks, 50)])
    assert verdict.reason == WRONG_MODEL and "EOS among them" in verdict.findings[0].detail


def test_sampled_output_is_not_held_to_the_greedy_gap() -> None:
    ranks = [2, 3, 4, 5]
    assert score(text_job(temperature=0.7, max_tokens=4), [sampled(ranks, None)]).passed
    verdict = score(text_job(temperature=0.0, max_tokens=4), [sampled(ranks, None)])
    assert verdict.reason == WRONG_MODEL and set(checks(verdict)) == {"rank"}


# ---------------------------------------------------------------- reasons and evidence


def test_exact_evidence_outranks_statistical_evidence() -> None:
    output, sc = honest(delivered="forged")
    output.token_logprobs = [-3.0, -3.0, -3.0]
    verdict = score(text_job(), [(output, sc)])
    assert verdict.reason == TAMPERED_OUTPUT
    assert {"text", "logprob"} <= set(checks(verdict))


def test_findings_are_capped_but_every_check_keeps_its_first() -> None:
    size = 40
    output, sc = honest(
        logprobs=tuple(-0.1 for _ in range(size)), delivered="x", eos=False, finish="length"
    )
    output.token_logprobs = [-5.0] * size
    verdict = score(text_job(max_tokens=size), [(output, sc)])
    assert len(verdict.findings) == MAX_FINDINGS
    assert {"text", "logprob"} <= set(checks(verdict))
    assert verdict.stats["findings"] == size + 2  # per token, the mean, and the text
    public = verdict.public()
    assert json.loads(json.dumps(public, allow_nan=False)) == public


# ---------------------------------------------------------------- embeddings


def b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embed_result(vectors: list[list[float]], prompt_tokens: int = 6) -> AuditResult:
    return AuditResult(
        job_id="e.1.audit",
        auditor_id=HASH,
        weights_sha256=HASH,
        audit_sha256=HASH,
        embeddings_b64=[b64(v) for v in vectors],
        prompt_tokens=prompt_tokens,
        signature=SIG,
    )


VECTORS = [[1.0, 0.0, 0.0, 0.5], [0.0, 2.0, 1.0, 0.0]]


def test_matching_embeddings_pass() -> None:
    claimed = [b64([x * 1.001 + 0.001 for x in v]) for v in VECTORS]
    verdict = score_embeddings(claimed, 6, embed_result(VECTORS), TOL)
    assert verdict.passed
    assert verdict.stats["vectors"] == 2 and verdict.stats["dimensions"] == 4
    assert verdict.stats["cosine_min"] > 0.99


def test_an_embedding_pointing_elsewhere_is_the_wrong_model() -> None:
    claimed = [b64(VECTORS[0]), b64([0.0, 1.0, 2.0, 0.0])]
    verdict = score_embeddings(claimed, 6, embed_result(VECTORS), TOL)
    assert verdict.reason == WRONG_MODEL
    assert [(f.check, f.choice) for f in verdict.findings] == [("cosine", 1)]


@pytest.mark.parametrize(
    ("claimed", "tokens"),
    [
        ([b64(VECTORS[0])], 6),  # a vector missing
        ([b64(VECTORS[0]), b64([0.0, 2.0, 1.0])], 6),  # a dimension short
        ([b64(VECTORS[0]), "not base64!"], 6),  # garbage
        ([b64(VECTORS[0]), b64([float("nan"), 0.0, 0.0, 0.0])], 6),  # not finite
        ([b64(v) for v in VECTORS], 9),  # input tokens overclaimed
    ],
)
def test_embedding_counts_and_shapes_are_tampering(claimed: list[str], tokens: int) -> None:
    verdict = score_embeddings(claimed, tokens, embed_result(VECTORS), TOL)
    assert verdict.reason == TAMPERED_OUTPUT


def test_an_auditor_without_usable_vectors_failed_itself() -> None:
    claimed = [b64(v) for v in VECTORS]
    no_vectors = embed_result(VECTORS).model_copy(update={"embeddings_b64": None})
    assert score_embeddings(claimed, 6, no_vectors, TOL).auditor_fault
    garbage = embed_result(VECTORS).model_copy(update={"embeddings_b64": ["@@", b64([1.0])]})
    assert score_embeddings(claimed, 6, garbage, TOL).auditor_fault
    ragged = embed_result([[1.0, 0.0], [1.0, 0.0, 0.0]])
    assert score_embeddings(claimed, 6, ragged, TOL).auditor_fault


def test_cosine_and_vector_decoding() -> None:
    assert cosine([1.0, 0.0], [2.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 3.0]) == pytest.approx(0.0)
    assert cosine([1.0, 0.0], [-1.0, 0.0]) == pytest.approx(-1.0)
    assert cosine([0.0, 0.0], [0.0, 0.0]) == 1.0
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0
    assert decode_vector(b64([0.5, -2.0])) == [0.5, -2.0]
    assert decode_vector("") is None
    assert decode_vector(base64.b64encode(b"abc").decode()) is None  # not whole floats
