"""What an audit costs next to the generation it checks, on the tiny model on this CPU.

For a short and a long prompt and outputs of 16, 64 and 256 tokens, each run of the same
process measures:

- **generation** (the baseline): ``TransformersTextBackend.stream``, greedy, until the
  output is complete; what the audited provider spent;
- **audit, batch 1**: ``backend.score`` of that prompt + those tokens alone, one
  teacher-forced forward pass: what an auditor spends on one audit;
- **audit, batch 8**: eight such requests in one ``score`` call, per audit: what an
  auditor spends when audits arrive together (the agent's ScoreBatcher);
- **score_text**: the gateway's verdict on the auditor's signed answer
  (``tessera.verify.scoring.score_text``), and **result check**: the signature and the
  audit hash the gateway checks before scoring.

Runs alternate between the methods; the table shows medians and each cost as a fraction
of the generation. The prompts are the first candidates whose greedy continuation runs to
the longest output without the model ending it. On a busy 2-core machine the numbers swing;
``--threads 1`` is steadier. What to expect there: an audit of a short output after a long
prompt costs about the prompt's prefill (a large fraction of a short generation), and
batching saves per-call overhead on short sequences but not on long ones, where a single
pass already keeps the cores busy. Run::

    PYTHONPATH=src python bench/audit_cost.py [--model-dir DIR] [--runs R] [--threads T]
        [--dtype float32|bfloat16] [--catalog FILE]

DIR defaults to $TESSERA_TINY_MODEL_DIR, else .cache/models/tessera-tiny; the model is
trained first (a few minutes) if DIR holds no finished model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from nacl.signing import SigningKey
from rich.console import Console
from rich.table import Table

from tessera.models.corpus import load_passages
from tessera.models.make_tiny import COMPLETE_STAMP, make_tiny
from tessera.protocol import signing
from tessera.protocol.canonical import canonical_bytes, sha256_hex
from tessera.protocol.receipts import ChoiceOutput
from tessera.protocol.wire import (
    AUDIT_RESULT_DOMAIN,
    Audit,
    AuditChoice,
    AuditResult,
    Frame,
    Job,
    SamplingParams,
)
from tessera.provider.auditing import ScoreBatcher, run_audit
from tessera.provider.backends.base import CancelToken, Delta, Finish, ScoreRequest
from tessera.provider.backends.transformers_text import TransformersTextBackend
from tessera.verify.catalog import Catalog, Tolerances
from tessera.verify.scoring import score_text

DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".cache" / "models" / "tessera-tiny"
MODEL_DIR_ENV = "TESSERA_TINY_MODEL_DIR"  # what `make bench` sets
LENGTHS = (16, 64, 256)
BATCH = 8
SHORT_CANDIDATES = (
    "Once upon a time", "In olden times", "The Hare", "The Fox", "There was once",
    "The old woman", "The Crow", "The Dog", "The Ant said", "The Lion",
)  # fmt: skip
LONG_PROMPT_CHARS = 2_000  # about 500 tokens of the tiny model: half its context
SCORE_TEXT_LOOPS = 50  # score_text takes microseconds: time a loop, report one call


@dataclass(frozen=True, slots=True)
class Generation:
    """One greedy output, as the audited provider's chunks would carry it."""

    choice: ChoiceOutput
    prompt_tokens: int
    seconds: float


def long_candidates() -> list[str]:
    """Stretches of the training corpus, cut mid-sentence so the model keeps writing."""
    text = "\n\n".join(p.text for p in load_passages())
    out = []
    for start in range(0, len(text) - LONG_PROMPT_CHARS, 1_500):
        chunk = text[start : start + LONG_PROMPT_CHARS]
        out.append(chunk[: chunk.rfind(" ")])
    return out


async def generate(backend: TransformersTextBackend, prompt: str, tokens: int) -> Generation:
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    choice = ChoiceOutput(0)
    prompt_tokens = 0
    started = time.perf_counter()
    async for event in backend.stream(prompt, params, CancelToken()):
        if isinstance(event, Delta):
            choice.text += event.text
            choice.token_ids.extend(lp.token_id for lp in event.logprobs)
            choice.token_logprobs.extend(lp.logprob for lp in event.logprobs)
        elif isinstance(event, Finish):
            choice.eos, choice.finish_reason = event.eos, event.reason
            prompt_tokens = event.prompt_tokens
    return Generation(choice, prompt_tokens, time.perf_counter() - started)


async def pick_prompt(
    backend: TransformersTextBackend, candidates: Sequence[str], tokens: int
) -> str:
    """The first candidate whose greedy output runs ``tokens`` long (doubles as warm-up)."""
    for prompt in candidates:
        if len((await generate(backend, prompt, tokens)).choice.token_ids) == tokens:
            return prompt
    raise SystemExit(f"no candidate prompt makes {tokens} greedy tokens without ending")


async def timed_score(backend: TransformersTextBackend, requests: list[ScoreRequest]) -> float:
    started = time.perf_counter()
    await backend.score(requests)
    return time.perf_counter() - started


async def audit_answer(
    backend: TransformersTextBackend, job: Job, gen: Generation, key: SigningKey
) -> tuple[Audit, AuditResult]:
    """The auditor's signed answer, made by the provider agent's own audit path."""
    audit = Audit(
        job_id=f"audit-{job.job_id}",
        weights_sha256=backend.info.weights_sha256,
        job=job,
        choices=[AuditChoice(index=0, token_ids=gen.choice.token_ids, eos=gen.choice.eos)],
    )
    sent: list[Frame] = []

    async def send(frame: Frame) -> None:
        sent.append(frame)

    await run_audit(audit, backend, ScoreBatcher(backend), key, send)
    if not isinstance(sent[0], AuditResult):
        raise SystemExit(f"the audit was refused: {sent[0]}")
    return audit, sent[0]


