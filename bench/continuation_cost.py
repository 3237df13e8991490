"""What picking up a failed stream costs: a continuation's first token against a fresh job's.

When a provider dies mid-answer, the gateway sends the rest of the job to another provider
with ``continue_from`` = the k output tokens already delivered. That provider prefills
prompt + k tokens and primes its detokenizer and stop filter with the k tokens before its
first new token. For k = 16, 64 and 256, each run of the same process measures the time to
the first streamed token (``TransformersTextBackend.stream``, greedy) of:

- **fresh, prompt only**: the original job (what the first provider paid);
- **fresh, prompt + k** (the baseline): a job whose prompt is the same prompt + k token ids
  (the same prefill, nothing to prime);
- **continuation**: the continuation job, with no stop strings and with two stop strings
  (the stop filter is primed with the k tokens' text too);
- **priming**: the part of the continuation a fresh job does not do, alone: feeding the k
  tokens through the detokenizer and the stop filter (``primed_text_state``).

Runs alternate between the methods. The table shows the best of the runs (noise on a
shared machine only ever adds time) and the ratio of each to the baseline.
Run::

    PYTHONPATH=src python bench/continuation_cost.py [--model-dir DIR] [--runs R]
        [--threads T] [--device cpu|cuda]

DIR defaults to $TESSERA_TINY_MODEL_DIR, else .cache/models/tessera-tiny; the model is
trained first (a few minutes) if DIR holds no finished model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from tessera.models.make_tiny import COMPLETE_STAMP, make_tiny
from tessera.protocol.wire import SamplingParams
from tessera.provider.backends.base import CancelToken, Delta, Finish, Prompt
from tessera.provider.backends.transformers_text import TransformersTextBackend, primed_text_state

DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".cache" / "models" / "tessera-tiny"
MODEL_DIR_ENV = "TESSERA_TINY_MODEL_DIR"
HANDED = (16, 64, 256)
NEW_TOKENS = 4
STOPS = ["THE END", "\n\n\n"]  # long enough that the primed filter has text to look at
CANDIDATES = (
    "Once upon a time", "In olden times", "The Hare", "The Fox", "There was once",
    "The old woman", "The Crow", "The Dog", "The Ant said", "The Lion",
)  # fmt: skip


async def answer(backend: TransformersTextBackend, prompt: str, tokens: int) -> list[int]:
    """The greedy output ids of ``prompt`` (what a first provider delivered)."""
    ids: list[int] = []
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    async for event in backend.stream(prompt, params, CancelToken()):
        if isinstance(event, Delta):
            ids.extend(lp.token_id for lp in event.logprobs)
    return ids


async def first_token_s(
    backend: TransformersTextBackend,
    prompt: Prompt,
    stop: Sequence[str] = (),
    continue_from: Sequence[int] = (),
) -> float:
    """Seconds from the call to the first streamed Delta; the stream is then closed."""
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, stop=list(stop))
    started = time.perf_counter()
    events = backend.stream(prompt, params, CancelToken(), continue_from)
    try:
        async for event in events:
            if isinstance(event, Delta) and event.logprobs:
                return time.perf_counter() - started
            if isinstance(event, Finish):
                break
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    raise SystemExit("the model ended before its first token: pick another prompt")


@dataclass
class Row:
    handed: int
    prompt_tokens: int
    prompt_only: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    continued: list[float] = field(default_factory=list)
    continued_stops: list[float] = field(default_factory=list)
    priming: list[float] = field(default_factory=list)


async def measure(
    backend: TransformersTextBackend, prompt: str, output: list[int], k: int, runs: int
) -> Row:
    handed = output[:k]
    # Every job gets the prompt as the ids the backend itself reads for the text, so none
    # pays for tokenizing and the columns differ only in prefill length and priming.
    encoded = backend._encode(prompt)
    row = Row(k, len(encoded) + k)
    for _ in range(runs):
        row.prompt_only.append(await first_token_s(backend, encoded))
        row.baseline.append(await first_token_s(backend, encoded + handed))
        row.continued.append(await first_token_s(backend, encoded, continue_from=handed))
        row.continued_stops.append(
            await first_token_s(backend, encoded, stop=STOPS, continue_from=handed)
        )
        started = time.perf_counter()
        primed_text_state(backend._decode, handed, STOPS)
        row.priming.append(time.perf_counter() - started)
    return row


def table(rows: list[Row], title: str) -> Table:
    out = Table(title=title)
    columns = ("k handed", "read tok", "fresh prompt ms", "/base", "fresh prompt+k ms (base)",
               "continuation ms", "/base", "cont. + stops ms", "/base", "priming ms", "/base")  # fmt: skip
    for column in columns:
        out.add_column(column, justify="right")
    for row in rows:
        base = min(row.baseline)
        only, prime = min(row.prompt_only), min(row.priming)
        cont, stops = min(row.continued), min(row.continued_stops)
        out.add_row(
            str(row.handed),
            str(row.prompt_tokens),
            f"{only * 1e3:,.2f}",
            f"{only / base:.2f}x",
            f"{base * 1e3:,.2f}",
            f"{cont * 1e3:,.2f}",
            f"{cont / base:.2f}x",
            f"{stops * 1e3:,.2f}",
            f"{stops / base:.2f}x",
            f"{prime * 1e3:,.2f}",
            f"{prime / base:.2f}x",
        )
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", type=Path, default=Path(os.environ.get(MODEL_DIR_ENV, DEFAULT_DIR))
    )
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    console = Console()
    if console.width < 120:
        console = Console(width=120)
    if not (args.model_dir / COMPLETE_STAMP).is_file():
        make_tiny(args.model_dir)
    backend = await asyncio.to_thread(
        TransformersTextBackend.load, args.model_dir, device=args.device, threads=args.threads
    )
    longest = max(HANDED)
    for prompt in CANDIDATES:
        output = await answer(backend, prompt, longest + NEW_TOKENS)
        if len(output) == longest + NEW_TOKENS:
            break
    else:
        raise SystemExit(f"no candidate prompt makes {longest} greedy tokens without ending")
    await first_token_s(backend, prompt, continue_from=output[:longest])  # warm-up
    rows = [await measure(backend, prompt, output, k, args.runs) for k in HANDED]
    await backend.close()
    console.print(
        table(
            rows,
            f"tessera-tiny on {args.device}: time to the first new token, best of "
            f"{args.runs}, {torch.get_num_threads()} CPU threads; base = a fresh job whose "
            "prompt is the same prompt + k ids",
        )
    )
    console.print(f"prompt {prompt!r}; stop strings {STOPS!r}")


if __name__ == "__main__":
    asyncio.run(main())
