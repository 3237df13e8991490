"""Tokens per second of the tiny model: our streaming backend against plain ``model.generate``.

Both decode greedily from the same text prompt (the first of a few fable openings that this
model's weights continue past the limit, so every run makes exactly N tokens), alternating runs;
the table shows medians and the ratio to the baseline. On a busy 2-core machine the numbers
swing a lot (many tiny ops per token wait on OpenMP barriers); ``--threads 1`` is steadier.
Run::

    PYTHONPATH=src python bench/tiny_model_speed.py [--model-dir DIR] [--tokens N] [--runs R]
        [--threads T]

The model is trained first (a few minutes) if DIR holds no finished model.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, AutoTokenizer

from tessera.models.make_tiny import COMPLETE_STAMP, make_tiny
from tessera.protocol.wire import SamplingParams
from tessera.provider.backends.base import CancelToken, Delta, Finish
from tessera.provider.backends.transformers_text import TransformersTextBackend

DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".cache" / "models" / "tessera-tiny"
CANDIDATES = (
    "The Wolf", "The Fox", "The Lion", "Once upon a time", "The Hare", "The Ant said",
    "In olden times", "The old woman", "The Frog", "There was once", "The Crow", "The Dog",
)  # fmt: skip


async def run_backend(
    backend: TransformersTextBackend, prompt: str, tokens: int
) -> tuple[int, float, str]:
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    started = time.perf_counter()
    parts: list[str] = []
    produced = 0
    async for event in backend.stream(prompt, params, CancelToken()):
        if isinstance(event, Delta):
            parts.append(event.text)
        elif isinstance(event, Finish):
            produced = event.completion_tokens
    return produced, time.perf_counter() - started, "".join(parts)


async def run_backend_pair(
    backend: TransformersTextBackend, prompt: str, tokens: int
) -> tuple[int, float]:
    started = time.perf_counter()
    results = await asyncio.gather(
        run_backend(backend, prompt, tokens), run_backend(backend, prompt, tokens)
    )
    return sum(r[0] for r in results), time.perf_counter() - started


def run_generate(model: object, tok: object, prompt: str, tokens: int) -> tuple[int, float, str]:
    inputs = tok(prompt, return_tensors="pt")  # type: ignore[operator]
    n_prompt = inputs["input_ids"].shape[1]
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - started
    new = out[0, n_prompt:]
    text = tok.decode(new, skip_special_tokens=True)  # type: ignore[attr-defined]
    return int(new.shape[0]), elapsed, text


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    console = Console()
    if not (args.model_dir / COMPLETE_STAMP).is_file():
        make_tiny(args.model_dir)

    backend = await asyncio.to_thread(TransformersTextBackend.load, args.model_dir)
    tok = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, local_files_only=True).eval()

    prompt = CANDIDATES[0]
    for prompt in CANDIDATES:  # doubles as the warm-up
        if (await run_backend(backend, prompt, args.tokens))[0] == args.tokens:
            break
    run_generate(model, tok, prompt, args.tokens)
    ours: list[float] = []
    base: list[float] = []
    pair: list[float] = []
    same_text = True
    n_ours = n_base = n_pair = 0
    for _ in range(args.runs):
        n_ours, t, text_ours = await run_backend(backend, prompt, args.tokens)
        ours.append(n_ours / t)
        n_base, t, text_base = run_generate(model, tok, prompt, args.tokens)
        base.append(n_base / t)
        same_text = same_text and text_ours.strip() == text_base.strip()
        n_pair, t = await run_backend_pair(backend, prompt, args.tokens)
        pair.append(n_pair / t)
    await backend.close()

    baseline = statistics.median(base)
    table = Table(
        title=f"tessera-tiny decode speed, greedy, {torch.get_num_threads()} CPU threads, "
        f"median of {args.runs}"
    )
    for column in ("method", "tokens/run", "tokens/s", "ratio vs generate"):
        table.add_column(column, justify="right" if column != "method" else "left")
    rows = (
        ("model.generate (baseline)", n_base, baseline),
        ("TransformersTextBackend.stream", n_ours, statistics.median(ours)),
        ("stream, 2 concurrent (sum)", n_pair, statistics.median(pair)),
    )
    for name, n, rate in rows:
        table.add_row(name, str(n), f"{rate:,.0f}", f"{rate / baseline:.2f}x")
    console.print(table)
    console.print(
        f"prompt {prompt!r}; same greedy text as generate: {'yes' if same_text else 'NO'}"
    )


if __name__ == "__main__":
    asyncio.run(main())
