"""How often an auditor's vote fails a request, decided by the gateway's own scoring code
over modelled evidence.

An audit vote is ``verify.scoring.score_text`` comparing what a provider delivered for a
greedy chat answer (its tokens and claimed log-probabilities, its claimed prompt tokens)
with an auditor's teacher-forced scores of them (rank, log-probability, top
log-probability), under the catalog's default tolerances. The evidence is modelled by
what the provider did (:class:`Evidence` holds the numbers, a scenario's ``[evidence]``):

- honest: the auditor's model on other hardware: the tokens are the model's top-1, and
  each side's log-probabilities are the model's plus its own Normal(0,
  ``honest_logprob_sigma``) (kernels, dtypes, batch shapes);
- ``wrong_model``: a cheaper substitute: at each position its greedy token is the claimed
  model's top-1 with chance ``substitute_agreement``, elsewhere the claimed model ranks it
  below its top by a gap drawn Exp(``substitute_gap_mean``) nats; the log-probabilities it
  claims are its own, off the claimed model's by Normal(0, ``substitute_logprob_sigma``);
- ``tampered_output``: honest tokens, ``inflated_prompt_tokens`` more prompt tokens
  claimed than read (overbilling).

Answers are as long as the scenario's output law says (capped at ``MAX_TOKENS``).
:func:`vote_chances` scores ``VOTES`` modelled audits per kind with a fixed seed: the
share that fail is the chance that one vote fails such a request (the cheaters'
``detection``, and the honest false-flag chance), which the simulator then uses for
every audit. It treats the votes on one request as independent: each auditor's own
hardware noise is drawn afresh, but they all score the same delivered output, so a
substitute's short, lucky answer passes them all more often than independence says.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

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
from tessera.verify.scoring import Verdict, score_text

VOTES = 1_000  # modelled audits scored per kind
MAX_TOKENS = 256  # longest modelled answer (scoring cost grows with it)
CONTEXT = 8_192
PROMPT_TOKENS = 180
HASH = "ab" * 32
SIGNATURE = "cd" * 64
KINDS = ("honest", "wrong_model", "tampered_output")


@dataclass(frozen=True, slots=True)
class Evidence:
    """What audits see of each kind of provider (module docstring)."""

    honest_logprob_sigma: float = 0.02
    substitute_agreement: float = 0.85
    substitute_gap_mean: float = 0.8
    substitute_logprob_sigma: float = 0.25
    inflated_prompt_tokens: int = 16


def modelled_audit(kind: str, evidence: Evidence, tokens: int, rng: np.random.Generator) -> Verdict:
    """``score_text``'s verdict on one modelled audit of a request of ``kind`` (an answer
    of ``tokens`` tokens)."""
    # The claimed model's log-probability of its own top-1 token at each position.
    top = -rng.exponential(0.3, tokens)
    audited_lp = top.copy()
    ranks = np.ones(tokens, dtype=np.int64)
    if kind == "wrong_model":
        differs = rng.random(tokens) >= evidence.substitute_agreement
        gap = rng.exponential(evidence.substitute_gap_mean, tokens)
        audited_lp = np.where(differs, top - gap, top)
        ranks = np.where(differs, 2 + rng.geometric(0.5, tokens) - 1, 1)
        claimed = top + rng.normal(0.0, evidence.substitute_logprob_sigma, tokens)
    else:
        claimed = top + rng.normal(0.0, evidence.honest_logprob_sigma, tokens)
    noise = rng.normal(0.0, evidence.honest_logprob_sigma, tokens)  # the auditor's own
    audited_lp = np.minimum(audited_lp + noise, 0.0)
    audited_top = np.maximum(np.minimum(top + noise, 0.0), audited_lp)
    claimed = np.minimum(claimed, 0.0)
    text = " ".join(f"t{i}" for i in range(tokens))
    job = Job(
        job_id="sim.audit",
        model="sim",
        kind="chat",
        messages=[ChatMessage(role="user", content="modelled")],
        params=SamplingParams(max_tokens=tokens + 1, temperature=0.0),
    )
    delivered = ChoiceOutput(
        index=0,
        text=text,
        token_ids=list(range(100, 100 + tokens)),
        token_logprobs=[float(x) for x in claimed],
        eos=True,
        finish_reason="stop",
    )
    scored = ChoiceScore(
        index=0,
        prompt_tokens=PROMPT_TOKENS,
        tokens=[
            TokenScore(rank=int(r), logprob=float(lp), top_logprob=float(t))
            for r, lp, t in zip(ranks, audited_lp, audited_top, strict=True)
        ],
        end=TokenScore(rank=1, logprob=-0.05, top_logprob=-0.05),
        text=text,
    )
    result = AuditResult(
        job_id="sim.audit.1",
        auditor_id=HASH,
        weights_sha256=HASH,
        audit_sha256=HASH,
        choices=[scored],
        signature=SIGNATURE,
    )
    claimed_prompt = PROMPT_TOKENS + (
        evidence.inflated_prompt_tokens if kind == "tampered_output" else 0
    )
    return score_text(job, [delivered], claimed_prompt, CONTEXT, result, Tolerances())


def fails(verdict: Verdict) -> bool:
    """A vote against the provider (failed for a reason, not the auditor's fault)."""
    return not verdict.passed and verdict.reason is not None


@lru_cache(maxsize=32)
def vote_chances(evidence: Evidence, output_median: float, output_sigma: float) -> dict[str, float]:
    """Per kind (``KINDS``), the share of ``VOTES`` modelled audits whose vote fails, with
    answers drawn from the demand's output law (lognormal); a fixed seed, so every run
    of a scenario uses the same chances."""
    rng = np.random.default_rng(20261207)
    lengths = np.clip(
        rng.lognormal(np.log(output_median), output_sigma, VOTES).round(), 1, MAX_TOKENS
    ).astype(np.int64)
    return {
        kind: sum(fails(modelled_audit(kind, evidence, int(n), rng)) for n in lengths) / VOTES
        for kind in KINDS
    }