def per_call(work: Callable[[], object], loops: int = SCORE_TEXT_LOOPS) -> float:
    started = time.perf_counter()
    for _ in range(loops):
        work()
    return (time.perf_counter() - started) / loops


def check_result(audit: Audit, result: AuditResult) -> None:
    """What the gateway checks before it scores: the audit hash and the signature."""
    if result.audit_sha256 != sha256_hex(canonical_bytes(audit.model_dump(mode="json"))):
        raise SystemExit("the result names another audit")
    signing.verify(
        result.auditor_id, AUDIT_RESULT_DOMAIN, result.signed_payload(), result.signature
    )


@dataclass
class Row:
    prompt: str
    prompt_tokens: int
    tokens: int
    generation: list[float]
    audit1: list[float]
    audit8: list[float]  # per audit
    score: list[float]
    check: list[float]
    passed: bool


async def measure(
    backend: TransformersTextBackend,
    label: str,
    prompt: str,
    tokens: int,
    runs: int,
    tol: Tolerances,
    key: SigningKey,
) -> Row:
    job = Job(
        job_id=f"bench-{label}-{tokens}.0",
        request_id=f"bench-{label}-{tokens}",
        model=backend.info.name,
        kind="completion",
        prompts=[prompt],
        params=SamplingParams(max_tokens=tokens, temperature=0.0),
    )
    first = await generate(backend, prompt, tokens)
    request = ScoreRequest(prompt, first.choice.token_ids)
    audit, result = await audit_answer(backend, job, first, key)
    context = backend.info.context_length
    verdict = score_text(job, [first.choice], first.prompt_tokens, context, result, tol)
    await timed_score(backend, [request] * BATCH)  # warm the batch shape
    row = Row(label, first.prompt_tokens, len(first.choice.token_ids), [], [], [], [], [],
              verdict.passed)  # fmt: skip
    for _ in range(runs):
        row.generation.append((await generate(backend, prompt, tokens)).seconds)
        row.audit1.append(await timed_score(backend, [request]))
        row.audit8.append(await timed_score(backend, [request] * BATCH) / BATCH)
        row.score.append(
            per_call(
                lambda: score_text(job, [first.choice], first.prompt_tokens, context, result, tol)
            )
        )
        row.check.append(per_call(lambda: check_result(audit, result)))
    return row


def table(rows: list[Row], title: str) -> Table:
    out = Table(title=title)
    columns = ("prompt", "in tok", "out tok", "generate ms", "audit ms", "/gen",
               f"audit x{BATCH} ms", "/gen", "score ms", "/gen", "check ms", "verdict")  # fmt: skip
    for column in columns:
        out.add_column(column, justify="left" if column == "prompt" else "right")
    for row in rows:
        gen = statistics.median(row.generation)
        a1, a8 = statistics.median(row.audit1), statistics.median(row.audit8)
        score, check = statistics.median(row.score), statistics.median(row.check)
        out.add_row(
            row.prompt,
            str(row.prompt_tokens),
            str(row.tokens),
            f"{gen * 1e3:,.1f}",
            f"{a1 * 1e3:,.2f}",
            f"{a1 / gen:.1%}",
            f"{a8 * 1e3:,.2f}",
            f"{a8 / gen:.1%}",
            f"{score * 1e3:,.3f}",
            f"{score / gen:.2%}",
            f"{check * 1e3:,.3f}",
            "passed" if row.passed else "FAILED",
        )
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", type=Path, default=Path(os.environ.get(MODEL_DIR_ENV, DEFAULT_DIR))
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--catalog", type=Path, default=None, help="tolerances from here")
    args = parser.parse_args()
    console = Console()
    if console.width < 120:  # piped (make bench): keep the table's columns readable
        console = Console(width=120)
    if not (args.model_dir / COMPLETE_STAMP).is_file():
        make_tiny(args.model_dir)
    backend = await asyncio.to_thread(
        TransformersTextBackend.load, args.model_dir, dtype=args.dtype, threads=args.threads
    )
    tol = Tolerances()
    if args.catalog is not None:
        entry = Catalog.load(args.catalog).get(backend.info.name)
        if entry is None:
            raise SystemExit(f"{backend.info.name} is not in {args.catalog}")
        tol = entry.tolerances
    key = SigningKey.generate()
    longest = max(LENGTHS)
    prompts = {
        "short": await pick_prompt(backend, SHORT_CANDIDATES, longest),
        "long": await pick_prompt(backend, long_candidates(), longest),
    }
    rows = []
    for label, prompt in prompts.items():
        for tokens in LENGTHS:
            rows.append(await measure(backend, label, prompt, tokens, args.runs, tol, key))
    await backend.close()
    console.print(
        table(
            rows,
            f"tessera-tiny: one audit against the generation it checks; {args.dtype}, "
            f"{torch.get_num_threads()} CPU threads, median of {args.runs}; audit x{BATCH} is "
            f"per audit of {BATCH} in one pass; /gen = cost / generation",
        )
    )
    console.print(f"short prompt {prompts['short']!r}; long prompt {prompts['long'][:60]!r}…")


if __name__ == "__main__":
    asyncio.run(main())
