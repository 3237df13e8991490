"""Join challenges: before a provider is routed a model, it answers the catalog's
reference prompt and its answer is compared with the reference model's.

A text challenge is a completion of ``Challenge.prompt`` at temperature 0 for
``max_tokens``. Greedy decoding is deterministic up to floating-point noise, so an honest
provider reproduces the reference token for token, except where two tokens nearly tie and
noise flips the choice; after such a flip the continuations legitimately differ, so the
comparison stops there. The rules of :func:`check_text_challenge` (all failures
``wrong_model``):

- the prompt's token count equals the reference's (another tokenizer counts otherwise);
- the provider's sequence is its token ids, followed by the reference's EOS id when it
  ended on EOS (the reference's last token is EOS when ``Challenge.eos``; when the
  reference never ended, a provider EOS matches no reference token);
- while ids match, |provider log-prob - reference log-prob| <= ``logprob_abs_max`` (the
  EOS position has no provider log-prob and is skipped), and their mean over the compared
  tokens <= ``logprob_abs_mean``;
- at the first differing position the provider's token is a near-tie: listed in that
  reference position's ``top`` with (reference log-prob - its log-prob) <= ``greedy_gap``;
- without a divergence the sequences have the same length; the output never has more
  than ``max_tokens`` tokens.

An embedding challenge sends ``Challenge.inputs`` and compares each returned vector with
the reference one: same count and dimensions, cosine >= ``min_cosine``.

The catalog is the operator's and may be public, so a challenge proves that a provider
CAN produce the model's output, not that it always will: sampled audits do that.
"""

from __future__ import annotations

import math

from tessera.protocol.receipts import ChoiceOutput
from tessera.protocol.wire import Job, SamplingParams
from tessera.verify.catalog import Challenge, Tolerances
from tessera.verify.scoring import (
    WRONG_MODEL,
    Findings,
    Verdict,
    compare_vectors,
    decode_vector,
)

CHALLENGE_PREFIX = "challenge"
_NO_EOS_ID = -1  # stands for an EOS the reference never produced: matches no token id


def challenge_job_id(suffix: str) -> str:
    """A job id that marks a challenge (never a consumer request): ``challenge-<suffix>``."""
    return f"{CHALLENGE_PREFIX}-{suffix}"


def is_challenge(job_id: str) -> bool:
    return job_id.startswith(CHALLENGE_PREFIX + "-")


def is_embedding_challenge(challenge: Challenge) -> bool:
    return bool(challenge.inputs)


def challenge_job(model: str, challenge: Challenge, job_id: str) -> Job:
    """The job that asks a provider the challenge: a greedy completion of the prompt, or
    an embedding of the inputs."""
    if is_embedding_challenge(challenge):
        return Job(job_id=job_id, model=model, kind="embedding", inputs=list(challenge.inputs))
    return Job(
        job_id=job_id,
        model=model,
        kind="completion",
        prompts=[challenge.prompt],
        params=SamplingParams(max_tokens=challenge.max_tokens, temperature=0.0),
    )


def check_text_challenge(
    challenge: Challenge, output: ChoiceOutput, prompt_tokens: int, tol: Tolerances
) -> Verdict:
    """Compare a provider's greedy answer with the reference (rules in the module doc).

    ValueError when the challenge has no reference tokens (a catalog entry not calibrated).
    """
    reference = challenge.tokens
    if not reference:
        raise ValueError("the challenge has no reference tokens; calibrate the catalog entry")
    out = Findings()
    if prompt_tokens != challenge.prompt_tokens:
        out.add(
            "usage",
            0,
            None,
            f"the prompt is {prompt_tokens} tokens; the reference tokenizer counts "
            f"{challenge.prompt_tokens}",
            WRONG_MODEL,
        )
    if output.completion_tokens > challenge.max_tokens:
        out.add(
            "length",
            0,
            None,
            f"{output.completion_tokens} tokens for max_tokens {challenge.max_tokens}",
            WRONG_MODEL,
        )
    logprobs = output.token_logprobs
    if len(logprobs) != len(output.token_ids):
        out.add(
            "logprob",
            0,
            None,
            f"{len(logprobs)} log-probs sent for {len(output.token_ids)} tokens",
            WRONG_MODEL,
        )
        logprobs = []
    sequence = list(output.token_ids)
    if output.eos:
        sequence.append(reference[-1].id if challenge.eos else _NO_EOS_ID)
    diffs: list[float] = []

    def compare_logprob(position: int, expected: float) -> None:
        if position >= len(logprobs):  # the EOS position, or log-probs missing
            return
        diff = abs(logprobs[position] - expected)
        diffs.append(diff)
        if diff > tol.logprob_abs_max:
            out.add(
                "logprob",
                0,
                position,
                f"|provider - reference| log-prob {diff:.4f} > {tol.logprob_abs_max}",
                WRONG_MODEL,
            )

    diverged: int | None = None
    for position, ref in enumerate(reference):
        if position >= len(sequence):
            out.add(
                "length",
                0,
                position,
                f"the output stops after {len(sequence)} tokens; the reference goes on to "
                f"{len(reference)}",
                WRONG_MODEL,
            )
            break
        token = sequence[position]
        if token == ref.id:
            compare_logprob(position, ref.logprob)
            continue
        alternative = dict(ref.top).get(token)
        if alternative is None or ref.logprob - alternative > tol.greedy_gap:
            what = "ended on EOS" if token == _NO_EOS_ID else f"chose token {token}"
            known = "" if alternative is None else f" ({ref.logprob - alternative:.4f} below)"
            out.add(
                "eos" if token == _NO_EOS_ID else "rank",
                0,
                position,
                f"the output {what} where the reference model's greedy token is {ref.id}"
                f"{known}; not a near-tie within {tol.greedy_gap}",
                WRONG_MODEL,
            )
        else:
            diverged = position
            compare_logprob(position, alternative)
        break
    else:
        if len(sequence) > len(reference) and output.completion_tokens <= challenge.max_tokens:
            out.add(
                "length",
                0,
                len(reference),
                f"the output goes on past the reference's {len(reference)} tokens",
                WRONG_MODEL,
            )
    mean = math.fsum(diffs) / len(diffs) if diffs else 0.0
    if mean > tol.logprob_abs_mean:
        out.add(
            "logprob",
            0,
            None,
            f"mean |provider - reference| log-prob {mean:.4f} > {tol.logprob_abs_mean}",
            WRONG_MODEL,
        )
    return out.verdict(
        {
            "prompt_tokens": float(prompt_tokens),
            "tokens": float(len(sequence)),
            "compared": float(len(diffs)),
            "logprob_abs_max": max(diffs, default=0.0),
            "logprob_abs_mean": mean,
            "diverged_at": float(-1 if diverged is None else diverged),
        }
    )


def check_embedding_challenge(
    challenge: Challenge, embeddings_b64: list[str], tol: Tolerances
) -> Verdict:
    """Compare a provider's vectors with the reference ones; every failure wrong_model.

    ValueError when the challenge's own reference vectors are malformed (a catalog error).
    """
    reference: list[list[float]] = []
    for text in challenge.vectors_b64:
        vector = decode_vector(text)
        if vector is None:
            raise ValueError("the challenge's reference vectors are not finite float32")
        reference.append(vector)
    if not reference or len(reference) != len(challenge.inputs):
        raise ValueError("the challenge needs one reference vector per input")
    out = Findings()
    stats = compare_vectors(out, embeddings_b64, reference, tol.min_cosine, WRONG_MODEL)
    return out.verdict(stats)
