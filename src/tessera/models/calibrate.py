"""``tessera catalog calibrate``: run a model honestly several ways and pin it in the catalog.

What it does for a text model (a Hugging Face causal LM directory):

1. **Generators.** Every reference prompt is completed greedily in float32 with one and
   with two torch threads and in bfloat16, and sampled in float32 (temperatures 1.0 and
   0.7, several seeds). Each run records the token ids and the raw log-probabilities the
   backend reports, exactly as a provider's chunks carry them.
2. **Auditors.** Every generated output is re-scored with one teacher-forced pass, as an
   auditing provider would: float32 one request at a time, float32 in batches of four
   (mixed lengths, so padding is exercised), and bfloat16 in batches of four.
3. **Comparison.** For every (generator, auditor) pair, :func:`~tessera.verify.calibration.
   measure` gives per-choice deviations; the worst case over all pairs, times a margin and
   above floors, becomes the model's :class:`~tessera.verify.catalog.Tolerances`.
4. **Join challenges.** The float32 single-thread greedy outputs become the references a
   joining provider must reproduce: token ids, log-probs, and the top-8 alternatives at
   each position (from one float32 teacher-forced pass), the end-of-sequence token
   appended when the model chose it.

Embedding models are calibrated in ``tessera.models.calibrate_embedding``. The torch
thread count is process-wide; it is restored when calibration ends. Heavy imports (torch,
transformers) happen inside the functions, so the CLI starts without them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tessera.errors import ConfigError
from tessera.protocol.wire import SamplingParams
from tessera.verify.calibration import (
    DEFAULT_MARGIN,
    Deviation,
    derive,
    measure,
    observe,
    tail_fraction,
)
from tessera.verify.catalog import Catalog, CatalogModel, Challenge, ReferenceToken

if TYPE_CHECKING:
    from tessera.provider.backends.transformers_text import TransformersTextBackend

# Varied on purpose: fable prose (what the tiny model knows), a question, code-ish text,
# plain completions of lists and markup. Never ChatML: a challenge is a raw completion.
REFERENCE_PROMPTS: tuple[str, ...] = (
    "The Fox and the Grapes. A hungry Fox saw some fine bunches of Grapes hanging",
    "What did the Ant say to the Grasshopper when the winter came?",
    '{"name": "tessera", "kind":',
    "Once upon a time there was",
    "def count_words(text):\n    words = text.split()\n    return",
    "1, 2, 3, 4, 5, 6,",
    "The old woman said to the wolf:",
    "In olden times, when wishing still helped, there lived a king whose daughters",
)
# Embedding models: sentences of mixed length and kind (batches get padded), one non-English.
EMBEDDING_INPUTS: tuple[str, ...] = (
    "A hungry fox saw some fine bunches of grapes hanging from a vine.",
    "What time does the last train to the coast leave?",
    "def count_words(text): return len(text.split())",
    "Tessera",
    "In olden times, when wishing still helped, there lived a king whose daughters were all "
    "beautiful, but the youngest was so beautiful that the sun itself was astonished.",
    "The weather is lovely today.",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
    "Ein Fuchs sah Trauben am Weinstock hängen.",
)
QUICK_PROMPTS = 4
REFERENCE_TOP_N = 8


@dataclass(frozen=True, slots=True)
class Plan:
    """How much calibration to run: ``standard()`` for operators, ``quick=True`` for tests.

    ``prompts`` are for text models, ``inputs`` for embedding models.
    """

    prompts: tuple[str, ...] = REFERENCE_PROMPTS
    inputs: tuple[str, ...] = EMBEDDING_INPUTS
    max_tokens: int = 16  # greedy outputs and the join challenges
    sample_tokens: int = 32  # sampled outputs: more tokens give a better rank tail
    temperatures: tuple[float, ...] = (1.0, 0.7)
    seeds: tuple[int, ...] = (1, 2, 3)
    threads: tuple[int, ...] = (1, 2)  # greedy float32 runs; the first one for the rest
    batch_size: int = 4
    margin: float = DEFAULT_MARGIN

    @classmethod
    def standard(cls, prompts: int | None = None, *, quick: bool = False) -> Plan:
        """The first ``prompts`` prompts or inputs (all; 4 when ``quick``, with one seed)."""
        count = prompts if prompts is not None else (QUICK_PROMPTS if quick else None)
        if count is not None and not 1 <= count <= len(REFERENCE_PROMPTS):
            raise ConfigError(f"--prompts must be between 1 and {len(REFERENCE_PROMPTS)}")
        chosen, inputs = REFERENCE_PROMPTS[:count], EMBEDDING_INPUTS[:count]
        if quick:
            return cls(prompts=chosen, inputs=inputs, sample_tokens=24, seeds=(1,))
        return cls(prompts=chosen, inputs=inputs)


@dataclass(frozen=True, slots=True)
class Generated:
    """One output of one generator run, as a provider would report it."""

    run: str
    prompt: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    eos: bool


@dataclass(frozen=True, slots=True)
class PairReport:
    """One (generator, auditor) pair: the worst of its choices.

    ``mean_abs`` is the largest per-choice mean |diff|; ``greedy_gap`` is None for sampled
    generators and ``tail_fraction`` (at the chosen top_k) None for greedy ones.
    """

    generator: str
    auditor: str
    choices: int
    tokens: int
    max_abs: float
    mean_abs: float
    greedy_gap: float | None
    max_rank: int
    tail_fraction: float | None


@dataclass(frozen=True, slots=True)
class CosinePair:
    """Two embedding runs: the least cosine between their vectors for the same input."""

    first: str
    second: str
    inputs: int
    worst: float


@dataclass(frozen=True, slots=True)
class CalibrationReport:
    """The catalog entry and the numbers behind it.

    Text models: ``pairs`` per (generator, auditor), and ``divergent``: per greedy
    generator run, the prompts whose tokens differ from the float32 single-thread
    reference. Embedding models: ``cosines`` per pair of runs.
    """

    model: CatalogModel
    pairs: tuple[PairReport, ...] = ()
    divergent: dict[str, int] = field(default_factory=dict)
    cosines: tuple[CosinePair, ...] = ()


@dataclass(frozen=True, slots=True)
class _GenRun:
    name: str
    dtype: str
    threads: int
    temperature: float
    seed: int | None


# ---------------------------------------------------------------- entry points


def calibrate(
    model: Path | str,
    *,
    name: str | None = None,
    plan: Plan | None = None,
    console: Console | None = None,
) -> CalibrationReport:
    """Calibrate a model: a causal LM directory (text), or an embedding model (a
    sentence-transformers directory, with ``modules.json``, or ``minilm``).

    Tens of seconds on the tiny model. Blocking, and runs its own event loop: call it from
    synchronous code. ConfigError when ``model`` names no model this can load.
    """
    from tessera.provider.loading import MINILM_ALIASES

    plan = plan or Plan()
    spec = str(model)
    bundled = spec.lower() in MINILM_ALIASES
    embedding = bundled or (Path(spec) / "modules.json").exists()
    if not embedding and not (Path(spec) / "config.json").exists():
        raise ConfigError(
            f"{spec} is not a model directory (no config.json or modules.json): give a "
            "Hugging Face causal LM or sentence-transformers directory, or 'minilm'"
        )
    import torch
    from transformers.utils import logging as hf_logging

    threads_before = torch.get_num_threads()
    bars_before = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own progress shows; four weight bars would not help
    try:
        with _progress(console) as progress:
            if embedding:
                from tessera.models.calibrate_embedding import calibrate_embedding

                where = None if bundled else Path(spec)
                return asyncio.run(calibrate_embedding(where, name, plan, progress))
            return asyncio.run(_calibrate_text(Path(spec), name, plan, progress))
    finally:
        torch.set_num_threads(threads_before)
        if bars_before:
            hf_logging.enable_progress_bar()


def save_entry(path: Path, model: CatalogModel) -> Catalog:
    """Add or replace ``model`` in the catalog file at ``path`` (created if missing).

    The file is replaced atomically, so a reader never sees half a catalog, and keeps its
    permissions. ValueError when the existing file is not a catalog (it is left as it was).
    """
    path = Path(path)
    catalog = Catalog.load(path) if path.exists() else Catalog()
    updated = catalog.with_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("x", encoding="utf-8") as handle:
            handle.write(updated.to_json())
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return updated


# ---------------------------------------------------------------- the text calibration


async def _calibrate_text(
    model_dir: Path, name: str | None, plan: Plan, progress: Progress | None
) -> CalibrationReport:
    from tessera.provider.backends.transformers_text import TransformersTextBackend

    gen_runs = _generator_runs(plan)
    audits = _auditor_runs(plan)
    gen_task = progress_task(progress, "generating", len(gen_runs) * len(plan.prompts))
    backends: dict[str, TransformersTextBackend] = {}
    try:
        for dtype in ("float32", "bfloat16"):
            backends[dtype] = await asyncio.to_thread(
                TransformersTextBackend.load, model_dir, name=name, device="auto", dtype=dtype
            )
        outputs: list[Generated] = []
        for run in gen_runs:
            set_threads(run.threads)
            for prompt in plan.prompts:
                outputs.append(await _generate(backends[run.dtype], run, prompt, plan))
                progress_advance(progress, gen_task)
        set_threads(plan.threads[0])
        score_task = progress_task(progress, "scoring", len(audits) * len(outputs))
        scored: dict[tuple[str, str], list[Deviation]] = {}
        for audit_name, dtype, batch in audits:
            for start in range(0, len(outputs), batch):
                group = outputs[start : start + batch]
                for out, dev in zip(group, await _score(backends[dtype], group), strict=True):
                    scored.setdefault((out.run, audit_name), []).append(dev)
                progress_advance(progress, score_task, len(group))
        info = backends["float32"].info
    finally:
        for backend in backends.values():
            await backend.close()

    reference_run = gen_runs[0].name
    references = [o for o in outputs if o.run == reference_run]
    ref_task = progress_task(progress, "reference top-8", 1)
    challenges = await asyncio.to_thread(_challenges, model_dir, references, plan.max_tokens)
    progress_advance(progress, ref_task)

    greedy_names = {r.name for r in gen_runs if r.temperature == 0.0}
    greedy = [d for (gen, _), ds in scored.items() if gen in greedy_names for d in ds]
    sampled = [d for (gen, _), ds in scored.items() if gen not in greedy_names for d in ds]
    observed = observe(greedy, sampled)
    runs = [r.name for r in gen_runs] + [a[0] for a in audits]
    tolerances, calibration = derive(observed, runs, margin=plan.margin)
    entry = CatalogModel(
        name=info.name,
        weights_sha256=info.weights_sha256,
        kind="text",
        tolerances=tolerances,
        challenges=challenges,
        calibration=calibration,
    )
    pairs = tuple(
        _pair_report(gen, audit, devs, gen in greedy_names, observed.top_k)
        for (gen, audit), devs in scored.items()
    )
    ref_ids = {o.prompt: o.token_ids for o in references}
    divergent = {
        name: sum(1 for o in outputs if o.run == name and o.token_ids != ref_ids[o.prompt])
        for name in sorted(greedy_names - {reference_run})
    }
    return CalibrationReport(model=entry, pairs=pairs, divergent=divergent)


def _auditor_runs(plan: Plan) -> list[tuple[str, str, int]]:
    """(name, dtype, batch size): float32 alone and batched, bfloat16 batched."""
    n = plan.batch_size
    return [
        ("score/float32/batch=1", "float32", 1),
        (f"score/float32/batch={n}", "float32", n),
        (f"score/bfloat16/batch={n}", "bfloat16", n),
    ]


def _generator_runs(plan: Plan) -> list[_GenRun]:
    """Greedy float32 per thread count (the first is the reference), greedy bfloat16, samples.

    Runs other than the thread-count variants use the first thread count: on a busy CPU
    more threads than free cores slow a small model down many times over.
    """
    runs = [_GenRun(f"generate/float32/threads={t}", "float32", t, 0.0, None) for t in plan.threads]
    base = plan.threads[0]
    runs.append(_GenRun("generate/bfloat16/greedy", "bfloat16", base, 0.0, None))
    runs += [
        _GenRun(f"generate/float32/temperature={temp}/seed={seed}", "float32", base, temp, seed)
        for temp in plan.temperatures
        for seed in plan.seeds
    ]
    return runs


async def _generate(
    backend: TransformersTextBackend, run: _GenRun, prompt: str, plan: Plan
) -> Generated:
    from tessera.provider.backends.base import CancelToken, Delta, Finish

    greedy = run.temperature == 0.0
    params = SamplingParams(
        max_tokens=plan.max_tokens if greedy else plan.sample_tokens,
        temperature=run.temperature,
        seed=run.seed,
    )
    ids: list[int] = []
    logprobs: list[float] = []
    eos = False
    async for event in backend.stream(prompt, params, CancelToken()):
        if isinstance(event, Delta):
            ids += [lp.token_id for lp in event.logprobs]
            logprobs += [lp.logprob for lp in event.logprobs]
        elif isinstance(event, Finish):
            eos = event.eos
    return Generated(run.name, prompt, tuple(ids), tuple(logprobs), eos)


async def _score(backend: TransformersTextBackend, group: Sequence[Generated]) -> list[Deviation]:
    from tessera.provider.backends.base import ScoreRequest

    results = await backend.score([ScoreRequest(o.prompt, list(o.token_ids)) for o in group])
    return [
        measure(o.logprobs, r.tokens, end=r.end if o.eos else None)
        for o, r in zip(group, results, strict=True)
    ]


def _pair_report(
    generator: str, auditor: str, devs: Sequence[Deviation], greedy: bool, top_k: int
) -> PairReport:
    return PairReport(
        generator=generator,
        auditor=auditor,
        choices=len(devs),
        tokens=sum(d.tokens for d in devs),
        max_abs=max((d.max_abs for d in devs), default=0.0),
        mean_abs=max((d.mean_abs for d in devs), default=0.0),
        greedy_gap=max((d.greedy_gap for d in devs), default=0.0) if greedy else None,
        max_rank=max((r for d in devs for r in d.ranks), default=1),
        tail_fraction=None if greedy else max(tail_fraction(d.ranks, top_k) for d in devs),
    )


def _challenges(
    model_dir: Path, references: Sequence[Generated], max_tokens: int
) -> list[Challenge]:
    """The join challenges: reference outputs with the top-8 alternatives at each position.

    The alternatives come from one float32 teacher-forced pass over prompt + output (the
    backend's stream reports alternatives as text, and texts do not name tokens uniquely).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, local_files_only=True
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ConfigError(f"cannot load {model_dir} for the reference pass: {exc}") from exc
    model = model.to(device).eval()
    eos_ids = _eos_ids(model, tokenizer)
    challenges = []
    with torch.inference_mode():
        for ref in references:
            prompt_ids = list(tokenizer(ref.prompt, add_special_tokens=True)["input_ids"])
            ids = torch.tensor([prompt_ids + list(ref.token_ids)], device=device)
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 :]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            values, indices = torch.topk(logprobs, REFERENCE_TOP_N, dim=-1)
            tops = [
                _top_pairs(v, i) for v, i in zip(values.tolist(), indices.tolist(), strict=True)
            ]
            tokens = [
                ReferenceToken(id=t, logprob=_clamp(lp), top=tops[pos])
                for pos, (t, lp) in enumerate(zip(ref.token_ids, ref.logprobs, strict=True))
            ]
            if ref.eos:
                last = logprobs[len(ref.token_ids)]
                end = max(eos_ids, key=lambda t: float(last[t]))
                tokens.append(
                    ReferenceToken(id=end, logprob=_clamp(float(last[end])), top=tops[-1])
                )
            challenges.append(
                Challenge(
                    prompt=ref.prompt,
                    max_tokens=max_tokens,
                    prompt_tokens=len(prompt_ids),
                    tokens=tokens,
                    eos=ref.eos,
                )
            )
    del model
    return challenges


def _top_pairs(values: list[float], indices: list[int]) -> list[tuple[int, float]]:
    return [(int(i), _clamp(v)) for v, i in zip(values, indices, strict=True)]


def _clamp(logprob: float) -> float:
    return min(0.0, max(-9999.0, float(logprob)))


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    found: set[int] = set()
    for value in (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list | tuple):
            found.update(v for v in value if isinstance(v, int))
    if not found:
        raise ConfigError("the model names no end-of-sequence token")
    return found


def set_threads(threads: int) -> None:
    """torch's CPU threads for the whole process (``calibrate`` restores the old count)."""
    import torch

    torch.set_num_threads(threads)


# ---------------------------------------------------------------- progress


def _progress(console: Console | None) -> AbstractContextManager[Progress | None]:
    if console is None:
        return nullcontext(None)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def progress_task(progress: Progress | None, description: str, total: int) -> Any:
    return progress.add_task(description, total=total) if progress is not None else None


def progress_advance(progress: Progress | None, task: Any, steps: int = 1) -> None:
    if progress is not None:
        progress.advance(task, steps)
